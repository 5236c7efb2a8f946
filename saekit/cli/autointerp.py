"""The ``explain`` and ``control`` subcommands (``saekit.cli`` calls :func:`add_autointerp_parsers`).

Their flags are generated from :class:`~saekit.jobs.explain.ExplainSettings` (and ``control``'s from
:class:`~saekit.jobs.control.ControlSettings`), whose defaults are read from the autointerp config classes.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from saekit.autointerp.pipeline import AutointerpConfig
from saekit.cli.imports import NAME_HELP, add_dictionary_flags, run_dir
from saekit.jobs.explain import ExplainSettings
from saekit.settings import add_flags, from_args


def _add_settings(parser: argparse.ArgumentParser, settings: type[ExplainSettings],
                  takes_imports: bool = False) -> None:
    # The control retrains the run's recipe, which an imported dictionary does not have: runs only.
    if takes_imports:
        parser.add_argument("run_dir", metavar="RUN", help=NAME_HELP)
    else:
        parser.add_argument("run_dir", type=Path, help="the run directory")
    add_flags(parser, settings, title="autointerp settings (defaults in [])")
    parser.set_defaults(settings=settings)


def settings_from_args(args: argparse.Namespace) -> ExplainSettings:
    """The command's settings (ExplainSettings, or ControlSettings for ``control``); range errors name the flag."""
    return from_args(args.settings, args)


def config_from_args(args: argparse.Namespace) -> AutointerpConfig:
    """The :class:`AutointerpConfig` the flags give, validated before any model loads."""
    return settings_from_args(args).autointerp()


def run_explain(args: argparse.Namespace) -> int:
    """``saekit explain RUN_DIR``: analyse first if needed, then explain and score; prints the report."""
    from saekit.autointerp.pipeline import REPORT
    from saekit.jobs.explain import explain_run

    config = config_from_args(args)  # bad flags fail before an import loads a model
    run = run_dir(args, args.run_dir)
    result = explain_run(run, config)
    if result.analysed:
        print(f"there was no analysis in {run}; ran `saekit analyze` first")
    print((result.autointerp_dir / REPORT).read_text())
    if result.dashboard is not None:
        print(f"dashboard with explanations: {result.dashboard / 'index.html'}")
    print(f"scores: {result.autointerp_dir / 'scores.json'}; manifest: {result.autointerp_dir / 'manifest.json'}")
    return 0


def run_control(args: argparse.Namespace) -> int:
    """``saekit control RUN_DIR``: the randomized-weights control, side by side with the real run."""
    from saekit.jobs.control import randomized_control

    report = randomized_control(args.run_dir, settings_from_args(args).control())
    print(report.read_text())
    print(f"report: {report}")
    return 0


def add_autointerp_parsers(subparsers: argparse._SubParsersAction) -> None:
    """Add ``explain RUN_DIR`` and ``control RUN_DIR`` to the main parser's subcommands."""
    from saekit.jobs.control import ControlSettings

    explain = subparsers.add_parser("explain", help="explain and score a run's latents with an LLM (offline by "
                                                    "default) and a no-LLM baseline; writes RUN_DIR/autointerp")
    _add_settings(explain, ExplainSettings, takes_imports=True)
    add_dictionary_flags(explain)
    explain.set_defaults(handler=run_explain)

    control = subparsers.add_parser("control", help="randomized-weights control: train the run's recipe on a "
                                                    "re-initialised model, explain and score both, side by side")
    _add_settings(control, ControlSettings)
    control.set_defaults(handler=run_control)
