"""The ``attribute`` and ``steer`` subcommands: attribution graphs and interventions on one prompt."""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from saekit.cli.argtypes import DEFAULTS_NOTE, add_force_flag
from saekit.errors import SaekitError
from saekit.settings import add_flags, from_args, setting

if TYPE_CHECKING:  # annotations only: the handlers import what they use when they run
    from saekit.circuits.attention import QKSpec
    from saekit.models.loading import LoadedModel


@dataclass(frozen=True)
class Interventions:
    """What ``saekit steer`` does to the latents."""

    latent: tuple[str, ...] = setting((), "e.g. 12:345=ablate, 3:7@5=clamp:4.0, 20:9=scale:2 (repeatable; no @POS: "
                                      "every position)", repeat=True, metavar="LAYER:LATENT[@POS]=MODE[:VALUE]")


def add_circuit_parsers(subparsers: argparse._SubParsersAction) -> None:
    from saekit.circuits.attention import QK_KEYS
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
    attribute.add_argument("--subgraph", type=Path, default=None, metavar="FILE",
                           help="a subgraph saved on a graph page (SLUG.subgraph.json: pinned nodes, supernodes, "
                                "labels) to merge into the graph JSON's qParams and the page (default: none)")
    attribute.add_argument("--heads", type=int, nargs="?", const=5, default=None, metavar="TOP",
                           help="also write SLUG.heads.json: each kept edge between positions split by the attention "
                                "head (layer, head) of its first position crossing, its TOP heads listed (TOP: 5 when "
                                "not given), and per-head totals (default: none)")
    attribute.add_argument("--qk", action="append", default=None, metavar="LAYER.HEAD[@POS]",
                           help="also write SLUG.qk.json, the QK view of head HEAD of attention layer LAYER at query "
                                "position POS (all counted from 0; positions BOS first; default POS: the last): its "
                                f"attention pattern over key positions 0..POS, and for its {QK_KEYS} most attended "
                                "keys its pre-softmax score split "
                                "into the parts of the nodes (latents, error nodes, tokens) on the query side and on "
                                "the key side, plus the part of no node (bias), which sum to the score; repeatable or "
                                "comma-separated, e.g. --qk 1.3 --qk 0.2@4,0.3@4 (default: none)")
    attribute.add_argument("--qk-top", type=int, default=None, metavar="N",
                           help="with --qk: the nodes listed per side of each key, the rest summed as 'other' "
                                "(default: 10)")
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
    from saekit.circuits.attention import parse_qk_specs
    from saekit.jobs.circuits import attribute_prompt, slug_of
    from saekit.training.config import check_device

    job = graph_job(args)
    if args.heads is not None and args.heads < 1:
        raise SaekitError(f"--heads lists the TOP heads of each edge: give at least 1, got {args.heads}")
    qk = parse_qk_specs(args.qk or [])  # the syntax, before anything loads
    if args.qk_top is not None and (not qk or args.qk_top < 1):
        raise SaekitError(f"--qk-top lists the N largest nodes per side in SLUG.qk.json: give at least 1 with "
                          f"--qk LAYER.HEAD[@POS], got {args.qk_top}" + ("" if qk else " without --qk"))
    check_device(job.device)
    slug = slug_of(args.prompt)
    if args.subgraph is not None:
        _check_subgraph_file(args.subgraph, slug)
    out = args.out or Path("runs") / "graphs" / slug
    # one load for the graph, --heads and --qk
    loaded = _attention_model(args.transcoders, job.device) if args.heads is not None or qk else None
    if qk and args.prompt.strip():  # the ranges need the model and the prompt: before the graph is built or
        qk = _checked_qk(qk, loaded, args.prompt)  # written (an empty prompt: attribute_prompt's own line)
    written = attribute_prompt(args.transcoders, args.prompt, out, job, loaded=loaded, force=args.force)
    print(f"graph: {written} (report.md, the page and circuit-tracer's JSON)")
    if args.heads is not None:
        from saekit.circuits.attention import write_head_split

        heads = write_head_split(written / f"{slug}.safetensors", args.transcoders, loaded, job.device,
                                 job.attribution.batch_size, args.heads)
        print(f"heads: {heads} (each crossing edge split by attention head)")
    if qk:
        from saekit.circuits.attention import write_qk_view

        view = write_qk_view(written / f"{slug}.safetensors", args.transcoders, loaded, job.device, qk,
                             job.attribution.batch_size, args.qk_top or 10)
        print(f"qk: {view} (the scores of {', '.join(map(str, qk))} split into the nodes' parts)")
    if args.subgraph is not None:
        _merge_subgraph(written / f"{slug}.json", args.subgraph)
    return 0


def _attention_model(transcoders: Path, device: str) -> LoadedModel:
    """The transcoders' model, loaded before the graph so that ``--heads`` and ``--qk`` reuse it."""
    from saekit.circuits.transcoders import load_model_for, load_transcoders

    return load_model_for(load_transcoders(transcoders, device), device)


def _checked_qk(specs: list[QKSpec], loaded: LoadedModel, prompt: str) -> list[QKSpec]:
    """``--qk`` specs against the model's layers and heads and the prompt's positions, query positions resolved."""
    from saekit.circuits.attention import check_qk_specs

    return check_qk_specs(specs, loaded.adapter.n_layers, loaded.adapter.query_heads, len(loaded.prompt_ids(prompt)))


def _check_subgraph_file(path: Path, slug: str) -> None:
    """A subgraph file's shapes and slug, before any model loads (its ids need the graph, so they wait)."""
    from saekit.circuits.subgraph import read_subgraph

    found = read_subgraph(path)
    if found.slug is not None and found.slug != slug:
        raise SaekitError(f"--subgraph {path} is the subgraph of graph {found.slug!r}, but this prompt's graph is "
                          f"{slug!r}; give that prompt, or that graph's subgraph file")


def _merge_subgraph(graph_json: Path, path: Path) -> None:
    from saekit.circuits.graph_files import merge_subgraph

    try:
        merged = merge_subgraph(graph_json, path)
    except SaekitError as err:  # the graph itself is written: say so, or the user reruns the attribution
        raise SaekitError(f"the graph is written ({graph_json}) but --subgraph was not merged: {err}") from err
    print(f"subgraph: {len(merged.pinned)} pinned, {len(merged.supernodes)} supernodes and {len(merged.clerps)} "
          f"labels merged into {graph_json} (qParams), its page and {graph_json.stem}.subgraph.json")


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
