"""Documented settings dataclasses: one field, one default, one help line, one flat name.

Every configuration in saekit is a dataclass whose fields are declared with :func:`setting`, which
stores the field's help text beside its default. From that one declaration this module derives
everything else, so nothing is written twice:

- the JSON form (:func:`to_dict`) and typed loading from JSON (:func:`from_dict`: unknown keys and
  values of the wrong type are one-line errors naming the field, checked before any work starts);
- a flat name for every leaf field (:func:`flat_fields`: ``lr``, ``k``, ``site``...), which is what
  CLI flags, sweep grids and old flat ``config.json`` files use (:func:`from_flat`, :func:`updated`);
- the CLI flags themselves, with their help lines (:func:`add_flags`, :func:`flags_given`);
- range and value checks (a :class:`Rule` per field: ``minimum=1``, ``above=0``, ``check=...``), run
  when a config is built from JSON or flags and again by :func:`check_rules`, so a bad value is one
  line naming the field, the value and what is allowed, before any work starts;
- for settings given as ``KEY=VALUE`` text or by a sweep grid (an architecture's options), the same
  types read leniently (:func:`loose_value`) and the help lines as a block (:func:`help_block`).

A nested dataclass field is a section (``data``, ``optim``...); its fields' flat names are their own
names unless a field sets ``flag=`` (two sections may not claim the same flat name).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import shutil
import textwrap
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import MISSING, Field, dataclass, field, fields, is_dataclass, replace
from pathlib import PurePath
from typing import Any, TypeVar, Union

from saekit.errors import SaekitError

T = TypeVar("T")
NONE_WORDS = ("none", "off", "null")


@dataclass(frozen=True)
class Rule:
    """What a setting allows beyond its type: a numeric range and/or a check of the value.

    ``minimum``/``maximum`` are inclusive bounds, ``above``/``below`` exclusive ones. ``check`` returns
    None for a good value or a short description of what is allowed; ``invalid`` lists values the
    check refuses (the schema-driven fault tests use them, with values just outside the bounds).
    A float must also be finite: ``inf`` would pass a lower bound, and ``nan`` compares false to any.
    A tuple setting applies the rule to each item; None (for an optional setting) is always allowed.
    """

    minimum: float | None = None
    maximum: float | None = None
    above: float | None = None
    below: float | None = None
    check: Callable[[Any], str | None] | None = None
    invalid: tuple[Any, ...] = ()

    def problem(self, value: Any) -> str | None:
        """None when ``value`` is allowed, else what is allowed."""
        if isinstance(value, tuple):
            return next((p for p in map(self.problem, value) if p is not None), None)
        if value is None:
            return None
        if isinstance(value, float) and not math.isfinite(value):
            return " ".join(p for p in ("a finite number", self.describe_range()) if p)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and not self._in_range(value):
            return self.describe_range()
        return self.check(value) if self.check is not None else None

    def _in_range(self, value: float) -> bool:
        return ((self.minimum is None or value >= self.minimum) and (self.maximum is None or value <= self.maximum)
                and (self.above is None or value > self.above) and (self.below is None or value < self.below))

    def describe_range(self) -> str:
        parts = [f">= {_bound(self.minimum)}" if self.minimum is not None else "",
                 f"> {_bound(self.above)}" if self.above is not None else "",
                 f"<= {_bound(self.maximum)}" if self.maximum is not None else "",
                 f"< {_bound(self.below)}" if self.below is not None else ""]
        return " and ".join(p for p in parts if p)

    def invalid_examples(self, annotation: Any) -> list[Any]:
        """Values of the right type that this rule refuses: just past each bound, ``inf`` and ``nan`` for a
        float, and ``invalid``."""
        members = [m for m in _union_members(annotation) or (annotation,) if m is not type(None)]
        sequence = members[0] if len(members) == 1 and _tuple_items(members[0]) is not None else None
        kinds = (_tuple_items(sequence),) if sequence is not None else tuple(members)
        integer = int in kinds
        step = 1 if integer else 1e-3
        found: list[Any] = []
        for bound, sign, inclusive in ((self.minimum, -1, True), (self.above, -1, False),
                                       (self.maximum, 1, True), (self.below, 1, False)):
            if bound is not None:
                found.append(bound + sign * step if inclusive else bound)
        found = [int(v) if integer else float(v) for v in found]
        if float in kinds:
            found += [math.inf, math.nan]
        found += list(self.invalid)
        if sequence is not None:  # each value as every item (a list of any length: two of them)
            length = 2 if _variadic(sequence) else len(typing.get_args(sequence))
            found = [(v,) * length for v in found]
        return found


def non_empty(value: Any) -> str | None:
    """A :class:`Rule` check: text with something in it."""
    return None if str(value).strip() else "a non-empty string"


NON_EMPTY = {"check": non_empty, "invalid": ("", "  ")}  # setting(..., **NON_EMPTY)
# A seed: torch takes any 64-bit value, but seeds are combined (seed * 1_000_003 + step, seed + 17), so
# 32 bits keep every derived seed in range; a larger one would fail only after the model has loaded.
SEED = {"minimum": 0, "maximum": 2**32 - 1}  # setting(..., **SEED)


def printable(value: Any) -> str | None:
    """A :class:`Rule` check: text without control or invisible characters, naming the first one found.

    A name becomes a directory and is printed: a newline would split the line that shows it, and an
    escape sequence (ESC, U+001B) would restyle or rewrite the user's terminal.
    """
    bad = next((char for char in str(value) if not char.isprintable()), None)
    return None if bad is None else f"printable characters only, not U+{ord(bad):04X}"


def _bound(value: float) -> str:
    """A bound as a person reads it: 4294967295, not 4.29497e+09; 0.001 as it is."""
    return str(value) if isinstance(value, int) else f"{value:g}"


def _is_path(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, PurePath)


def _tuple_items(annotation: Any) -> Any:
    """The item type of a homogeneous tuple annotation (``tuple[int, int]``, ``tuple[int, ...]``), else None."""
    if typing.get_origin(annotation) is not tuple:
        return None
    items = set(typing.get_args(annotation)) - {Ellipsis}
    return items.pop() if len(items) == 1 else None


def _variadic(annotation: Any) -> bool:
    """Whether ``annotation`` is ``tuple[T, ...]``: a list of any length (JSON), items comma-separated (flags)."""
    return typing.get_origin(annotation) is tuple and typing.get_args(annotation)[-1:] == (Ellipsis,)


def one_of(choices: tuple[Any, ...]) -> Callable[[Any], str | None]:
    """A :class:`Rule` check: one of ``choices``."""
    def check(value: Any) -> str | None:
        return None if value in choices else "one of " + ", ".join(map(str, choices))
    return check


def setting(default: Any = MISSING, help: str = "", *, flag: str | None = None,
            factory: Callable[[], Any] | None = None, minimum: float | None = None, maximum: float | None = None,
            above: float | None = None, below: float | None = None, check: Callable[[Any], str | None] | None = None,
            invalid: tuple[Any, ...] = (), none: str | None = None, choices: tuple[Any, ...] = (),
            switch: bool = False, repeat: bool = False, metavar: str | None = None) -> Any:
    """A dataclass field with its help line, its allowed values, and optionally another flat name than its own.

    How its flag reads (see :func:`add_flags`): ``none`` is the word that means None on the command line besides
    ``none`` (``all`` for a count of latents, say), and is how ``--help`` shows a None default; ``choices`` are
    the values allowed (argparse refuses others while parsing); ``switch`` makes a bool a flag without a value that
    sets the opposite of the default; ``repeat`` makes a tuple's flag repeatable, one item each time; ``metavar``
    replaces the type's name in ``--help``.
    """
    metadata = _metadata(help, flag, _rule(minimum, maximum, above, below, check, invalid, choices), none=none,
                         choices=choices, switch=switch, repeat=repeat, metavar=metavar)
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


def _rule(minimum: float | None = None, maximum: float | None = None, above: float | None = None,
          below: float | None = None, check: Callable[[Any], str | None] | None = None, invalid: tuple[Any, ...] = (),
          choices: tuple[Any, ...] = ()) -> Rule | None:
    if choices and check is None:
        check, invalid = one_of(tuple(choices)), invalid or ("not-a-choice",)
    bounds = (minimum, maximum, above, below)
    return Rule(*bounds, check, invalid) if any(b is not None for b in bounds) or check is not None else None


def _metadata(help: str, flag: str | None, rule: Rule | None, **how: Any) -> dict[str, Any]:
    """A setting's metadata: help, flat name and rule, and how its flag reads (only what differs from plain)."""
    return {"help": help, "flag": flag, "rule": rule, **{k: v for k, v in how.items() if v}}


