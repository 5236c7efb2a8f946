"""How much to trust each metric: its seed noise, its signal over that noise, and what it tracks, from a table of runs.

This module's one job is the statistics of a reliability study and its files; ``saekit reliability``
(``saekit/jobs/reliability.py``) trains and measures the runs. The input is one :class:`Observation` per run: the
recipe (a point of a sweep grid), the optimiser seed, the share of the training budget it was trained for (1.0:
the full run, less: an earlier checkpoint) and the value of every metric. For each metric
(:func:`reliability_table`), with x[r, s] the metric of recipe r at seed s on the full budget:

* **mean**: the mean of x over every full-budget run.
* **seed SD**: the pooled within-recipe standard deviation, sqrt(sum_r sum_s (x[r, s] - mean_r)^2 / sum_r (n_r - 1)),
  where mean_r is recipe r's mean over its n_r seeds: how far one training run lands from another of the same
  recipe.
* **SNR** (recipes): the sample standard deviation (n - 1) of the recipe means mean_r, divided by the seed SD.
  It needs at least two recipes. Seed noise alone gives about 1/sqrt(n_r) (the recipe means carry their seeds'
  noise); a value well above 1 means the recipes differ by more than one run's noise. A seed SD of 0 makes it
  infinite when the recipe means differ, and undefined when they do not.
* **checkpoint separation**: for every recipe and every two consecutive checkpoints (budget shares sorted),
  |mean over seeds at the later - mean over seeds at the earlier| divided by the seed SD pooled (as above) over
  every (recipe, checkpoint) cell; the smallest such ratio is reported, and the metric *separates checkpoints*
  when it exceeds ``SEPARATION`` (2): every step of training moves it by more than twice one run's noise.
* **rank correlation** (toy worlds only): Spearman's rho (Pearson correlation of the ranks, ties given their
  average rank) between the metric and the ground-truth recovery metric over every run, checkpoints included.

:func:`reliability_markdown` renders the table, :func:`write_reliability` writes ``reliability.json`` and
``reliability.md`` atomically, and :func:`seed_noise_near` is how ``report.md`` finds the seed SD of a run that
sits in a directory holding a ``reliability.json``.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from saekit.errors import SaekitError
from saekit.evaluation.effective_compute import EffectiveCompute
from saekit.evaluation.results import EvaluationResults
from saekit.io import read_json, write_json, write_text
from saekit.render import markdown_inline, markdown_table

RELIABILITY_FILE = "reliability.json"
RELIABILITY_REPORT = "reliability.md"
FULL = 1.0  # the budget share of a full run
SEPARATION = 2.0  # checkpoint steps must move a metric by more than this many seed SDs to count as separated

# What evaluate_run yields, by key (the keys reliability.json and report.md share) and label.
EVALUATION_METRICS: dict[str, str] = {
    "delta_ce": "ΔCE (nats)",
    "kl": "KL (nats)",
    "fvu": "FVU",
    "fvu_without_outliers": "FVU without outliers",
    "l0": "L0",
    "dead_fraction": "dead fraction",
    "compute_fraction": "effective compute fraction",
}


@dataclass(frozen=True)
class Observation:
    """One trained run: its recipe, seed, share of the training budget, and every metric measured on it."""

    recipe: str
    seed: int
    fraction: float
    values: dict[str, float | None]  # None: not measured on this run (e.g. effective compute of an unknown model)
    run: str | None = None  # its run directory (none on a toy world)


@dataclass(frozen=True)
class MetricReliability:
    """The reliability of one metric (definitions in the module docstring); None where it cannot be computed, with
    the reason in the matching note."""

    metric: str
    label: str
    mean: float | None
    seed_sd: float | None
    snr: float | None
    snr_note: str | None
    checkpoint_ratio: float | None
    checkpoints_separated: bool | None
    checkpoint_note: str | None
    rank_correlation: float | None
    checkpoint_means: dict[str, dict[str, float]] = field(default_factory=dict)  # recipe -> budget share -> mean


@dataclass(frozen=True)
class ReliabilityResults:
    """A whole study: what was run, every metric's reliability, and the observations it came from."""

    source: str  # the model, or the toy world
    seeds: list[int]
    recipes: list[str]
    fractions: list[float]
    ground_truth: str | None  # the metric the rank correlations are taken with (toy worlds), else None
    metrics: list[MetricReliability]
    observations: list[Observation]

    def to_dict(self) -> dict[str, Any]:
        return {"definitions": DEFINITIONS, "separation": SEPARATION, **asdict(self)}

    def seed_noise(self) -> dict[str, float]:
        """Metric key -> seed SD, for the metrics that have one."""
        return {m.metric: m.seed_sd for m in self.metrics if m.seed_sd is not None}


