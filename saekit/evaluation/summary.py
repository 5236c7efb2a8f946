"""``saekit report``: a comparison of evaluated runs as markdown + HTML with plots.

Reads each run's ``metrics.json`` and draws ΔCE by layer, and the Pareto views L0 vs FVU, L0 vs ΔCE
and L0 vs effective-compute fraction (the frontier points are marked; runs trained on other objectives than mse
are their own legend entries, so recipes share one plot). Where the runs were also probed
(``saekit probe``) or explained (``saekit explain``), the second axis: ΔCE against sparse-probing accuracy and
against the auto-interp detection score (``two_axes.png``), with error bars from a reliability study beside the
runs (the metric's seed SD) where there is one, else ΔCE's standard error over contexts. Architectures rarely land on
the same L0, so the summary also compares them *at matched L0*: each architecture's ΔCE and FVU
interpolated (linearly in log L0) between its two runs that bracket the target. It writes
``summary.json``, ``summary.md`` and ``summary.html`` (plots embedded as PNG) into the output directory.
"""

from __future__ import annotations

import base64
import itertools
import math
import statistics
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib import ticker  # noqa: E402

from saekit.dictionaries.base import Span  # noqa: E402
from saekit.dictionaries.registry import ARCHITECTURES, span_of  # noqa: E402
from saekit.errors import SaekitError  # noqa: E402
from saekit.evaluation.effective_compute import EffectiveCompute  # noqa: E402
from saekit.evaluation.reliability import seed_noise_near  # noqa: E402
from saekit.evaluation.results import EvaluationResults  # noqa: E402
from saekit.io import OutputTarget, claim_output, mark_output, read_json, write_json, write_text  # noqa: E402
from saekit.models.sites import parse_site  # noqa: E402
from saekit.render import escape_html, markdown_table, save_png  # noqa: E402
from saekit.rundir import AUTOINTERP_SCORES, METRICS_FILE, PROBING_RESULTS  # noqa: E402


@dataclass(frozen=True)
class SummaryRow:
    """One evaluated run in the comparison; its fields, in order, are the keys of a row of ``summary.json``."""

    run: str
    site: str
    layer: int
    layers: int
    architecture: str
    width: int
    l0: float
    fvu: float
    fvu_without_outliers: float | None
    outlier_variance_share: float | None
    ce_clean: float
    delta_ce: float
    delta_ce_se: float
    kl: float
    compute_fraction: float | None
    law: str | None
    probing_accuracy: float | None = None  # mean over the probed tasks of the k=1 sparse probe's test accuracy
    probing_tasks: str | None = None
    autointerp_detection: float | None = None  # the LLM explanations' mean detection balanced accuracy
    seed_sd: dict[str, float] | None = None  # metric key -> seed SD, from a reliability study beside the run
    objective: str = "mse"  # the training recipe (LossConfig.recipe): runs of different objectives share one plot

    @property
    def group(self) -> str:
        """The legend entry: the architecture, and the objective where it is not plain mse."""
        return self.architecture if self.objective == "mse" else f"{self.architecture}, {self.objective}"

    def value(self, key: str) -> Any:
        """The field named ``key`` (one of the metrics compared: ``fvu``, ``delta_ce``, ``kl``...)."""
        return getattr(self, key)


@dataclass(frozen=True)
class MatchedL0:
    """One (site, architecture, width) group at the target L0 (:func:`matched_l0`).

    ``fvu`` is the FVU named by ``fvu_key`` (with or without outlier-norm tokens); in ``summary.json`` it is
    written under that name, after the other fields.
    """

    site: str
    architecture: str
    width: int
    target_l0: float
    fvu_key: str
    nearest_run: str
    nearest_l0: float
    matched: bool
    runs: list[str]
    delta_ce: float | None
    kl: float | None
    fvu: float | None

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data[self.fvu_key] = data.pop("fvu")
        return data


