"""Sweeps: a grid of architectures x sparsity settings x widths, trained in one pass and compared.

Every grid point shares the base config's data settings, so all dictionaries train from the same
model forward (and the same activation cache), then are evaluated on the same held-out contexts
with the clean and ablation passes shared. The comparison (table + Pareto plots) is written by
``saekit.evaluation.summary``.
"""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import Any

from saekit.dictionaries.registry import ARCHITECTURES
from saekit.errors import SaekitError
from saekit.evaluation.evaluate import evaluate_alternatives
from saekit.evaluation.report import render_report
from saekit.evaluation.summary import summarize
from saekit.io import write_json, write_text
from saekit.models.loading import LoadedModel, load_model
from saekit.training.config import TrainConfig
from saekit.training.run import train_many

CONFIG_FIELDS = {f.name for f in fields(TrainConfig)}


def parse_grid(text: str) -> list[tuple[str, dict[str, Any]]]:
    """``"topk:k=16,32;relu:l1_coefficient=1,3"`` -> one (architecture, overrides) per grid point.

    Each architecture takes one setting with a list of values (``arch:name=v1,v2``) or none
    (``arch``). Settings that are TrainConfig fields go there, others into ``extra``.
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
    configs = []
    for width in widths:
        for architecture, overrides in grid:
            values = {**base.to_dict(), "architecture": architecture, "extra": dict(base.extra)}
            if width is not None:
                values["width"] = width
            label = [architecture] + [f"{k}{v}" for k, v in overrides.items()] + ([f"w{width}"] if width else [])
            for key, value in overrides.items():
                if key in CONFIG_FIELDS:
                    values[key] = value
                else:
                    values["extra"][key] = value
            values["name"] = f"{base.name}/{'-'.join(label)}"
            configs.append(TrainConfig.from_dict(values).validate())
    return configs


def run_sweep(base: TrainConfig, grid: str, widths: list[int | None], runs_dir: str | Path = "runs",
              resume: bool = False, loaded: LoadedModel | None = None,
              match_l0: float | None = None) -> dict[str, Any]:
    """Train the grid in one pass, evaluate every point, write the sweep table and Pareto plots.

    ``match_l0`` is the L0 at which the summary compares architectures (see ``matched_l0``).
    """
    configs = grid_configs(base, parse_grid(grid), widths)
    loaded = loaded or load_model(base.model, device=base.device)
    run_dirs = train_many(configs, runs_dir, resume=resume, loaded=loaded)
    for run_dir, metrics in zip(run_dirs, evaluate_alternatives(run_dirs, loaded)):
        metrics["run"] = TrainConfig.from_file(run_dir / "config.json").to_dict()
        write_json(run_dir / "metrics.json", metrics)
        write_text(run_dir / "report.md", render_report(metrics))
    out_dir = Path(runs_dir) / base.name
    summary = summarize(run_dirs, out_dir, match_l0)
    write_json(out_dir / "sweep.json", {"base": base.to_dict(), "grid": grid, "widths": widths, **summary})
    return summary
