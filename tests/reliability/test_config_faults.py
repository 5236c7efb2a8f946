"""Fault injection into configuration, generated from the settings schema: no case here is listed by hand.

Every leaf of :class:`TrainConfig` (``flat_fields``) and every option of every architecture (the fields of
its options dataclass, given as ``--extra KEY=VALUE`` or ``dictionary.extra``) gets values of the wrong
type (derived from its annotation) and out-of-range values (from its :class:`~saekit.settings.Rule`), given
by CLI flag and by ``config.json``; every typed option of every subcommand gets garbage. Each must end the same way: a
non-zero exit, exactly one line on stderr naming the setting (no traceback), nothing written, and no
model loaded (the loaders are replaced by ones that fail the test).
"""

from __future__ import annotations

import argparse
import json
import re
import types
import typing
from pathlib import Path
from typing import Any

import pytest
from cli_helpers import run_cli

from saekit.cli import build_parser, main
from saekit.dictionaries.registry import ARCHITECTURES, is_cross_layer
from saekit.errors import SaekitError
from saekit.models import loading
from saekit.settings import FlatField, flat_fields, json_safe, section_names, type_name
from saekit.training.config import TrainConfig

FIELDS = flat_fields(TrainConfig)
NONE = type(None)
RULED = [f for f in FIELDS if f.rule is not None]


# ---- what the schema says about a field ------------------------------------------------------------
def _members(annotation: Any) -> tuple[Any, ...]:
    """The types a value may have: a union's members, else the annotation itself."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return typing.get_args(annotation)
    return (annotation,)


def _kinds(annotation: Any) -> set[Any]:
    return set(_members(annotation)) - {NONE}


def _is_dict(annotation: Any) -> bool:
    return typing.get_origin(annotation) is dict


def _is_tuple(annotation: Any) -> bool:
    return typing.get_origin(annotation) is tuple


GOOD_TEXT = {int: "1", float: "0.5", bool: "true", str: "x"}
GOOD_JSON = {int: 1, float: 0.5, bool: True, str: "x"}


def wrong_flag_texts(spec: FlatField) -> list[str]:
    """Command-line text that cannot be a value of the field's type ([] when any text is one)."""
    annotation = spec.annotation
    if _is_dict(annotation):
        return ["no-equals-sign", "=1"]  # --extra takes KEY=VALUE
    if _is_tuple(annotation):
        items = typing.get_args(annotation)
        if items[-1] is Ellipsis:  # any number of items: wrong only where an item's text cannot be its kind
            return [] if items[0] is str else ["abc"]
        good = [GOOD_TEXT[t] for t in items]
        texts = [",".join(good[:-1]), ",".join(good + good[:1])]  # one item too few, one too many
        if any(t is not str for t in items):
            texts.append(",".join("abc" if t is not str else GOOD_TEXT[t] for t in items))
        return [t for t in texts if t]
    kinds = _kinds(annotation)
    if str in kinds:
        return []
    texts = []
    if bool in kinds:
        texts.append("maybe")
    if kinds & {int, float}:
        texts.append("abc")
    if int in kinds and float not in kinds:
        texts.append("1.5")
    return texts


def wrong_json_values(spec: FlatField) -> list[Any]:
    """JSON values that are not of the field's type: null where it is not optional, then by kind."""
    annotation = spec.annotation
    values: list[Any] = [] if NONE in _members(annotation) else [None]
    if _is_dict(annotation):
        return values + [["key=value"], "key=value", 1]
    if _is_tuple(annotation):
        items = typing.get_args(annotation)
        if items[-1] is Ellipsis:
            return values + [[5 if items[0] is str else "abc"], {"0": GOOD_JSON[items[0]]}, 5]
        good = [GOOD_JSON[t] for t in items]
        return values + [",".join(map(str, good)), good[:-1], good + good[:1],
                         ["abc" if t is not str else 1 for t in items], dict(enumerate(map(str, good)))]
    kinds = _kinds(annotation)
    sample = GOOD_JSON[sorted(kinds, key=str)[0]]
    values += [[sample], {"value": sample}]  # a list and an object for a scalar
    if str in kinds:
        values += [5, True]  # a number and a bool for a string
    else:
        values.append("abc")  # a string for a number or a bool
    if bool in kinds:
        values.append(1)  # a number is not a bool
    elif kinds & {int, float}:
        values.append(True)  # nor is a bool a number
    if int in kinds and float not in kinds:
        values.append(1.5)
    return values


