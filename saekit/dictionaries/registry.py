"""Architecture names -> classes, their options in ``--help``, and saving/loading dictionaries as safetensors + JSON.

Buffers (BatchTopK's inference threshold, JumpReLU's bandwidth and calibration flag) are part of the
state dict, so they are saved and loaded with the weights.
"""

from __future__ import annotations

import argparse
import textwrap
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path
from typing import Any, TypeVar

import torch

from saekit.dictionaries.base import Dictionary, DictionaryConfig, DictionaryOptions, Span, architecture_class
from saekit.dictionaries.batchtopk import BatchTopKDictionary
from saekit.dictionaries.crosslayer import Crosscoder, CrossLayerJumpReLU, CrossLayerTopK
from saekit.dictionaries.gated import GatedDictionary
from saekit.dictionaries.gated_rescale import GatedRescaleDictionary
from saekit.dictionaries.jumprelu import JumpReLUDictionary
from saekit.dictionaries.matryoshka import MatryoshkaBatchTopKDictionary
from saekit.dictionaries.relu import ReLUDictionary
from saekit.dictionaries.topk import TopKDictionary
from saekit.dictionaries.validate import check_tensors, stated
from saekit.errors import SaekitError
from saekit.io import load_tensors, read_json, save_tensors, write_json
from saekit.provenance import fingerprint_files
from saekit.settings import help_block, help_width

ARCHITECTURES: dict[str, type[Dictionary]] = {
    "relu": ReLUDictionary,
    "gated": GatedDictionary,
    "gated_rescale": GatedRescaleDictionary,
    "topk": TopKDictionary,
    "batchtopk": BatchTopKDictionary,
    "jumprelu": JumpReLUDictionary,
    "matryoshka_batchtopk": MatryoshkaBatchTopKDictionary,
    "clt_topk": CrossLayerTopK,
    "clt_jumprelu": CrossLayerJumpReLU,
    "crosscoder": Crosscoder,
}


def span_of(architecture: str) -> Span:
    """What a registered architecture reads and writes (:class:`~saekit.dictionaries.base.Span`)."""
    return architecture_class(architecture).SPAN


def is_cross_layer(architecture: str) -> bool:
    """Whether the architecture reads a range of layers (``layers`` in a run config) rather than one site."""
    return span_of(architecture).over_layers


def architectures_over_layers() -> list[str]:
    """The registered architectures that read a range of layers, for messages and help."""
    return [name for name, cls in ARCHITECTURES.items() if cls.SPAN.over_layers]


def add_option_groups(parser: argparse.ArgumentParser) -> None:
    """One help group per options class, headed by the architectures that take it: each option's help line,
    default and range, once, under the architecture that declares it, with what it inherits named.

    The groups hold text, not flags (options are given as ``--extra KEY=VALUE``), so ``parser`` needs a
    raw-description formatter to keep their lines.
    """
    users: dict[type[DictionaryOptions], list[str]] = {}
    for name, cls in ARCHITECTURES.items():
        users.setdefault(cls.OPTIONS, []).append(name)
    only_shared = _names(users.pop(DictionaryOptions))
    notes = [f"Given as --extra KEY=VALUE (repeat the flag) or in a config file's dictionary.extra. {only_shared} "
             "take only these."]
    parser.add_argument_group("options of every architecture (--extra KEY=VALUE; defaults in [])",
                              _text(notes, DictionaryOptions, _own_fields(DictionaryOptions)))
    for options, names in users.items():
        inherited = [f"{users[base][0]} ({', '.join(_own_fields(base))})" for base in options.__mro__[1:]
                     if base in users]
        notes = [f"Also those of {_names(inherited)}." if inherited else "", _single_layer_note(names)]
        parser.add_argument_group(f"{_names(names)} options (and those of every architecture)",
                                  _text(notes, options, _own_fields(options)))


def _text(notes: list[str], options: type, names: list[str]) -> str:
    """A group's description: its notes wrapped as the help lines are, then the options' help block."""
    wrapped = [textwrap.fill(note, help_width(), break_on_hyphens=False) for note in notes if note]
    return "\n".join([*wrapped, help_block(options, names)])


