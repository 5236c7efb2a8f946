"""Circuit work on one prompt: build, prune, check and write an attribution graph; run interventions.

``attribute_prompt`` loads the transcoders and their model (float32), checks the prompt and the
targets, builds the graph of the local replacement model, scores and prunes it, measures the ablation
of its most influential latents in the real model against what the graph predicts, and writes the
graph files, the page and a report. ``steer_prompt`` applies interventions and reports the change of
the next-token distribution and of a greedy continuation. Both give logit changes in one unit: the
change of (logit minus the mean logit), what a graph's logit node measures.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from saekit.analysis.store import ANALYSIS_DIR, AnalysisStore, open_run_store, store_exists
from saekit.autointerp.pipeline import scores_for_dashboard
from saekit.circuits.attribution import AttributionConfig, attribute
from saekit.circuits.budget import check_prompt_memory
from saekit.circuits.graph import Graph, PrunedGraph, prune
from saekit.circuits.graph_files import write_graph_files
from saekit.circuits.interventions import (
    Intervention,
    ablation_check,
    check_interventions,
    check_positions,
    intervened_generation,
    intervened_logits,
)
from saekit.circuits.page import FeatureSource
from saekit.circuits.replacement import ReplacementModel, check_coverage
from saekit.circuits.targets import Target, parse_latent, parse_targets
from saekit.circuits.targets import check_positions as check_target_positions
from saekit.circuits.transcoders import TranscoderSet, load_model_for, load_transcoders, transcoder_run_dirs
from saekit.errors import SaekitError
from saekit.io import OutputTarget, claim_output, mark_output, write_json, write_text
from saekit.models.loading import LoadedModel
from saekit.models.sites import parse_site
from saekit.render import markdown_table
from saekit.rundir import DASHBOARD_DIR
from saekit.settings import NON_EMPTY, copy_setting, setting


@dataclass(frozen=True)
class GraphJob:
    """Settings of ``saekit attribute`` beyond the attribution itself."""

    attribution: AttributionConfig = field(default_factory=AttributionConfig)
    node_threshold: float = setting(0.8, "keep the nodes holding this share of the influence on the logits "
                                    "(circuit-tracer's default)", above=0, maximum=1)
    edge_threshold: float = setting(0.98, "keep the edges holding this share of the edge influence "
                                    "(circuit-tracer's default)", above=0, maximum=1)
    check_ablations: int = setting(10, "measure the ablation of this many of the most influential latents (0: none)",
                                   minimum=0)
    device: str = setting("cpu", "torch device for the model and transcoders", **NON_EMPTY)
    target_token: tuple[str, ...] = setting((), "a target: this token's logit minus the mean logit (repeatable; "
                                            "any target flag replaces the top logits)", repeat=True, metavar="TOKEN")
    target_diff: tuple[str, ...] = setting((), "a target: one token's logit minus another's, e.g. ' Paris| London' "
                                           "(repeatable)", repeat=True, metavar="POSITIVE|NEGATIVE")
    target_latent: tuple[str, ...] = setting((), "a target: a latent's pre-activation at a position, e.g. 3:17@5 "
                                             "(repeatable)", repeat=True, metavar="LAYER:LATENT@POS")
    freeze_unreplaced_mlps: bool = setting(False, "trace a transcoder set that leaves MLPs unreplaced, their outputs "
                                           "frozen at their clean values as error nodes (refused without)",
                                           switch=True)


@dataclass(frozen=True)
class SteerJob:
    """Settings of ``saekit steer`` beyond the prompt and its interventions."""

    new_tokens: int = setting(20, "greedy continuation length", minimum=1)
    top: int = setting(10, "next tokens listed: the top of each distribution, clean and steered", minimum=1)
    device: str = copy_setting(GraphJob, "device")


def slug_of(prompt: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", prompt.lower()).strip("-")[:40] or "prompt"


def _run_layers(store: AnalysisStore) -> list[int]:
    return [parse_site(site).layer for site in store.manifest.get("sites") or [store.manifest["site"]]]


def feature_sources(path: Path, transcoders: TranscoderSet) -> dict[int, FeatureSource]:
    """Per model layer, the analysis store (and explanations, dashboard) describing its latents, where one exists."""
    sources: dict[int, FeatureSource] = {}
    for run in transcoder_run_dirs(path):
        if not store_exists(run / ANALYSIS_DIR):
            continue
        store = open_run_store(run)
        dashboard = run / DASHBOARD_DIR if (run / DASHBOARD_DIR).is_dir() else None
        interpretations = scores_for_dashboard(run)
        for index, layer in enumerate(_run_layers(store)):
            if layer in transcoders.layers:
                offset = index * transcoders.width(layer)  # a store over several layers: their latents in order
                sources[layer] = FeatureSource(store, offset, interpretations, dashboard)
    return sources


def _target_names(graph: Graph) -> list[str]:
    records = graph.settings.get("targets") or []
    return [r["label"] for r in records] if graph.settings.get("explicit_targets") else \
        [repr(s) for s in graph.logit_strings]


def _ablation_report(graph: Graph, checks: list[dict]) -> str:
    target = _target_names(graph)[0]
    rows = [(f"L{c['layer']} #{c['latent']} @ {c['position']} ({graph.tokens[c['position']]!r})",
             f"{c['activation']:.3g}", f"{c['direct'][0]:+.4f}", f"{c['predicted'][0]:+.4f}",
             f"{c['measured'][0]:+.4f}")
            for c in checks]
    return markdown_table(["latent (layer, id, position)", "activation", f"direct effect on {target}",
                           "predicted change (graph)", "measured change (real model)"], rows)


def _targets_line(graph: Graph) -> str:
    records = graph.settings.get("targets") or []
    if not graph.settings.get("explicit_targets"):
        return ("- targets: the top logits, each its logit minus the mean logit at the last position, weighted by "
                "its probability: " + ", ".join(f"{s!r} p={p:.3f}" for s, p in
                                                 zip(graph.logit_strings, graph.logit_probabilities.tolist())))
    return "- targets (weights: a token its probability, others 1): " + "; ".join(
        f"{r['label']} ({r['unit']}" + (f", p={r['probability']:.3f})" if "probability" in r else ")") for r in records)


def _honesty_lines(graph: Graph) -> list[str]:
    frozen = graph.settings.get("frozen_mlp_layers") or []
    lines = []
    if frozen:
        lines.append(f"- **MLPs of layers {', '.join(map(str, frozen))} have no transcoder**: their outputs are "
                     "frozen at their clean values and counted as error nodes (the graph stays linear; the ablation "
                     "checks below run them live, so they measure what the graph leaves out).")
    if graph.settings.get("zero_bos_errors"):
        lines.append("- BOS error nodes have no edges (circuit-tracer's convention, --zero-bos-errors).")
    return lines


def _report(graph: Graph, pruned: PrunedGraph, checks: list[dict]) -> str:
    kept = int(pruned.node_mask[:graph.n_features].sum())
    scores = graph.settings.get("scores") or {}
    replaced = [layer for layer in graph.layers if layer not in (graph.settings.get("frozen_mlp_layers") or [])]
    lines = [
        "# Attribution graph", "",
        f"Prompt: {graph.prompt!r} ({len(graph.tokens)} tokens, BOS first); model {graph.model}; transcoders "
        f"{graph.transcoders} replacing layers {replaced[0]}-{replaced[-1]}.", "",
        _targets_line(graph), *_honesty_lines(graph),
        f"- scores (circuit-tracer's definitions): replacement {scores.get('replacement', float('nan')):.4f}, "
        f"completeness {scores.get('completeness', float('nan')):.4f} (1: everything through latents; 0: through "
        "error nodes)",
        f"- nodes: {graph.n_features} active latents, {graph.n_errors} error nodes, {len(graph.tokens)} tokens, "
        f"{graph.n_logits} targets; after pruning (node threshold {pruned.node_threshold}, edge threshold "
        f"{pruned.edge_threshold}): {kept} latents, {int(pruned.node_mask.sum())} nodes, "
        f"{int(pruned.edge_mask.sum())} edges",
        f"- built in {graph.settings.get('seconds', float('nan')):.1f} s", "",
        "## Ablations: what the graph predicts against the real model", "",
        "Each latent is set to zero at its position in the real model (its decoded contribution removed; "
        "everything downstream recomputed by the model's own layers). The graph's prediction adds its direct "
        "effect and its effect through every downstream latent taken as linear while active; attention "
        "patterns, norm scales and the MLPs' own responses are frozen in the graph and free in the model, "
        "which is where the two differ. Both columns are in the target's unit: for a token, the change of its "
        "logit minus the mean logit (as `saekit steer` reports it); for a difference, the change of the "
        "difference; for a latent, the change of its pre-activation.", "",
        _ablation_report(graph, checks) if checks else "(no ablations run)", "",
    ]
    return "\n".join(lines)


def _check_prompt_length(loaded: LoadedModel, n_tokens: int) -> None:
    """One line for a prompt longer than the model's context."""
    context = getattr(loaded.model.config.get_text_config(), "max_position_embeddings", None)
    if context is not None and n_tokens > int(context):
        raise SaekitError(f"the prompt is {n_tokens} tokens with BOS, longer than the model's context of {context}; "
                          "shorten it")