def load_results(run_dir: Path) -> EvaluationResults:
    path = run_dir / METRICS_FILE
    return EvaluationResults.from_dict(read_json(path, "metrics (run `saekit evaluate` first)"), str(path))


@dataclass(frozen=True)
class _Reconstruction:
    width: int
    l0: float
    fvu: float
    fvu_without_outliers: float | None
    outlier_variance_share: float | None


def _reconstruction_row(metrics: EvaluationResults, architecture: str) -> _Reconstruction:
    """Width, L0 and FVU of the run's splice; a cross-layer run's layers combined.

    A CLT's layers have their own latents, so its width and L0 are the layers' sums; a crosscoder's
    layers share one latent space (each reports the same latents). FVUs are the mean over layers.
    """
    layers = list(metrics.reconstruction.values())
    own_latents = architecture in ARCHITECTURES and span_of(architecture) is Span.CAUSAL
    combine = sum if own_latents else (lambda values: list(values)[0])

    def mean(values: list[float | None]) -> float | None:
        return None if any(v is None for v in values) else statistics.fmean(values)
    return _Reconstruction(width=combine(r.width for r in layers), l0=combine(r.l0_mean for r in layers),
                           fvu=mean([r.fvu for r in layers]),
                           fvu_without_outliers=mean([r.fvu_without_outliers for r in layers]),
                           outlier_variance_share=mean([r.outlier_variance_share for r in layers]))


PROBING_K = "1"  # the probe the second axis reads: SAEBench's headline, one latent per class


def probing_accuracy(run_dir: Path) -> tuple[float | None, str | None]:
    """Mean k=1 sparse-probing test accuracy over the tasks the run was probed on, and their names."""
    scores, tasks = [], []
    for path in sorted(run_dir.glob(PROBING_RESULTS)):
        document = read_json(path, "probing results")
        try:
            scores.append(float(document["mean"]["sae"][PROBING_K]["accuracy"]))
            tasks.append(str(document["task"]["name"]))
        except (KeyError, TypeError, ValueError):
            continue  # probed with other k, or a file of another shape: not on this axis
    return (statistics.fmean(scores), ", ".join(tasks)) if scores else (None, None)


def autointerp_detection(run_dir: Path) -> float | None:
    """The mean detection balanced accuracy of the run's LLM explanations (None: not explained)."""
    path = run_dir / AUTOINTERP_SCORES
    if not path.is_file():
        return None
    summary = read_json(path, "autointerp scores").get("summary") or {}
    entry = (((summary.get("explainers") or {}).get("llm") or {}).get("scorers") or {}).get("detection") or {}
    value = (entry.get("balanced_accuracy") or {}).get("mean")
    return None if value is None else float(value)


def seed_sd_near(run_dir: Path) -> dict[str, float] | None:
    """The seed SDs of a reliability study (``saekit reliability``) in the run's parent directory, else None."""
    return seed_noise_near([str(run_dir)]) or None


