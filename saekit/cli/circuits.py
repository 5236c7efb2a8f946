"""The ``attribute`` and ``steer`` subcommands: attribution graphs and interventions on one prompt."""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

from saekit.cli.argtypes import DEFAULTS_NOTE, add_force_flag
from saekit.errors import SaekitError
from saekit.settings import add_flags, from_args, setting


@dataclass(frozen=True)
class Interventions:
    """What ``saekit steer`` does to the latents."""

    latent: tuple[str, ...] = setting((), "e.g. 12:345=ablate, 3:7@5=clamp:4.0, 20:9=scale:2 (repeatable; no @POS: "
                                      "every position)", repeat=True, metavar="LAYER:LATENT[@POS]=MODE[:VALUE]")


def add_circuit_parsers(subparsers: argparse._SubParsersAction) -> None:
    from saekit.jobs.circuits import GraphJob, SteerJob

    attribute = subparsers.add_parser(
        "attribute", help="the attribution graph of a prompt over transcoders for every MLP",
        description="Replace the MLPs by transcoders (a directory of per-layer transcoder runs from `saekit train "
                    "--sites 'blocks.*.mlp_in->blocks.*.mlp_out'`, or a CLT run), freeze attention and norms on the "
                    "prompt, and write the graph of direct effects (circuit-tracer's JSON, a page, a report with "
                    "ablation checks) to OUT.")
    attribute.add_argument("transcoders", type=Path, help="a CLT run, or a directory of per-layer transcoder runs")
    attribute.add_argument("--prompt", required=True, help="the text whose next token the graph explains")
    attribute.add_argument("--out", type=Path, default=None, help="output directory (default runs/graphs/SLUG); "
                           "it may hold other graphs, and nothing else unless --force")
    add_force_flag(attribute, "--out")
    add_flags(attribute, GraphJob, skip=("progress",), title="graph settings (defaults in [])", note=DEFAULTS_NOTE)
    attribute.set_defaults(handler=_attribute)

    steer = subparsers.add_parser(
        "steer", help="clamp, scale, add to or ablate latents on a prompt; compare next tokens and continuations")
    steer.add_argument("transcoders", type=Path, help="a CLT run, or a directory of per-layer transcoder runs")
    steer.add_argument("--prompt", required=True, help="the text to intervene on")
    steer.add_argument("--out", type=Path, default=None, help="also write the result as JSON here (default: only "
                                                              "print it)")
    add_flags(steer, Interventions, title="interventions (defaults in [])")
    add_flags(steer, SteerJob, title="steering settings (defaults in [])")
    steer.set_defaults(handler=_steer)


def graph_job(args: argparse.Namespace):  # -> GraphJob
    """The attribution settings the flags give (range errors name the flag, before anything loads)."""
    from saekit.jobs.circuits import GraphJob

    return from_args(GraphJob, args)


def _attribute(args: argparse.Namespace) -> int:
    from saekit.jobs.circuits import attribute_prompt, slug_of
    from saekit.training.config import check_device

    job = graph_job(args)
    check_device(job.device)
    out = args.out or Path("runs") / "graphs" / slug_of(args.prompt)
    written = attribute_prompt(args.transcoders, args.prompt, out, job, force=args.force)
    print(f"graph: {written} (report.md, the page and circuit-tracer's JSON)")
    return 0


def _steer(args: argparse.Namespace) -> int:
    from saekit.circuits.interventions import Intervention
    from saekit.io import write_text
    from saekit.jobs.circuits import SteerJob, steer_markdown, steer_prompt
    from saekit.training.config import check_device

    job, latents = from_args(SteerJob, args), from_args(Interventions, args).latent
    if args.out is not None and args.out.is_dir():  # io.atomic_write would refuse it, but only after the work
        raise SaekitError(f"--out {args.out} is a directory; name a file for the JSON result, e.g. "
                          f"--out {args.out / 'steer.json'}")
    check_device(job.device)
    interventions = [Intervention.parse(text) for text in latents]
    result = steer_prompt(args.transcoders, args.prompt, interventions, job.new_tokens, job.top, job.device)
    print(steer_markdown(result))
    if args.out:
        write_text(args.out, json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    return 0