DEFINITIONS = {
    "seed_sd": "pooled within-recipe SD over seeds of the full-budget runs: sqrt(sum_r sum_s (x_rs - mean_r)^2 / "
               "sum_r (n_r - 1))",
    "snr": "sample SD (n - 1) of the recipe means over the seed SD; seed noise alone gives about 1/sqrt(seeds)",
    "checkpoint_ratio": "smallest |difference of seed means| between consecutive checkpoints of a recipe, over the "
                        "seed SD pooled over every (recipe, checkpoint); separated when above the separation",
    "rank_correlation": "Spearman's rho (average ranks for ties) with the ground-truth metric over every run",
}


# ---- statistics ------------------------------------------------------------------------------------------------


def pooled_sd(groups: Iterable[Sequence[float]]) -> float | None:
    """The pooled within-group SD: sqrt(sum of squared deviations from each group's mean / sum(n_g - 1)).

    None when no group has two values (nothing to measure the spread with)."""
    groups = [list(g) for g in groups]
    dof = sum(len(g) - 1 for g in groups if g)
    if dof < 1:
        return None
    squares = sum((x - statistics.fmean(g)) ** 2 for g in groups if g for x in g)
    return math.sqrt(squares / dof)


def signal_to_noise(groups: Sequence[Sequence[float]]) -> tuple[float | None, str | None]:
    """(SD of the group means over the pooled SD, None), or (None, why not)."""
    if len(groups) < 2:
        return None, "one recipe: give a --grid of two or more to compare recipes"
    noise = pooled_sd(groups)
    if noise is None:
        return None, "one seed per recipe"
    spread = statistics.stdev(statistics.fmean(g) for g in groups)
    if noise == 0:
        return None, ("infinite: the recipes differ and the seeds agree exactly" if spread > 0
                      else "undefined: neither the recipes nor the seeds differ")
    return spread / noise, None


def checkpoint_separation(cells: Mapping[str, Mapping[float, Sequence[float]]],
                          ) -> tuple[float | None, bool | None, str | None]:
    """(smallest consecutive-checkpoint ratio, whether it exceeds SEPARATION, a note) over ``cells``
    (recipe -> budget share -> values over seeds)."""
    if all(len(by_share) < 2 for by_share in cells.values()):
        return None, None, "no checkpoints besides the full run"
    noise = pooled_sd(values for by_share in cells.values() for values in by_share.values())
    if noise is None:
        return None, None, "one seed per checkpoint"
    steps = [abs(statistics.fmean(by_share[later]) - statistics.fmean(by_share[earlier]))
             for by_share in cells.values()
             for earlier, later in zip(sorted(by_share), sorted(by_share)[1:])]
    smallest = min(steps)
    if noise == 0:
        if smallest > 0:
            return None, True, "infinite: every checkpoint step moves it and the seeds agree exactly"
        return None, False, "some checkpoint step leaves it unchanged and the seeds agree exactly"
    ratio = smallest / noise
    return ratio, ratio > SEPARATION, None


