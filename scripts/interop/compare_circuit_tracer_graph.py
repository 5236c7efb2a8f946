"""saekit's attribution graph against circuit-tracer 0.5.0's, edge by edge, on the same model and transcoders.

    .venv/bin/python scripts/interop/compare_circuit_tracer_graph.py --model tiny
    .venv/bin/python scripts/interop/compare_circuit_tracer_graph.py --model tiny --label tiny-skip \\
        --work /tmp/ctg/tiny-skip --train-arg=--extra --train-arg=skip_connection=true --random-skip 0.5
    .venv/bin/python scripts/interop/compare_circuit_tracer_graph.py --model default --expansion-factor 2 \\
        --train-tokens 32768 --prompt "The capital of France is"
    .venv/bin/python scripts/interop/compare_circuit_tracer_graph.py --model MODEL_DIR --transcoders RUN

One command does it all:

1. the model as a local Hugging Face directory: ``tiny`` (a random 4-layer LlamaForCausalLM with the default
   model's tokenizer, like tests/conftest.py's ``tiny_model_dir``), ``default`` (saekit's embedded SmolLM2-135M
   as saekit loads it, its dequantized weights copied into a plain model and saved in float32 to
   /tmp/ctg/smollm2) or a directory given;
2. per-layer JumpReLU transcoders for every MLP trained with ``saekit train --sites
   'blocks.*.mlp_in->blocks.*.mlp_out'`` on that directory (or ``--transcoders RUN``, already trained);
3. the transcoders written in circuit-tracer's layout with saekit's ``write_circuit_tracer_transcoders``;
4. saekit's graph (``saekit.circuits``: ``ReplacementModel``, ``attribute``) of ``loaded.prompt_ids(prompt)``;
5. circuit-tracer's graph of the same token ids (``circuit_tracer_graph_worker.py`` in circuit-tracer's venv,
   via subprocess; TransformerLens backend);
6. node matching (features by (layer, position, feature), error nodes by (layer, position), tokens by position,
   logits by token id) and agreement of the matched adjacency entries per edge kind (BOS error nodes apart);
7. pruning: circuit-tracer's ``prune_graph`` masks against saekit's ``prune`` on saekit's graph and on
   circuit-tracer's adjacency (which separates the pruning rule from the graph);
8. ``benchmarks/results/circuit-tracer-graph-<label>.json`` and ``.md``, and a table on stdout.

``--fixture`` instead (re)makes the suite's fixture, ``tests/fixtures/circuit_tracer_graph``: random transcoders
in circuit-tracer's layout, and circuit-tracer's graph, ``prune_graph`` masks and ``compute_graph_scores`` of one
prompt on the tests' tiny model (tests/conftest.py's, rebuilt here from the same seed), as safetensors and JSON;
``tests/circuits/test_circuit_tracer_parity.py`` holds saekit to them.

circuit-tracer's venv: ``--ct-python`` (default ``scripts/interop/.ct-venv/bin/python``). If that interpreter
cannot run (a venv copied without its symlinks), a venv shim is made under the work directory that points at the
same site-packages with the base interpreter named in the venv's ``pyvenv.cfg``. ``--random-skip S`` replaces the
transcoders' (near-zero, briefly trained) skip matrices by random ones on both sides, so the skip path is tested.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from model_export import export_default_model  # noqa: E402

CT_VENV = REPO / "scripts" / "interop" / ".ct-venv"
WORKER = REPO / "scripts" / "interop" / "circuit_tracer_graph_worker.py"
RESULTS = REPO / "benchmarks" / "results"
SOURCE_KINDS = ("feature", "error", "error_bos", "token")
TARGET_KINDS = ("feature", "logit")


# ---- the model and the transcoders ----------------------------------------------------------------------------

def make_tiny_model(directory: Path, layers: int = 4, seed: int = 0, hidden: int = 64) -> Path:
    """A random LlamaForCausalLM (width ``hidden``, MLP width 2 x hidden, ``layers`` layers, grouped-query
    attention) with the default model's tokenizer, saved as a Hugging Face directory (``hidden=32, layers=2``:
    exactly tests/conftest.py's ``tiny_model_dir``)."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from saekit.models.loading import DEFAULT_GGUF_FILE, default_gguf_path

    if (directory / "config.json").is_file():
        return directory
    tokenizer = AutoTokenizer.from_pretrained(str(default_gguf_path().parent), gguf_file=DEFAULT_GGUF_FILE)
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=layers,
                         num_attention_heads=4, num_key_value_heads=2, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id)
    LlamaForCausalLM(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def train_transcoders(model_dir: Path, runs_dir: Path, args: argparse.Namespace) -> Path:
    """Per-layer JumpReLU transcoders mlp_in -> mlp_out for every layer of ``model_dir`` (``saekit train``)."""
    run = runs_dir / "tc"
    if run.is_dir() and any(run.glob("*/dictionary")):
        return run
    command = [sys.executable, "-m", "saekit", "train", "--model", str(model_dir),
               "--sites", "blocks.*.mlp_in->blocks.*.mlp_out", "--name", "tc", "--runs-dir", str(runs_dir),
               "--architecture", "jumprelu", "--expansion-factor", str(args.expansion_factor),
               "--train-tokens", str(args.train_tokens), "--batch-size", str(args.train_batch_size),
               "--context-length", str(args.context_length), "--eval-tokens", "512",
               # small chunks and shuffle buffer, no disk cache: 30 layers x (in, out) x 576 floats per token
               # would hold ~9 GB in the default 65536-token buffer
               "--contexts-per-chunk", "16", "--shuffle-buffer-tokens", "4096", "--cache-dir", "none",
               *args.train_arg]
    print("$", " ".join(command), flush=True)
    subprocess.run(command, check=True, cwd=REPO)
    return run


def export_transcoders(transcoders: Any, model_name: str, directory: Path) -> Path:
    """saekit's per-layer transcoders (layers 0..L-1) written as a circuit-tracer transcoder set at ``directory``."""
    from saekit.dictionaries.formats.circuit_tracer import write_circuit_tracer_transcoders

    every_layer = transcoders.layers == list(range(len(transcoders.layers)))
    if any(d.layers > 1 for d in transcoders.dictionaries()) or not every_layer:
        raise SystemExit("circuit-tracer needs per-layer transcoders for every layer 0..L-1")
    dictionaries = [transcoders.dictionary_of(layer) for layer in transcoders.layers]
    sources = [{"model": model_name, "site": f"blocks.{layer}.mlp_in", "target_site": f"blocks.{layer}.mlp_out"}
               for layer in transcoders.layers]
    return write_circuit_tracer_transcoders(directory, dictionaries, sources, scan="saekit-compare")


def ct_python(requested: Path, work: Path) -> Path:
    """An interpreter of circuit-tracer's venv that runs: ``requested``, or a shim venv under ``work``."""
    probe = [str(requested), "-c", "import circuit_tracer"]
    try:
        if subprocess.run(probe, capture_output=True).returncode == 0:
            return requested
    except OSError:
        pass
    venv = requested.parent.parent
    config = dict(line.split(" = ", 1) for line in (venv / "pyvenv.cfg").read_text().splitlines() if " = " in line)
    site = next(iter(sorted((venv / "lib").glob("python*/site-packages"))))
    shim = work / "ct-venv"
    (shim / "bin").mkdir(parents=True, exist_ok=True)
    (shim / "lib" / site.parent.name).mkdir(parents=True, exist_ok=True)
    base = Path(config["home"]) / site.parent.name
    for link, target in ((shim / "bin" / "python", base), (shim / "lib" / site.parent.name / "site-packages", site)):
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(target)
    (shim / "pyvenv.cfg").write_text(f"home = {config['home']}\ninclude-system-site-packages = false\n"
                                     f"version = {config.get('version', '')}\n")
    print(f"note: {requested} does not run; using the shim venv {shim} (same site-packages)", flush=True)
    return shim / "bin" / "python"


# ---- the two graphs -------------------------------------------------------------------------------------------

def randomise_skip(transcoders: Any, std: float, seed: int = 0) -> None:
    """Replace every transcoder's skip matrix by N(0, std^2 / d) entries (in memory; both graphs use them), so the
    skip path carries real weight: briefly trained skips are near zero and would leave that path untested."""
    generator = torch.Generator().manual_seed(seed)
    for layer in transcoders.layers:
        dictionary = transcoders.dictionary_of(layer)
        if dictionary.W_skip is None:
            raise SystemExit("--random-skip needs transcoders with a skip connection (--extra skip_connection=true)")
        d = dictionary.W_skip.shape[0]
        with torch.no_grad():
            dictionary.W_skip.copy_(torch.randn(dictionary.W_skip.shape, generator=generator) * std / d ** 0.5)


def saekit_graph(transcoders: Any, run: Path, prompt: str, args: argparse.Namespace) -> tuple[Any, Any]:
    """saekit's unpruned attribution graph of ``prompt`` (float32 model) and its replacement model."""
    from saekit.circuits.attribution import AttributionConfig, attribute
    from saekit.circuits.replacement import ReplacementModel
    from saekit.circuits.transcoders import load_model_for

    loaded = load_model_for(transcoders)
    replacement = ReplacementModel(loaded, transcoders, loaded.prompt_ids(prompt))
    config = AttributionConfig(max_logits=args.max_logits, logit_probability=args.logit_probability,
                               batch_size=args.batch_size, zero_bos_errors=args.zero_bos_errors, progress=False)
    return attribute(replacement, prompt, config, str(run)), replacement


def run_worker(python: Path, model_dir: Path, ct_dir: Path, input_ids: list[int], args: argparse.Namespace,
               out: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """circuit-tracer's graph of ``input_ids`` (the worker in circuit-tracer's venv), read back from safetensors."""
    from safetensors.torch import load_file

    settings = {"input_ids": input_ids, "prompt": args.prompt, "max_n_logits": args.max_logits,
                "desired_logit_prob": args.logit_probability,
                "batch_size": args.ct_batch_size, "node_threshold": args.node_threshold,
                "edge_threshold": args.edge_threshold}
    out.mkdir(parents=True, exist_ok=True)
    (out / "input.json").write_text(json.dumps(settings) + "\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONWARNINGS": "ignore"}
    command = [str(python), str(WORKER), "--model", str(model_dir), "--transcoders", str(ct_dir),
               "--input", str(out / "input.json"), "--out", str(out), "--threads", str(args.threads)]
    print("$", " ".join(command), flush=True)
    subprocess.run(command, check=True, env=env)
    return load_file(str(out / "graph.safetensors")), json.loads((out / "graph.json").read_text())


# ---- matching and agreement -----------------------------------------------------------------------------------

def node_tables(features: torch.Tensor, n_layers: int, n_pos: int, logit_ids: list[int]) -> dict[str, dict]:
    """Node key -> index for one graph laid out as circuit-tracer's (features, errors layer-major, tokens, logits)."""
    n_features = features.shape[0]
    tables: dict[str, dict] = {
        "feature": {tuple(row): i for i, row in enumerate(features.tolist())},
        "error": {(layer, pos): n_features + layer * n_pos + pos for layer in range(n_layers)
                  for pos in range(1, n_pos)},
        "error_bos": {(layer, 0): n_features + layer * n_pos for layer in range(n_layers)},
        "token": {(pos,): n_features + n_layers * n_pos + pos for pos in range(n_pos)},
    }
    offset = n_features + (n_layers + 1) * n_pos
    tables["logit"] = {(token,): offset + i for i, token in enumerate(logit_ids)}
    return tables


def agreement(a: torch.Tensor, b: torch.Tensor) -> dict[str, Any]:
    """How well saekit's entries ``a`` match circuit-tracer's ``b`` ([targets, sources] blocks, compared in
    float64): counts, norms, relative Frobenius error, the worst row's relative error, Pearson r, sign agreement."""
    worst_row = None
    if a.ndim == 2 and a.numel():
        row_norm = b.double().norm(dim=1)
        live = row_norm > 0
        if bool(live.any()):
            worst_row = float(((a.double() - b.double()).norm(dim=1)[live] / row_norm[live]).max())
    a, b = a.double().flatten(), b.double().flatten()
    scale = float(b.abs().max()) if b.numel() else 0.0
    big = b.abs() > 1e-3 * scale if scale > 0 else torch.zeros_like(b, dtype=torch.bool)
    result: dict[str, Any] = {
        "entries": int(a.numel()), "nonzero_saekit": int((a != 0).sum()), "nonzero_ct": int((b != 0).sum()),
        "norm_saekit": float(a.norm()), "norm_ct": float(b.norm()),
        "rel_error": float((a - b).norm() / b.norm()) if float(b.norm()) > 0 else (0.0 if float(a.norm()) == 0
                                                                                 else float("inf")),
        "worst_row_rel_error": worst_row,
        "max_abs_diff": float((a - b).abs().max()) if a.numel() else 0.0, "max_abs_ct": scale,
        "sign_agreement": float((a[big].sign() == b[big].sign()).double().mean()) if bool(big.any()) else None,
    }
    if a.numel() > 1 and float(a.std()) > 0 and float(b.std()) > 0:
        result["pearson"] = float(torch.corrcoef(torch.stack([a, b]))[0, 1])
    else:
        result["pearson"] = None
    return result


def compare(graph: Any, ct: dict[str, torch.Tensor], ct_info: dict[str, Any], n_layers: int) -> dict[str, Any]:
    """Match the nodes of saekit's ``graph`` and circuit-tracer's ``ct`` and score every (target, source) block."""
    n_pos = graph.n_positions
    s_ids, c_ids = graph.input_ids, ct["input_tokens"].tolist()
    s_logits, c_logits = graph.logit_tokens.tolist(), ct["logit_token_ids"].tolist()
    s_tab = node_tables(graph.features, n_layers, n_pos, s_logits)
    c_tab = node_tables(ct["active_features"], n_layers, len(c_ids), c_logits)
    s_adj, c_adj = graph.adjacency.float(), ct["adjacency_matrix"].float()
    matched = {kind: [key for key in s_tab[kind] if key in c_tab[kind]] for kind in s_tab}
    s_feat, c_feat = set(s_tab["feature"]), set(c_tab["feature"])
    s_act = dict(zip(s_tab["feature"], graph.activations.tolist()))
    c_act = dict(zip(c_tab["feature"], ct["activation_values"].tolist()))
    common = matched["feature"]
    act_a = torch.tensor([s_act[k] for k in common], dtype=torch.float64)
    act_b = torch.tensor([c_act[k] for k in common], dtype=torch.float64)
    s_prob = dict(zip(s_logits, graph.logit_probabilities.tolist()))
    c_prob = dict(zip(c_logits, ct["logit_probabilities"].tolist()))
    nodes = {
        "input_ids_identical": s_ids == c_ids, "positions": n_pos,
        "features_saekit": len(s_feat), "features_ct": len(c_feat), "features_matched": len(common),
        "features_only_saekit": sorted(s_feat - c_feat)[:20], "features_only_ct": sorted(c_feat - s_feat)[:20],
        "feature_jaccard": len(common) / max(1, len(s_feat | c_feat)),
        "bos_features_saekit": sum(1 for k in s_feat if k[1] == 0),
        "bos_features_ct": sum(1 for k in c_feat if k[1] == 0),
        "activation_rel_error": float((act_a - act_b).norm() / act_b.norm()) if common else None,
        "activation_max_abs_diff": float((act_a - act_b).abs().max()) if common else None,
        "selected_features_ct": int(ct["selected_features"].numel()),
        "logits_saekit": s_logits, "logits_ct": c_logits, "logit_strings_ct": ct_info["logit_strings"],
        "logits_identical_order": s_logits == c_logits,
        "logit_probability_max_abs_diff": max((abs(s_prob[t] - c_prob[t]) for t in s_prob if t in c_prob),
                                              default=None),
        "tl_vs_hf_logits_max_abs": ct_info["tl_vs_hf_logits_max_abs"],
        "saekit_clean_vs_tl_logits_max_abs": None,
        "ct_ids_from_prompt_string_identical": ct_info.get("ids_from_prompt_string") == s_ids,
    }
    blocks: dict[str, Any] = {}
    for target in TARGET_KINDS:
        rows_s = torch.tensor([s_tab[target][k] for k in matched[target]], dtype=torch.long)
        rows_c = torch.tensor([c_tab[target][k] for k in matched[target]], dtype=torch.long)
        for source in SOURCE_KINDS:
            cols_s = torch.tensor([s_tab[source][k] for k in matched[source]], dtype=torch.long)
            cols_c = torch.tensor([c_tab[source][k] for k in matched[source]], dtype=torch.long)
            a = s_adj[rows_s][:, cols_s]
            b = c_adj[rows_c][:, cols_c]
            blocks[f"{source}->{target}"] = agreement(a, b)
    # All matched edges but the BOS error columns (the one convention that differs by definition).
    edges_a, edges_b = [], []
    for target in TARGET_KINDS:
        for source in ("feature", "error", "token"):
            rows_s = [s_tab[target][k] for k in matched[target]]
            rows_c = [c_tab[target][k] for k in matched[target]]
            cols_s = [s_tab[source][k] for k in matched[source]]
            cols_c = [c_tab[source][k] for k in matched[source]]
            edges_a.append(s_adj[rows_s][:, cols_s].flatten())
            edges_b.append(c_adj[rows_c][:, cols_c].flatten())
    blocks["all (but BOS errors)"] = agreement(torch.cat(edges_a), torch.cat(edges_b))
    # How much of each side's input to the logits sits on nodes the other side lacks.
    logit_rows_s = [s_tab["logit"][k] for k in matched["logit"]]
    magnitude = s_adj[logit_rows_s].abs().sum()
    bos_cols = list(s_tab["error_bos"].values())
    unmatched_s = [i for k, i in s_tab["feature"].items() if k not in c_tab["feature"]]
    unmatched_c = [i for k, i in c_tab["feature"].items() if k not in s_tab["feature"]]
    logit_rows_c = [c_tab["logit"][k] for k in matched["logit"]]
    shares = {
        "saekit_logit_input_from_bos_errors": float(s_adj[logit_rows_s][:, bos_cols].abs().sum() / magnitude),
        "saekit_feature_input_from_bos_errors": float(
            s_adj[:graph.n_features][:, bos_cols].abs().sum() / s_adj[:graph.n_features].abs().sum().clamp_min(1e-30)),
        "saekit_logit_input_from_unmatched_features": float(s_adj[logit_rows_s][:, unmatched_s].abs().sum()
                                                            / magnitude),
        "ct_logit_input_from_unmatched_features": float(c_adj[logit_rows_c][:, unmatched_c].abs().sum()
                                                        / c_adj[logit_rows_c].abs().sum()),
    }
    return {"nodes": nodes, "blocks": blocks, "shares": shares}


def _jaccard(a: torch.Tensor, b: torch.Tensor) -> float:
    union = int((a | b).sum())
    return int((a & b).sum()) / union if union else 1.0


def compare_pruning(graph: Any, ct: dict[str, torch.Tensor], args: argparse.Namespace) -> dict[str, Any] | None:
    """saekit's ``prune`` on its own graph and on circuit-tracer's adjacency (same node layout) against
    circuit-tracer's ``prune_graph`` masks: which differences come from the graph and which from the pruning rule."""

    from saekit.circuits.graph import prune, to_dense

    same_layout = (graph.features.tolist() == ct["active_features"].tolist()
                   and graph.logit_tokens.tolist() == ct["logit_token_ids"].tolist()
                   and graph.input_ids == ct["input_tokens"].tolist())
    if not same_layout:
        return None
    ct_nodes, ct_edges = ct["prune_node_mask"].bool(), ct["prune_edge_mask"].bool()
    prunable = slice(0, graph.n_features + graph.n_errors)
    result: dict[str, Any] = {"ct_prune_graph": {"nodes_kept": int(ct_nodes[prunable].sum()),
                                                 "edges_kept": int(ct_edges.sum())}}
    on_ct_adjacency = graph.with_adjacency(ct["adjacency_matrix"].float())
    for name, subject in (("saekit_prune_on_saekit_graph", graph), ("saekit_prune_on_ct_adjacency", on_ct_adjacency)):
        pruned = prune(subject, args.node_threshold, args.edge_threshold)
        result[name] = {
            "nodes_kept": int(pruned.node_mask[prunable].sum()), "edges_kept": int(pruned.edge_mask.sum()),
            "node_jaccard_vs_ct": _jaccard(pruned.node_mask[prunable], ct_nodes[prunable]),
            "edge_jaccard_vs_ct": _jaccard(to_dense(graph, pruned.edge_mask), ct_edges),
            "bos_error_nodes_kept": int(pruned.node_mask[[graph.error_node(layer, 0)
                                                          for layer in graph.layers]].sum()),
        }
    return result


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 1e4 else f"{value:.3e}"
    return str(value)


def markdown(result: dict[str, Any]) -> str:
    """The result as a Markdown report: settings, nodes, the per-kind agreement table, shares and notes."""
    nodes, setup = result["comparison"]["nodes"], result["setup"]
    lines = [f"# saekit vs circuit-tracer attribution graph: {result['label']}", "",
             f"Model `{setup['model']}` ({setup['n_layers']} layers, d_model {setup['d_model']}), per-layer JumpReLU "
             f"transcoders `{setup['transcoders']}` (width {setup['width']}, trained on {setup['train_tokens']} "
             f"tokens; skip connection: {setup['skip']}, randomised skip scale: {setup['random_skip']}), prompt "
             f"{json.dumps(setup['prompt'])} -> ids {setup['input_ids']}; saekit's BOS error nodes "
             f"{'zeroed as circuit-tracer does' if setup.get('zero_bos_errors') else 'kept'}.",
             f"circuit-tracer {setup['ct_versions'].get('circuit-tracer')} (TransformerLens backend, transformer-lens "
             f"{setup['ct_versions'].get('transformer-lens')}); command: `{setup['command']}`.", "",
             "## Nodes", "",
             "| | saekit | circuit-tracer |", "|---|---|---|",
             f"| input ids identical (ids passed; ids circuit-tracer makes of the string) | "
             f"{nodes['input_ids_identical']}; {nodes['ct_ids_from_prompt_string_identical']} | |",
             f"| active features | {nodes['features_saekit']} | {nodes['features_ct']} |",
             f"| matched features (Jaccard) | {nodes['features_matched']} ({nodes['feature_jaccard']:.4f}) | |",
             f"| features at BOS | {nodes['bos_features_saekit']} | {nodes['bos_features_ct']} |",
             f"| activation rel. error / max abs diff | {_fmt(nodes['activation_rel_error'])} / "
             f"{_fmt(nodes['activation_max_abs_diff'])} | |",
             f"| logit targets | {nodes['logits_saekit']} | {nodes['logits_ct']} |",
             f"| logit order identical; max prob. diff | {nodes['logits_identical_order']}; "
             f"{_fmt(nodes['logit_probability_max_abs_diff'])} | |",
             f"| TL vs HF logits (max abs) | | {_fmt(nodes['tl_vs_hf_logits_max_abs'])} |",
             f"| saekit clean logits vs TL logits (max abs) | {_fmt(nodes['saekit_clean_vs_tl_logits_max_abs'])} | |",
             "",
             "## Edges (matched nodes; adjacency[target, source])", "",
             "| edge kind | entries | nonzero s / ct | Pearson | rel. error | worst row rel. error | max abs diff | "
             "max abs ct | sign agr. |",
             "|---|---|---|---|---|---|---|---|---|"]
    for kind, block in result["comparison"]["blocks"].items():
        lines.append(f"| {kind} | {block['entries']} | {block['nonzero_saekit']} / {block['nonzero_ct']} | "
                     f"{_fmt(block['pearson'], 7)} | {_fmt(block['rel_error'])} | "
                     f"{_fmt(block['worst_row_rel_error'])} | {_fmt(block['max_abs_diff'])} | "
                     f"{_fmt(block['max_abs_ct'])} | {_fmt(block['sign_agreement'])} |")
    lines += ["", "`error_bos` = the error nodes at position 0 (BOS); `error` = the others.", "", "## Shares", ""]
    lines += [f"- {name}: {value:.3g}" for name, value in result["comparison"]["shares"].items()]
    pruning = result["comparison"].get("pruning")
    if pruning:
        lines += ["", "## Pruning (node threshold / edge threshold as given; features and errors counted)", "",
                  "| | nodes kept | edges kept | node Jaccard vs ct | edge Jaccard vs ct | BOS error nodes kept |",
                  "|---|---|---|---|---|---|",
                  f"| circuit-tracer `prune_graph` on its graph | {pruning['ct_prune_graph']['nodes_kept']} | "
                  f"{pruning['ct_prune_graph']['edges_kept']} | 1 | 1 | 0 |"]
        for name in ("saekit_prune_on_saekit_graph", "saekit_prune_on_ct_adjacency"):
            row = pruning[name]
            lines.append(f"| `{name}` | {row['nodes_kept']} | {row['edges_kept']} | "
                         f"{row['node_jaccard_vs_ct']:.3f} | {row['edge_jaccard_vs_ct']:.3f} | "
                         f"{row['bos_error_nodes_kept']} |")
    lines += ["", "## Timings (s)", ""]
    lines += [f"- {name}: {value:.1f}" for name, value in result["timings"].items()]
    lines += ["", "## Differences and their causes", ""]
    lines += [f"- {note}" for note in result["notes"]]
    return "\n".join(lines) + "\n"


NOTES = [
    "BOS error nodes. circuit-tracer sets the error vectors at position 0 to zero (`error_vectors[:, "
    "self.zero_positions] = 0` in `TransformerLensReplacementModel.setup_attribution`, "
    "circuit_tracer/replacement_model/replacement_model_transformerlens.py; zero_positions = slice(0, 1) from "
    "`_configure_replacement_model`), so every edge out of a BOS error node is 0 and the BOS MLP outputs are in "
    "no node. saekit keeps them as error nodes (saekit/circuits/replacement.py: the BOS latents are zero, so "
    "error = MLP output - b_dec - skip there): its error_bos columns are non-zero. A convention, not a bug; the "
    "rest of the graph is unaffected because either way the BOS MLP output is a constant of the linear map.",
    "BOS features. Both sides drop position-0 features (circuit-tracer: `acts[zero_positions] = 0` in "
    "`SingleLayerTranscoder.encode_sparse`, circuit_tracer/transcoder/single_layer_transcoder.py; saekit: "
    "`latents[layer][0] = 0` in `ReplacementModel._clean_run`).",
    "Logit targets. circuit-tracer injects the demeaned unembedding column (W_U[:, t] - mean over the vocabulary, "
    "`AttributionTargets._compute_logit_vecs`, circuit_tracer/attribution/targets.py) as the gradient at "
    "`unembed.hook_pre` (the final norm's output), i.e. the target is logit_t - mean logit without the unembedding "
    "bias; saekit's target is logit_t - mean logit (saekit/circuits/attribution.py `_target_values`). Equal for "
    "Llama (no lm_head bias). Token choice: both take the top `max_n_logits` by softmax probability until the "
    "cumulative probability reaches `desired_logit_prob` (circuit-tracer: `searchsorted(cumsum, p) + 1` in "
    "`AttributionTargets._from_salient`; saekit: `(cumsum < p).sum() + 1`), the same count.",
    "Feature targets. circuit-tracer injects the encoder row W_enc[f] as the gradient at `mlp.hook_in` (the "
    "MLP input, after the pre-MLP norm and its weight; `AttributionContext.compute_batch`, "
    "circuit_tracer/attribution/context_transformerlens.py): the target is the pre-activation minus b_enc; "
    "saekit's is the pre-activation (saekit/circuits/attribution.py). The constant b_enc has no gradient.",
    "Sources. circuit-tracer contracts the gradient at `mlp.hook_out` with a * W_dec (features), the error vectors "
    "and at `hook_embed` with W_E[tokens] (`_make_attribution_hooks`); saekit multiplies the gradient with respect "
    "to each leaf (latent, error, embedding) by its value. Same direct effects.",
    "Skip connection, norms, attention. circuit-tracer's MLP output is `skip(x) + (mlp_out - skip(x)).detach()` "
    "(`_configure_skip_connection`), so gradients pass through the skip path and nowhere else in the MLP; saekit's "
    "replaced MLP is decode(latents) + skip(x) + error with latents and error as leaves: the same. Norm scales "
    "(`ln1/ln2/ln_final.hook_scale`) and attention patterns (`attn.hook_pattern`) are detached in "
    "`_configure_gradient_flow`; saekit freezes the clean 1/rms and the clean patterns (saekit/circuits/"
    "replacement.py): the same linearisation.",
    "Pruning. saekit's `prune` (saekit/circuits/graph.py) follows circuit-tracer's `prune_graph` rule "
    "(circuit_tracer/graph.py): the node cut where the cumulative influence share over all nodes, token nodes "
    "included, reaches the threshold; tokens and logits always kept; the edge cut on the pruned matrix; then "
    "feature/error nodes without kept outgoing edges (features: incoming) dropped until nothing changes. On "
    "circuit-tracer's adjacency ('saekit_prune_on_ct_adjacency') the two must keep the same nodes and edges; on "
    "saekit's own graph the BOS error nodes differ.",
    "Backend. circuit-tracer 0.5.0's nnsight backend does not import with nnsight 0.8.1 "
    "(replacement_model_nnsight.py imports `nnsight.intervention.tracing.tracer.Barrier` and sets "
    "`NNSIGHT_CONFIG.APP.CROSS_INVOKER`, both gone in 0.8.1), so the TransformerLens backend is used. "
    "TransformerLens' Llama config (`convert_hf_model_config` in transformer_lens/loading_from_pretrained.py) "
    "does not read `rope_theta`; the worker sets `rotary_base` from the HF config (SmolLM2: 100000) and checks "
    "TL's logits against HF's.",
]


# ---- the suite's fixture: circuit-tracer's own graph and scores on the tests' tiny model -----------------------

FIXTURE = REPO / "tests" / "fixtures" / "circuit_tracer_graph"
FIXTURE_PROMPT = "The cat sat on the mat because"
FIXTURE_TENSORS = ("adjacency_matrix", "active_features", "activation_values", "logit_token_ids",
                   "logit_probabilities", "input_tokens", "prune_node_mask", "prune_edge_mask")


def model_checksum(model: Any) -> list[float]:
    """Sums of three of the tiny model's weights: the suite checks its tiny model is the one the fixture saw."""
    inner = model.model
    return [float(inner.embed_tokens.weight.double().sum()), float(inner.layers[0].mlp.gate_proj.weight.double().sum()),
            float(inner.layers[-1].self_attn.v_proj.weight.double().sum())]


def fixture_transcoders(width: int = 96, layers: int = 2, d: int = 32, seed: int = 0) -> list[Any]:
    """Random per-layer JumpReLU transcoders with random skip matrices and thresholds low enough that many latents
    fire (as tests/circuits/test_attribution.py's ``_per_layer(skip=True)``)."""
    from saekit.dictionaries import DictionaryConfig, build_dictionary

    torch.manual_seed(seed)
    made = []
    for _ in range(layers):
        dictionary = build_dictionary(DictionaryConfig("jumprelu", d, width, d_out=d,
                                                       extra={"skip_connection": True})).eval()
        with torch.no_grad():
            dictionary.log_threshold.fill_(-1.5)
            dictionary.W_skip.normal_(0, 0.1)
        made.append(dictionary.requires_grad_(False))
    return made


def make_fixture(args: argparse.Namespace) -> None:
    """tests/fixtures/circuit_tracer_graph: transcoders in circuit-tracer's layout, and circuit-tracer 0.5.0's graph
    (its adjacency, nodes, prune_graph masks) and compute_graph_scores of FIXTURE_PROMPT on the tests' tiny model."""
    from safetensors.torch import load_file, save_file

    from saekit.dictionaries.formats.circuit_tracer import write_circuit_tracer_transcoders
    from saekit.models.loading import load_model

    work = args.work or Path("/tmp/ctg/fixture")
    model_dir = make_tiny_model(work / "model", layers=2, hidden=32)
    loaded = load_model(str(model_dir))
    ids = loaded.prompt_ids(FIXTURE_PROMPT).tolist()
    dictionaries = fixture_transcoders()
    sources = [{"model": "tiny", "site": f"blocks.{layer}.mlp_in", "target_site": f"blocks.{layer}.mlp_out"}
               for layer in range(len(dictionaries))]
    FIXTURE.mkdir(parents=True, exist_ok=True)
    ct_dir = write_circuit_tracer_transcoders(FIXTURE / "transcoders", dictionaries, sources, scan="saekit-fixture")
    args.prompt = FIXTURE_PROMPT
    ct, info = run_worker(ct_python(args.ct_python, work), model_dir, ct_dir, ids, args, work / "ct-graph")
    save_file({name: ct[name].contiguous() for name in FIXTURE_TENSORS}, str(FIXTURE / "graph.safetensors"))
    record = {"prompt": FIXTURE_PROMPT, "input_ids": ids, "model": "tests/conftest.py tiny_model_dir",
              "model_checksum": model_checksum(loaded.model), "scores": info["scores"],
              "settings": {"max_n_logits": args.max_logits, "desired_logit_prob": args.logit_probability,
                           "node_threshold": args.node_threshold, "edge_threshold": args.edge_threshold},
              "versions": info["versions"], "logit_strings": info["logit_strings"],
              "tl_vs_hf_logits_max_abs": info["tl_vs_hf_logits_max_abs"],
              "command": "python scripts/interop/compare_circuit_tracer_graph.py --fixture"}
    (FIXTURE / "graph.json").write_text(json.dumps(record, indent=2) + "\n")
    written = load_file(str(FIXTURE / "graph.safetensors"))
    print(json.dumps({**record, "adjacency": list(written["adjacency_matrix"].shape)}, indent=2))


def main() -> None:
    """Parse arguments, build or take the model and transcoders, make both graphs, compare them, write results."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="tiny", help="tiny, default, or a local Hugging Face Llama directory")
    parser.add_argument("--transcoders", type=Path, default=None,
                        help="a directory of per-layer transcoder runs (skip training)")
    parser.add_argument("--prompt", default="The capital of France is")
    parser.add_argument("--label", default=None, help="results name: circuit-tracer-graph-LABEL.{json,md}")
    parser.add_argument("--work", type=Path, default=None, help="work directory (default /tmp/ctg/LABEL)")
    parser.add_argument("--ct-python", type=Path, default=CT_VENV / "bin" / "python")
    parser.add_argument("--train-tokens", type=int, default=16384)
    parser.add_argument("--train-batch-size", type=int, default=256)
    parser.add_argument("--context-length", type=int, default=128)
    parser.add_argument("--expansion-factor", type=int, default=4)
    parser.add_argument("--train-arg", action="append", default=[], help="extra `saekit train` argument (repeat)")
    parser.add_argument("--random-skip", type=float, default=0.0,
                        help="replace the transcoders' skip matrices by random ones of this scale (stress test)")
    parser.add_argument("--max-logits", type=int, default=10)
    parser.add_argument("--logit-probability", type=float, default=0.95)
    parser.add_argument("--batch-size", type=int, default=32, help="saekit's targets per backward pass")
    parser.add_argument("--ct-batch-size", type=int, default=256, help="circuit-tracer's batch_size")
    parser.add_argument("--zero-bos-errors", action="store_true",
                        help="saekit's graph gives the BOS error nodes no edges, as circuit-tracer's does (like for "
                             "like pruned graphs)")
    parser.add_argument("--node-threshold", type=float, default=0.8, help="pruning comparison")
    parser.add_argument("--edge-threshold", type=float, default=0.98, help="pruning comparison")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-write", action="store_true", help="do not write benchmarks/results files")
    parser.add_argument("--fixture", action="store_true", help="(re)make the suite's fixture "
                        "tests/fixtures/circuit_tracer_graph instead (the tests' tiny model; no comparison here)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.fixture:
        make_fixture(args)
        return
    label = args.label or (args.model if args.model in ("tiny", "default") else Path(args.model).name)
    work = args.work or Path("/tmp/ctg") / label
    work.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}

    started = time.perf_counter()
    if args.model == "tiny":
        model_dir = make_tiny_model(work / "model")
    elif args.model == "default":
        model_dir = export_default_model(Path("/tmp/ctg/smollm2"))
    else:
        model_dir = Path(args.model)
    timings["model_export"] = time.perf_counter() - started

    started = time.perf_counter()
    reused = args.transcoders is not None or any((work / "runs" / "tc").glob("*/dictionary"))
    run = args.transcoders or train_transcoders(model_dir, work / "runs", args)
    if not reused:
        timings["train_transcoders"] = time.perf_counter() - started

    from saekit.circuits.transcoders import load_transcoders

    transcoders = load_transcoders(run)
    if args.random_skip:
        randomise_skip(transcoders, args.random_skip)
    started = time.perf_counter()
    graph, replacement = saekit_graph(transcoders, run, args.prompt, args)
    timings["saekit_attribute_total"] = time.perf_counter() - started
    timings["saekit_attribute_graph"] = float(graph.settings["seconds"])
    ct_dir = work / "ct" / "saekit-tc"
    export_transcoders(transcoders, str(model_dir), ct_dir)

    started = time.perf_counter()
    python = ct_python(args.ct_python, work)
    ct, ct_info = run_worker(python, model_dir, ct_dir, graph.input_ids, args, work / "ct-graph")
    timings["circuit_tracer_total"] = time.perf_counter() - started
    timings["circuit_tracer_attribute"] = float(ct_info["seconds_attribute"])

    n_layers = replacement.loaded.adapter.n_layers
    comparison = compare(graph, ct, ct_info, n_layers)
    comparison["pruning"] = compare_pruning(graph, ct, args)
    comparison["nodes"]["saekit_clean_vs_tl_logits_max_abs"] = float(
        (replacement.clean.logits - ct["tl_logits"]).abs().max())
    first = transcoders.dictionary_of(transcoders.layers[0])
    from saekit.training.config import load_run_config

    run_dirs = sorted(d for d in Path(run).iterdir() if (d / "dictionary").is_dir())
    result = {
        "label": label,
        "setup": {
            "model": str(model_dir), "n_layers": n_layers, "d_model": replacement.loaded.adapter.d_model,
            "transcoders": str(run), "width": first.config.width, "architecture": first.config.architecture,
            "skip": first.W_skip is not None, "random_skip": args.random_skip, "transcoders_reused": reused,
            "train_tokens": load_run_config(run_dirs[0]).optim.train_tokens if run_dirs else None,
            "prompt": args.prompt, "input_ids": graph.input_ids, "tokens": graph.tokens,
            "max_logits": args.max_logits, "logit_probability": args.logit_probability,
            "zero_bos_errors": args.zero_bos_errors, "ct_versions": ct_info["versions"],
            "rotary_base": ct_info["rotary_base"],
            "command": shlex.join([".venv/bin/python", "scripts/interop/compare_circuit_tracer_graph.py",
                                   *sys.argv[1:]]),
            "host": f"{platform.machine()} {os.cpu_count()} CPUs, torch {torch.__version__}",
        },
        "comparison": comparison, "timings": timings, "notes": NOTES,
    }
    print(markdown(result))
    if not args.no_write:
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / f"circuit-tracer-graph-{label}.json").write_text(json.dumps(result, indent=2) + "\n")
        (RESULTS / f"circuit-tracer-graph-{label}.md").write_text(markdown(result))
        print(f"wrote {RESULTS / f'circuit-tracer-graph-{label}.json'} and .md")


if __name__ == "__main__":
    main()
