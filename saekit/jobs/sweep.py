"""A sweep: train a grid of dictionaries from one activation stream, evaluate each, compare them.

Every grid point (``saekit.training.sweep``) trains from the same model forward, is evaluated on the
same held-out contexts with the clean and ablation passes shared, and the comparison (table, Pareto
plots, matched-L0 rows) is written by ``saekit.evaluation.summary``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from saekit.evaluation.evaluate import evaluate_alternatives, write_run_evaluation
from saekit.evaluation.summary import summarize
from saekit.io import write_json
from saekit.models.loading import LoadedModel
from saekit.settings import setting
from saekit.training.config import TrainConfig
from saekit.training.run import train_many
from saekit.training.sweep import grid_configs, parse_grid

MATCH_L0_HELP = "compare architectures at this L0 (none: the TopK runs' median L0, else all runs')"


@dataclass(frozen=True)
class SweepSettings:
    """What ``saekit sweep`` does beside the grid and the shared run config."""

    widths: tuple[int, ...] | None = setting(None, "comma-separated dictionary widths (none: the config's)",
                                             minimum=1)
    runs_dir: Path = setting(Path("runs"), "where run directories go")
    resume: bool = setting(False, "continue every grid point from its last checkpoint", switch=True)
    match_l0: float | None = setting(None, MATCH_L0_HELP)


def run_sweep(base: TrainConfig, grid: str, widths: list[int | None], runs_dir: str | Path = SweepSettings.runs_dir,
              resume: bool = SweepSettings.resume, loaded: LoadedModel | None = None,
              match_l0: float | None = SweepSettings.match_l0) -> dict[str, Any]:
    """Train the grid in one pass, evaluate every point, write the sweep table and Pareto plots.

    ``match_l0`` is the L0 at which the summary compares architectures (see ``matched_l0``).
    """
    configs = grid_configs(base, parse_grid(grid), widths)
    loaded = loaded or base.data.load_model(base.run.device)
    run_dirs = train_many(configs, runs_dir, resume=resume, loaded=loaded)
    for run_dir, metrics in zip(run_dirs, evaluate_alternatives(run_dirs, loaded)):
        write_run_evaluation(run_dir, metrics)
    out_dir = Path(runs_dir) / base.name
    summary = summarize(run_dirs, out_dir, match_l0, force=True)  # the sweep's own directory: its runs are there
    write_json(out_dir / "sweep.json", {"base": base.to_dict(), "grid": grid, "widths": widths, **summary})
    return summary