def average_ranks(values: Sequence[float]) -> list[float]:
    """Ranks 1..n, tied values sharing the mean of the ranks they span."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    start = 0
    while start < len(order):
        end = start
        while end + 1 < len(order) and values[order[end + 1]] == values[order[start]]:
            end += 1
        for position in range(start, end + 1):
            ranks[order[position]] = (start + end) / 2 + 1
        start = end + 1
    return ranks


def spearman(xs: Sequence[float], ys: Sequence[float]) -> float | None:
    """Spearman's rho of paired values; None with fewer than three pairs or a constant side (no ranking)."""
    if len(xs) != len(ys):
        raise ValueError(f"spearman needs paired values, got {len(xs)} and {len(ys)}")
    if len(xs) < 3:
        return None
    rx, ry = average_ranks(xs), average_ranks(ys)
    mx, my = statistics.fmean(rx), statistics.fmean(ry)
    sxy = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    sxx, syy = sum((a - mx) ** 2 for a in rx), sum((b - my) ** 2 for b in ry)
    return None if sxx == 0 or syy == 0 else sxy / math.sqrt(sxx * syy)


# ---- the table ---------------------------------------------------------------------------------------------------


def evaluation_values(results: EvaluationResults) -> dict[str, float | None]:
    """The :data:`EVALUATION_METRICS` of one evaluation; a splice over several sites gives the mean over them."""
    sites = list(results.reconstruction.values())

    def mean(values: list[float | None]) -> float | None:
        return None if any(v is None for v in values) else statistics.fmean(values)  # type: ignore[arg-type]

    compute = results.effective_compute
    return {
        "delta_ce": results.losses.delta_ce_spliced.mean,
        "kl": results.losses.kl_spliced.mean,
        "fvu": mean([r.fvu for r in sites]),
        "fvu_without_outliers": mean([r.fvu_without_outliers for r in sites]),
        "l0": mean([r.l0_mean for r in sites]),
        "dead_fraction": mean([r.dead_fraction for r in sites]),
        "compute_fraction": compute.compute_fraction if isinstance(compute, EffectiveCompute) else None,
    }


def _cells(observations: list[Observation], metric: str) -> dict[str, dict[float, list[float]]]:
    """recipe -> budget share -> the metric over seeds (in seed order)."""
    cells: dict[str, dict[float, list[float]]] = {}
    for o in sorted(observations, key=lambda o: o.seed):
        cells.setdefault(o.recipe, {}).setdefault(o.fraction, []).append(float(o.values[metric]))  # type: ignore[arg-type]
    return cells


def metric_reliability(observations: list[Observation], metric: str, label: str,
                       ground_truth: str | None) -> MetricReliability:
    """One metric's row of the table (see the module docstring)."""
    if any(o.values.get(metric) is None for o in observations):
        note = "not measured on every run"
        return MetricReliability(metric, label, None, None, None, note, None, None, note, None)
    cells = _cells(observations, metric)
    full = [by_share[FULL] for by_share in cells.values() if FULL in by_share]
    snr, snr_note = signal_to_noise(full)
    ratio, separated, checkpoint_note = checkpoint_separation(cells)
    rank = None
    if ground_truth is not None and metric != ground_truth:
        rank = spearman([float(o.values[metric]) for o in observations],  # type: ignore[arg-type]
                        [float(o.values[ground_truth]) for o in observations])  # type: ignore[arg-type]
    means = {recipe: {str(share): statistics.fmean(values) for share, values in sorted(by_share.items())}
             for recipe, by_share in cells.items()}
    return MetricReliability(metric, label, statistics.fmean(v for values in full for v in values), pooled_sd(full),
                             snr, snr_note, ratio, separated, checkpoint_note, rank, means)


def reliability_table(observations: list[Observation], labels: Mapping[str, str], source: str,
                      ground_truth: str | None = None) -> ReliabilityResults:
    """Every metric of ``labels`` (key -> label, in table order) over the observations."""
    if not observations:
        raise SaekitError("a reliability study needs at least one run")
    return ReliabilityResults(
        source=source,
        seeds=sorted({o.seed for o in observations}),
        recipes=list(dict.fromkeys(o.recipe for o in observations)),
        fractions=sorted({o.fraction for o in observations}),
        ground_truth=ground_truth,
        metrics=[metric_reliability(observations, key, label, ground_truth) for key, label in labels.items()],
        observations=observations,
    )


# ---- files -------------------------------------------------------------------------------------------------------


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def _snr_cell(m: MetricReliability) -> str:
    if m.snr is not None:
        return f"{m.snr:.3g}"
    return "∞" if m.snr_note and m.snr_note.startswith("infinite") else "-"


