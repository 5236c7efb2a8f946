"""circuit-tracer's attribution graph of one prompt, on a local Hugging Face Llama and saekit-written transcoders.

Run in circuit-tracer's own venv (circuit-tracer 0.5.0, transformer_lens, no saekit import)::

    HF_HUB_OFFLINE=1 scripts/interop/.ct-venv/bin/python scripts/interop/circuit_tracer_graph_worker.py \\
        --model MODEL_DIR --transcoders PARENT/NAME --input INPUT.json --out OUT_DIR

``MODEL_DIR`` is a saved ``LlamaForCausalLM`` (config.json, weights, tokenizer); ``PARENT/NAME`` a transcoder
set written by saekit's ``write_circuit_tracer_transcoders`` (circuit-tracer's local cache layout, loaded with
``load_transcoder_from_hub(NAME, cache_dir=PARENT)`` as ``scripts/interop/circuit_tracer_worker.py`` does);
``INPUT.json`` holds ``input_ids`` (BOS first, exactly saekit's ids), optionally ``prompt`` (to record the ids
circuit-tracer would make of the string), the attribution settings (``max_n_logits``, ``desired_logit_prob``,
``batch_size``) and the pruning thresholds (``node_threshold``, ``edge_threshold``). If the venv's
``bin/python`` does not run (copied without its symlinks), ``compare_circuit_tracer_graph.py`` makes a shim venv.

The model is circuit-tracer's TransformerLens backend (its default, and the one that works here: 0.5.0's
nnsight backend imports ``nnsight.intervention.tracing.tracer.Barrier`` and sets ``CONFIG.APP.CROSS_INVOKER``,
neither of which nnsight 0.8.1 has). TransformerLens cannot download the config of a local random model by
name, so the HookedTransformer is built the way ``HookedTransformer.from_pretrained`` builds one (config from
the local config.json, weights converted by TransformerLens' Llama converter, ``fold_ln=False``,
``center_writing_weights=False``, ``center_unembed=False``: what circuit-tracer's
``from_pretrained_and_transcoders`` passes), with one fix: TransformerLens' Llama config ignores ``rope_theta``
(SmolLM2 uses 100000, TransformerLens defaults to 10000), so ``rotary_base`` is set from the HF config before
the model is built. The TL model's logits are checked against the HF model's on the prompt.

Model directories written by transformers 5 (saekit's venv) are read by this venv's transformers 4.57: the rope
base, saved as ``rope_parameters.rope_theta``, is carried over by hand (4.57 reads only ``rope_theta`` and would
fall back to 10000), and a ``TokenizersBackend`` tokenizer is rebuilt from tokenizer.json and its special tokens.

Writes ``OUT_DIR/graph.safetensors`` (adjacency_matrix, active_features, activation_values,
selected_features, logit_token_ids, logit_probabilities, input_tokens, tl_logits, hf_logits, and circuit-tracer's
``prune_graph`` masks at the given thresholds: prune_node_mask, prune_edge_mask, prune_cumulative_scores) and
``OUT_DIR/graph.json`` (logit token strings, timings, versions, the logit check, and circuit-tracer's
``compute_graph_scores`` of the graph: ``scores.replacement``, ``scores.completeness``). No pickle.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from importlib.metadata import version
from pathlib import Path

import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
from model_export import hooked_transformer, load_hf_llama, load_tokenizer  # noqa: E402


def build_model(model_dir: str, transcoders_dir: Path, scratch: Path):
    """circuit-tracer's TransformerLens replacement model of the local HF Llama at ``model_dir``, with the
    transcoder set ``transcoders_dir`` (PARENT/NAME) spliced in; and the HF model itself."""
    from circuit_tracer.replacement_model.replacement_model_transformerlens import TransformerLensReplacementModel
    from circuit_tracer.utils.hf_utils import load_transcoder_from_hub

    _, hf = load_hf_llama(Path(model_dir))
    tokenizer = load_tokenizer(Path(model_dir), scratch / "tokenizer")
    transcoders, _ = load_transcoder_from_hub(transcoders_dir.name, device=torch.device("cpu"), dtype=torch.float32,
                                              lazy_encoder=False, lazy_decoder=False,
                                              cache_dir=str(transcoders_dir.parent))
    model = hooked_transformer(Path(model_dir), hf, tokenizer, cls=TransformerLensReplacementModel)
    model._configure_replacement_model(transcoders)  # what from_config / from_pretrained_and_transcoders call
    return model, hf


def main() -> None:
    """Parse arguments, build the model, run ``circuit_tracer.attribute`` and save the graph."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="a local Hugging Face LlamaForCausalLM directory")
    parser.add_argument("--transcoders", required=True, type=Path, help="PARENT/NAME: a circuit-tracer transcoder set")
    parser.add_argument("--input", required=True, type=Path, help="JSON: input_ids and attribution settings")
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    settings = json.loads(args.input.read_text())
    started = time.perf_counter()
    model, hf = build_model(args.model, args.transcoders, args.out)
    built = time.perf_counter()
    ids = torch.tensor(settings["input_ids"], dtype=torch.long)
    # What circuit-tracer itself would feed for the prompt string (its ensure_tokenized prepends a special token).
    from_string = model.ensure_tokenized(settings["prompt"]).tolist() if settings.get("prompt") else None
    with torch.no_grad():
        tl_logits = model(ids[None])[0].float()
        hf_logits = hf(ids[None]).logits[0].float()
    del hf

    from circuit_tracer import attribute

    graph = attribute(ids, model, max_n_logits=settings["max_n_logits"],
                      desired_logit_prob=settings["desired_logit_prob"], batch_size=settings["batch_size"],
                      max_feature_nodes=settings.get("max_feature_nodes"))
    done = time.perf_counter()
    from circuit_tracer.graph import compute_graph_scores, prune_graph

    pruned = prune_graph(graph, node_threshold=settings.get("node_threshold", 0.8),
                         edge_threshold=settings.get("edge_threshold", 0.98))
    replacement_score, completeness_score = compute_graph_scores(graph)
    args.out.mkdir(parents=True, exist_ok=True)
    tensors = {
        "adjacency_matrix": graph.adjacency_matrix.float(),
        "active_features": graph.active_features.long(),  # [F, 3]: layer, position, feature
        "activation_values": graph.activation_values.float(),
        "selected_features": graph.selected_features.long(),
        "logit_token_ids": torch.tensor([t.vocab_idx for t in graph.logit_targets], dtype=torch.long),
        "logit_probabilities": graph.logit_probabilities.float(),
        "input_tokens": graph.input_tokens.long(),
        "tl_logits": tl_logits, "hf_logits": hf_logits,
        "prune_node_mask": pruned.node_mask.to(torch.uint8), "prune_edge_mask": pruned.edge_mask.to(torch.uint8),
        "prune_cumulative_scores": pruned.cumulative_scores.float(),
    }
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(args.out / "graph.safetensors"))
    info = {
        "backend": "transformerlens",
        "versions": {name: version(name) for name in ("circuit-tracer", "transformer-lens", "transformers", "torch")},
        "logit_strings": [t.token_str for t in graph.logit_targets],
        "ids_from_prompt_string": from_string,
        "tl_vs_hf_logits_max_abs": float((tl_logits - hf_logits).abs().max()),
        "hf_logits_max_abs": float(hf_logits.abs().max()),
        "rotary_base": float(model.cfg.rotary_base),
        "seconds_build": built - started, "seconds_attribute": done - built,
        "n_active_features": int(graph.active_features.shape[0]),
        "scores": {"replacement": replacement_score, "completeness": completeness_score},
        "adjacency_shape": list(graph.adjacency_matrix.shape),
    }
    (args.out / "graph.json").write_text(json.dumps(info, indent=2) + "\n")
    print(json.dumps(info))
    model.reset_hooks(including_permanent=True)


if __name__ == "__main__":
    main()