RULE_WORDS = ("minimum", "maximum", "above", "below", "check", "invalid", "choices")


def copy_setting(cls: type, name: str, default: Any = MISSING, **changes: Any) -> Any:
    """``cls``'s field ``name`` again: its default (unless ``default`` is given), help and rule, stated once.

    ``changes`` replace parts of it: ``help=``, ``flag=`` (None: the new field's own name), how its flag reads
    (``none=``, ``metavar=``...), or its rule (any of ``minimum=``, ``maximum=``, ``above=``, ``below=``,
    ``check=``, ``choices=``: a new rule made of those alone)."""
    source = next(f for f in fields(cls) if f.name == name)
    rule_changes = {k: changes.pop(k) for k in RULE_WORDS if k in changes}
    metadata = {**source.metadata, **changes}
    if rule_changes:
        metadata["rule"] = _rule(**rule_changes)
        if rule_changes.get("choices"):
            metadata["choices"] = tuple(rule_changes["choices"])
    if default is not MISSING:
        return field(default=default, metadata=metadata)
    if source.default_factory is not MISSING:
        return field(default_factory=source.default_factory, metadata=metadata)
    return field(default=source.default, metadata=metadata)


@dataclass(frozen=True)
class FlatField:
    """A leaf setting: where it lives (``path``), its flat name, its type and help."""

    path: tuple[str, ...]
    flat: str
    annotation: Any
    help: str
    default: Any
    rule: Rule | None = None
    none: str | None = None  # the word for None on the command line (besides NONE_WORDS), and in --help
    choices: tuple[Any, ...] = ()
    switch: bool = False  # a bool flag without a value: it sets the opposite of the default
    repeat: bool = False  # a tuple's flag given once per item
    metavar: str | None = None

    @property
    def flag(self) -> str:
        return "--" + self.flat.replace("_", "-")


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _section_type(annotation: Any) -> type | None:
    return annotation if isinstance(annotation, type) and is_dataclass(annotation) else None


