"""Headless figure helpers for the toy experiments: Agg-only figures written atomically as PNG (by saekit.render)."""

from __future__ import annotations

from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from saekit import render


def new_figure(width: float = 6.4, height: float = 4.8, ncols: int = 1) -> tuple[Figure, list]:
    """A figure on the Agg canvas (no pyplot, no global backend switch) and its axes as a list."""
    figure = Figure(figsize=(width, height))
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, ncols, squeeze=False)[0]
    return figure, list(axes)


def save_png(figure: Figure, path: str | Path) -> Path:
    """Lay the figure out tightly; write it as a 120-dpi PNG with :func:`saekit.render.save_png`, which closes it."""
    figure.tight_layout()
    return render.save_png(figure, path, dpi=120)
