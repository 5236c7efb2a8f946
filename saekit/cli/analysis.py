"""The ``analyze`` and ``dashboard`` subcommands (``saekit.cli`` calls :func:`add_analysis_parsers`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from saekit.analysis.analyze import AnalysisConfig, analyze_run
from saekit.cli.argtypes import add_force_flag, gigabytes, latent_count, positive_int
from saekit.cli.imports import NAME_HELP, add_dictionary_flags, run_dir
from saekit.jobs.dashboard import build_run_dashboard

MEMORY_HELP = ("refuse to start when the estimated peak memory is over this many GB (default: 90%% of the memory "
               "free when the check runs)")


def _analyze(args: argparse.Namespace) -> int:
    config = AnalysisConfig(tokens=args.tokens, latents=args.latents, batch_contexts=args.batch_contexts,
                            max_memory_gb=args.max_memory_gb)
    out = analyze_run(run_dir(args, args.run_dir), config=config)
    print(f"analysis written to {out}")
    return 0


def _dashboard(args: argparse.Namespace) -> int:
    config = AnalysisConfig(tokens=args.tokens, latents=args.latents, batch_contexts=args.batch_contexts,
                            max_memory_gb=args.max_memory_gb)
    out = build_run_dashboard(run_dir(args, args.run_dir), args.out, args.max_latents, config=config,
                              neuronpedia=not args.no_neuronpedia, force=args.force)
    print(f"dashboard: {out / 'index.html'}")
    return 0


def add_analysis_parsers(subparsers: argparse._SubParsersAction) -> None:
    """Add ``analyze RUN_DIR`` and ``dashboard RUN_DIR`` to the main parser's subcommands."""
    defaults = AnalysisConfig()
    analyze = subparsers.add_parser("analyze", help="per-latent statistics, decoder geometry, logit weights and "
                                                    "example contexts of a trained run (writes RUN_DIR/analysis)")
    analyze.add_argument("run_dir", metavar="RUN", help=NAME_HELP)
    add_dictionary_flags(analyze)
    analyze.add_argument("--tokens", type=positive_int, default=defaults.tokens,
                         help=f"held-out tokens to stream through the model (default {defaults.tokens})")
    analyze.add_argument("--latents", type=latent_count, default=None, metavar="all|N",
                         help="analyse all latents (default) or the first N")
    analyze.add_argument("--batch-contexts", type=positive_int, default=defaults.batch_contexts,
                         help=f"contexts encoded at once; memory grows with it [{defaults.batch_contexts}]")
    analyze.add_argument("--max-memory-gb", type=gigabytes, default=None, help=MEMORY_HELP)
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
    dashboard.add_argument("--max-latents", type=positive_int, default=None,
                           help="feature pages for the first N analysed latents (default all; the index lists all)")
    dashboard.add_argument("--no-neuronpedia", action="store_true",
                           help="skip the Neuronpedia-shaped per-feature JSON (neuronpedia/<id>.json)")
    dashboard.add_argument("--tokens", type=positive_int, default=defaults.tokens,
                           help="tokens for the analysis, if it must be run")
    dashboard.add_argument("--latents", type=latent_count, default=None, metavar="all|N",
                           help="latents for the analysis, if it must be run")
    dashboard.add_argument("--batch-contexts", type=positive_int, default=defaults.batch_contexts,
                           help="contexts encoded at once by the analysis, if it must be run")
    dashboard.add_argument("--max-memory-gb", type=gigabytes, default=None,
                           help=f"{MEMORY_HELP}: the analysis, if it must be run, then reading the store")
    dashboard.set_defaults(handler=_dashboard)
