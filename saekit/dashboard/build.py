"""Build the static dashboard site from an analysis store (no model, no server, no external resources).

Output: ``index.html`` (sortable, searchable table of all analysed latents), ``features/<id>.html``
(one page per latent, for the first ``max_latents``), ``overview.html`` with ``figures/*.png``, and
``neuronpedia/<id>.json`` + ``neuronpedia/FIELDS.md`` (see :mod:`saekit.dashboard.neuronpedia`), and
``manifest.json``: what the site was made from (the analysis store's and the dictionary's fingerprints).

The whole site is built in a temporary directory and swapped in when complete, so a failed rebuild
leaves the previous site as it was, never half old and half new.
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
from saekit.io import OutputTarget, write_directory, write_json, write_text
from saekit.render import clean_json

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
# Everything a build writes at the top level: a rebuild replaces the directory whole, so an existing
# output holding anything else is refused rather than deleted.
SITE_ENTRIES = frozenset({"index.html", "overview.html", "features", "figures", "neuronpedia", MANIFEST})

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


def site_manifest(store: AnalysisStore, config: DashboardConfig, pages: list[int], interpretations: Interpretations,
                  dictionary_fingerprint: str | None) -> dict:
    """What ``manifest.json`` records: the inputs of the site, and the settings a rebuild repeats."""
    return {
        "format_version": FORMAT_VERSION, "analysis": str(store.directory), "analysis_fingerprint": store.fingerprint,
        "dictionary_fingerprint": dictionary_fingerprint or store.dictionary_fingerprint,
        "data_fingerprint": store.manifest.get("data_fingerprint"), "model": store.manifest.get("model"),
        "site": store.manifest.get("site"), "latents_indexed": len(store.latent_ids), "pages": len(pages),
        "max_latents": config.max_latents, "neuronpedia": config.neuronpedia,
        "interpreted_latents": len(interpretations),
    }


def _write_site(store: AnalysisStore, out_dir: Path, config: DashboardConfig, decoder: Tensor | None, progress: bool,
                interpretations: Interpretations, dictionary_fingerprint: str | None) -> None:
    pages = page_latents(store, config.max_latents)
    page_set = set(pages)
    model_id = config.model_id or model_slug(store.manifest["model"])
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
    write_json(out_dir / MANIFEST, site_manifest(store, config, pages, interpretations, dictionary_fingerprint))


def site_target(out_dir: Path, analysis_dir: Path, force: bool = False) -> OutputTarget:
    """A dashboard's output: it may hold an earlier site only (unless ``force``), and never the store it reads."""
    return OutputTarget(Path(out_dir), "dashboard", inputs=(Path(analysis_dir),), entries=SITE_ENTRIES, force=force)


def build_dashboard(
    analysis: str | Path | AnalysisStore, out_dir: str | Path, config: DashboardConfig | None = None,
    decoder: Tensor | None = None, progress: bool = True, interpretations: Interpretations | None = None,
    dictionary_fingerprint: str | None = None, force: bool = False,
) -> Path:
    """Write the site into ``out_dir`` (replacing an earlier build whole); returns ``out_dir``.

    ``out_dir`` may not hold anything but an earlier site (``force`` replaces it anyway) nor the store.

    ``analysis`` is the store (or its directory). ``decoder`` (W_dec) adds Neuronpedia's
    neuron-alignment fields and must fit the store's shape. ``interpretations`` (latent -> explanations
    and scores, from ``saekit explain``) adds an explanation section to feature pages and sortable
    score columns to the index. ``dictionary_fingerprint`` (the decoder's dictionary) is checked against
    the one the store recorded and written to ``manifest.json``.
    """
    config = config or DashboardConfig()
    interpretations = interpretations or {}
    store = analysis if isinstance(analysis, AnalysisStore) else AnalysisStore(analysis)
    out_dir = Path(out_dir)
    store.check_pairing(decoder, dictionary_fingerprint)

    def write(site: Path) -> None:
        _write_site(store, site, config, decoder, progress, interpretations, dictionary_fingerprint)
    return write_directory(site_target(out_dir, store.directory, force), write)
