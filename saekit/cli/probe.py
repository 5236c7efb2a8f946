"""The ``probe`` subcommand: SAEBench's sparse probing of a run's dictionary on a labelled task."""

from __future__ import annotations

import argparse
from pathlib import Path

from saekit.cli.argtypes import DEFAULTS_NOTE
from saekit.settings import add_flags, from_args

TASK_HELP = ("a built-in task (language, code, fortune-topic, bible-testament, python-docs: built from Debian "
             "packages, no download) or a .csv/.jsonl file with text and label columns")


def add_probe_parsers(subparsers: argparse._SubParsersAction) -> None:
    from saekit.probing.sparse_probing import ProbeSettings

    probe = subparsers.add_parser(
        "probe", help="sparse probing (SAEBench): how well k latents classify a labelled task",
        description="For each class of the task against the rest, the k latents with the largest mean difference "
                    "(mean over each text's non-BOS tokens) and a logistic regression on them, as SAEBench's "
                    "sparse_probing; beside the same probe on the raw activations at the run's site, one on all "
                    "of them, and one on a random dictionary of the same shape. Writes probing.json, probing.md "
                    "and sparse_probing_saebench.json (SAEBench's result layout) into --out.")
    probe.add_argument("run", metavar="RUN", help="a run directory (a single-site SAE or transcoder)")
    probe.add_argument("--task", required=True, metavar="NAME_OR_FILE", help=TASK_HELP)
    probe.add_argument("--out", type=Path, default=None,
                       help="output directory (default: RUN/probing/TASK; must not be or hold the run's files)")
    add_flags(probe, ProbeSettings, title="probe settings (defaults in [])", note=DEFAULTS_NOTE)
    probe.set_defaults(handler=_probe)


def _out_dir(run: Path, task: str, out: Path | None) -> Path:
    return out if out is not None else run / "probing" / Path(task).stem


def _probe(args: argparse.Namespace) -> int:
    from saekit.io import OutputTarget, claim_output, mark_output
    from saekit.probing.output import REPORT_FILE, write_probing
    from saekit.probing.sparse_probing import ProbeSettings, probe_run

    settings = from_args(ProbeSettings, args).validate()
    run = Path(args.run)
    out = _out_dir(run, args.task, args.out)
    inputs = (run / "dictionary", run / "config.json") + ((Path(args.task),) if Path(args.task).is_file() else ())
    target = OutputTarget(out, "probe", inputs=inputs)
    target.check()  # a bad --out is one line before any work
    results = probe_run(run, args.task, settings)  # every bad input fails here, before anything is written
    with claim_output(target) as path:
        mark_output(target)
        write_probing(path, results)
    sae = results.mean["sae"]
    summary = ", ".join(f"k={k} {sae[k]['accuracy']:.3f}" for k in sae)
    print(f"sparse probing on {results.task['name']}: dictionary {summary}; all raw activations "
          f"{results.llm_all['accuracy']:.3f}; report: {out / REPORT_FILE}")
    return 0
