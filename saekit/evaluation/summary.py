"""``saekit report``: a comparison of evaluated runs as markdown + HTML with plots.

Reads each run's ``metrics.json`` and draws ΔCE by layer, and the Pareto views L0 vs FVU, L0 vs ΔCE
and L0 vs effective-compute fraction (the frontier points are marked). Architectures rarely land on
the same L0, so the summary also compares them *at matched L0*: each architecture's ΔCE and FVU
interpolated (linearly in log L0) between its two runs that bracket the target. It writes
``summary.json``, ``summary.md`` and ``summary.html`` (plots embedded as PNG) into the output directory.
"""

from __future__ import annotations

import base64
import itertools
import math
import statistics
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib import ticker  # noqa: E402

from saekit.dictionaries.crosslayer import CrossLayerTranscoder  # noqa: E402
from saekit.dictionaries.registry import ARCHITECTURES  # noqa: E402
from saekit.errors import SaekitError  # noqa: E402
from saekit.evaluation.results import EvaluationResults  # noqa: E402
from saekit.io import OutputTarget, claim_output, mark_output, read_json, write_json, write_text  # noqa: E402
from saekit.models.sites import parse_site  # noqa: E402
from saekit.render import escape_html, markdown_table, save_png  # noqa: E402
from saekit.rundir import METRICS_FILE  # noqa: E402
from saekit.training.config import TrainConfig  # noqa: E402


def load_results(run_dir: Path) -> EvaluationResults:
    path = run_dir / METRICS_FILE
    return EvaluationResults.from_dict(read_json(path, "metrics (run `saekit evaluate` first)"), str(path))


def _reconstruction_row(metrics: EvaluationResults, architecture: str) -> dict[str, Any]:
    """Width, L0 and FVU of the run's splice; a cross-layer run's layers combined.

    A CLT's layers have their own latents, so its width and L0 are the layers' sums; a crosscoder's
    layers share one latent space (each reports the same latents). FVUs are the mean over layers.
    """
    layers = list(metrics.reconstruction.values())
    own_latents = architecture in ARCHITECTURES and issubclass(ARCHITECTURES[architecture], CrossLayerTranscoder)
    combine = sum if own_latents else (lambda values: list(values)[0])

    def mean(values: list[float | None]) -> float | None:
        return None if any(v is None for v in values) else statistics.fmean(values)
    return {"width": combine(r.width for r in layers), "l0": combine(r.l0_mean for r in layers),
            "fvu": mean([r.fvu for r in layers]),
            "fvu_without_outliers": mean([r.fvu_without_outliers for r in layers]),
            "outlier_variance_share": mean([r.outlier_variance_share for r in layers])}


def run_row(run_dir: Path) -> dict[str, Any]:
    metrics = load_results(run_dir)
    site = metrics.sites[0].split("->")[-1]
    run = metrics.run
    architecture = TrainConfig.from_dict(run, f"{run_dir}/{METRICS_FILE} run").dictionary.architecture if run else "?"
    compute, losses = metrics.effective_compute, metrics.losses
    return {
        "run": run_dir.name, "site": site, "layer": parse_site(site).layer, "layers": len(metrics.sites),
        "architecture": architecture, **_reconstruction_row(metrics, architecture),
        "ce_clean": losses.ce_clean.mean, "delta_ce": losses.delta_ce_spliced.mean,
        "delta_ce_se": losses.delta_ce_spliced.se, "kl": losses.kl_spliced.mean,
        "compute_fraction": compute.get("compute_fraction"), "law": compute.get("law", {}).get("name"),
    }


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of points not dominated in (lower x, lower y)."""
    return [i for i, (x, y) in enumerate(points)
            if not any((x2 <= x and y2 <= y) and (x2 < x or y2 < y) for x2, y2 in points)]


MARKERS = ("o", "s", "^", "D", "v", "P", "X")  # architectures with near-equal results stay distinguishable


def fvu_key(rows: list[dict[str, Any]]) -> str:
    """The FVU to compare: without outlier-norm tokens where every run has it (see reconstruction.py)."""
    return "fvu_without_outliers" if all(r.get("fvu_without_outliers") is not None for r in rows) else "fvu"


def default_match_l0(rows: list[dict[str, Any]]) -> float:
    """The L0 to compare at: the median L0 of the TopK-style runs (their k), else of all runs."""
    fixed = [r["l0"] for r in rows if _fixed_l0(r["architecture"])]
    return statistics.median(fixed or [r["l0"] for r in rows])


def _fixed_l0(architecture: str) -> bool:
    """Whether the architecture's sparsity setting is its L0 (``k``), so its runs define the target."""
    return architecture in ARCHITECTURES and ARCHITECTURES[architecture].fixed_l0()