def run_row(run_dir: Path) -> SummaryRow:
    metrics = load_results(run_dir)
    site = metrics.sites[0].split("->")[-1]
    config = metrics.run_config(f"{run_dir}/{METRICS_FILE} run")
    architecture = config.dictionary.architecture if config is not None else "?"
    compute, losses = metrics.effective_compute, metrics.losses
    reported = compute if isinstance(compute, EffectiveCompute) else None  # none, or why not
    rec = _reconstruction_row(metrics, architecture)
    probing = probing_accuracy(run_dir)
    return SummaryRow(
        run=run_dir.name, site=site, layer=parse_site(site).layer, layers=len(metrics.sites),
        architecture=architecture, width=rec.width, l0=rec.l0, fvu=rec.fvu,
        fvu_without_outliers=rec.fvu_without_outliers, outlier_variance_share=rec.outlier_variance_share,
        ce_clean=losses.ce_clean.mean, delta_ce=losses.delta_ce_spliced.mean,
        delta_ce_se=losses.delta_ce_spliced.se, kl=losses.kl_spliced.mean,
        compute_fraction=reported.compute_fraction if reported else None,
        law=reported.law.name if reported else None,
        probing_accuracy=probing[0], probing_tasks=probing[1], autointerp_detection=autointerp_detection(run_dir),
        seed_sd=seed_sd_near(run_dir), objective=config.loss.recipe if config is not None else "mse",
    )


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of points not dominated in (lower x, lower y)."""
    return [i for i, (x, y) in enumerate(points)
            if not any((x2 <= x and y2 <= y) and (x2 < x or y2 < y) for x2, y2 in points)]


MARKERS = ("o", "s", "^", "D", "v", "P", "X")  # architectures with near-equal results stay distinguishable


def fvu_key(rows: list[SummaryRow]) -> str:
    """The FVU to compare: without outlier-norm tokens where every run has it (see reconstruction.py)."""
    return "fvu_without_outliers" if all(r.fvu_without_outliers is not None for r in rows) else "fvu"


def default_match_l0(rows: list[SummaryRow]) -> float:
    """The L0 to compare at: the median L0 of the TopK-style runs (their k), else of all runs."""
    fixed = [r.l0 for r in rows if _fixed_l0(r.architecture)]
    return statistics.median(fixed or [r.l0 for r in rows])


def _fixed_l0(architecture: str) -> bool:
    """Whether the architecture's sparsity setting is its L0 (``k``), so its runs define the target."""
    return architecture in ARCHITECTURES and ARCHITECTURES[architecture].fixed_l0()


def _interpolate(low: SummaryRow, high: SummaryRow, target: float, key: str) -> float:
    if high.l0 == low.l0:
        return (low.value(key) + high.value(key)) / 2
    weight = (math.log(target) - math.log(low.l0)) / (math.log(high.l0) - math.log(low.l0))
    return low.value(key) + weight * (high.value(key) - low.value(key))


def matched_l0(rows: list[SummaryRow], target: float, tolerance: float = 0.1) -> list[MatchedL0]:
    """Each (site, architecture, width) at L0 = ``target``: interpolated where two runs bracket it.

    A run within ``tolerance`` (relative) of the target counts as matched on its own. Groups that do
    not reach the target are listed with their nearest run, marked ``matched: false``, so a table
    never silently compares a dictionary at a different sparsity.
    """
    fvu = fvu_key(rows)
    keys = ("delta_ce", "kl", fvu)
    groups: dict[tuple[str, str, int], list[SummaryRow]] = {}
    for row in rows:
        groups.setdefault((row.site, row.architecture, row.width), []).append(row)
    matched = []
    for (site, architecture, width), group in sorted(groups.items(), key=lambda item: str(item[0])):
        group = sorted(group, key=lambda r: r.l0)
        nearest = min(group, key=lambda r: abs(math.log(max(r.l0, 1e-9) / target)))
        values: tuple[float | None, ...]
        if abs(nearest.l0 - target) <= tolerance * target:
            runs, values = [nearest.run], tuple(nearest.value(k) for k in keys)
        else:
            pairs = [(a, b) for a, b in zip(group, group[1:]) if 0 < a.l0 <= target <= b.l0]
            if pairs:
                low, high = pairs[0]
                runs, values = [low.run, high.run], tuple(_interpolate(low, high, target, k) for k in keys)
            else:
                runs, values = [], (None,) * len(keys)
        delta_ce, kl, fvu_value = values
        matched.append(MatchedL0(site=site, architecture=architecture, width=width, target_l0=target, fvu_key=fvu,
                                 nearest_run=nearest.run, nearest_l0=nearest.l0, matched=bool(runs), runs=runs,
                                 delta_ce=delta_ce, kl=kl, fvu=fvu_value))
    return matched


