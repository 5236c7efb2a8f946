"""A run's dashboard: analyse the run if needed, gather its explanations, build the static site.

A missing analysis store is made first, as it always was; a store made from another dictionary
(copied from another run, or left from before a retrain) is refused with one line asking for
``saekit analyze`` instead of being redone silently, since an analysis can take many minutes.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path

from saekit.analysis.analyze import AnalysisConfig, analyze_run
from saekit.analysis.store import ANALYSIS_DIR, open_run_store, store_exists
from saekit.autointerp.pipeline import scores_for_dashboard
from saekit.dashboard.build import MANIFEST, build_dashboard, site_target
from saekit.dashboard.pages import DashboardConfig
from saekit.dictionaries.registry import dictionary_fingerprint, load_dictionary
from saekit.errors import SaekitError
from saekit.io import read_json
from saekit.locks import exclusive
from saekit.memory import gigabytes, memory_budget
from saekit.models.loading import LoadedModel
from saekit.rundir import DASHBOARD_DIR, DICTIONARY_DIR
from saekit.settings import setting


@dataclass(frozen=True)
class DashboardSettings:
    """What ``saekit dashboard`` builds, beyond the analysis it may have to run."""

    max_latents: int | None = setting(None, "feature pages for the first N analysed latents (the index lists all)",
                                      minimum=1, none="all")
    neuronpedia: bool = setting(True, "skip the Neuronpedia-shaped per-feature JSON (neuronpedia/<id>.json)",
                                flag="no_neuronpedia", switch=True)


def run_lock(run_dir: Path) -> AbstractContextManager[None]:
    """The run directory's writer lock; refuses a missing run dir first (the lock would create it)."""
    if not run_dir.is_dir():
        raise SaekitError(f"run directory not found: {run_dir}")
    return exclusive(run_dir)


def check_dashboard_memory(run_dir: Path, max_memory_gb: float | None) -> None:
    """Refuse (one line) a dashboard whose inputs will not fit: the analysis store's tensors and the
    dictionary are read whole, so their files' sizes are what they take."""
    store = sum(path.stat().st_size for path in (run_dir / ANALYSIS_DIR).iterdir() if path.is_file())
    dictionary = sum(path.stat().st_size for path in (run_dir / DICTIONARY_DIR).iterdir() if path.is_file())
    budget = memory_budget(max_memory_gb)
    if budget is not None and store + dictionary > budget:
        raise SaekitError(f"the dashboard would read {gigabytes(store + dictionary)} (the analysis store "
                          f"{gigabytes(store)}, the dictionary {gigabytes(dictionary)}), over the "
                          f"{gigabytes(budget)} budget; make a smaller store with `saekit analyze {run_dir} "
                          "--latents N`, or raise --max-memory-gb")


def build_run_dashboard(run_dir: Path, out: Path | None = None, max_latents: int | None = DashboardSettings.max_latents,
                        loaded: LoadedModel | None = None, config: AnalysisConfig | None = None,
                        neuronpedia: bool = DashboardSettings.neuronpedia, force: bool = False) -> Path:
    """Build ``RUN_DIR/dashboard`` (or ``out``) from the analysis store, analysing first if it is missing.

    ``out`` is checked before the analysis runs: it may hold only an earlier site unless ``force``.

    A store made from another dictionary is refused before anything is written. Explanations and
    scores from ``saekit explain`` (``RUN_DIR/autointerp``) are shown when present.
    """
    run_dir = Path(run_dir)
    out = out or run_dir / DASHBOARD_DIR
    site_target(out, run_dir / ANALYSIS_DIR, force).check()
    with run_lock(run_dir):
        if not store_exists(run_dir / ANALYSIS_DIR):
            analyze_run(run_dir, loaded, config)  # refuses an analysis over config.max_memory_gb
        check_dashboard_memory(run_dir, config.max_memory_gb if config is not None else None)
        store = open_run_store(run_dir)
        dictionary, _ = load_dictionary(run_dir / DICTIONARY_DIR)
        dashboard = DashboardConfig(max_latents=max_latents, neuronpedia=neuronpedia)
        return build_dashboard(store, out, dashboard, force=force,
                               decoder=dictionary.decoder_directions().detach(),
                               interpretations=scores_for_dashboard(run_dir),
                               dictionary_fingerprint=dictionary_fingerprint(run_dir / DICTIONARY_DIR))


def rebuild_existing_dashboard(run_dir: Path) -> Path | None:
    """Rebuild a run's dashboard as it was (same pages, same Neuronpedia choice); None if it has none."""
    run_dir = Path(run_dir)
    dashboard = run_dir / DASHBOARD_DIR
    if not (dashboard / "index.html").is_file():
        return None
    if (dashboard / MANIFEST).is_file():
        recorded = read_json(dashboard / MANIFEST, "dashboard manifest")
        return build_run_dashboard(run_dir, max_latents=recorded.get("max_latents"),
                                   neuronpedia=bool(recorded.get("neuronpedia", True)))
    pages = len(list((dashboard / "features").glob("*.html"))) or None  # a site from before manifests
    return build_run_dashboard(run_dir, max_latents=pages)


def build_quick_dashboard(run_dir: str | Path, loaded_model: LoadedModel, tokens: int = 8192,
                          max_latents: int | None = 500) -> Path:
    """Analyse a freshly trained run with the already-loaded model and build its dashboard; returns its directory."""
    run_dir = Path(run_dir)
    if tokens < 1:
        raise SaekitError(f"tokens must be positive, got {tokens}")
    config = AnalysisConfig(tokens=tokens)
    with run_lock(run_dir):
        analyze_run(run_dir, loaded_model, config)  # always fresh: the run may have been retrained
        return build_run_dashboard(run_dir, max_latents=max_latents, loaded=loaded_model, config=config)
