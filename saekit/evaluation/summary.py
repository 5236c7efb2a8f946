"""``saekit report``: a comparison of evaluated runs as markdown + HTML with plots.

Reads each run's ``metrics.json`` and draws ΔCE by layer, and the Pareto views L0 vs ΔCE and
L0 vs effective-compute fraction (the frontier points are marked), then writes ``summary.json``,
``summary.md`` and ``summary.html`` (plots embedded as PNG) into the output directory.
"""

from __future__ import annotations

import base64
from html import escape
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from saekit.errors import SaekitError  # noqa: E402
from saekit.io import atomic_write, read_json, write_json, write_text  # noqa: E402
from saekit.models.sites import parse_site  # noqa: E402


def run_row(run_dir: Path) -> dict[str, Any]:
    metrics = read_json(run_dir / "metrics.json", "metrics (run `saekit evaluate` first)")
    site = metrics["sites"][0].split("->")[-1]
    (reconstruction,) = [v for k, v in metrics["reconstruction"].items() if k == site] or list(
        metrics["reconstruction"].values())[:1]
    run = metrics.get("run", {})
    compute = metrics.get("effective_compute", {})
    return {
        "run": run_dir.name, "site": site, "layer": parse_site(site).layer,
        "architecture": run.get("architecture", "?"), "width": run.get("width") or run.get("expansion_factor"),
        "l0": reconstruction["l0_mean"], "fvu": reconstruction["fvu"],
        "ce_clean": metrics["losses"]["ce_clean"]["mean"], "delta_ce": metrics["losses"]["delta_ce_spliced"]["mean"],
        "delta_ce_se": metrics["losses"]["delta_ce_spliced"]["se"], "kl": metrics["losses"]["kl_spliced"]["mean"],
        "compute_fraction": compute.get("compute_fraction"), "law": compute.get("law", {}).get("name"),
    }


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of points not dominated in (lower x, lower y)."""
    return [i for i, (x, y) in enumerate(points)
            if not any((x2 <= x and y2 <= y) and (x2 < x or y2 < y) for x2, y2 in points)]


def _scatter(ax: Any, rows: list[dict[str, Any]], y_key: str, ylabel: str, lower_is_better: bool = True) -> None:
    points = [(r["l0"], r[y_key] if lower_is_better else -r[y_key]) for r in rows]
    front = set(pareto_front(points))
    for architecture in sorted({r["architecture"] for r in rows}):
        chosen = [r for r in rows if r["architecture"] == architecture]
        ax.scatter([r["l0"] for r in chosen], [r[y_key] for r in chosen], label=architecture)
    frontier = sorted((rows[i]["l0"], rows[i][y_key]) for i in front)
    ax.plot([p[0] for p in frontier], [p[1] for p in frontier], "k--", linewidth=0.8, label="Pareto frontier")
    ax.set_xlabel("L0 (mean active latents per token)")
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=7)


def _figure_png(figure: Any, path: Path) -> None:
    atomic_write(path, lambda tmp: figure.savefig(tmp, format="png", dpi=110, bbox_inches="tight"))
    plt.close(figure)


def plot_summary(rows: list[dict[str, Any]], out_dir: Path) -> list[Path]:
    paths = []
    figure, ax = plt.subplots(figsize=(5, 3.5))
    for architecture in sorted({r["architecture"] for r in rows}):
        chosen = sorted((r for r in rows if r["architecture"] == architecture), key=lambda r: r["layer"])
        ax.errorbar([r["layer"] for r in chosen], [r["delta_ce"] for r in chosen],
                    yerr=[r["delta_ce_se"] for r in chosen], marker="o", label=architecture, capsize=2)
    ax.set_xlabel("layer")
    ax.set_ylabel("ΔCE spliced - clean (nats)")
    ax.legend(fontsize=7)
    paths.append(out_dir / "delta_ce_by_layer.png")
    _figure_png(figure, paths[-1])
    figure, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    _scatter(axes[0], rows, "delta_ce", "ΔCE (nats)")
    with_compute = [r for r in rows if r["compute_fraction"] is not None]
    if with_compute:
        _scatter(axes[1], with_compute, "compute_fraction", "effective compute fraction", lower_is_better=False)
        axes[1].set_yscale("log")
    paths.append(out_dir / "pareto.png")
    _figure_png(figure, paths[-1])
    return paths


def _markdown(rows: list[dict[str, Any]], plots: list[Path]) -> str:
    header = "| run | site | architecture | L0 | FVU | ΔCE (nats) | KL | effective compute |"
    lines = ["# saekit summary", "", header, "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        compute = f"{r['compute_fraction']:.3g}x ({r['law']})" if r["compute_fraction"] is not None else "-"
        lines.append(f"| {r['run']} | {r['site']} | {r['architecture']} | {r['l0']:.1f} | {r['fvu']:.4f} | "
                     f"{r['delta_ce']:.4f} ± {r['delta_ce_se']:.4f} | {r['kl']:.4f} | {compute} |")
    lines += ["", *[f"![{p.stem}]({p.name})" for p in plots]]
    return "\n".join(lines) + "\n"


def _html(markdown_rows: list[dict[str, Any]], plots: list[Path]) -> str:
    cells = "".join(
        "<tr>" + "".join(f"<td>{escape(str(r[k] if not isinstance(r[k], float) else round(r[k], 4)))}</td>"
                         for k in ("run", "site", "architecture", "l0", "fvu", "delta_ce", "kl", "compute_fraction"))
        + "</tr>" for r in markdown_rows)
    images = "".join(f'<img alt="{escape(p.stem)}" src="data:image/png;base64,'
                     f'{base64.b64encode(p.read_bytes()).decode()}">' for p in plots)
    head = "".join(f"<th>{h}</th>" for h in ("run", "site", "architecture", "L0", "FVU", "ΔCE", "KL", "compute"))
    return ("<!doctype html><meta charset='utf-8'><title>saekit summary</title>"
            "<style>body{font-family:sans-serif;margin:2em}td,th{padding:4px 8px;border-bottom:1px solid #ddd}"
            "img{max-width:48%;margin:1em 1% 0 0}</style><h1>saekit summary</h1>"
            f"<table><tr>{head}</tr>{cells}</table>{images}")


def summarize(run_dirs: list[Path], out_dir: str | Path) -> dict[str, Any]:
    if not run_dirs:
        raise SaekitError("give at least one evaluated run directory")
    out_dir = Path(out_dir)
    rows = sorted((run_row(Path(d)) for d in run_dirs), key=lambda r: (r["layer"], r["l0"]))
    plots = plot_summary(rows, out_dir)
    write_json(out_dir / "summary.json", {"runs": rows})
    write_text(out_dir / "summary.md", _markdown(rows, plots))
    write_text(out_dir / "summary.html", _html(rows, plots))
    return {"runs": rows, "plots": [str(p) for p in plots]}
