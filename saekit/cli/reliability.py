"""The ``reliability`` subcommand: the reliability study (``saekit.jobs.reliability``) from flags; every bad input is
one line before the model loads, and nothing is written.
"""

from __future__ import annotations

import argparse
import textwrap
from pathlib import Path

from saekit.cli.argtypes import DEFAULTS_NOTE
from saekit.errors import SaekitError
from saekit.evaluation.reliability import write_reliability
from saekit.jobs.reliability import ReliabilitySettings, model_study, plan_runs, toy_study
from saekit.settings import add_flags, from_args
from saekit.training.config import TrainConfig

DESCRIPTION = textwrap.fill(
    "Train every recipe (the config, or each point of --grid) at every --seeds, and at each --checkpoints share of "
    "its budget; evaluate each run (ΔCE, KL, FVU, FVU without outliers, L0, dead fraction, effective compute; "
    "sparse probing with --task; the recovery metrics on a --toy world). Writes RUNS_DIR/NAME/reliability.json and "
    "reliability.md: per metric its mean, seed SD, SNR across recipes, whether it separates checkpoints, and on a "
    "toy world its rank correlation with ground-truth recovery. Each run's report.md then shows the seed SD.", 79)


def add_reliability_parser(subparsers: argparse._SubParsersAction) -> None:
    from saekit.dictionaries.registry import add_option_groups
    from saekit.jobs.sweep import SweepSettings

    parser = subparsers.add_parser(
        "reliability", help="train recipes at several seeds; how much to trust each metric",
        # Raw descriptions: the architecture options' groups (add_option_groups) are laid-out text.
        formatter_class=argparse.RawDescriptionHelpFormatter, description=DESCRIPTION)
    parser.add_argument("--config", help="JSON run config shared by every run (flags override it; default: none, "
                                         "the settings' defaults)")
    add_flags(parser, ReliabilitySettings, title="reliability settings (defaults in [])", note=DEFAULTS_NOTE)
    add_flags(parser, SweepSettings, title="sweep settings (defaults in [])", note=DEFAULTS_NOTE,
              only=("widths", "runs_dir", "resume"))
    add_flags(parser, TrainConfig)
    add_option_groups(parser)
    parser.set_defaults(handler=_reliability)


def _reliability(args: argparse.Namespace) -> int:
    from saekit.cli import config_from_args
    from saekit.jobs.sweep import SweepSettings

    settings = from_args(ReliabilitySettings, args).validate()
    sweep = from_args(SweepSettings, args)
    base = config_from_args(args)
    plan = plan_runs(base, settings, list(sweep.widths) if sweep.widths else [None])
    out = Path(sweep.runs_dir) / base.name
    if out.exists() and not out.is_dir():  # found now, not after every run has trained
        raise SaekitError(f"{out} is a file; the study's directory would be there: choose another --name")
    if settings.toy is not None:
        study = toy_study(plan, settings.toy, base.data.seed)
    else:
        study = model_study(plan, base, settings, Path(sweep.runs_dir), sweep.resume)
    json_path, report = write_reliability(out, study.table)
    if study.evaluations:
        from saekit.evaluation.evaluate import write_run_evaluation

        # reliability.json now sits beside the runs, so each run's report.md shows the seed SD.
        for run_dir, results in study.evaluations:
            write_run_evaluation(run_dir, results)
    print(f"reliability of {len(study.table.metrics)} metrics over {len(plan)} runs: {json_path}, {report}")
    return 0
