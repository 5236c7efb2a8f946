"""Checkpoints as one safetensors file: dictionary weights, Adam state, counters (JSON in the metadata).

One file written atomically means a checkpoint is either the previous complete one or the new
complete one, never a mix, whenever the process is killed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from torch import Tensor

from saekit.errors import SaekitError
from saekit.io import save_tensors


def optimizer_tensors(optimizer: torch.optim.Optimizer, names: list[str]) -> tuple[dict[str, Tensor], dict]:
    """Flatten an optimizer's state into named tensors plus the JSON-able rest (param groups)."""
    state = optimizer.state_dict()
    tensors = {}
    for index, per_param in state["state"].items():
        for key, value in per_param.items():
            tensors[f"optimizer.{names[index]}.{key}"] = torch.as_tensor(value)
    return tensors, {"param_groups": state["param_groups"]}


def restore_optimizer(optimizer: torch.optim.Optimizer, names: list[str], tensors: dict[str, Tensor],
                      meta: dict) -> None:
    state: dict[int, dict[str, Tensor]] = {}
    for index, name in enumerate(names):
        prefix = f"optimizer.{name}."
        entries = {key[len(prefix):]: value for key, value in tensors.items() if key.startswith(prefix)}
        if entries:
            state[index] = entries
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def save_checkpoint(path: str | Path, tensors: dict[str, Tensor], meta: dict[str, Any]) -> None:
    save_tensors(path, tensors, metadata={"saekit": json.dumps(meta)})


def load_checkpoint(path: str | Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    path = Path(path)
    if not path.is_file():
        raise SaekitError(f"no checkpoint at {path}; start the run without --resume")
    try:
        with safe_open(str(path), framework="pt") as handle:
            meta = json.loads(handle.metadata()["saekit"])
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    except Exception as err:
        raise SaekitError(f"checkpoint {path} is corrupt ({err}); delete it to restart the run") from err
    return tensors, meta
