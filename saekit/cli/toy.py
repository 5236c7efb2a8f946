"""The ``toy`` subcommand: run a named toy experiment (or all of them) into an output directory."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from saekit.cli.argtypes import add_force_flag
from saekit.errors import SaekitError
from saekit.io import OutputTarget, claim_output, mark_output
from saekit.toy.experiments import EXPERIMENTS, ToyRunConfig, run_all, run_experiment


def add_toy_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add ``toy EXPERIMENT [--out DIR] [--seed N] [--steps N] [--threads N]``; handler: ``args.handler``."""
    toy = subparsers.add_parser(
        "toy", help="toy models of superposition and synthetic feature worlds (ground-truth checks)",
        description="Run a toy experiment: phase-diagram, rescaling, recovery, hierarchy (feature absorption of "
                    "Matryoshka BatchTopK, BatchTopK and TopK at matched L0), or all. Each writes PNG plots, "
                    "JSON and summary.md into OUT/<experiment>/.",
    )
    toy.add_argument("experiment", choices=[*EXPERIMENTS, "all"])
    toy.add_argument("--out", type=Path, default=Path("runs/toy"), help="output directory (default runs/toy)")
    add_force_flag(toy, "--out")
    toy.add_argument("--seed", type=int, default=0, help="seed of the data and the models [%(default)s]")
    toy.add_argument("--steps", type=int, default=ToyRunConfig.steps,
                     help=f"training steps of every model (default {ToyRunConfig.steps}; fewer = faster, rougher)")
    toy.add_argument("--threads", type=int, default=1,
                     help="torch CPU threads while it runs (default 1: the models are tiny, and extra threads "
                          "mostly add synchronisation cost on a shared machine)")
    toy.add_argument("--no-progress", dest="progress", action="store_false", help="hide progress bars")
    toy.set_defaults(handler=run_toy)


def run_toy(args: argparse.Namespace) -> int:
    if args.steps < 1:
        raise SaekitError(f"--steps must be at least 1, got {args.steps}")
    run = ToyRunConfig(out=Path(args.out), seed=args.seed, steps=args.steps,
                       progress=getattr(args, "progress", True))
    output = OutputTarget(Path(args.out), "toy", entries=frozenset({*EXPERIMENTS, "summary.md"}),
                          force=getattr(args, "force", False))
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(max(1, getattr(args, "threads", 1)))
    try:
        with claim_output(output):
            mark_output(output)
            results = run_all(run) if args.experiment == "all" else [run_experiment(args.experiment, run)]
    finally:
        torch.set_num_threads(previous_threads)
    for result in results:
        print(f"{result.name}: {result.directory} ({result.seconds:.0f} s)")
    if args.experiment == "all":
        print(f"summary: {Path(args.out) / 'summary.md'}")
    return 0