def _default(spec: Field) -> Any:
    """The field's default value (MISSING when it has none)."""
    return spec.default_factory() if spec.default_factory is not MISSING else spec.default


def flat_fields(cls: type, prefix: tuple[str, ...] = (), sections: bool = True) -> list[FlatField]:
    """Every leaf field of ``cls`` and its sections (``sections=False``: its own fields alone), with its flat
    name; clashing names are a bug."""
    found: list[FlatField] = []
    hints = _hints(cls)
    for spec in fields(cls):
        section = _section_type(hints[spec.name])
        if section is not None:
            if sections:
                found += flat_fields(section, prefix + (spec.name,))
            continue
        flat = spec.metadata.get("flag") or spec.name
        how = {key: spec.metadata[key] for key in ("none", "choices", "switch", "repeat", "metavar")
               if key in spec.metadata}
        found.append(FlatField(prefix + (spec.name,), flat, hints[spec.name], spec.metadata.get("help", ""),
                               _default(spec), spec.metadata.get("rule"), **how))
    if not prefix:
        names = [f.flat for f in found]
        clashes = sorted({n for n in names if names.count(n) > 1})
        if clashes:
            raise TypeError(f"{cls.__name__}: flat setting names {clashes} are claimed twice; give one a flag=")
    return found


def flat_index(cls: type) -> dict[str, FlatField]:
    return {f.flat: f for f in flat_fields(cls)}


# ---- typed values --------------------------------------------------------------------------------
def _union_members(annotation: Any) -> tuple[Any, ...] | None:
    origin = typing.get_origin(annotation)
    if origin is Union or (hasattr(types, "UnionType") and isinstance(annotation, types.UnionType)):
        return typing.get_args(annotation)
    return None


def type_name(annotation: Any) -> str:
    members = _union_members(annotation)
    if members is not None:
        return " or ".join(type_name(m) for m in members)
    if annotation is type(None):
        return "null"
    origin = typing.get_origin(annotation)
    if _variadic(annotation):
        return f"a list of {type_name(_tuple_items(annotation))}s"
    if origin is tuple:  # JSON writes a tuple as a list: say how long, and of what
        items = typing.get_args(annotation)
        kinds = {type_name(t) for t in items}
        return f"a list of {len(items)} {kinds.pop()}s" if len(kinds) == 1 else \
            f"a list [{', '.join(type_name(t) for t in items)}]"
    if origin in (dict, list):
        return f"a {origin.__name__}"
    if _is_path(annotation):
        return "path"
    return getattr(annotation, "__name__", str(annotation))


