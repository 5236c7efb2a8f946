"""The ``analyze`` and ``dashboard`` subcommands (``saekit.cli`` calls :func:`add_analysis_parsers`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from saekit.analysis.analyze import AnalysisConfig, analyze_run
from saekit.cli.argtypes import add_force_flag
from saekit.cli.imports import NAME_HELP, add_dictionary_flags, run_dir
from saekit.jobs.dashboard import DashboardSettings, build_run_dashboard
from saekit.settings import add_flags, from_args

ANALYSIS_SETTINGS = ("tokens", "latents", "batch_contexts", "max_memory_gb")  # AnalysisConfig's flags


def analysis_config(args: argparse.Namespace) -> AnalysisConfig:
    """The analysis settings the flags give (range errors name the flag, before anything loads)."""
    return from_args(AnalysisConfig, args)


def _analyze(args: argparse.Namespace) -> int:
    config = analysis_config(args)
    out = analyze_run(run_dir(args, args.run_dir), config=config)
    print(f"analysis written to {out}")
    return 0


def _dashboard(args: argparse.Namespace) -> int:
    config, settings = analysis_config(args), from_args(DashboardSettings, args)
    out = build_run_dashboard(run_dir(args, args.run_dir), args.out, settings.max_latents, config=config,
                              neuronpedia=settings.neuronpedia, force=args.force)
    print(f"dashboard: {out / 'index.html'}")
    return 0


def add_analysis_parsers(subparsers: argparse._SubParsersAction) -> None:
    """Add ``analyze RUN_DIR`` and ``dashboard RUN_DIR`` to the main parser's subcommands."""
    analyze = subparsers.add_parser("analyze", help="per-latent statistics, decoder geometry, logit weights and "
                                                    "example contexts of a trained run (writes RUN_DIR/analysis)")
    analyze.add_argument("run_dir", metavar="RUN", help=NAME_HELP)
    add_dictionary_flags(analyze)
    add_flags(analyze, AnalysisConfig, only=ANALYSIS_SETTINGS, sections=False,
              title="analysis settings (defaults in [])")
    analyze.set_defaults(handler=_analyze)

    dashboard = subparsers.add_parser("dashboard", help="build a static HTML dashboard from RUN_DIR/analysis "
                                                        "(runs analyze first if it is missing; refuses an "
                                                        "analysis made from another dictionary)")
    dashboard.add_argument("run_dir", metavar="RUN", help=NAME_HELP)
    add_dictionary_flags(dashboard)
    dashboard.add_argument("--out", type=Path, default=None,
                           help="output directory (default RUN_DIR/dashboard); a rebuild replaces it whole, "
                                "so it must be new, empty or an earlier dashboard")
    add_force_flag(dashboard, "--out")
    add_flags(dashboard, DashboardSettings, title="dashboard settings (defaults in [])")
    add_flags(dashboard, AnalysisConfig, only=ANALYSIS_SETTINGS, sections=False,
              title="analysis settings, if it must be run (defaults in []); --max-memory-gb also bounds reading "
                    "the store")
    dashboard.set_defaults(handler=_dashboard)
