"""An attribution graph on disk: circuit-tracer's graph JSON (its viewer opens it), the full graph as
safetensors (the adjacency's latent and logit rows: read back exactly), and saekit's own page beside them.

The JSON follows circuit-tracer's frontend schema (``metadata``, ``qParams``, ``nodes``, ``links``)
and its node ids: a latent ``{layer}_{latent}_{position}``, an error node ``0_{layer}_{position}``,
a token ``E_{token id}_{position}``, a logit ``{n_layers + 1}_{token id}_{last position}``. Only the
pruned graph goes there, as circuit-tracer writes it: the kept edges and the nodes they touch, every
token and logit (target); a node's ``influence`` is, as there, the cumulative share of the total influence held by
it and every node above it (small for the most influential). ``graph-metadata.json`` lists the
directory's graphs, one entry per slug. The metadata adds saekit's own keys: the graph's ``scores``
(circuit-tracer's replacement and completeness), its ``targets`` by name, and any ``frozen_mlp_layers``.

``merge_subgraph`` puts a subgraph saved on the page (pinned nodes, supernodes, labels:
``saekit.circuits.subgraph``) into the JSON's ``qParams``, where Neuronpedia's viewer opens it, and beside
the graph as ``SLUG.subgraph.json``, which the page embeds.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from saekit.circuits.graph import (
    ERROR_TYPE,
    FEATURE_TYPE,
    Graph,
    PrunedGraph,
    cumulative_share,
    dense_to_rows,
)
from saekit.circuits.page import FeatureSource, embed_subgraph, graph_page, subgraph_state
from saekit.circuits.subgraph import STATE_KEYS, SUBGRAPH_SUFFIX, Subgraph, check_subgraph, read_subgraph
from saekit.errors import SaekitError
from saekit.io import load_tensors, read_json, save_tensors, write_json, write_text
from saekit.render import display_token

GRAPH_METADATA = "graph-metadata.json"
VIEWER_WHITESPACE = {"\n": "\u23ce", "\t": "\u2192", "\r": "\u21b5"}  # circuit-tracer's process_token


def viewer_token(text: str) -> str:
    """A token as circuit-tracer's viewer shows it: its symbols for line breaks and tabs, empty kept empty."""
    return display_token(text, VIEWER_WHITESPACE, empty="")


def _cantor(x: int, y: int) -> int:
    """The unique integer circuit-tracer's viewer uses as a (layer, latent) feature id."""
    return (x + y) * (x + y + 1) // 2 + y


def node_record(graph: Graph, node: int, influence: float) -> dict[str, Any]:
    """One node in circuit-tracer's schema."""
    kind, position = graph.node_kind(node), graph.node_position(node)
    base = {"ctx_idx": position, "token_prob": 0.0, "is_target_logit": False, "run_idx": 0, "reverse_ctx_idx": 0,
            "clerp": "", "influence": influence, "activation": None}
    if kind == "feature":
        layer, _, latent = (int(v) for v in graph.features[node])
        return {**base, "node_id": f"{layer}_{latent}_{position}", "feature": _cantor(layer, latent),
                "layer": str(layer), "feature_type": FEATURE_TYPE, "jsNodeId": f"{layer}_{latent}-0",
                "activation": float(graph.activations[node])}
    if kind == "error":
        layer = graph.node_layer(node)
        return {**base, "node_id": f"0_{layer}_{position}", "feature": -1, "layer": str(layer),
                "feature_type": ERROR_TYPE, "jsNodeId": f"{layer}_{position}-0"}
    if kind == "token":
        token = graph.input_ids[position]
        return {**base, "node_id": f"E_{token}_{position}", "feature": position, "layer": "E",
                "feature_type": "embedding", "jsNodeId": f"E_{token}-{position}"}
    index = node - graph.logit_node(0)
    token, probability = int(graph.logit_tokens[index]), float(graph.logit_probabilities[index])
    layer = str(graph.node_layer(node) + 1)  # circuit-tracer: n_layers + 1
    record = {**base, "node_id": f"{layer}_{token}_{position}", "feature": token, "layer": layer,
              "feature_type": "logit", "token_prob": probability, "is_target_logit": index == 0,
              "jsNodeId": f"L_{token}-{position}",
              "clerp": f'Output "{viewer_token(graph.logit_strings[index])}" (p={probability:.3f})'}
    targets = graph.settings.get("targets") or []
    if graph.settings.get("explicit_targets") and index < len(targets):
        target = targets[index]
        record["clerp"] = f"Target {target['label']} ({target['unit']})"
        if target["kind"] != "token":  # ids unique per target: a difference or latent has no one token
            record.update(node_id=f"{layer}_target{index}_{position}", jsNodeId=f"L_target{index}-{position}")
    return record


