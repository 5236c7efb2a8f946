"""Sweep grids: architectures x sparsity settings x widths, as one run config per grid point.

Every grid point shares the base config's data settings, so all dictionaries train from the same
model forward (and the same activation cache); ``saekit.jobs.sweep`` trains, evaluates and compares
them. A grid setting is any run setting by its flat name (``k``, ``l1_coefficient``, ``lr``...);
anything else is one of the architecture's options (``aux_k``, ``threshold_init_fraction``...), given
as ``extra`` and typed and range-checked with the rest of the point's config (``TrainConfig.validate``).
"""

from __future__ import annotations

from typing import Any

from saekit.dictionaries.registry import ARCHITECTURES
from saekit.errors import SaekitError
from saekit.settings import flat_index
from saekit.training.config import TrainConfig


def parse_grid(text: str) -> list[tuple[str, dict[str, Any]]]:
    """``"topk:k=16,32;relu:l1_coefficient=1,3"`` -> one (architecture, overrides) per grid point.

    Each architecture takes one setting with a list of values (``arch:name=v1,v2``) or none
    (``arch``). Run settings (by flat name) go there, options into ``extra``.
    """
    points = []
    for part in filter(None, (p.strip() for p in text.split(";"))):
        architecture, _, setting = part.partition(":")
        if architecture not in ARCHITECTURES:
            raise SaekitError(f"unknown architecture {architecture!r} in grid; choose from {sorted(ARCHITECTURES)}")
        if not setting:
            points.append((architecture, {}))
            continue
        name, equals, values = setting.partition("=")
        if not equals or not values:
            raise SaekitError(f"grid entry {part!r} must look like arch:setting=v1,v2")
        points += [(architecture, {name.strip(): _number(v)}) for v in values.split(",")]
    if not points:
        raise SaekitError("the sweep grid is empty; e.g. --grid 'topk:k=16,32;relu:l1_coefficient=1,3'")
    return points


def _number(text: str) -> int | float:
    try:
        value = float(text)
    except ValueError as err:
        raise SaekitError(f"grid value {text!r} is not a number") from err
    return int(value) if value.is_integer() and "." not in text and "e" not in text.lower() else value


def grid_configs(base: TrainConfig, grid: list[tuple[str, dict[str, Any]]],
                 widths: list[int | None]) -> list[TrainConfig]:
    settings = flat_index(TrainConfig)
    configs = []
    for width in widths:
        for architecture, overrides in grid:
            changes: dict[str, Any] = {"architecture": architecture, "extra": dict(base.dictionary.extra)}
            if width is not None:
                changes["width"] = width
            label = [architecture] + [f"{k}{v}" for k, v in overrides.items()] + ([f"w{width}"] if width else [])
            for key, value in overrides.items():
                if key in settings:
                    changes[key] = value
                else:
                    changes["extra"][key] = value
            changes["name"] = f"{base.name}/{'-'.join(label)}"
            configs.append(base.updated(**changes).validate())
    return configs
