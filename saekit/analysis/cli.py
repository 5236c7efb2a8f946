"""The ``analyze`` and ``dashboard`` subcommands, and the quickstart's dashboard hook.

``saekit.cli`` calls :func:`add_analysis_parsers`; the quickstart calls :func:`build_quick_dashboard`
with the model it already loaded.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from saekit.analysis.analyze import AnalysisConfig, analyze_run
from saekit.analysis.store import ANALYSIS_DIR, store_exists
from saekit.argtypes import latent_count, positive_int
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
    from saekit.autointerp.pipeline import scores_for_dashboard
    from saekit.dashboard.build import build_dashboard
    from saekit.dashboard.pages import DashboardConfig

    analysis_dir = run_dir / ANALYSIS_DIR
    if not store_exists(analysis_dir):
        analyze_run(run_dir, loaded, config)
    dictionary, _ = load_dictionary(run_dir / DICTIONARY_DIR)
    dashboard = DashboardConfig(max_latents=max_latents, neuronpedia=neuronpedia)
    return build_dashboard(analysis_dir, out or run_dir / DASHBOARD_DIR, dashboard, decoder=dictionary.W_dec.detach(),
                           interpretations=scores_for_dashboard(run_dir))


def _analyze(args: argparse.Namespace) -> int:
    config = AnalysisConfig(tokens=args.tokens, latents=args.latents, batch_contexts=args.batch_contexts)
    out = analyze_run(args.run_dir, config=config)
    print(f"analysis written to {out}")
    return 0


def _dashboard(args: argparse.Namespace) -> int:
    config = AnalysisConfig(tokens=args.tokens, latents=args.latents)
    out = build_run_dashboard(args.run_dir, args.out, args.max_latents, config=config,
                              neuronpedia=not args.no_neuronpedia)
    print(f"dashboard: {out / 'index.html'}")
    return 0


def add_analysis_parsers(subparsers: argparse._SubParsersAction) -> None:
    """Add ``analyze RUN_DIR`` and ``dashboard RUN_DIR`` to the main parser's subcommands."""
    defaults = AnalysisConfig()
    analyze = subparsers.add_parser("analyze", help="per-latent statistics, decoder geometry, logit weights and "
                                                    "example contexts of a trained run (writes RUN_DIR/analysis)")
    analyze.add_argument("run_dir", type=Path)
    analyze.add_argument("--tokens", type=positive_int, default=defaults.tokens,
                         help=f"held-out tokens to stream through the model (default {defaults.tokens})")
    analyze.add_argument("--latents", type=latent_count, default=None, metavar="all|N",
                         help="analyse all latents (default) or the first N")
    analyze.add_argument("--batch-contexts", type=positive_int, default=defaults.batch_contexts)
    analyze.set_defaults(handler=_analyze)

    dashboard = subparsers.add_parser("dashboard", help="build a static HTML dashboard from RUN_DIR/analysis "
                                                        "(runs analyze first if it is missing)")
    dashboard.add_argument("run_dir", type=Path)
    dashboard.add_argument("--out", type=Path, default=None, help="output directory (default RUN_DIR/dashboard)")
    dashboard.add_argument("--max-latents", type=positive_int, default=None,
                           help="feature pages for the first N analysed latents (default all; the index lists all)")
    dashboard.add_argument("--no-neuronpedia", action="store_true",
                           help="skip the Neuronpedia-shaped per-feature JSON (neuronpedia/<id>.json)")
    dashboard.add_argument("--tokens", type=positive_int, default=defaults.tokens,
                           help="tokens for the analysis, if it must be run")
    dashboard.add_argument("--latents", type=latent_count, default=None, metavar="all|N",
                           help="latents for the analysis, if it must be run")
    dashboard.set_defaults(handler=_dashboard)


def build_quick_dashboard(run_dir: str | Path, loaded_model: LoadedModel, tokens: int = 8192,
                          max_latents: int | None = 500) -> Path:
    """Analyse a freshly trained run with the already-loaded model and build its dashboard; returns its directory."""
    run_dir = Path(run_dir)
    if tokens < 1:
        raise SaekitError(f"tokens must be positive, got {tokens}")
    config = AnalysisConfig(tokens=tokens)
    analyze_run(run_dir, loaded_model, config)  # always fresh: the run may have been retrained
    return build_run_dashboard(run_dir, max_latents=max_latents, loaded=loaded_model, config=config)