def _own_fields(options: type) -> list[str]:
    """The options ``options`` declares itself (not those of the class it extends)."""
    inherited = {f.name for f in fields(options.__mro__[1])} if options is not DictionaryOptions else set()
    return [f.name for f in fields(options) if f.name not in inherited]


def _single_layer_note(names: list[str]) -> str:
    """Which of these architectures refuse which of their options over several layers."""
    notes = []
    for name in names:
        cls = ARCHITECTURES[name]
        refused = [key for key in getattr(cls, "SINGLE_LAYER_ONLY", ()) if key in {f.name for f in fields(cls.OPTIONS)}]
        if refused:
            notes.append(f"Over several layers {name} refuses {' and '.join(refused)}.")
    return " ".join(notes)


def _names(names: list[str]) -> str:
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


FORMAT_VERSION = 1
WEIGHTS_FILE = "weights.safetensors"
CONFIG_FILE = "config.json"

_T = TypeVar("_T")


def build_dictionary(config: DictionaryConfig) -> Dictionary:
    cls = architecture_class(config.architecture)
    if cls.fixed_l0() and not 0 < config.k <= config.width:
        raise SaekitError(f"k={config.k} must be between 1 and the width {config.width}")
    return cls(config)


def seeded(seed: int, build: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
    """``build(*args, **kwargs)`` with the CPU generator seeded by ``seed`` (a deterministic initialisation),
    the caller's CPU random state restored afterwards."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build(*args, **kwargs)


def read_sites(source: dict[str, Any]) -> list[str]:
    """The sites a saved dictionary reads, in layer order (one, or a cross-layer run's range)."""
    return list(source.get("sites") or [source["site"]])


def written_sites(source: dict[str, Any]) -> list[str]:
    """The sites it writes: a transcoder's targets, else the sites it reads (an SAE reconstructs them)."""
    targets = source.get("target_sites") or ([source["target_site"]] if source.get("target_site") else [])
    return list(targets) or read_sites(source)


def save_dictionary(directory: str | Path, dictionary: Dictionary, source: dict[str, Any] | None = None) -> None:
    """Write weights.safetensors and config.json (format version, dictionary config, where it reads from)."""
    directory = Path(directory)
    save_tensors(directory / WEIGHTS_FILE, dict(dictionary.state_dict()))
    write_json(directory / CONFIG_FILE, {
        "format_version": FORMAT_VERSION,
        "dictionary": dictionary.config.to_dict(),
        "source": source or {},
    })


def load_dictionary(directory: str | Path, device: str | torch.device = "cpu") -> tuple[Dictionary, dict[str, Any]]:
    """Load a saved dictionary; returns it with its ``source`` metadata (model, sites)."""
    directory = Path(directory)
    meta = read_json(directory / CONFIG_FILE, "dictionary config")
    version = meta.get("format_version") if isinstance(meta, dict) else None
    if version != FORMAT_VERSION:
        raise SaekitError(
            f"{directory / CONFIG_FILE} has format_version {version!r}; this saekit reads {FORMAT_VERSION}"
        )
    if "dictionary" not in meta:
        raise SaekitError(f"{directory / CONFIG_FILE} has no 'dictionary' section; the file is corrupt")
    try:
        dictionary = build_dictionary(DictionaryConfig.from_dict(meta["dictionary"]))
    except SaekitError as err:  # a rule on the stated sizes (a CLT's divisibility): say which file states them
        raise SaekitError(f"{directory / CONFIG_FILE}: {err}") from None
    state = load_tensors(directory / WEIGHTS_FILE, "dictionary weights")
    config, expected = dictionary.config, {name: tuple(p.shape) for name, p in dictionary.state_dict().items()}
    check_tensors(directory / WEIGHTS_FILE, state, expected,
                  stated(CONFIG_FILE, d_in=config.d_in, width=config.width, d_out=config.d_out))
    dictionary.load_state_dict(state)
    return dictionary.to(device), meta.get("source", {})


def dictionary_fingerprint(directory: str | Path) -> str:
    """The fingerprint of a saved dictionary (its weights and config files): what outputs record they came from."""
    directory = Path(directory)
    for name in (WEIGHTS_FILE, CONFIG_FILE):
        if not (directory / name).is_file():
            raise SaekitError(f"dictionary file not found: {directory / name}")
    return fingerprint_files(directory / WEIGHTS_FILE, directory / CONFIG_FILE)