def _checkpoint_cell(m: MetricReliability) -> str:
    if m.checkpoints_separated is None:
        return "-"
    if m.checkpoint_ratio is not None:
        ratio = f"{m.checkpoint_ratio:.3g}"
    else:  # no seed noise: every step moves it (infinitely many SDs) or some step is 0 / 0
        ratio = "∞" if m.checkpoints_separated else "0 / 0"
    return f"{ratio} ({'yes' if m.checkpoints_separated else 'no'})"


def _rank_cell(m: MetricReliability, ground_truth: str | None) -> str:
    if ground_truth is None:
        return "-"
    return "(ground truth)" if m.metric == ground_truth else _number(m.rank_correlation)


def reliability_markdown(results: ReliabilityResults) -> str:
    """``reliability.md``: what was run, the table, and what each column means."""
    gt = results.ground_truth
    rows = [[m.label, _number(m.mean), _number(m.seed_sd), _snr_cell(m), _checkpoint_cell(m), _rank_cell(m, gt)]
            for m in results.metrics]
    header = ["metric", "mean", "seed SD", "SNR (recipes)", f"checkpoints: min |Δ| / SD (> {SEPARATION:g})",
              f"rank corr. with {gt}" if gt else "rank corr. (toy worlds)"]
    shares = ", ".join(f"{share:.0%}" for share in results.fractions)
    notes = [f"- {markdown_inline(m.label)}: {markdown_inline(note)}" for m in results.metrics
             for note in dict.fromkeys(n for n in (m.snr_note, m.checkpoint_note) if n)]
    lines = [
        "# How much to trust each metric", "",
        f"Source: {markdown_inline(results.source)}. {len(results.recipes)} recipe(s) "
        f"({', '.join(markdown_inline(r) for r in results.recipes)}) x seeds "
        f"{', '.join(map(str, results.seeds))}, each at {shares} of its training budget.", "",
        markdown_table(header, rows), "",
        "Mean: over the full-budget runs. Seed SD: pooled within-recipe SD over seeds "
        "(sqrt(Σ_r Σ_s (x_rs − mean_r)² / Σ_r (n_r − 1))). SNR: SD (n − 1) of the recipe means over the seed SD; "
        f"seed noise alone gives about 1/√{len(results.seeds)}, so read values well above 1 as real differences "
        "between recipes. Checkpoints: the smallest difference of seed means between consecutive budget shares of a "
        f"recipe, over the seed SD pooled over every (recipe, share); 'yes' above {SEPARATION:g}. "
        "Rank correlation: Spearman's ρ with the ground-truth metric over every run (toy worlds only).",
    ]
    if notes:
        lines += ["", "Notes:", "", *notes]
    return "\n".join(lines) + "\n"


def write_reliability(out_dir: str | Path, results: ReliabilityResults) -> tuple[Path, Path]:
    """``reliability.md`` then ``reliability.json`` (the file other commands read, so it changes last)."""
    out_dir = Path(out_dir)
    write_text(out_dir / RELIABILITY_REPORT, reliability_markdown(results))
    write_json(out_dir / RELIABILITY_FILE, results.to_dict())
    return out_dir / RELIABILITY_FILE, out_dir / RELIABILITY_REPORT


def read_seed_noise(path: str | Path) -> dict[str, float]:
    """Metric key -> seed SD from a ``reliability.json``."""
    data = read_json(path, "reliability study")
    try:
        return {m["metric"]: float(m["seed_sd"]) for m in data["metrics"] if m.get("seed_sd") is not None}
    except (KeyError, TypeError, ValueError) as err:
        raise SaekitError(f"{path} is not a reliability study ({err}); rerun saekit reliability") from err


def seed_noise_near(runs: Sequence[str]) -> dict[str, float]:
    """The seed SDs of the ``reliability.json`` beside a single run (in its sweep directory); none elsewhere."""
    if len(runs) != 1:
        return {}
    path = Path(runs[0]).parent / RELIABILITY_FILE
    return read_seed_noise(path) if path.is_file() else {}
