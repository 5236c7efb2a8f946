"""The named toy experiments (phase-diagram, rescaling, recovery, hierarchy, all): run, plot, write JSON and summary.md.

Each experiment writes into ``out/<name>/``: PNG plots, a JSON file of every number (through
:func:`saekit.io.write_json`) and a short ``summary.md``; ``all`` runs them in turn and also writes a
combined ``out/summary.md``. ``ToyRunConfig.steps`` sets the training length of every model. Each
experiment is its own module here (``phase_diagram``, ``rescaling``, ``recovery``, ``hierarchy``;
what they share is in ``common``); this module names them and runs them.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from saekit.errors import SaekitError
from saekit.io import write_text
from saekit.render import markdown_table
from saekit.toy.experiments.common import ToyRunConfig
from saekit.toy.experiments.hierarchy import HierarchyConfig, run_hierarchy
from saekit.toy.experiments.phase_diagram import run_phase_diagram
from saekit.toy.experiments.recovery import RecoveryConfig, run_recovery
from saekit.toy.experiments.rescaling import run_rescaling

__all__ = ["EXPERIMENTS", "ExperimentResult", "HierarchyConfig", "RecoveryConfig", "ToyRunConfig", "run_all",
           "run_experiment", "run_hierarchy", "run_phase_diagram", "run_recovery", "run_rescaling"]


@dataclass
class ExperimentResult:
    name: str
    directory: Path
    summary: str  # the markdown written to summary.md
    seconds: float
    files: list[str] = field(default_factory=list)


EXPERIMENTS: dict[str, Callable[[ToyRunConfig, Path], list[str]]] = {
    "phase-diagram": run_phase_diagram,
    "rescaling": run_rescaling,
    "recovery": run_recovery,
    "hierarchy": run_hierarchy,
}


def run_experiment(name: str, run: ToyRunConfig) -> ExperimentResult:
    if name not in EXPERIMENTS:
        raise SaekitError(f"unknown toy experiment {name!r}; choose one of {[*EXPERIMENTS, 'all']}")
    directory = Path(run.out) / name
    start = time.perf_counter()
    files = EXPERIMENTS[name](run, directory)
    summary = (directory / "summary.md").read_text(encoding="utf-8")
    return ExperimentResult(name, directory, summary, time.perf_counter() - start, files)


def run_all(run: ToyRunConfig) -> list[ExperimentResult]:
    """Every experiment in turn, then ``out/summary.md`` with each one's summary and timing."""
    results = [run_experiment(name, run) for name in EXPERIMENTS]
    timing = markdown_table(["experiment", "seconds", "directory"],
                            [[r.name, r.seconds, str(r.directory)] for r in results])
    body = "\n\n".join(r.summary.strip() for r in results)
    write_text(Path(run.out) / "summary.md",
               f"# Toy experiments (seed {run.seed}, {run.steps} steps)\n\n{timing}\n\n{body}\n")
    return results
