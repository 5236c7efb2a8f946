"""Architecture names -> classes, and saving/loading dictionaries as safetensors + JSON.

Buffers (BatchTopK's inference threshold, JumpReLU's bandwidth and calibration flag) are part of the
state dict, so they are saved and loaded with the weights.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from saekit.dictionaries.base import Dictionary, DictionaryConfig
from saekit.dictionaries.batchtopk import BatchTopKDictionary
from saekit.dictionaries.crosslayer import Crosscoder, CrossLayerJumpReLU, CrossLayerTopK, LayeredDictionary
from saekit.dictionaries.gated import GatedDictionary
from saekit.dictionaries.gated_rescale import GatedRescaleDictionary
from saekit.dictionaries.jumprelu import JumpReLUDictionary
from saekit.dictionaries.matryoshka import MatryoshkaBatchTopKDictionary
from saekit.dictionaries.relu import ReLUDictionary
from saekit.dictionaries.topk import TopKDictionary
from saekit.errors import SaekitError
from saekit.io import load_tensors, read_json, save_tensors, write_json
from saekit.provenance import fingerprint_files

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


def is_cross_layer(architecture: str) -> bool:
    """Whether the architecture reads a range of layers (``layers`` in a run config) rather than one site."""
    return architecture in ARCHITECTURES and issubclass(ARCHITECTURES[architecture], LayeredDictionary)

FORMAT_VERSION = 1
WEIGHTS_FILE = "weights.safetensors"
CONFIG_FILE = "config.json"


def build_dictionary(config: DictionaryConfig) -> Dictionary:
    if config.architecture not in ARCHITECTURES:
        raise SaekitError(
            f"unknown architecture {config.architecture!r}; choose one of {sorted(ARCHITECTURES)}"
        )
    if ARCHITECTURES[config.architecture].fixed_l0() and not 0 < config.k <= config.width:
        raise SaekitError(f"k={config.k} must be between 1 and the width {config.width}")
    return ARCHITECTURES[config.architecture](config)


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
    dictionary = build_dictionary(DictionaryConfig.from_dict(meta["dictionary"]))
    state = load_tensors(directory / WEIGHTS_FILE, "dictionary weights")
    expected = {name: tuple(p.shape) for name, p in dictionary.state_dict().items()}
    found = {name: tuple(t.shape) for name, t in state.items()}
    if expected != found:
        raise SaekitError(
            f"weights in {directory / WEIGHTS_FILE} do not match its config (expected {expected}, found {found})"
        )
    bad = [name for name, tensor in state.items() if tensor.is_floating_point() and not torch.isfinite(tensor).all()]
    if bad:
        raise SaekitError(f"weights in {directory / WEIGHTS_FILE} hold NaN or infinite values "
                          f"({', '.join(sorted(bad))}); the dictionary diverged: retrain it with a lower lr, "
                          "or restore it")
    dictionary.load_state_dict(state)
    return dictionary.to(device), meta.get("source", {})


def dictionary_fingerprint(directory: str | Path) -> str:
    """The fingerprint of a saved dictionary (its weights and config files): what outputs record they came from."""
    directory = Path(directory)
    for name in (WEIGHTS_FILE, CONFIG_FILE):
        if not (directory / name).is_file():
            raise SaekitError(f"dictionary file not found: {directory / name}")
    return fingerprint_files(directory / WEIGHTS_FILE, directory / CONFIG_FILE)