def check_value(value: Any, annotation: Any, where: str) -> Any:
    """``value`` as ``annotation`` (ints widen to float, lists to tuples), or a one-line SaekitError."""
    members = _union_members(annotation)
    if members is not None:
        for member in members:
            try:
                return check_value(value, member, where)
            except SaekitError:
                continue
        raise _type_error(value, annotation, where)
    if annotation is Any:
        return value
    if _is_path(annotation):
        if isinstance(value, (str, PurePath)) and str(value):
            return annotation(value)
        raise _type_error(value, annotation, where)
    section = _section_type(annotation)
    if section is not None:
        return value if isinstance(value, section) else from_dict(section, value, where)
    if annotation is type(None):
        if value is None:
            return None
        raise _type_error(value, annotation, where)
    origin = typing.get_origin(annotation)
    if _variadic(annotation):
        if not isinstance(value, (list, tuple)):
            raise _type_error(value, annotation, where)
        item = _tuple_items(annotation)
        return tuple(check_value(v, item, f"{where}[{i}]") for i, v in enumerate(value))
    if origin is tuple:
        items = typing.get_args(annotation)
        if not isinstance(value, (list, tuple)) or len(value) != len(items):
            raise _type_error(value, annotation, where)
        return tuple(check_value(v, t, f"{where}[{i}]") for i, (v, t) in enumerate(zip(value, items)))
    if origin is dict:
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise _type_error(value, annotation, where)
        item = typing.get_args(annotation)[1] if typing.get_args(annotation) else Any
        return {k: check_value(v, item, f"{where}[{k!r}]") for k, v in value.items()}
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise _type_error(value, annotation, where)
        (item,) = typing.get_args(annotation) or (Any,)
        return [check_value(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if annotation is bool:
        if isinstance(value, bool):
            return value
        raise _type_error(value, annotation, where)
    if annotation is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if annotation in (int, str) and isinstance(value, annotation) and not isinstance(value, bool):
        return value
    raise _type_error(value, annotation, where)


def _enforce(rule: Rule | None, value: Any, where: str) -> None:
    problem = rule.problem(value) if rule is not None else None
    if problem is not None:
        raise SaekitError(f"{where} must be {problem}, got {value!r}")


def checked_value(spec: FlatField, value: Any, where: str, shown: Any = MISSING) -> Any:
    """``value`` as the setting ``spec`` takes it, type and rule checked; a one-line SaekitError naming ``where``
    shows ``shown`` (by default the value itself: give what the user wrote when ``value`` was read from it)."""
    shown = value if shown is MISSING else shown
    try:
        value = check_value(value, spec.annotation, where)
    except SaekitError:
        raise _type_error(shown, spec.annotation, where) from None
    problem = spec.rule.problem(value) if spec.rule is not None else None
    if problem is not None:
        raise SaekitError(f"{where} must be {problem}, got {shown!r}")
    return value


def loose_value(value: Any, annotation: Any) -> Any:
    """``value`` brought to ``annotation``'s kind where a ``KEY=VALUE`` flag or a sweep grid can write no better.

    Text is read as a flag's text is (``64,64,128`` for a list, ``none`` for an optional value), 0 and 1
    stand for false and true, a whole float for an int (``256.0``), and one number for a list of one.
    Anything else is returned as it is, for :func:`check_value` to refuse.
    """
    members = [m for m in _union_members(annotation) or (annotation,) if m is not type(None)]
    if len(members) != 1 or value is None:
        return value
    kind = members[0]
    if isinstance(value, str) and kind is not str:
        value = parse_scalar(value, annotation)
    item = _tuple_items(kind)
    if item is None:
        return _loose_scalar(value, kind)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = [value]
    return [_loose_scalar(v, item) for v in value] if isinstance(value, (list, tuple)) else value


def _loose_scalar(value: Any, kind: Any) -> Any:
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is bool and number and value in (0, 1):
        return bool(value)
    if kind is int and isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def check_rules(config: Any, where: str = "config") -> None:
    """Check every field of ``config`` (and its sections) against its rule; a one-line SaekitError on the first."""
    for spec in fields(config):
        value = getattr(config, spec.name)
        if is_dataclass(value) and not isinstance(value, type):
            check_rules(value, f"{where}: {spec.name}")
        else:
            _enforce(spec.metadata.get("rule"), value, f"{where}: {spec.name}")


def _type_error(value: Any, annotation: Any, where: str) -> SaekitError:
    return SaekitError(f"{where} must be {type_name(annotation)}, got {value!r}")


# ---- dicts <-> dataclasses -----------------------------------------------------------------------
def to_dict(obj: Any) -> dict[str, Any]:
    """The JSON form: sections nested, tuples as lists."""
    return json_safe(dataclasses.asdict(obj))


def json_safe(value: Any) -> Any:
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def from_dict(cls: type[T], data: Mapping[str, Any], where: str) -> T:
    """Build ``cls`` from its JSON form, checking every key and type; ``where`` names the source."""
    if not isinstance(data, Mapping):
        raise SaekitError(f"{where} must be a JSON object, got {type(data).__name__}")
    hints = _hints(cls)
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise SaekitError(f"{where}: unknown keys {unknown}; valid keys: {', '.join(sorted(known))}")
    values = {name: check_value(value, hints[name], f"{where}: {name}") for name, value in data.items()}
    rules = {spec.name: spec.metadata.get("rule") for spec in fields(cls)}
    for name, value in values.items():
        _enforce(rules[name], value, f"{where}: {name}")
    missing = [f.name for f in fields(cls) if f.name not in values and f.default is MISSING
               and f.default_factory is MISSING]
    if missing:
        raise SaekitError(f"{where}: missing keys {missing}")
    return cls(**values)


def from_flat(cls: type[T], flat: Mapping[str, Any], where: str, base: T | None = None) -> T:
    """``cls`` (or ``base`` updated) from flat names: ``{"lr": 1e-3, "site": ...}``."""
    nested = to_dict(base) if base is not None else to_dict(cls())
    index = flat_index(cls)
    for name, value in flat.items():
        if name not in index:
            close = ", ".join(sorted(index))
            raise SaekitError(f"{where}: unknown setting {name!r}; valid settings: {close}")
        *sections, leaf = index[name].path
        target = nested
        for section in sections:
            target = target[section]
        target[leaf] = json_safe(value)
    return from_dict(cls, nested, where)


def updated(config: T, where: str = "settings", **flat: Any) -> T:
    """A copy of ``config`` with flat-named settings changed, type-checked like a file."""
    return from_flat(type(config), flat, where, base=config)


def flat_values(config: Any) -> dict[str, Any]:
    """Every leaf setting of ``config`` under its flat name."""
    values = {}
    for spec in flat_fields(type(config)):
        value = config
        for part in spec.path:
            value = getattr(value, part)
        values[spec.flat] = value
    return values


def differences(a: Any, b: Any) -> list[str]:
    """Flat names of the settings that differ between two configs of one class."""
    left, right = flat_values(a), flat_values(b)
    return sorted(name for name in left if left[name] != right[name])


# ---- CLI flags -----------------------------------------------------------------------------------
DEST_PREFIX = "setting:"


SETTINGS_OF = "settings-of:"  # the namespace entry naming the FlatFields add_flags gave a parser, per class
SETTINGS_NOTE = " (override --config; defaults in [])"


def add_flags(parser: argparse.ArgumentParser, cls: type, skip: tuple[str, ...] = (), title: str | None = None,
              only: Iterable[str] | None = None, sections: bool = True, note: str = SETTINGS_NOTE) -> None:
    """One optional flag per leaf setting of ``cls``, typed from its annotation, help from its field.

    ``title`` heads the group of ``cls``'s own (unsectioned) fields; by default they are the run identity.
    ``note`` follows each section's heading (and the default title). ``only`` keeps just the named settings
    (``skip`` leaves some out); ``sections=False`` leaves out the fields of ``cls``'s sections (for a class
    whose sections repeat a name).
    The parser's namespace records which flags are ``cls``'s, for :func:`from_args` and :func:`flags_given`.

    A flag's text is read and type-checked while parsing (a wrong type is argparse's one-line error naming
    the flag); its range is checked by :func:`from_args`, a one-line SaekitError naming the flag.
    """
    keep = set(only) if only is not None else None
    groups: dict[str | None, argparse._ArgumentGroup] = {}
    added: list[FlatField] = []
    for spec in flat_fields(cls, sections=sections):
        if spec.flat in skip or (keep is not None and spec.flat not in keep):
            continue
        section = spec.path[0] if len(spec.path) > 1 else None
        if section not in groups:
            heading = (f"{section} settings{note}" if section else
                       (title or "run identity settings" + note))
            groups[section] = parser.add_argument_group(heading)
        group = groups[section]
        kwargs: dict[str, Any] = {"dest": DEST_PREFIX + spec.flat, "default": NOT_GIVEN,
                                  "help": help_line(spec).replace("%", "%%")}
        if spec.switch:
            kwargs.update(action="store_const", const=not spec.default)
        elif typing.get_origin(spec.annotation) is dict:  # appended to a list: None until given
            kwargs.update(action="append", type=_key_value, metavar="KEY=VALUE", default=None)
        elif spec.repeat:
            item = _tuple_items(spec.annotation)
            kwargs.update(action="append", type=_parser_for(item, spec), metavar=spec.metavar or _metavar(item),
                          default=None)
        else:
            kwargs.update(type=_parser_for(spec.annotation, spec),
                          metavar=spec.metavar or (None if spec.choices else _metavar(spec.annotation, spec.none)))
            if spec.choices:
                kwargs["choices"] = spec.choices
        group.add_argument(spec.flag, **kwargs)
        added.append(spec)
    parser.set_defaults(**{SETTINGS_OF + _class_key(cls): tuple(added)})


class _NotGiven:
    """The namespace value of a setting flag the user did not pass (None is a value: ``--lr none``)."""

    def __repr__(self) -> str:
        return "<not given>"


NOT_GIVEN = _NotGiven()


def _class_key(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _given(args: argparse.Namespace, cls: type) -> list[tuple[FlatField, Any]]:
    """The settings of ``cls`` the user passed, with the value each flag read (None: not given)."""
    specs = getattr(args, SETTINGS_OF + _class_key(cls), None)
    if specs is None:
        raise TypeError(f"no flags of {cls.__name__} were added to this parser (add_flags)")
    found = []
    for spec in specs:
        value = getattr(args, DEST_PREFIX + spec.flat, NOT_GIVEN)
        appended = spec.repeat or typing.get_origin(spec.annotation) is dict  # None until the first one
        if value is NOT_GIVEN or (value is None and appended):
            continue
        if spec.repeat:
            value = tuple(value)
        elif isinstance(value, list):  # a dict setting's KEY=VALUE pairs
            value = dict(value)
        found.append((spec, value))
    return found


def from_args(cls: type[T], args: argparse.Namespace, base: T | None = None) -> T:
    """``base`` (by default ``cls()``) with the settings of ``cls`` given on the command line.

    Each value is checked against its setting's type and rule first: a bad one is a one-line SaekitError
    naming the flag the user typed (``--node-threshold must be <= 1, got 1.5``), raised before any work.
    """
    config = base if base is not None else cls()
    for spec, value in _given(args, cls):
        checked = checked_value(spec, value, spec.flag)
        config = _replaced(config, spec.path, checked)
    return config


def _replaced(config: Any, path: tuple[str, ...], value: Any) -> Any:
    head, *rest = path
    return replace(config, **{head: _replaced(getattr(config, head), tuple(rest), value) if rest else value})


def help_line(spec: FlatField) -> str:
    """The setting's help as ``--help`` shows it: its help, its default in [], its range in ().

    A switch (a flag without a value) shows no default: it is off unless given."""
    line = spec.help
    if spec.default is not MISSING and not spec.switch:
        shown = spec.none if spec.default is None and spec.none else _show(spec.default)
        line += f" [{shown or 'none'}]"
    if spec.rule is not None and spec.rule.describe_range():
        line += f" ({spec.rule.describe_range()})"
    return line


def help_width() -> int:
    """The width of text inside an argparse group: argparse's (the terminal's, less 2), less the group's indent."""
    return max(shutil.get_terminal_size().columns - 4, 40)


def help_block(cls: type, names: Iterable[str] | None = None, width: int | None = None) -> str:
    """``cls``'s settings (or those in ``names``) as ``KEY=TYPE  help [default] (range)`` lines, laid out as
    argparse lays out flags (help from column 24, wrapped to the terminal): an argument group's description
    under a raw-description formatter, for settings given as ``KEY=VALUE`` rather than as flags of their own."""
    width = width or help_width()
    column = 22  # argparse starts help at column 24; the group's indent of 2 comes on top of these lines
    lines: list[str] = []
    for spec in flat_fields(cls):
        if names is not None and spec.flat not in names:
            continue
        key = f"{spec.flat}={_metavar(spec.annotation)}"
        wrapped = textwrap.wrap(help_line(spec), max(width - column, 20), break_on_hyphens=False)
        if len(key) + 2 <= column:
            lines.append(key.ljust(column) + wrapped[0])
            wrapped = wrapped[1:]
        else:
            lines.append(key)
        lines += [" " * column + part for part in wrapped]
    return "\n".join(lines)


def flags_given(args: argparse.Namespace, cls: type | None = None) -> dict[str, Any]:
    """The flat settings the user passed on the command line (dict settings merged from KEY=VALUE); with ``cls``,
    only the flags :func:`add_flags` added for it."""
    if cls is not None:
        return {spec.flat: value for spec, value in _given(args, cls)}
    given = {}
    for dest, value in vars(args).items():
        if dest.startswith(DEST_PREFIX) and value is not NOT_GIVEN and value is not None:
            name = dest[len(DEST_PREFIX):]
            given[name] = dict(value) if isinstance(value, list) else value
    return given


def _show(value: Any) -> str:
    if isinstance(value, tuple):
        return ",".join(map(str, value))
    return "none" if value is None else str(value)


def _metavar(annotation: Any, none: str | None = None) -> str:
    if _variadic(annotation):
        return f"{type_name(_tuple_items(annotation)).upper()},..."
    if typing.get_origin(annotation) is tuple:
        return ",".join(type_name(t).upper() for t in typing.get_args(annotation))
    members = _union_members(annotation)
    real = [m for m in members if m is not type(None)] if members else [annotation]
    if len(real) != 1:
        base = "VALUE"
    else:  # an optional list (INT,...|none) reads as the list does
        base = _metavar(real[0]) if typing.get_origin(real[0]) is tuple else type_name(real[0]).upper()
    return base + (f"|{none or 'none'}" if members and type(None) in members else "")


def _parser_for(annotation: Any, spec: FlatField | None = None) -> Callable[[str], Any]:
    none = spec.none if spec is not None else None

    def parse(text: str) -> Any:
        try:
            if none is not None and text.strip().lower() == none.lower():
                text = "none"
            return check_value(parse_scalar(text, annotation), annotation, "value")
        except SaekitError:
            expected = _metavar(annotation) if typing.get_origin(annotation) is tuple else type_name(annotation)
            if none is not None:
                expected = expected.replace("null", repr(none))
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
    return parse


def parse_scalar(text: str, annotation: Any) -> Any:
    """The text of a flag as the value its annotation asks for (best effort; checked afterwards)."""
    members = _union_members(annotation)
    if members is not None:
        if type(None) in members and text.strip().lower() in NONE_WORDS:
            return None
        for member in (m for m in members if m is not type(None)):
            value = parse_scalar(text, member)
            if not isinstance(value, str) or member is str:
                return value
        return text
    if _variadic(annotation):
        return [parse_scalar(part.strip(), _tuple_items(annotation)) for part in text.split(",")]
    if typing.get_origin(annotation) is tuple:
        parts, items = text.split(","), typing.get_args(annotation)
        if len(parts) != len(items):
            return parts  # the wrong number of items: refused by check_value, never cut to fit
        return [parse_scalar(part, t) for part, t in zip(parts, items)]
    if annotation is bool:
        lowered = text.lower()
        return {"1": True, "true": True, "yes": True, "on": True,
                "0": False, "false": False, "no": False, "off": False}.get(lowered, text)
    if annotation in (int, float):
        return _number(text)
    return text


def _number(text: str) -> Any:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            continue
    return text


def _key_value(text: str) -> tuple[str, Any]:
    key, equals, value = text.partition("=")
    if not equals or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    lowered = value.strip().lower()
    parsed: Any = {"true": True, "false": False}.get(lowered, _number(value.strip()))
    return key.strip(), parsed


def section_names(cls: type) -> list[str]:
    """The fields of ``cls`` that are sections (nested settings dataclasses)."""
    hints = _hints(cls)
    return [spec.name for spec in fields(cls) if _section_type(hints[spec.name]) is not None]