def _interpolate(low: dict[str, Any], high: dict[str, Any], target: float, key: str) -> float:
    if high["l0"] == low["l0"]:
        return (low[key] + high[key]) / 2
    weight = (math.log(target) - math.log(low["l0"])) / (math.log(high["l0"]) - math.log(low["l0"]))
    return low[key] + weight * (high[key] - low[key])


def matched_l0(rows: list[dict[str, Any]], target: float, tolerance: float = 0.1) -> list[dict[str, Any]]:
    """Each (site, architecture, width) at L0 = ``target``: interpolated where two runs bracket it.

    A run within ``tolerance`` (relative) of the target counts as matched on its own. Groups that do
    not reach the target are listed with their nearest run, marked ``matched: false``, so a table
    never silently compares a dictionary at a different sparsity.
    """
    keys = ("delta_ce", "kl", fvu_key(rows))
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["site"], row["architecture"], row["width"]), []).append(row)
    matched = []
    for (site, architecture, width), group in sorted(groups.items(), key=lambda item: str(item[0])):
        group = sorted(group, key=lambda r: r["l0"])
        nearest = min(group, key=lambda r: abs(math.log(max(r["l0"], 1e-9) / target)))
        entry = {"site": site, "architecture": architecture, "width": width, "target_l0": target,
                 "fvu_key": keys[-1], "nearest_run": nearest["run"], "nearest_l0": nearest["l0"]}
        if abs(nearest["l0"] - target) <= tolerance * target:
            entry.update(matched=True, runs=[nearest["run"]], **{k: nearest[k] for k in keys})
        else:
            pairs = [(a, b) for a, b in zip(group, group[1:]) if 0 < a["l0"] <= target <= b["l0"]]
            if pairs:
                low, high = pairs[0]
                entry.update(matched=True, runs=[low["run"], high["run"]],
                             **{k: _interpolate(low, high, target, k) for k in keys})
            else:
                entry.update(matched=False, runs=[], **{k: None for k in keys})
        matched.append(entry)
    return matched


def _scatter(ax: Any, rows: list[dict[str, Any]], y_key: str, ylabel: str, lower_is_better: bool = True) -> None:
    points = [(r["l0"], r[y_key] if lower_is_better else -r[y_key]) for r in rows]
    front = set(pareto_front(points))
    for architecture, marker in zip(sorted({r["architecture"] for r in rows}), itertools.cycle(MARKERS)):
        chosen = [r for r in rows if r["architecture"] == architecture]
        ax.scatter([r["l0"] for r in chosen], [r[y_key] for r in chosen], label=architecture, marker=marker,
                   alpha=0.8)
    frontier = sorted((rows[i]["l0"], rows[i][y_key]) for i in front)
    ax.plot([p[0] for p in frontier], [p[1] for p in frontier], "k--", linewidth=0.8, label="Pareto frontier")
    # L0 spans orders of magnitude across a sweep; a log axis keeps low-L0 runs readable.
    if min(r["l0"] for r in rows) > 0:
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(ticker.ScalarFormatter())
        ax.xaxis.set_minor_formatter(ticker.NullFormatter())  # minor labels overlap on short ranges
    ax.set_xlabel("L0 (mean active latents per token)")
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=7)


def plot_summary(rows: list[dict[str, Any]], out_dir: Path, target_l0: float | None = None) -> list[Path]:
    paths = []
    figure, ax = plt.subplots(figsize=(5, 3.5))
    for architecture in sorted({r["architecture"] for r in rows}):
        chosen = sorted((r for r in rows if r["architecture"] == architecture), key=lambda r: r["layer"])
        ax.errorbar([r["layer"] for r in chosen], [r["delta_ce"] for r in chosen],
                    yerr=[r["delta_ce_se"] for r in chosen], marker="o", label=architecture, capsize=2)
    ax.set_xlabel("layer")
    ax.set_ylabel("ΔCE spliced - clean (nats)")
    ax.legend(fontsize=7)
    paths.append(save_png(figure, out_dir / "delta_ce_by_layer.png", dpi=110, tight=True))
    figure, axes = plt.subplots(1, 3, figsize=(15, 3.8))
    key = fvu_key(rows)
    _scatter(axes[0], rows, key, "FVU without outlier-norm tokens" if key == "fvu_without_outliers" else "FVU")
    _scatter(axes[1], rows, "delta_ce", "ΔCE (nats)")
    with_compute = [r for r in rows if r["compute_fraction"] is not None]
    if with_compute:
        _scatter(axes[2], with_compute, "compute_fraction", "effective compute fraction", lower_is_better=False)
        axes[2].set_yscale("log")
    if target_l0 is not None:
        for ax in axes:
            ax.axvline(target_l0, color="grey", linewidth=0.6, linestyle=":")
    paths.append(save_png(figure, out_dir / "pareto.png", dpi=110, tight=True))
    return paths