def _scatter(ax: Any, rows: list[SummaryRow], y_key: str, ylabel: str, lower_is_better: bool = True) -> None:
    points = [(r.l0, r.value(y_key) if lower_is_better else -r.value(y_key)) for r in rows]
    front = set(pareto_front(points))
    for group, marker in zip(sorted({r.group for r in rows}), itertools.cycle(MARKERS)):
        chosen = [r for r in rows if r.group == group]
        ax.scatter([r.l0 for r in chosen], [r.value(y_key) for r in chosen], label=group, marker=marker,
                   alpha=0.8)
    frontier = sorted((rows[i].l0, rows[i].value(y_key)) for i in front)
    ax.plot([p[0] for p in frontier], [p[1] for p in frontier], "k--", linewidth=0.8, label="Pareto frontier")
    # L0 spans orders of magnitude across a sweep; a log axis keeps low-L0 runs readable.
    if min(r.l0 for r in rows) > 0:
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(ticker.ScalarFormatter())
        ax.xaxis.set_minor_formatter(ticker.NullFormatter())  # minor labels overlap on short ranges
    ax.set_xlabel("L0 (mean active latents per token)")
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=7)


def plot_summary(rows: list[SummaryRow], out_dir: Path, target_l0: float | None = None) -> list[Path]:
    paths = []
    figure, ax = plt.subplots(figsize=(5, 3.5))
    for group in sorted({r.group for r in rows}):
        chosen = sorted((r for r in rows if r.group == group), key=lambda r: r.layer)
        ax.errorbar([r.layer for r in chosen], [r.delta_ce for r in chosen],
                    yerr=[r.delta_ce_se for r in chosen], marker="o", label=group, capsize=2)
    ax.set_xlabel("layer")
    ax.set_ylabel("ΔCE spliced - clean (nats)")
    ax.legend(fontsize=7)
    paths.append(save_png(figure, out_dir / "delta_ce_by_layer.png", dpi=110, tight=True))
    figure, axes = plt.subplots(1, 3, figsize=(15, 3.8))
    key = fvu_key(rows)
    _scatter(axes[0], rows, key, "FVU without outlier-norm tokens" if key == "fvu_without_outliers" else "FVU")
    _scatter(axes[1], rows, "delta_ce", "ΔCE (nats)")
    with_compute = [r for r in rows if r.compute_fraction is not None]
    if with_compute:
        _scatter(axes[2], with_compute, "compute_fraction", "effective compute fraction", lower_is_better=False)
        axes[2].set_yscale("log")
    if target_l0 is not None:
        for ax in axes:
            ax.axvline(target_l0, color="grey", linewidth=0.6, linestyle=":")
    paths.append(save_png(figure, out_dir / "pareto.png", dpi=110, tight=True))
    second = [(key, label) for key, label in SECOND_AXIS if any(r.value(key) is not None for r in rows)]
    if second:
        paths.append(plot_two_axes(rows, second, out_dir / "two_axes.png"))
    return paths


# The interpretability axis: (row field, axis label, the reliability study's metric key for its seed SD).
SECOND_AXIS = (("probing_accuracy", "sparse probing accuracy, k=1 (mean over tasks)"),
               ("autointerp_detection", "auto-interp detection (balanced accuracy)"))
SEED_SD_KEYS = {"probing_accuracy": f"probe_accuracy_k{PROBING_K}", "delta_ce": "delta_ce"}


def _error(row: SummaryRow, key: str) -> float:
    """The error bar of ``key``: its seed SD where a reliability study measured it; ΔCE's standard error else."""
    sd = (row.seed_sd or {}).get(SEED_SD_KEYS.get(key, key))
    if sd is not None:
        return sd
    return row.delta_ce_se if key == "delta_ce" else 0.0