def _targets(job: GraphJob, transcoders: TranscoderSet, loaded: LoadedModel, n_tokens: int) -> list[Target]:
    latents = tuple(parse_latent(text, transcoders) for text in job.target_latent)
    targets = parse_targets(job.target_token, job.target_diff, latents, loaded.tokenizer)
    check_target_positions(targets, n_tokens)
    return targets


def attribute_prompt(transcoders_path: str | Path, prompt: str, out_dir: str | Path, job: GraphJob | None = None,
                     loaded: LoadedModel | None = None, force: bool = False) -> Path:
    """Build, score, prune and check the attribution graph of ``prompt``; write it to ``out_dir``.

    ``out_dir`` may hold other graphs this command wrote, and nothing else unless ``force``."""
    job = job or GraphJob()
    if not prompt.strip():
        raise SaekitError("the prompt is empty; give --prompt TEXT")
    target = OutputTarget(Path(out_dir), "attribute", force=force)
    target.check()  # before the model loads
    path = Path(transcoders_path)
    transcoders = load_transcoders(path, job.device)
    for text in job.target_latent:  # a latent that does not exist: before the model loads
        parse_latent(text, transcoders)
    loaded = loaded or load_model_for(transcoders, job.device)
    check_coverage(transcoders, loaded.adapter.n_layers, job.freeze_unreplaced_mlps)
    ids = loaded.prompt_ids(prompt)
    _check_prompt_length(loaded, len(ids))
    targets = _targets(job, transcoders, loaded, len(ids))
    check_prompt_memory(loaded, transcoders, len(ids), job.attribution.batch_size, job.attribution.max_memory_gb)
    replacement = ReplacementModel(loaded, transcoders, ids, freeze_unreplaced=job.freeze_unreplaced_mlps)
    graph = attribute(replacement, prompt, job.attribution, str(path), targets)
    pruned = prune(graph, job.node_threshold, job.edge_threshold)
    influence = torch.where(pruned.node_mask[:graph.n_features], pruned.influence[:graph.n_features], -1.0)
    top = influence.argsort(descending=True)[:min(job.check_ablations, graph.n_features)].tolist()
    checks = ablation_check(loaded, transcoders, graph, top) if top else []
    with claim_output(target):
        mark_output(target)
        out = write_graph_files(graph, pruned, out_dir, slug_of(prompt), feature_sources(path, transcoders))
        write_json(out / "ablations.json", {"targets": _target_names(graph), "target_logits": graph.logit_strings,
                                            "unit": graph.settings["target"], "checks": checks})
        write_text(out / "report.md", _report(graph, pruned, checks))
    return out