def _optional(value: float | None, spec: str = ".4f") -> str:
    return "-" if value is None else format(value, spec)


def _markdown(rows: list[dict[str, Any]], matched: list[dict[str, Any]], plots: list[Path]) -> str:
    header = ["run", "site", "architecture", "L0", "FVU (all tokens)", "FVU without outliers", "ΔCE (nats)", "KL",
              "effective compute"]
    table = []
    for r in rows:
        compute = f"{r['compute_fraction']:.3g}x ({r['law']})" if r["compute_fraction"] is not None else "-"
        table.append([r["run"], r["site"], r["architecture"], f"{r['l0']:.1f}", f"{r['fvu']:.4f}",
                      _optional(r.get("fvu_without_outliers")), f"{r['delta_ce']:.4f} ± {r['delta_ce_se']:.4f}",
                      f"{r['kl']:.4f}", compute])
    lines = ["# saekit summary", "", markdown_table(header, table)]
    shares = [r["outlier_variance_share"] for r in rows if r.get("outlier_variance_share") is not None]
    if shares:
        held = f"{min(shares):.1%}" if min(shares) == max(shares) else f"{min(shares):.1%} to {max(shares):.1%}"
        lines += ["", f"Outlier-norm tokens (the training rule) hold {held} of the evaluated variance; where that "
                      "is large, compare the FVU without them."]
    if matched:
        fvu = matched[0]["fvu_key"]
        lines += ["", f"## At matched L0 = {matched[0]['target_l0']:.1f}", "",
                  "Interpolated linearly in log L0 between each architecture's two runs that bracket the target "
                  "(a run within 10% of it is used as is). Unmatched: no runs on both sides; the nearest is named.",
                  ""]
        table = []
        for m in matched:
            nearest = f"unmatched (nearest {m['nearest_run']}, L0 {m['nearest_l0']:.1f})"
            source = ", ".join(m["runs"]) if m["matched"] else nearest
            table.append([m["site"], m["architecture"], m["width"], _optional(m["delta_ce"]), _optional(m["kl"]),
                          _optional(m[fvu]), source])
        lines.append(markdown_table(["site", "architecture", "width", "ΔCE (nats)", "KL", fvu.replace("_", " "),
                                     "from runs"], table))
    lines += ["", *[f"![{p.stem}]({p.name})" for p in plots]]
    return "\n".join(lines) + "\n"


TABLE_KEYS = ("run", "site", "architecture", "l0", "fvu", "fvu_without_outliers", "delta_ce", "kl", "compute_fraction")


def _html(markdown_rows: list[dict[str, Any]], plots: list[Path]) -> str:
    cells = "".join(
        "<tr>" + "".join(f"<td>{escape_html(r.get(k) if not isinstance(r.get(k), float) else round(r[k], 4))}</td>"
                         for k in TABLE_KEYS)
        + "</tr>" for r in markdown_rows)
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
                             "sweep.json"})


def summarize(run_dirs: list[Path], out_dir: str | Path, match_l0: float | None = None,
              force: bool = False) -> dict[str, Any]:
    """Write the comparison; ``match_l0`` is the L0 to compare at (default: :func:`default_match_l0`).

    ``out_dir`` may hold nothing but an earlier summary unless ``force`` (a sweep's own directory, where
    its runs live, is written with it)."""
    if not run_dirs:
        raise SaekitError("give at least one evaluated run directory")
    if match_l0 is not None and match_l0 <= 0:
        raise SaekitError(f"--match-l0 must be positive, got {match_l0}")
    output = OutputTarget(Path(out_dir), "report", entries=SUMMARY_ENTRIES, force=force)
    output.check()
    rows = sorted((run_row(Path(d)) for d in run_dirs), key=lambda r: (r["layer"], r["l0"]))
    target = match_l0 if match_l0 is not None else default_match_l0(rows)
    matched = matched_l0(rows, target) if target > 0 else []
    with claim_output(output) as out_dir:
        mark_output(output)
        plots = plot_summary(rows, out_dir, target)
        write_json(out_dir / "summary.json", {"runs": rows, "matched_l0": matched})
        write_text(out_dir / "summary.md", _markdown(rows, matched, plots))
        write_text(out_dir / "summary.html", _html(rows, plots))
    return {"runs": rows, "matched_l0": matched, "plots": [str(p) for p in plots]}