def kept_nodes_and_links(graph: Graph, pruned: PrunedGraph) -> tuple[list[int], list[tuple[int, int, float]]]:
    """The nodes circuit-tracer would write (touched by a kept edge, or a token or logit) and the kept edges
    (from the stored rows: by target node, then source, as the square's nonzero order)."""
    row_nodes = graph.row_nodes
    mask = pruned.edge_mask & pruned.node_mask[row_nodes][:, None] & pruned.node_mask[None, :]
    rows, sources = mask.nonzero(as_tuple=True)
    weights = graph.rows[rows, sources].tolist()
    targets = row_nodes[rows]
    links = list(zip(sources.tolist(), targets.tolist(), weights))
    touched = set(sources.tolist()) | set(targets.tolist())
    always = set(range(graph.token_node(0), graph.n_nodes))
    nodes = sorted(n for n in touched | always if pruned.node_mask[n])
    return nodes, links


def graph_json(graph: Graph, pruned: PrunedGraph, slug: str, scan: str | None = None) -> dict[str, Any]:
    """The pruned graph in circuit-tracer's graph schema."""
    nodes, links = kept_nodes_and_links(graph, pruned)
    shares = cumulative_share(pruned.influence)  # circuit-tracer's 'influence': small = most influential
    records = {n: node_record(graph, n, float(shares[n])) for n in nodes}
    metadata = {"slug": slug, "scan": scan or graph.transcoders or "saekit", "transcoder_list": [],
                "prompt_tokens": [viewer_token(t) for t in graph.tokens], "prompt": graph.prompt,
                "node_threshold": pruned.node_threshold, "schema_version": 1,
                "info": {"creator_name": "saekit", "model": graph.model, "edge_threshold": pruned.edge_threshold},
                "scores": graph.settings.get("scores"),
                "targets": [t["label"] for t in graph.settings.get("targets") or []],
                "frozen_mlp_layers": graph.settings.get("frozen_mlp_layers") or []}
    return {"metadata": metadata,
            "qParams": {"pinnedIds": [], "supernodes": [], "linkType": "both", "clickedId": "", "sg_pos": ""},
            "nodes": list(records.values()),
            "links": [{"source": records[s]["node_id"], "target": records[t]["node_id"], "weight": w}
                      for s, t, w in links]}


def save_graph(graph: Graph, pruned: PrunedGraph, path: str | Path) -> None:
    """The full graph (every node, the adjacency's latent and logit rows) and its pruning, as safetensors
    (atomic)."""
    tensors = {"features": graph.features, "activations": graph.activations, "logit_tokens": graph.logit_tokens,
               "logit_probabilities": graph.logit_probabilities, "adjacency_rows": graph.rows,
               "input_ids": torch.tensor(graph.input_ids), "node_mask": pruned.node_mask,
               "edge_mask": pruned.edge_mask, "influence": pruned.influence}
    header = {"prompt": graph.prompt, "tokens": graph.tokens, "model": graph.model,
              "transcoders": graph.transcoders, "layers": graph.layers, "logit_strings": graph.logit_strings,
              "settings": graph.settings, "node_threshold": pruned.node_threshold,
              "edge_threshold": pruned.edge_threshold}
    save_tensors(path, {k: v.contiguous() for k, v in tensors.items()}, {"graph": json.dumps(header)})


def read_graph(path: str | Path) -> tuple[Graph, PrunedGraph]:
    """A graph written by ``save_graph``: the rows it stores, or the dense [N, N] matrices of files written
    before saekit stored rows (their rows taken)."""
    from safetensors import safe_open

    path = Path(path)
    tensors = load_tensors(path, "attribution graph")
    with safe_open(str(path), "pt") as handle:
        raw = (handle.metadata() or {}).get("graph")
    if raw is None or not {"adjacency_rows", "adjacency"} & set(tensors):
        raise SaekitError(f"{path} is not an attribution graph written by saekit (no graph header); "
                          "rebuild it with `saekit attribute`")
    header = json.loads(raw)
    dense = "adjacency_rows" not in tensors
    graph = Graph(prompt=header["prompt"], input_ids=tensors["input_ids"].tolist(), tokens=header["tokens"],
                  model=header["model"], transcoders=header["transcoders"], layers=header["layers"],
                  features=tensors["features"], activations=tensors["activations"],
                  logit_tokens=tensors["logit_tokens"], logit_probabilities=tensors["logit_probabilities"],
                  logit_strings=header["logit_strings"], rows=tensors.get("adjacency_rows", torch.empty(0)),
                  settings=header["settings"])
    damaged = "; the file is damaged, rebuild it with `saekit attribute`"
    edge_mask = tensors["edge_mask"].bool()
    try:
        if dense:
            graph.rows = dense_to_rows(graph, tensors["adjacency"], f"{path}: the adjacency")
            edge_mask = edge_mask[graph.row_nodes] if edge_mask.shape[0] == graph.n_nodes else edge_mask
    except SaekitError as err:
        raise SaekitError(f"{err}{damaged}") from None
    wanted = (graph.n_features + graph.n_logits, graph.n_nodes)
    for name, tensor in (("adjacency rows", graph.rows), ("edge mask", edge_mask)):
        if tuple(tensor.shape) != wanted:
            raise SaekitError(f"{path}: the {name} are {tuple(tensor.shape)} but the graph has {wanted[0]} latents "
                              f"and targets and {wanted[1]} nodes{damaged}")
    pruned = PrunedGraph(tensors["node_mask"].bool(), edge_mask, tensors["influence"],
                         header["node_threshold"], header["edge_threshold"])
    return graph, pruned


