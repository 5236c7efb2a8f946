"""A run's dashboard: analyse the run if needed, gather its explanations, build the static site."""

from __future__ import annotations

from pathlib import Path

from saekit.analysis.analyze import AnalysisConfig, analyze_run
from saekit.analysis.store import ANALYSIS_DIR, store_exists
from saekit.autointerp.pipeline import scores_for_dashboard
from saekit.dashboard.build import build_dashboard
from saekit.dashboard.pages import DashboardConfig
from saekit.dictionaries.registry import load_dictionary
from saekit.errors import SaekitError
from saekit.models.loading import LoadedModel
from saekit.training.run import DICTIONARY_DIR

DASHBOARD_DIR = "dashboard"


def build_run_dashboard(run_dir: Path, out: Path | None = None, max_latents: int | None = None,
                        loaded: LoadedModel | None = None, config: AnalysisConfig | None = None,
                        neuronpedia: bool = True) -> Path:
    """Build ``RUN_DIR/dashboard`` (or ``out``) from the analysis store, analysing first if it is missing.

    Explanations and scores from ``saekit explain`` (``RUN_DIR/autointerp``) are shown when present.
    """
    analysis_dir = run_dir / ANALYSIS_DIR
    if not store_exists(analysis_dir):
        analyze_run(run_dir, loaded, config)
    dictionary, _ = load_dictionary(run_dir / DICTIONARY_DIR)
    dashboard = DashboardConfig(max_latents=max_latents, neuronpedia=neuronpedia)
    return build_dashboard(analysis_dir, out or run_dir / DASHBOARD_DIR, dashboard, decoder=dictionary.W_dec.detach(),
                           interpretations=scores_for_dashboard(run_dir))


def rebuild_existing_dashboard(run_dir: Path) -> Path | None:
    """Rebuild a run's dashboard as it was (same page count), e.g. after new explanations; None if it has none."""
    dashboard = run_dir / DASHBOARD_DIR
    if not (dashboard / "index.html").is_file():
        return None
    pages = len(list((dashboard / "features").glob("*.html"))) or None
    return build_run_dashboard(run_dir, max_latents=pages)


def build_quick_dashboard(run_dir: str | Path, loaded_model: LoadedModel, tokens: int = 8192,
                          max_latents: int | None = 500) -> Path:
    """Analyse a freshly trained run with the already-loaded model and build its dashboard; returns its directory."""
    run_dir = Path(run_dir)
    if tokens < 1:
        raise SaekitError(f"tokens must be positive, got {tokens}")
    config = AnalysisConfig(tokens=tokens)
    analyze_run(run_dir, loaded_model, config)  # always fresh: the run may have been retrained
    return build_run_dashboard(run_dir, max_latents=max_latents, loaded=loaded_model, config=config)
