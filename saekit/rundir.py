"""The run directory's layout: its file names, how to recognise one, its raw config and its activation means.

A run directory (``runs/<name>/``, written by ``training/run.py`` as it trains or by ``jobs/imported.py``
for a dictionary from elsewhere) holds ``config.json`` (the run's ``TrainConfig``),
``checkpoint.safetensors`` (and the one before it, for runs trained together), ``log.jsonl``,
``density.jsonl``, ``throughput.json``, ``dictionary/`` (the folded weights),
``activation_stats.safetensors`` (each written site's mean activation, ``mean.<site>``) and, once
evaluated, ``metrics.json`` and ``report.md``.

Every later stage reads run directories and ``dictionaries`` finds a run's dictionary folder, so the
layout lives here, below every stage, rather than in ``training/run.py``. The typed config
(``training.config.load_run_config``) stays with ``TrainConfig``; this module reads only its JSON.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import Tensor

from saekit.errors import SaekitError
from saekit.io import load_tensors, read_json, save_tensors, write_json
from saekit.locks import LOCK_FILE

CONFIG_FILE = "config.json"
CHECKPOINT_FILE = "checkpoint.safetensors"
# Runs trained together keep their checkpoint before last: a kill between two runs' (or two processes')
# checkpoints leaves them one interval apart, and the one ahead then resumes from this one.
PREVIOUS_CHECKPOINT_FILE = "checkpoint.previous.safetensors"
LOG_FILE = "log.jsonl"
DENSITY_FILE = "density.jsonl"  # per-checkpoint latent-density snapshots (and the rare-latent experiment)
STATS_FILE = "activation_stats.safetensors"
DICTIONARY_DIR = "dictionary"
THROUGHPUT_FILE = "throughput.json"
CONTROL_MARKER = "control.json"  # how a randomized-weights twin (jobs/control.py) was made, written before it trains
METRICS_FILE = "metrics.json"  # evaluation's results, what summaries and reports read back
REPORT_FILE = "report.md"
DASHBOARD_DIR = "dashboard"  # where `saekit dashboard` writes a run's site by default
# The second axis, as later stages leave it in a run (read back by `saekit report`'s Pareto view):
PROBING_RESULTS_FILE = "probing.json"  # what `saekit probe RUN --task T` writes (probing/output.py)
PROBING_RESULTS = f"probing/*/{PROBING_RESULTS_FILE}"  # one directory per task
AUTOINTERP_SCORES = "autointerp/scores.json"  # `saekit explain RUN`
# What a run directory holds before its first checkpoint: a fresh start may overwrite these and nothing else.
FRESH_RUN_ENTRIES = frozenset({CONFIG_FILE, LOG_FILE, DENSITY_FILE, THROUGHPUT_FILE, STATS_FILE, LOCK_FILE,
                               CONTROL_MARKER})
# Beside a config, any of these makes a directory a run (an unfinished one included).
_RUN_EVIDENCE = (DICTIONARY_DIR, CHECKPOINT_FILE, PREVIOUS_CHECKPOINT_FILE, LOG_FILE)
_MEAN_PREFIX = "mean."  # the activation-stats key of a site's mean: ``mean.blocks.3.resid_post``


def is_run_dir(path: Path) -> bool:
    """A saekit run directory, finished or not: its config beside a dictionary folder, a checkpoint or a log.

    (An unfinished run is still a run: the command it is given to says what it lacks.)"""
    return (path / CONFIG_FILE).is_file() and any((path / name).exists() for name in _RUN_EVIDENCE)


def read_run_config(run_dir: str | Path) -> dict[str, Any]:
    """The run's ``config.json`` as written; a missing directory or file is one line naming it."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise SaekitError(f"run directory not found: {run_dir}")
    return read_json(run_dir / CONFIG_FILE, "run config")


def write_run_config(run_dir: Path, config: dict[str, Any]) -> None:
    """Write the run's ``config.json`` (atomically, as every saekit file)."""
    write_json(run_dir / CONFIG_FILE, config)


def save_activation_means(run_dir: Path, means: dict[str, Tensor]) -> None:
    """Write each site's mean activation (site name -> vector) as float32, the mean-ablation baseline."""
    save_tensors(run_dir / STATS_FILE, {_MEAN_PREFIX + site: mean.float() for site, mean in means.items()})


def load_activation_means(run_dir: Path, sites: list[str]) -> list[Tensor]:
    """The recorded mean activation of each of ``sites``, in order; a site without one is one line."""
    stats = load_tensors(run_dir / STATS_FILE, "activation statistics")
    missing = [site for site in sites if _MEAN_PREFIX + site not in stats]
    if missing:
        raise SaekitError(f"{run_dir / STATS_FILE} has no mean for {missing[0]}; the run is incomplete")
    return [stats[_MEAN_PREFIX + site] for site in sites]
