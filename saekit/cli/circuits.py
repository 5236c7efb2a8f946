"""The ``attribute`` and ``steer`` subcommands: attribution graphs and interventions on one prompt."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from saekit.cli.analysis import MEMORY_HELP
from saekit.cli.argtypes import add_force_flag, gigabytes, non_negative_int, positive_int, unit_interval
from saekit.errors import SaekitError


def add_circuit_parsers(subparsers: argparse._SubParsersAction) -> None:
    from saekit.circuits.attribution import AttributionConfig

    defaults = AttributionConfig()
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
    attribute.add_argument("--max-logits", type=positive_int, default=defaults.max_logits,
                           help=f"at most this many output logits as target nodes [{defaults.max_logits}]")
    attribute.add_argument("--logit-probability", type=unit_interval, default=defaults.logit_probability,
                           help="target logits: the most probable tokens until they hold this probability")
    attribute.add_argument("--max-feature-nodes", type=positive_int, default=None,
                           help="keep only this many latents (largest activations); default all active. The "
                                "adjacency matrix, and the memory to prune it, grow with the square of the nodes")
    attribute.add_argument("--batch-size", type=positive_int, default=defaults.batch_size,
                           help=f"targets per backward pass; memory grows with it [{defaults.batch_size}]")
    attribute.add_argument("--max-memory-gb", type=gigabytes, default=None, help=MEMORY_HELP)
    attribute.add_argument("--node-threshold", type=unit_interval, default=0.8,
                           help="keep the nodes holding this share of the influence on the logits [0.8]")
    attribute.add_argument("--edge-threshold", type=unit_interval, default=0.98,
                           help="keep the edges holding this share of the edge influence [0.98]")
    attribute.add_argument("--check-ablations", type=non_negative_int, default=10,
                           help="measure the ablation of this many of the most influential latents [10]")
    attribute.add_argument("--device", default="cpu", help="torch device for the model and transcoders [cpu]")
    attribute.set_defaults(handler=_attribute)

    steer = subparsers.add_parser(
        "steer", help="clamp, scale, add to or ablate latents on a prompt; compare next tokens and continuations")
    steer.add_argument("transcoders", type=Path, help="a CLT run, or a directory of per-layer transcoder runs")
    steer.add_argument("--prompt", required=True, help="the text to intervene on")
    steer.add_argument("--latent", action="append", default=[], metavar="LAYER:LATENT[@POS]=MODE[:VALUE]",
                       help="e.g. 12:345=ablate, 3:7@5=clamp:4.0, 20:9=scale:2 (repeatable; no @POS: every position)")
    steer.add_argument("--new-tokens", type=positive_int, default=20, help="greedy continuation length [20]")
    steer.add_argument("--top", type=positive_int, default=10,
                       help="next tokens listed: the top of each distribution, clean and steered [10]")
    steer.add_argument("--out", type=Path, default=None, help="also write the result as JSON here")
    steer.add_argument("--device", default="cpu", help="torch device for the model and transcoders [cpu]")
    steer.set_defaults(handler=_steer)


def _attribute(args: argparse.Namespace) -> int:
    from saekit.circuits.attribution import AttributionConfig
    from saekit.jobs.circuits import GraphJob, attribute_prompt, slug_of
    from saekit.training.config import check_device

    check_device(args.device)

    attribution = AttributionConfig(max_logits=args.max_logits, logit_probability=args.logit_probability,
                                    batch_size=args.batch_size, max_feature_nodes=args.max_feature_nodes,
                                    max_memory_gb=args.max_memory_gb)
    job = GraphJob(attribution, args.node_threshold, args.edge_threshold, args.check_ablations, args.device)
    out = args.out or Path("runs") / "graphs" / slug_of(args.prompt)
    written = attribute_prompt(args.transcoders, args.prompt, out, job, force=args.force)
    print(f"graph: {written} (report.md, the page and circuit-tracer's JSON)")
    return 0


def _steer(args: argparse.Namespace) -> int:
    from saekit.circuits.interventions import Intervention
    from saekit.io import write_text
    from saekit.jobs.circuits import steer_markdown, steer_prompt
    from saekit.training.config import check_device

    if args.out is not None and args.out.is_dir():  # io.atomic_write would refuse it, but only after the work
        raise SaekitError(f"--out {args.out} is a directory; name a file for the JSON result, e.g. "
                          f"--out {args.out / 'steer.json'}")
    check_device(args.device)
    interventions = [Intervention.parse(text) for text in args.latent]
    result = steer_prompt(args.transcoders, args.prompt, interventions, args.new_tokens, args.top, args.device)
    print(steer_markdown(result))
    if args.out:
        write_text(args.out, json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    return 0