def steer_prompt(transcoders_path: str | Path, prompt: str, interventions: list[Intervention],
                 new_tokens: int = SteerJob.new_tokens, top: int = SteerJob.top, device: str = SteerJob.device,
                 loaded: LoadedModel | None = None) -> dict[str, Any]:
    """The next-token distribution and a greedy continuation, without and with the interventions."""
    if not interventions:
        raise SaekitError("give at least one --latent LAYER:LATENT[@POSITION]=MODE[:VALUE]")
    transcoders = load_transcoders(transcoders_path, device)
    check_interventions(transcoders, interventions)  # before the model loads: a typo costs no wait
    loaded = loaded or load_model_for(transcoders, device)
    ids = loaded.prompt_ids(prompt)
    check_positions(interventions, len(ids))  # before the model runs
    clean = intervened_logits(loaded, transcoders, ids, [])[-1]
    steered = intervened_logits(loaded, transcoders, ids, interventions)[-1]
    top = min(top, clean.shape[-1])  # at most the vocabulary
    tokens = torch.cat([clean.topk(top).indices, steered.topk(top).indices]).unique()
    p_clean, p_steered = clean.softmax(-1), steered.softmax(-1)
    # one unit with the graph's logit nodes and the ablation checks: the change of (logit - mean logit)
    centred_clean, centred_steered = clean - clean.mean(), steered - steered.mean()
    rows = sorted(({"token": loaded.tokenizer.decode([int(t)]),
                    "logit_change": float(centred_steered[t] - centred_clean[t]),
                    "p_clean": float(p_clean[t]), "p_steered": float(p_steered[t])} for t in tokens),
                  key=lambda row: -row["p_steered"])
    return {"prompt": prompt, "interventions": [vars(i) for i in interventions], "next_token": rows,
            "kl_clean_to_steered": float((p_clean * (p_clean.log() - p_steered.log())).sum()),
            "continuation_clean": intervened_generation(loaded, transcoders, ids, [], new_tokens),
            "continuation_steered": intervened_generation(loaded, transcoders, ids, interventions, new_tokens)}


def steer_markdown(result: dict[str, Any]) -> str:
    rows = [(r["token"], f"{r['p_clean']:.4f}", f"{r['p_steered']:.4f}", f"{r['logit_change']:+.3f}")
            for r in result["next_token"]]
    return "\n".join([
        f"Prompt: {result['prompt']!r}; KL(clean || steered) of the next token: {result['kl_clean_to_steered']:.4f}",
        "", markdown_table(["token", "p clean", "p steered", "change of logit - mean logit"], rows), "",
        markdown_table(["", "greedy continuation"], [("clean", result["continuation_clean"]),
                                                     ("steered", result["continuation_steered"])]), ""])
