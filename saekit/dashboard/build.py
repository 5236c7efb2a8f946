"""Build the static dashboard site from an analysis store (no model, no server, no external resources).

Output: ``index.html`` (sortable, searchable table of all analysed latents), ``features/<id>.html``
(one page per latent, for the first ``max_latents``), ``overview.html`` with ``figures/*.png``, and
``neuronpedia/<id>.json`` + ``neuronpedia/FIELDS.md`` (see :mod:`saekit.dashboard.neuronpedia`).
"""

from __future__ import annotations

import json
from pathlib import Path

from torch import Tensor
from tqdm.auto import tqdm

from saekit.analysis.store import AnalysisStore
from saekit.dashboard import figures
from saekit.dashboard.neuronpedia import FIELDS_NOTE, feature_json, model_slug
from saekit.dashboard.pages import DashboardConfig, Interpretations, feature_page, index_page, overview_page
from saekit.io import write_text
from saekit.render import clean_json

FIGURES = {  # title -> file under figures/
    "Feature density (log10)": "density.png",
    "Density x encoder bias x D/E projection": "density_bias_de.png",
    "Decoder geometry vs random baseline": "geometry.png",
}


def _figures(store: AnalysisStore, out_dir: Path) -> dict[str, str]:
    stats = store.stats
    log10_density = stats["log10_density"].double().numpy()
    figure_dir = out_dir / "figures"
    figures.density_figure(log10_density, store.stats_summary["ultra_rare_log10_density"],
                           figure_dir / FIGURES["Feature density (log10)"])
    figures.density_bias_de_figure(log10_density, stats["encoder_bias"].numpy(), stats["de_cosine"].numpy(),
                                   figure_dir / FIGURES["Density x encoder bias x D/E projection"])
    figures.geometry_figure(store.geometry_summary, figure_dir / FIGURES["Decoder geometry vs random baseline"])
    return {title: f"figures/{name}" for title, name in FIGURES.items()}


def page_latents(store: AnalysisStore, max_latents: int | None) -> list[int]:
    return store.latent_ids if max_latents is None else store.latent_ids[:max(0, max_latents)]


def remove_stale(directory: Path, suffix: str, keep: set[int]) -> None:
    """Delete per-latent files (``<id><suffix>``) of an earlier build that this build does not rewrite."""
    if not directory.is_dir():
        return
    for path in directory.iterdir():
        stem = path.name[:-len(suffix)] if path.name.endswith(suffix) else ""
        if stem.isdigit() and int(stem) not in keep:
            path.unlink()


def build_dashboard(
    analysis_dir: str | Path, out_dir: str | Path, config: DashboardConfig | None = None,
    decoder: Tensor | None = None, progress: bool = True, interpretations: Interpretations | None = None,
) -> Path:
    """Write the site into ``out_dir``; ``decoder`` (W_dec) adds Neuronpedia's neuron-alignment fields.

    ``interpretations`` (latent -> explanations and scores, from ``saekit explain``) adds an
    explanation section to feature pages and sortable score columns to the index.
    """
    config = config or DashboardConfig()
    interpretations = interpretations or {}
    store = AnalysisStore(analysis_dir)
    out_dir = Path(out_dir)
    pages = page_latents(store, config.max_latents)
    page_set = set(pages)
    model_id = config.model_id or model_slug(store.manifest["model"])
    remove_stale(out_dir / "features", ".html", page_set)
    remove_stale(out_dir / "neuronpedia", ".json", page_set if config.neuronpedia else set())
    for latent in tqdm(pages, desc="dashboard pages", unit="page", disable=not progress):
        html = feature_page(store, latent, page_set, config, interpretations.get(latent))
        write_text(out_dir / "features" / f"{latent}.html", html)
        if config.neuronpedia:
            row = decoder[latent].detach().float() if decoder is not None else None
            feature = clean_json(feature_json(store, latent, row, model_id, interpretations.get(latent)))
            write_text(out_dir / "neuronpedia" / f"{latent}.json", json.dumps(feature, ensure_ascii=False) + "\n")
    if config.neuronpedia:
        write_text(out_dir / "neuronpedia" / "FIELDS.md", f"# Neuronpedia-shaped feature JSON\n\n{FIELDS_NOTE}")
    write_text(out_dir / "overview.html", overview_page(store, _figures(store, out_dir)))
    write_text(out_dir / "index.html", index_page(store, pages, config, interpretations))
    return out_dir