def flag_text(value: Any) -> str:
    """A value of the right type as the command line writes it."""
    if isinstance(value, tuple):
        return ",".join(map(flag_text, value))
    return "none" if value is None else str(value)


def _id(value: Any) -> str:
    return json.dumps(value) if not isinstance(value, tuple) else flag_text(value)


# ---- running the command and checking how it ended -------------------------------------------------
class _NoLoading:
    """Stands in for transformers' Auto* classes: any attempt to load a model or its config fails the test."""

    @staticmethod
    def from_pretrained(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError(f"model loaded: from_pretrained{args}")


@pytest.fixture(autouse=True)
def no_model_loads(monkeypatch):
    """Every load_model / load_model_config / tokenizer load goes through these names in saekit.models.loading."""
    for name in ("AutoModelForCausalLM", "AutoTokenizer", "AutoConfig"):
        monkeypatch.setattr(loading, name, _NoLoading)


@pytest.fixture
def workdir(tmp_path, monkeypatch) -> Path:
    """An empty current directory, so that a default output path ('runs', '.saekit_cache') is seen too."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))




def assert_one_line_refusal(code: int, err: str, out: str) -> str:
    assert code != 0, f"exit code {code}; stderr: {err!r}"
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].strip(), f"expected one stderr line, got {err!r}"
    assert out == "", f"nothing on stdout for a refusal, got {out!r}"
    return lines[0]


def names(spec: FlatField, message: str) -> bool:
    """The message names the flag, the flat name or the field's path (``optim: lr``)."""
    candidates = (spec.flag, spec.flat, ": ".join(spec.path))
    return any(re.search(rf"(?<![\w-]){re.escape(c)}(?![\w-])", message) for c in candidates)


def _base_flags(tmp: Path, model_dir: Path) -> list[str]:
    return ["--runs-dir", str(tmp / "runs"), "--cache-dir", str(tmp / "cache"), "--model", str(model_dir)]


def _train_by_flag(tmp: Path, model_dir: Path, flag: str, text: str, capsys) -> str:
    # The field's flag comes last (argparse keeps the last), in --flag=VALUE form so that '', '-1' and
    # '-0.001,-0.001' are values, not options.
    code, err, out = run_cli(["train", *_base_flags(tmp, model_dir), f"{flag}={text}"], capsys)
    line = assert_one_line_refusal(code, err, out)
    assert _files(tmp) == [], "a refused command wrote files"
    return line


def _config_dict(tmp: Path, model_dir: Path) -> dict[str, Any]:
    data = TrainConfig().to_dict()
    data["data"]["model"] = str(model_dir)
    data["run"]["cache_dir"] = str(tmp / "cache")
    return data


def _with_leaf(data: dict[str, Any], path: tuple[str, ...], value: Any) -> dict[str, Any]:
    target = data
    for part in path[:-1]:
        target = target[part]
    target[path[-1]] = json_safe(value)
    return data


def _train_by_file(tmp: Path, data: dict[str, Any], capsys) -> str:
    path = tmp / "config.json"
    path.write_text(json.dumps(data))
    code, err, out = run_cli(["train", "--config", str(path), "--runs-dir", str(tmp / "runs")], capsys)
    line = assert_one_line_refusal(code, err, out)
    assert _files(tmp) == ["config.json"], "a refused command wrote files"
    return line


def _from_file_refuses(tmp: Path) -> str:
    with pytest.raises(SaekitError) as refused:
        TrainConfig.from_file(tmp / "config.json")
    message = str(refused.value)
    assert message.strip() and "\n" not in message
    return message


# ---- the generated cases ---------------------------------------------------------------------------
WRONG_FLAG_CASES = [
    case for spec in FIELDS for case in (
        [pytest.param(spec, text, id=f"{spec.flat}={text}") for text in wrong_flag_texts(spec)]
        or [pytest.param(spec, None, id=f"{spec.flat}-skipped", marks=pytest.mark.skip(
            reason=f"{spec.flat} is {type_name(spec.annotation)}: any command-line text is a value of that type; "
                   "its bad values are its rule's (test_out_of_range_*)"))])
]
WRONG_JSON_CASES = [pytest.param(spec, value, id=f"{spec.flat}={_id(value)}")
                    for spec in FIELDS for value in wrong_json_values(spec)]
OUT_OF_RANGE_CASES = [pytest.param(spec, value, id=f"{spec.flat}={_id(value)}")
                      for spec in RULED for value in spec.rule.invalid_examples(spec.annotation)]


def test_the_cases_cover_every_field():
    covered = {p.values[0].flat for p in WRONG_FLAG_CASES if not p.marks} | {p.values[0].flat for p in WRONG_JSON_CASES}
    assert covered == {f.flat for f in FIELDS}
    assert all(p.values[0].flat in {f.flat for f in RULED} for p in OUT_OF_RANGE_CASES)
    # A rule must come with values it refuses, or the out-of-range sweep would skip it silently.
    assert [f.flat for f in RULED if not f.rule.invalid_examples(f.annotation)] == []


def test_the_fields_without_a_rule_are_those_where_every_value_of_the_type_is_valid():
    """Which fields may go without a rule is derived, not listed: a bool (both values are fine) and a
    dict of architecture options, whose keys and values only the architecture's options dataclass can
    judge (``resolve_options``; its fields' faults are generated below). Any other field, say a new int
    or str, needs a rule; this test fails until it has one.
    """
    without_rule = {f.flat for f in FIELDS if f.rule is None}
    every_value_valid = {f.flat for f in FIELDS if _kinds(f.annotation) == {bool} or _is_dict(f.annotation)}
    assert without_rule == every_value_valid


def test_the_model_guard_works(tiny_model_dir):
    with pytest.raises(AssertionError, match="model loaded"):
        loading.load_model(str(tiny_model_dir))
    with pytest.raises(AssertionError, match="model loaded"):
        loading.load_model_config(str(tiny_model_dir))


def test_without_a_fault_the_same_commands_reach_the_model_loader(tiny_model_dir, workdir, capsys):
    """The control for every case below: the base command and config file are valid, so each refusal is the
    injected fault's, and a fault that slipped through would reach the loader and fail the test there."""
    with pytest.raises(AssertionError, match="model loaded"):
        main(["train", *_base_flags(workdir, tiny_model_dir)])
    path = workdir / "config.json"
    path.write_text(json.dumps(_config_dict(workdir, tiny_model_dir)))
    with pytest.raises(AssertionError, match="model loaded"):
        main(["train", "--config", str(path), "--runs-dir", str(workdir / "runs")])


@pytest.mark.parametrize(("spec", "text"), WRONG_FLAG_CASES)
def test_wrong_type_by_flag(spec, text, tiny_model_dir, workdir, capsys):
    line = _train_by_flag(workdir, tiny_model_dir, spec.flag, text, capsys)
    assert names(spec, line) and "expected " in line, line


@pytest.mark.parametrize(("spec", "value"), WRONG_JSON_CASES)
def test_wrong_type_by_config_file(spec, value, tiny_model_dir, workdir, capsys):
    data = _with_leaf(_config_dict(workdir, tiny_model_dir), spec.path, value)
    line = _train_by_file(workdir, data, capsys)
    assert names(spec, line), line
    message = _from_file_refuses(workdir)
    expected = [type_name(t) for t in (spec.annotation, *typing.get_args(spec.annotation))]  # or an item's
    assert names(spec, message) and any(f"must be {t}" in message for t in expected), message


@pytest.mark.parametrize(("spec", "value"), OUT_OF_RANGE_CASES)
def test_out_of_range_by_flag(spec, value, tiny_model_dir, workdir, capsys):
    allowed = spec.rule.problem(value)
    assert allowed, f"invalid_examples gave {value!r}, which the rule allows"
    line = _train_by_flag(workdir, tiny_model_dir, spec.flag, flag_text(value), capsys)
    assert names(spec, line) and allowed in line, line


@pytest.mark.parametrize(("spec", "value"), OUT_OF_RANGE_CASES)
def test_out_of_range_by_config_file(spec, value, tiny_model_dir, workdir, capsys):
    allowed = spec.rule.problem(value)
    data = _with_leaf(_config_dict(workdir, tiny_model_dir), spec.path, value)
    line = _train_by_file(workdir, data, capsys)
    assert names(spec, line) and allowed in line, line
    message = _from_file_refuses(workdir)
    assert names(spec, message) and allowed in message, message


@pytest.mark.parametrize("section", section_names(TrainConfig))
def test_a_section_that_is_not_an_object(section, tiny_model_dir, workdir, capsys):
    data = _config_dict(workdir, tiny_model_dir)
    data[section] = [data[section]]
    line = _train_by_file(workdir, data, capsys)
    assert re.search(rf"\b{section}\b", line) and "JSON object" in line, line


@pytest.mark.parametrize("section", [None, *section_names(TrainConfig)])
def test_an_unknown_key(section, tiny_model_dir, workdir, capsys):
    data = _config_dict(workdir, tiny_model_dir)
    (data if section is None else data[section])["no_such_setting"] = 1
    line = _train_by_file(workdir, data, capsys)
    assert "unknown keys ['no_such_setting']" in line, line


# ---- architecture options (``extra``), generated from each architecture's options dataclass ---------
# Which keys are valid depends on the architecture, so every case names one: a key it does not have, and
# for each of its options (``ARCHITECTURES[name].OPTIONS``, fields declared with ``settings.setting``)
# values of the wrong type from the field's annotation and out-of-range values from its rule, given as
# ``--extra KEY=VALUE`` and as ``dictionary.extra`` in a config file. Options are read leniently where a
# flag or a sweep grid can write no better (``settings.loose_value``: text as a flag's, 0/1 for a bool, a
# whole float for an int, one number for a list), so those forms are not faults.
OPTION_FIELDS = {name: flat_fields(cls.OPTIONS) for name, cls in ARCHITECTURES.items()}
LAYERED = {"clt_topk": ["--layers=0-1", "--site=blocks.0.mlp_in", "--target-site=blocks.0.mlp_out"],
           "clt_jumprelu": ["--layers=0-1", "--site=blocks.0.mlp_in", "--target-site=blocks.0.mlp_out"],
           "crosscoder": ["--layers=0-1", "--site=blocks.0.resid_post"]}


def _architecture_flags(name: str) -> list[str]:
    """A valid command line for the architecture: a cross-layer one needs its range (and a CLT its target)."""
    assert is_cross_layer(name) == (name in LAYERED), f"give {name} its layer flags in LAYERED"
    return [f"--architecture={name}", *LAYERED.get(name, [])]


def _architecture_config(name: str, tmp: Path, model_dir: Path) -> dict[str, Any]:
    """``_architecture_flags`` as a config file."""
    data = _config_dict(tmp, model_dir)
    data["dictionary"]["architecture"] = name
    for flag in LAYERED.get(name, []):
        key, _, value = flag.removeprefix("--").partition("=")
        data[key.replace("-", "_")] = value
    return data


def _item(annotation: Any) -> Any:
    """The item type of a list option (``tuple[int, ...]``), else None."""
    lists = [t for t in _kinds(annotation) if _is_tuple(t)]
    return typing.get_args(lists[0])[0] if lists else None


def wrong_option_texts(spec: FlatField) -> list[str]:
    """``--extra KEY=TEXT`` texts that are no value of the option's type (a list's: a bad item)."""
    item = _item(spec.annotation)
    if item is not None:
        return ["abc", f"{GOOD_TEXT[item]},abc"] + (["1.5"] if item is int else [])
    return wrong_flag_texts(spec)


def wrong_option_values(spec: FlatField) -> list[Any]:
    """``dictionary.extra`` JSON values that are no value of the option's type, even read leniently."""
    values: list[Any] = [] if NONE in _members(spec.annotation) else [None]
    item = _item(spec.annotation)
    if item is not None:
        return values + ["abc", ["abc"], [GOOD_JSON[item], "abc"], {"0": GOOD_JSON[item]}, True, [True]] + \
            ([[1.5]] if item is int else [])
    kinds = _kinds(spec.annotation)
    sample = GOOD_JSON[sorted(kinds, key=str)[0]]
    values += [[sample], {"value": sample}, "abc"]
    if bool in kinds:
        values.append(2)  # 0 and 1 are read as false and true
    elif kinds & {int, float}:
        values.append(True)
    if int in kinds and float not in kinds:
        values.append(1.5)
    return values


def _foreign_keys(name: str) -> list[str]:
    own = {spec.flat for spec in OPTION_FIELDS[name]}
    others = {spec.flat for fields_ in OPTION_FIELDS.values() for spec in fields_}
    return sorted(others - own)[:1] + ["no_such_key"]


UNKNOWN_OPTION_CASES = [pytest.param(name, key, id=f"{name}:{key}") for name in ARCHITECTURES
                        for key in _foreign_keys(name)]
WRONG_OPTION_FLAG_CASES = [pytest.param(name, spec, text, id=f"{name}:{spec.flat}={text}")
                           for name, specs in OPTION_FIELDS.items() for spec in specs
                           for text in wrong_option_texts(spec)]
WRONG_OPTION_JSON_CASES = [pytest.param(name, spec, value, id=f"{name}:{spec.flat}={_id(value)}")
                           for name, specs in OPTION_FIELDS.items() for spec in specs
                           for value in wrong_option_values(spec)]
OUT_OF_RANGE_OPTION_CASES = [pytest.param(name, spec, value, id=f"{name}:{spec.flat}={_id(value)}")
                             for name, specs in OPTION_FIELDS.items() for spec in specs if spec.rule is not None
                             for value in spec.rule.invalid_examples(spec.annotation)]


def test_the_option_cases_cover_every_option_of_every_architecture():
    every = {(name, spec.flat) for name, specs in OPTION_FIELDS.items() for spec in specs}
    assert {(p.values[0], p.values[1].flat) for p in WRONG_OPTION_FLAG_CASES} == every
    assert {(p.values[0], p.values[1].flat) for p in WRONG_OPTION_JSON_CASES} == every
    # As for the run settings: only a bool may go without a rule, and every rule has values it refuses.
    assert {(n, s.flat) for n, specs in OPTION_FIELDS.items() for s in specs if s.rule is None} == \
        {(n, s.flat) for n, specs in OPTION_FIELDS.items() for s in specs if _kinds(s.annotation) == {bool}}
    assert [s.flat for specs in OPTION_FIELDS.values() for s in specs
            if s.rule is not None and not s.rule.invalid_examples(s.annotation)] == []


@pytest.mark.parametrize("architecture", list(ARCHITECTURES))
def test_each_architectures_base_command_reaches_the_model_loader(architecture, tiny_model_dir, workdir):
    """The control for the option cases: without the fault, each architecture's command is valid."""
    with pytest.raises(AssertionError, match="model loaded"):
        main(["train", *_base_flags(workdir, tiny_model_dir), *_architecture_flags(architecture)])
    path = workdir / "config.json"
    path.write_text(json.dumps(_architecture_config(architecture, workdir, tiny_model_dir)))
    with pytest.raises(AssertionError, match="model loaded"):
        main(["train", "--config", str(path), "--runs-dir", str(workdir / "runs")])


def _option_refusal(architecture: str, key: str, given: Any, by: str, tmp: Path, model_dir: Path, capsys) -> str:
    """The one line ``saekit train`` prints for option ``key`` given as ``given`` (flag text, or a JSON value)."""
    if by == "flag":
        code, err, out = run_cli(["train", *_base_flags(tmp, model_dir), *_architecture_flags(architecture),
                                  f"--extra={key}={given}"], capsys)
        line = assert_one_line_refusal(code, err, out)
        assert _files(tmp) == [], "a refused command wrote files"
        return line
    data = _architecture_config(architecture, tmp, model_dir)
    data["dictionary"]["extra"] = {key: json_safe(given)}
    return _train_by_file(tmp, data, capsys)


@pytest.mark.parametrize("by", ["flag", "file"])
@pytest.mark.parametrize(("architecture", "key"), UNKNOWN_OPTION_CASES)
def test_an_option_the_architecture_does_not_have(architecture, key, by, tiny_model_dir, workdir, capsys):
    line = _option_refusal(architecture, key, 1, by, workdir, tiny_model_dir, capsys)
    assert f"does not understand extra settings [{key!r}]" in line, line
    assert all(spec.flat in line for spec in OPTION_FIELDS[architecture]), line  # says what it accepts


@pytest.mark.parametrize(("architecture", "spec", "text"), WRONG_OPTION_FLAG_CASES)
def test_an_option_of_the_wrong_type_by_flag(architecture, spec, text, tiny_model_dir, workdir, capsys):
    line = _option_refusal(architecture, spec.flat, text, "flag", workdir, tiny_model_dir, capsys)
    assert f"extra setting {spec.flat!r} must be {type_name(spec.annotation)}, got " in line and text in line, line


@pytest.mark.parametrize(("architecture", "spec", "value"), WRONG_OPTION_JSON_CASES)
def test_an_option_of_the_wrong_type_by_config_file(architecture, spec, value, tiny_model_dir, workdir, capsys):
    line = _option_refusal(architecture, spec.flat, value, "file", workdir, tiny_model_dir, capsys)
    assert f"extra setting {spec.flat!r} must be {type_name(spec.annotation)}, got {value!r}" in line, line


@pytest.mark.parametrize("by", ["flag", "file"])
@pytest.mark.parametrize(("architecture", "spec", "value"), OUT_OF_RANGE_OPTION_CASES)
def test_an_option_out_of_range(architecture, spec, value, by, tiny_model_dir, workdir, capsys):
    allowed = spec.rule.problem(value)
    assert allowed, f"invalid_examples gave {value!r}, which the rule allows"
    given = flag_text(value) if by == "flag" else value
    line = _option_refusal(architecture, spec.flat, given, by, workdir, tiny_model_dir, capsys)
    assert f"extra setting {spec.flat!r} must be {allowed}, got " in line, line


# ---- every typed option of every subcommand --------------------------------------------------------
def _subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    unique: dict[int, str] = {}
    for name, subparser in sub.choices.items():
        unique.setdefault(id(subparser), name)
    return {name: sub.choices[name] for name in unique.values()}


def _numeric(convert: Any) -> bool:
    """Whether an option's type reads numbers (so "-5" and "0" are worth trying)."""
    try:
        value = convert("1")
    except Exception:  # noqa: BLE001 - a type that refuses "1" is not a number type
        return False
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _fillers(parser: argparse.ArgumentParser, tmp: Path) -> list[str]:
    """Positionals and required options given values that fail by themselves (a path that is not
    there, a choice that does not exist), so that a garbage option the parser accepts still ends in a
    refusal rather than in work; train and sweep, which have no positional, get a missing --config.
    A required option with choices (convert --to) gets a real choice: a bad one would be refused while
    parsing, before the option under test is ever checked."""
    missing = str(tmp / "no-such-run")
    args: list[str] = []
    for action in parser._actions:
        if action.option_strings and action.required:
            value = list(action.choices)[-1] if action.choices is not None else "not-a-value"
            args += [action.option_strings[0], value]
    for action in parser._actions:
        if not action.option_strings and not isinstance(action, argparse._SubParsersAction):
            args.append("not-a-value" if action.choices is not None else missing)
    if any("--config" in a.option_strings for a in parser._actions):
        args += ["--config", str(tmp / "no-such-config.json")]
    return args


def _filler_names(parser: argparse.ArgumentParser) -> list[str]:
    """How argparse names the positionals that _fillers gives a bad choice."""
    return [a.metavar or a.dest for a in parser._actions if not a.option_strings and a.choices is not None
            and not isinstance(a, argparse._SubParsersAction)]


def _option_cases() -> list[Any]:
    cases = []
    for command, parser in _subcommands().items():
        for action in parser._actions:
            if not action.option_strings or (action.type is None and action.choices is None):
                continue
            option = action.option_strings[-1]
            values = ["not-a-value"] + (["-5", "0"] if action.type is not None and _numeric(action.type) else [])
            cases += [pytest.param(command, option, value, id=f"{command} {option} {value}") for value in values]
    return cases


OPTION_CASES = _option_cases()


@pytest.mark.parametrize(("command", "option", "value"), OPTION_CASES)
def test_every_typed_option_of_every_subcommand(command, option, value, workdir, capsys):
    parser = _subcommands()[command]
    action = next(a for a in parser._actions if option in a.option_strings)
    argv = [command, option, value, *_fillers(parser, workdir)]
    code, err, out = run_cli(argv, capsys)
    line = assert_one_line_refusal(code, err, out)
    assert _files(workdir) == [], "a refused command wrote files"
    if code == 2:  # refused while parsing: the line says which argument
        assert option in line or any(f"argument {name}:" in line for name in _filler_names(parser)), line
    if value == "not-a-value" and (action.choices is not None or _numeric(action.type)):
        assert code == 2 and f"argument {option}:" in line, line
