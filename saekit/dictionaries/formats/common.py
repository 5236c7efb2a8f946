"""Shared helpers for the foreign-format readers and writers."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from saekit.dictionaries.base import Dictionary
from saekit.errors import SaekitError
from saekit.io import load_tensors, read_json

PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".pkl", ".ckpt")


def read_files(directory: str | Path, config_name: str, weights_name: str, what: str) -> tuple[dict[str, Any],
                                                                                           dict[str, Tensor]]:
    """The JSON config and safetensors weights of a foreign dictionary directory; never unpickles."""
    directory = Path(directory)
    if not directory.is_dir():
        raise SaekitError(f"{what} directory not found: {directory}")
    weights = directory / weights_name
    if not weights.is_file():
        pickles = sorted(p.name for p in directory.iterdir() if p.suffix in PICKLE_SUFFIXES)
        if pickles:
            raise SaekitError(f"{directory} holds {', '.join(pickles)} but no {weights_name}; saekit never "
                              "unpickles: convert the weights to safetensors first")
        raise SaekitError(f"{directory} is not a {what} directory: {weights_name} not found")
    if not (directory / config_name).is_file():
        raise SaekitError(f"{directory} is not a {what} directory: {config_name} not found")
    config = read_json(directory / config_name, f"{what} config")
    if not isinstance(config, dict):
        raise SaekitError(f"{directory / config_name} is not a JSON object")
    return config, load_tensors(weights, f"{what} weights")


def load_weights(dictionary: Dictionary, weights: dict[str, Tensor]) -> Dictionary:
    """Copy weights into a built dictionary exactly (no decoder renormalisation); the readers have checked the
    raw tensors (``validate.check_tensors``), so this cast is only between float dtypes."""
    with torch.no_grad():
        for name, value in weights.items():
            parameter = getattr(dictionary, name)
            parameter.copy_(value.to(parameter.dtype))
    return dictionary.eval()


def positive_int(config: dict[str, Any], key: str, path: Path) -> int:
    value = config.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise SaekitError(f"{path}: cfg.json needs a positive integer {key!r}, got {value!r}")
    return value


_SAELENS_HOOKS = {
    "hook_resid_post": "resid_post", "hook_resid_pre": "resid_pre", "hook_mlp_out": "mlp_out",
    "hook_attn_out": "attn_out", "hook_mlp_in": "mlp_in", "ln2.hook_normalized": "mlp_in",
    "mlp.hook_post": "mlp_act", "mlp.hook_in": "mlp_in",  # mlp.hook_in: the MLP's input, as SAELens's transcoders use
}
_SAEKIT_TO_HOOK = {"resid_post": "hook_resid_post", "resid_pre": "hook_resid_pre", "mlp_out": "hook_mlp_out",
                   "attn_out": "hook_attn_out", "mlp_in": "hook_mlp_in", "mlp_act": "mlp.hook_post"}


def saelens_hook_to_site(hook: Any, path: Path) -> str:
    match = re.fullmatch(r"blocks\.(\d+)\.(.+)", hook) if isinstance(hook, str) else None
    if match is None or match.group(2) not in _SAELENS_HOOKS:
        raise SaekitError(f"{path}: hook name {hook!r} has no saekit site; saekit maps blocks.N.<"
                          f"{'|'.join(sorted(_SAELENS_HOOKS))}>")
    return f"blocks.{match.group(1)}.{_SAELENS_HOOKS[match.group(2)]}"


def site_to_saelens_hook(site: Any) -> str:
    match = re.fullmatch(r"blocks\.(\d+)\.(\w+)", site) if isinstance(site, str) else None
    if match is None or match.group(2) not in _SAEKIT_TO_HOOK:
        raise SaekitError(f"site {site!r} has no SAELens hook name")
    return f"blocks.{match.group(1)}.{_SAEKIT_TO_HOOK[match.group(2)]}"


def site_layer(site: Any) -> int:
    """The layer of a saekit site name ``blocks.N.<kind>`` (a writer ordering per-layer dictionaries)."""
    match = re.fullmatch(r"blocks\.(\d+)\.\w+", site) if isinstance(site, str) else None
    if match is None:
        raise SaekitError(f"unknown site {site!r}; use blocks.<layer>.<kind>")
    return int(match.group(1))