def _update_index(out: Path, metadata: dict[str, Any]) -> None:
    """Add (or replace) this slug's entry in the directory's graph list, as circuit-tracer's server reads it."""
    index_path = out / GRAPH_METADATA
    index = read_json(index_path, "graph list") if index_path.is_file() else {"graphs": []}
    if not isinstance(index.get("graphs"), list):
        raise SaekitError(f"{index_path} is not a graph list ({{\"graphs\": [...]}}); move it away")
    index["graphs"] = [g for g in index["graphs"] if g.get("slug") != metadata["slug"]] + [metadata]
    write_json(index_path, index)


def write_graph_files(graph: Graph, pruned: PrunedGraph, out_dir: str | Path, slug: str,
                      sources: dict[int, FeatureSource] | None = None) -> Path:
    """Write ``SLUG.json`` (circuit-tracer's schema), ``SLUG.safetensors`` (the full graph), ``SLUG.html``
    (saekit's page, with node details from ``sources``: per model layer, its analysis store; and a
    ``SLUG.subgraph.json`` already there embedded) and the directory's ``graph-metadata.json``. Each file is
    written atomically."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise SaekitError(f"--out {out} is a file; give a directory for the graph files")
    out.mkdir(parents=True, exist_ok=True)
    record = graph_json(graph, pruned, slug)
    write_json(out / f"{slug}.json", record)
    save_graph(graph, pruned, out / f"{slug}.safetensors")
    write_text(out / f"{slug}.html", graph_page(graph, record, sources or {}, out))
    _update_index(out, record["metadata"])
    return out


def _graph_json_path(path: Path) -> Path:
    """The graph JSON a path names: the file itself, or the one graph its directory lists."""
    if not path.is_dir():
        return path
    index = path / GRAPH_METADATA
    slugs = [g.get("slug") for g in read_json(index, "graph list").get("graphs", [])] if index.is_file() else []
    if len(slugs) != 1:
        raise SaekitError(f"{path} holds {len(slugs)} graphs ({', '.join(map(str, slugs[:5])) or 'none listed'}); "
                          f"name one graph JSON, e.g. {path / (str(slugs[0]) if slugs else 'SLUG')}.json")
    return path / f"{slugs[0]}.json"


def merged_q_params(q_params: dict[str, Any], subgraph: Subgraph) -> dict[str, Any]:
    """A graph JSON's ``qParams`` with the subgraph's state; other keys (``sg_pos``) kept."""
    merged = {key: value for key, value in q_params.items() if key not in STATE_KEYS}
    state = subgraph.q_params()
    if not state["clerps"]:  # circuit-tracer's own viewer JSON.parses qParams.clerps: "[]" as a list breaks it
        del state["clerps"]
    return {**state, **merged}


def merge_subgraph(graph_path: str | Path, source: str | Path | Subgraph) -> Subgraph:
    """Merge a subgraph (a ``SLUG.subgraph.json`` file, a graph JSON's ``qParams``, or a ``Subgraph``) into a
    graph's files: the JSON's ``qParams`` (Neuronpedia's graph format), ``SLUG.subgraph.json`` beside it and
    the page's embedded subgraph. ``graph_path`` is the graph JSON, or a directory holding one graph. Every id
    is checked against the graph before anything is written; each file is written atomically."""
    path = _graph_json_path(Path(graph_path))
    record = read_json(path, "graph JSON")
    if not isinstance(record, dict) or not {"metadata", "qParams", "nodes"} <= set(record):
        raise SaekitError(f"{path} is not a graph JSON (metadata, qParams, nodes, links); give the SLUG.json "
                          "`saekit attribute` wrote")
    subgraph = source if isinstance(source, Subgraph) else read_subgraph(source)
    where = "the subgraph" if isinstance(source, Subgraph) else f"subgraph file {source}"
    check_subgraph(subgraph, record, where)
    slug = record["metadata"]["slug"]
    subgraph = Subgraph(subgraph.pinned, subgraph.supernodes, subgraph.clerps, subgraph.clicked,
                        subgraph.link_type, slug)
    page_path = path.with_suffix(".html")
    beside = path.with_name(f"{slug}{SUBGRAPH_SUFFIX}")
    page = None  # made before anything is written: an old page without the block refuses first
    if page_path.is_file():
        page = embed_subgraph(page_path.read_text(encoding="utf-8"), subgraph_state(subgraph, beside.name))
    record["qParams"] = merged_q_params(record["qParams"] or {}, subgraph)
    write_json(path, record)
    write_json(beside, subgraph.file_json())
    if page is not None:
        write_text(page_path, page)
    return subgraph
