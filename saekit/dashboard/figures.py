"""Dashboard figures: small inline SVG histograms per latent, and the global PNGs (matplotlib, Agg canvas).

Global figures: the log10-density histogram; log10 density against encoder bias and against the
D/E projection (colour = the other); the decoder max/10th/100th cosine histograms against the random
baseline of the same shape. The Agg canvas is created per figure, so no global backend is switched.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from saekit.dashboard.html import fmt
from saekit.render import escape_html as esc
from saekit.render import save_png

DEAD_COLUMN_OFFSET = 0.75  # dead latents are drawn this far left of the lowest live log10 density


def svg_histogram(counts: Sequence[int], edges: Sequence[float], log_x: bool, width: int = 380,
                  height: int = 130, colour: str = "#f28c28") -> str:
    """A bar histogram of the populated bins as an inline SVG (all labels are numbers we formatted)."""
    nonzero = [i for i, c in enumerate(counts) if c > 0]
    if not nonzero:
        return '<p class="muted">no non-zero values</p>'
    first, last = max(0, nonzero[0] - 1), min(len(counts) - 1, nonzero[-1] + 1)
    shown = counts[first:last + 1]
    top = max(shown)
    pad_left, pad_right, plot_h = 36, 12, height - 24
    bar_w = (width - pad_left - pad_right) / len(shown)
    bars = []
    for i, count in enumerate(shown):
        h = plot_h * count / top
        x = pad_left + i * bar_w
        label = f"{fmt(edges[first + i])} to {fmt(edges[first + i + 1])}: {count}"
        bars.append(f'<rect x="{x:.1f}" y="{4 + plot_h - h:.1f}" width="{max(bar_w - 1, 0.5):.1f}" '
                    f'height="{h:.1f}" fill="{colour}"><title>{esc(label)}</title></rect>')
    ticks = []
    for i in sorted({0, len(shown) // 2, len(shown)}):
        x = pad_left + i * bar_w
        value = edges[first + i]
        text = f"1e{math.log10(value):.1f}" if log_x and value > 0 else fmt(value)
        anchor = "start" if i == 0 else "end" if i == len(shown) else "middle"
        ticks.append(f'<text x="{x:.1f}" y="{height - 4}" text-anchor="{anchor}">{esc(text)}</text>')
    axis = (f'<text x="2" y="12">{top}</text><text x="2" y="{4 + plot_h}">0</text>'
            f'<line x1="{pad_left}" y1="{4 + plot_h}" x2="{width - pad_right}" y2="{4 + plot_h}" stroke="#999"/>')
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            f'role="img">{axis}{"".join(bars)}{"".join(ticks)}</svg>')


def svg_layer_bars(labels: Sequence[str], values: Sequence[float], width: int = 380, height: int = 130,
                   colour: str = "#4c78a8") -> str:
    """One bar per output layer (a cross-layer latent's decoder norm into each), as an inline SVG."""
    top = max(values, default=0.0)
    if top <= 0:
        return '<p class="muted">writes no layer</p>'
    pad_left, pad_right, plot_h = 36, 12, height - 24
    bar_w = (width - pad_left - pad_right) / len(values)
    bars = []
    for i, (label, value) in enumerate(zip(labels, values)):
        h = plot_h * value / top
        bars.append(f'<rect x="{pad_left + i * bar_w:.1f}" y="{4 + plot_h - h:.1f}" '
                    f'width="{max(bar_w - 1, 0.5):.1f}" height="{h:.1f}" fill="{colour}">'
                    f'<title>{esc(f"{label}: {fmt(value)}")}</title></rect>')
    ticks = [f'<text x="{pad_left + (i + 0.5) * bar_w:.1f}" y="{height - 4}" text-anchor="middle">'
             f'{esc(labels[i])}</text>' for i in sorted({0, len(values) // 2, len(values) - 1})]
    axis = (f'<text x="2" y="12">{esc(fmt(top))}</text><text x="2" y="{4 + plot_h}">0</text>'
            f'<line x1="{pad_left}" y1="{4 + plot_h}" x2="{width - pad_right}" y2="{4 + plot_h}" stroke="#999"/>')
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            f'role="img">{axis}{"".join(bars)}{"".join(ticks)}</svg>')


def density_figure(log10_density: np.ndarray, rule_threshold: float, path: Path) -> None:
    figure = Figure(figsize=(7, 3.6), layout="constrained")
    axes = figure.add_subplot()
    live = log10_density[np.isfinite(log10_density)]
    dead = int((~np.isfinite(log10_density)).sum())
    if len(live):
        axes.hist(live, bins=60, color="#4c78a8")
    axes.axvline(rule_threshold, color="#d62728", linestyle="--", label=f"ultra-rare below {rule_threshold}")
    axes.set_xlabel("log10 density (fraction of tokens on which the latent fires)")
    axes.set_ylabel("latents")
    axes.set_title(f"Feature density ({len(live)} live, {dead} dead not shown)")
    axes.legend(loc="upper left", fontsize=8)
    save_png(figure, path, dpi=110)


def _scatter_x(log10_density: np.ndarray) -> np.ndarray:
    live = log10_density[np.isfinite(log10_density)]
    dead_x = (live.min() if len(live) else -5.0) - DEAD_COLUMN_OFFSET
    return np.where(np.isfinite(log10_density), log10_density, dead_x)


def density_bias_de_figure(log10_density: np.ndarray, bias: np.ndarray, de: np.ndarray, path: Path) -> None:
    """Left: log10 density vs encoder bias, colour = D/E. Right: log10 density vs D/E, colour = bias."""
    figure = Figure(figsize=(12, 4.4), layout="constrained")
    x = _scatter_x(log10_density)
    has_de = bool(np.isfinite(de).any())
    left, right = figure.add_subplot(1, 2, 1), figure.add_subplot(1, 2, 2)
    points = left.scatter(x, bias, c=de if has_de else "#4c78a8", cmap="coolwarm", vmin=-1, vmax=1, s=6,
                          alpha=0.8, linewidths=0)
    if has_de:
        figure.colorbar(points, ax=left, label="D/E projection (cos encoder, decoder)")
    left.set_xlabel("log10 density (dead latents: leftmost column)")
    left.set_ylabel("encoder bias")
    left.set_title("Density x encoder bias")
    if has_de:
        points = right.scatter(x, de, c=bias, cmap="viridis", s=6, alpha=0.8, linewidths=0)
        figure.colorbar(points, ax=right, label="encoder bias")
        right.set_ylabel("D/E projection")
        right.set_ylim(-1.05, 1.05)
        right.set_title("Density x D/E projection")
    else:
        right.text(0.5, 0.5, "D/E projection undefined:\nencoder and decoder live in different spaces",
                   ha="center", va="center", transform=right.transAxes)
        right.set_axis_off()
    right.set_xlabel("log10 density")
    for axes in (left, right):
        axes.ticklabel_format(useOffset=False)
    save_png(figure, path, dpi=110)


def geometry_figure(summary: dict[str, Any], path: Path) -> None:
    """Histograms (fractions of latents) of the max, 10th and 100th cosine vs the random baseline."""
    edges = np.asarray(summary["histogram_edges"])
    centres = (edges[:-1] + edges[1:]) / 2
    figure = Figure(figsize=(8, 3.8), layout="constrained")
    axes = figure.add_subplot()
    colours = {1: "#d62728", 10: "#2ca02c", 100: "#1f77b4"}
    lows = []
    for rank in summary["ranks"]:
        for source, style in (("decoder", "-"), ("random_baseline", ":")):
            counts = np.asarray(summary[source][f"rank_{rank}"]["histogram"], dtype=float)
            if counts.sum() == 0:
                continue
            lows.append(centres[counts > 0].min())
            label = f"{'decoder' if source == 'decoder' else 'random'} {'max' if rank == 1 else f'#{rank}'}"
            axes.plot(centres, counts / counts.sum(), style, color=colours.get(rank, "k"), label=label, lw=1.3)
    peak = summary.get("peak", {}).get("range")
    if peak:
        axes.axvspan(peak[0], peak[1], color="#ffbf00", alpha=0.3, label="peak analysed")
    axes.set_xlim(max(-1.0, min(lows, default=0.0) - 0.05), 1.0)
    axes.set_xlabel("cosine similarity to the k-th nearest other decoder direction")
    axes.set_ylabel("fraction of latents")
    axes.set_title(f"Decoder geometry vs random unit vectors of the same shape {tuple(summary['shape'])}")
    axes.legend(fontsize=8, ncol=2)
    save_png(figure, path, dpi=110)