def plot_two_axes(rows: list[SummaryRow], axes_wanted: list[tuple[str, str]], path: Path) -> Path:
    """ΔCE (how little the dictionary damages the model) against each interpretability metric, with error bars."""
    figure, axes = plt.subplots(1, len(axes_wanted), figsize=(5.5 * len(axes_wanted), 4), squeeze=False)
    for ax, (key, label) in zip(axes[0], axes_wanted):
        chosen = [r for r in rows if r.value(key) is not None]
        for name, marker in zip(sorted({r.group for r in chosen}), itertools.cycle(MARKERS)):
            group = [r for r in chosen if r.group == name]
            ax.errorbar([r.delta_ce for r in group], [r.value(key) for r in group],
                        xerr=[_error(r, "delta_ce") for r in group], yerr=[_error(r, key) for r in group],
                        fmt=marker, capsize=2, label=name, alpha=0.85)
        points = [(r.delta_ce, -r.value(key)) for r in chosen]  # low ΔCE and high score are both better
        frontier = sorted((chosen[i].delta_ce, chosen[i].value(key)) for i in pareto_front(points))
        ax.plot([p[0] for p in frontier], [p[1] for p in frontier], "k--", linewidth=0.8, label="Pareto frontier")
        ax.set_xlabel("ΔCE (nats; lower damages the model less)")
        ax.set_ylabel(label)
        ax.legend(fontsize=7)
    return save_png(figure, path, dpi=110, tight=True)


def _optional(value: float | None, spec: str = ".4f") -> str:
    return "-" if value is None else format(value, spec)


def _markdown(rows: list[SummaryRow], matched: list[MatchedL0], plots: list[Path]) -> str:
    header = ["run", "site", "architecture (objective)", "L0", "FVU (all tokens)", "FVU without outliers",
              "ΔCE (nats)", "KL", "effective compute"]
    second = [key for key, _ in SECOND_AXIS if any(r.value(key) is not None for r in rows)]
    header += [{"probing_accuracy": "probing acc. (k=1)", "autointerp_detection": "detection"}[k] for k in second]
    table = []
    for r in rows:
        compute = f"{r.compute_fraction:.3g}x ({r.law})" if r.compute_fraction is not None else "-"
        table.append([r.run, r.site, r.group, f"{r.l0:.1f}", f"{r.fvu:.4f}",
                      _optional(r.fvu_without_outliers), f"{r.delta_ce:.4f} ± {r.delta_ce_se:.4f}",
                      f"{r.kl:.4f}", compute, *[_with_sd(r, k) for k in second]])
    lines = ["# saekit summary", "", markdown_table(header, table)]
    if second:
        tasks = sorted({t for r in rows if r.probing_tasks for t in r.probing_tasks.split(", ")})
        lines += ["", "The second axis: sparse-probing accuracy (k=1, mean over the tasks each run was probed on"
                      + (f": {', '.join(tasks)}" if tasks else "") + ") and the auto-interp detection score, beside "
                      "ΔCE (`two_axes.png`). ± is the metric's seed SD where a reliability study sits beside the runs "
                      "(`saekit reliability`); ΔCE's ± in the table is its standard error over contexts."]
    shares = [r.outlier_variance_share for r in rows if r.outlier_variance_share is not None]
    if shares:
        held = f"{min(shares):.1%}" if min(shares) == max(shares) else f"{min(shares):.1%} to {max(shares):.1%}"
        lines += ["", f"Outlier-norm tokens (the training rule) hold {held} of the evaluated variance; where that "
                      "is large, compare the FVU without them."]
    if matched:
        fvu = matched[0].fvu_key
        lines += ["", f"## At matched L0 = {matched[0].target_l0:.1f}", "",
                  "Interpolated linearly in log L0 between each architecture's two runs that bracket the target "
                  "(a run within 10% of it is used as is). Unmatched: no runs on both sides; the nearest is named.",
                  ""]
        table = []
        for m in matched:
            nearest = f"unmatched (nearest {m.nearest_run}, L0 {m.nearest_l0:.1f})"
            source = ", ".join(m.runs) if m.matched else nearest
            table.append([m.site, m.architecture, m.width, _optional(m.delta_ce), _optional(m.kl),
                          _optional(m.fvu), source])
        lines.append(markdown_table(["site", "architecture", "width", "ΔCE (nats)", "KL", fvu.replace("_", " "),
                                     "from runs"], table))
    lines += ["", *[f"![{p.stem}]({p.name})" for p in plots]]
    return "\n".join(lines) + "\n"


def _with_sd(row: SummaryRow, key: str) -> str:
    value = row.value(key)
    sd = (row.seed_sd or {}).get(SEED_SD_KEYS.get(key, key))
    return "-" if value is None else f"{value:.3f}" + ("" if sd is None else f" ± {sd:.3f}")


TABLE_KEYS = ("run", "site", "architecture", "l0", "fvu", "fvu_without_outliers", "delta_ce", "kl", "compute_fraction")


def _html(markdown_rows: list[SummaryRow], plots: list[Path]) -> str:
    def cell(value: Any) -> str:
        return f"<td>{escape_html(round(value, 4) if isinstance(value, float) else value)}</td>"
    cells = "".join("<tr>" + "".join(cell(r.value(k)) for k in TABLE_KEYS) + "</tr>" for r in markdown_rows)
    images = "".join(f'<img alt="{escape_html(p.stem)}" src="data:image/png;base64,'
                     f'{base64.b64encode(p.read_bytes()).decode()}">' for p in plots)
    head = "".join(f"<th>{h}</th>" for h in ("run", "site", "architecture", "L0", "FVU", "FVU without outliers",
                                             "ΔCE", "KL", "compute"))
    return ("<!doctype html><meta charset='utf-8'><title>saekit summary</title>"
            "<style>body{font-family:sans-serif;margin:2em}td,th{padding:4px 8px;border-bottom:1px solid #ddd}"
            "img{max-width:48%;margin:1em 1% 0 0}</style><h1>saekit summary</h1>"
            f"<table><tr>{head}</tr>{cells}</table>{images}")


# What a summary directory held before outputs recorded their writer (a sweep's also holds sweep.json).
SUMMARY_ENTRIES = frozenset({"summary.json", "summary.md", "summary.html", "delta_ce_by_layer.png", "pareto.png",
                             "two_axes.png", "sweep.json"})


def summarize(run_dirs: list[Path], out_dir: str | Path, match_l0: float | None = None,
              force: bool = False) -> dict[str, Any]:
    """Write the comparison; ``match_l0`` is the L0 to compare at (default: :func:`default_match_l0`).

    ``out_dir`` may hold nothing but an earlier summary unless ``force`` (a sweep's own directory, where
    its runs live, is written with it). Returns what ``summary.json`` holds (JSON: a sweep writes it into
    ``sweep.json``) and the plots' paths."""
    if not run_dirs:
        raise SaekitError("give at least one evaluated run directory")
    if match_l0 is not None and match_l0 <= 0:
        raise SaekitError(f"--match-l0 must be positive, got {match_l0}")
    output = OutputTarget(Path(out_dir), "report", entries=SUMMARY_ENTRIES, force=force)
    output.check()
    rows = sorted((run_row(Path(d)) for d in run_dirs), key=lambda r: (r.layer, r.l0))
    target = match_l0 if match_l0 is not None else default_match_l0(rows)
    matched = matched_l0(rows, target) if target > 0 else []
    with claim_output(output) as out_dir:
        mark_output(output)
        plots = plot_summary(rows, out_dir, target)
        document = summary_json(rows, matched)
        write_json(out_dir / "summary.json", document)
        write_text(out_dir / "summary.md", _markdown(rows, matched, plots))
        write_text(out_dir / "summary.html", _html(rows, plots))
    return {**document, "plots": [str(p) for p in plots]}


def summary_json(rows: list[SummaryRow], matched: list[MatchedL0]) -> dict[str, Any]:
    """``summary.json``: the rows and the matched-L0 groups, as JSON."""
    return {"runs": [asdict(r) for r in rows], "matched_l0": [m.to_json() for m in matched]}
