"""Attention attribution on the tiny model: the head split of position-crossing edges (its parts sum to the
edge, and each part is what that head carries, measured by cutting patterns) and the QK view of one head
(its scores are the real model's, its parts sum to them, and its gradients match finite differences)."""

from __future__ import annotations

import json

import pytest
import torch
from family_models import tiny_loaded as family_loaded
from run_helpers import train_tiny_transcoders
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

from saekit.circuits.attention import head_split, qk_attribution, target_of
from saekit.circuits.attribution import AttributionConfig, _target_values, attribute
from saekit.circuits.graph import Graph, prune
from saekit.circuits.replacement import ReplacementModel
from saekit.cli import main
from saekit.errors import SaekitError
from tests.circuits.test_attribution import PROMPT, _clt, _ids, _per_layer

CONFIG = AttributionConfig(progress=False, batch_size=16)


@pytest.fixture(scope="module", params=["per_layer", "clt"])
def built(request, tiny_loaded) -> tuple[ReplacementModel, Graph]:
    transcoders = {"per_layer": _per_layer, "clt": _clt}[request.param]()
    replacement = ReplacementModel(tiny_loaded, transcoders, _ids(tiny_loaded))
    return replacement, attribute(replacement, PROMPT, CONFIG)


def _within(split) -> None:
    """Every edge equals the sum of its parts to 1e-5 (relative for edges larger than 1)."""
    tolerance = 1e-5 * split.edges.abs().clamp_min(1.0)
    assert (split.residual.abs() <= tolerance).all(), float(split.residual.abs().max())


def test_the_heads_parts_sum_to_every_crossing_edge(built):
    replacement, graph = built
    split = head_split(replacement, graph, batch_size=16)
    positions = torch.tensor([graph.node_position(n) for n in range(graph.n_nodes)])
    crossing = (graph.adjacency != 0) & (positions[:, None] != positions[None, :])
    assert len(split.edges) == int(crossing.sum()) > 1000  # every crossing edge of the full graph, no other
    assert (positions[split.sources] != positions[split.targets]).all()
    _within(split)
    # The split is not trivial: several heads of both attention layers carry parts, of both signs.
    carried = split.parts.abs().sum(0)
    assert (carried > 1e-3).sum() >= 4 and (carried[0] > 1e-3).any() and (carried[1] > 1e-3).any()
    assert (split.parts > 1e-4).any() and (split.parts < -1e-4).any()
    # The pruned graph's kept crossing edges: a subset, split the same way.
    pruned = prune(graph)
    kept = head_split(replacement, graph, pruned, batch_size=7)
    assert 0 < len(kept.edges) < len(split.edges)
    _within(kept)
    full = {(s, t): e for e, (s, t) in enumerate(zip(split.sources.tolist(), split.targets.tolist()))}
    rows = [full[(s, t)] for s, t in zip(kept.sources.tolist(), kept.targets.tolist())]
    torch.testing.assert_close(kept.parts, split.parts[rows], atol=1e-6, rtol=1e-5)


def _remove(graph: Graph, nodes, node: int) -> None:
    embeddings, latents, errors = nodes
    kind, position = graph.node_kind(node), graph.node_position(node)
    if kind == "feature":
        layer, _, latent = map(int, graph.features[node])
        latents[layer][0, position, latent] = 0.0
    elif kind == "error":
        errors[graph.node_layer(node)][0, position] = 0.0
    else:
        embeddings[0, position] = 0.0


def _edge_under(replacement: ReplacementModel, graph: Graph, patterns: dict, source: int, target: int) -> float:
    """The edge measured by removing its source, with the frozen patterns replaced by ``patterns``."""
    clean = replacement.patterns
    replacement.patterns = patterns
    try:
        wanted = target_of(graph, target)
        with torch.no_grad():
            nodes = replacement.clean_nodes(1)
            before = _target_values(replacement.forward(*nodes, last_logits_only=True), [wanted], -1)
            _remove(graph, nodes, source)
            after = _target_values(replacement.forward(*nodes, last_logits_only=True), [wanted], -1)
    finally:
        replacement.patterns = clean
    return float(before - after)


def test_a_part_is_the_edge_through_that_head_at_the_first_crossing(built):
    """part(L, h) = edge(D below L, D + O_h at L, A above) - edge(D below L, D at L, A above), measured by
    removing the source with the patterns cut by hand: nothing of the probes or the recorded values."""
    replacement, graph = built
    split = head_split(replacement, graph, batch_size=16)
    diagonal = {layer: torch.diag_embed(torch.diagonal(p, dim1=-2, dim2=-1)) for layer, p in
                replacement.patterns.items()}
    into_logit = (split.targets >= graph.logit_node(0)).nonzero().squeeze(1)
    into_latent = (split.targets < graph.n_features).nonzero().squeeze(1)
    chosen = [int(into_logit[split.edges[into_logit].abs().argmax()]),
              int(into_latent[split.edges[into_latent].abs().argmax()])]
    for edge in chosen:
        source, target = int(split.sources[edge]), int(split.targets[edge])
        full = _edge_under(replacement, graph, dict(replacement.patterns), source, target)
        assert full == pytest.approx(float(split.edges[edge]), rel=1e-4, abs=1e-6)
        for layer in (0, 1):
            for head in range(split.parts.shape[2]):
                below = {lay: diagonal[lay] if lay < layer else p for lay, p in replacement.patterns.items()}
                through = dict(below)
                off = replacement.patterns[layer] - diagonal[layer]
                through[layer] = diagonal[layer] + off * (torch.arange(off.shape[1]) == head)[None, :, None, None]
                local = dict(below)
                local[layer] = diagonal[layer]
                measured = _edge_under(replacement, graph, through, source, target) - \
                    _edge_under(replacement, graph, local, source, target)
                # float32 differences of targets of size ~1: noise of a few 1e-6
                assert float(split.parts[edge, layer, head]) == pytest.approx(measured, rel=1e-3, abs=2e-5)
        assert split.parts[edge].abs().max() > 1e-2  # a part large enough for the comparison to mean something


def _hand_scores(replacement: ReplacementModel, nodes, layer: int, head: int, query: int) -> torch.Tensor:
    """Llama's scores computed by hand from the attention's input in the replacement model: q_proj, k_proj,
    rotary, scaling (none of the code under test)."""
    attention = replacement.loaded.adapter.attention(layer)
    seen = {}

    def grab(module, args, kwargs):
        seen["x"] = args[0] if args else kwargs["hidden_states"]
        seen["rotary"] = kwargs["position_embeddings"]
    handle = attention.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        with torch.no_grad():
            replacement.forward(*nodes, last_logits_only=True)
    finally:
        handle.remove()
    x, (cos, sin) = seen["x"], seen["rotary"]
    shape = (*x.shape[:2], -1, attention.head_dim)
    q = attention.q_proj(x).view(shape).transpose(1, 2)
    k = attention.k_proj(x).view(shape).transpose(1, 2)
    q, k = apply_rotary_pos_emb(q, k, cos, sin)
    group = q.shape[1] // k.shape[1]
    return attention.scaling * (k[:, head // group, :query + 1] @ q[:, head, query, :, None]).squeeze(-1)


def _scaled(graph_nodes, kind: str, layer: int, position: int, latent: int, factor: float):
    embeddings, latents, errors = graph_nodes
    if kind == "feature":
        latents[layer][0, position, latent] *= factor
    elif kind == "error":
        errors[layer][0, position] *= factor
    else:
        embeddings[0, position] *= factor
    return graph_nodes


def test_qk_scores_are_the_models_their_parts_sum_to_them_and_match_finite_differences(tiny_loaded):
    replacement = ReplacementModel(tiny_loaded, _per_layer(), _ids(tiny_loaded))
    graph = attribute(replacement, PROMPT, CONFIG)
    query = len(graph.input_ids) - 1
    qk = qk_attribution(replacement, 1, 3, query, graph.features, batch_size=3)
    # The scores are the real model's: by hand from its clean run, and their softmax is its clean pattern.
    torch.testing.assert_close(qk.scores, _hand_scores(replacement, replacement.clean_nodes(1), 1, 3, query)[0])
    torch.testing.assert_close(qk.scores.softmax(0), qk.pattern, atol=1e-5, rtol=1e-4)
    # Each side sums to the score over every node (the graph has every active latent) plus its bias.
    torch.testing.assert_close(qk.query_parts.sum(1) + qk.query_bias, qk.scores, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(qk.key_parts.sum(1) + qk.key_bias, qk.scores, atol=1e-5, rtol=1e-4)
    assert len(qk.nodes) == graph.n_nodes - graph.n_logits and qk.total.abs().max() > 1e-2
    assert qk.query_bias.abs().max() < 1e-5  # llama has no biases: a query with every node at zero is zero
    # Nodes at a later position than the query, and latents of layer 1 (after the attention), have no part.
    later = qk.positions > query
    assert not later.any() or qk.total[:, later].abs().max() == 0
    layer_one = torch.tensor([n.split("_")[0] == "1" and not n.startswith("E") for n in qk.nodes])
    assert qk.total[:, layer_one].abs().max() == 0
    torch.testing.assert_close(qk.by_position().sum(1), qk.total.sum(1))
    # Finite differences: scaling a node's value by 1 +- eps moves the (quadratic) scores by value x gradient.
    eps, totals = 0.1, qk.total.abs().sum(0)
    kinds = {"feature": range(graph.n_features), "error": range(graph.n_features, graph.token_node(0)),
             "token": range(graph.token_node(0), graph.logit_node(0))}
    for kind, nodes in kinds.items():
        node = max(nodes, key=lambda n: float(totals[n]))
        assert totals[node] > 1e-3
        layer, position = graph.node_layer(node), graph.node_position(node)
        latent = int(graph.features[node, 2]) if kind == "feature" else 0
        up = _hand_scores(replacement, _scaled(replacement.clean_nodes(1), kind, layer, position, latent, 1 + eps),
                          1, 3, query)[0]
        down = _hand_scores(replacement, _scaled(replacement.clean_nodes(1), kind, layer, position, latent, 1 - eps),
                            1, 3, query)[0]
        torch.testing.assert_close((up - down) / (2 * eps), qk.total[:, node], rtol=1e-3,
                                   atol=1e-3 * float(qk.total[:, node].abs().max()))


@pytest.mark.parametrize("family", ["qwen3", "gpt_neox", "gemma2"])
def test_other_families_split_exactly_and_their_qk_parts_sum_to_the_scores(family, default_tokenizer):
    """q/k norms (Qwen3, frozen), per-head fused values and a parallel residual (GPT-NeoX), attention softcaps
    (Gemma 2: the score is before the softcap)."""
    loaded = family_loaded(family, default_tokenizer)
    from tests.circuits.test_replacement_families import _per_layer as family_transcoders

    ids = _ids(loaded)
    replacement = ReplacementModel(loaded, family_transcoders(), ids)
    graph = attribute(replacement, PROMPT, AttributionConfig(progress=False, max_feature_nodes=60))
    split = head_split(replacement, graph, prune(graph, 0.9, 0.99), batch_size=16)
    assert len(split.edges) > 10
    _within(split)
    qk = qk_attribution(replacement, 1, 1, len(ids) - 1)  # every active latent: the sums are exact
    torch.testing.assert_close(qk.query_parts.sum(1) + qk.query_bias, qk.scores, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(qk.key_parts.sum(1) + qk.key_bias, qk.scores, atol=1e-5, rtol=1e-4)
    if family == "qwen3":  # the q/k norms are frozen: the scores are the clean ones, softmax gives the pattern
        torch.testing.assert_close(qk.scores.softmax(0), qk.pattern, atol=1e-5, rtol=1e-4)


def test_qk_refuses_a_layer_head_or_position_that_does_not_exist(tiny_loaded):
    replacement = ReplacementModel(tiny_loaded, _per_layer(), _ids(tiny_loaded))
    for args, message in (((2, 0, 3), "attention layer 2 does not exist; the model has layers 0-1"),
                          ((0, 4, 3), "head 4 does not exist; layer 0 has heads 0-3"),
                          ((0, 0, 99), "query position 99 is outside the prompt"),
                          ((-1, 0, 3), "attention layer -1 does not exist")):
        with pytest.raises(SaekitError, match=message) as caught:
            qk_attribution(replacement, *args)
        assert len(str(caught.value).splitlines()) == 1


@pytest.fixture(scope="module")
def trained(tiny_model_dir, tmp_path_factory):
    return train_tiny_transcoders(tiny_model_dir, tmp_path_factory.mktemp("heads-runs"))


def test_attribute_heads_writes_the_split_beside_the_graph(trained, tmp_path, capsys):
    out = tmp_path / "graph"
    assert main(["attribute", str(trained), "--prompt", PROMPT, "--out", str(out), "--check-ablations", "0",
                 "--node-threshold", "0.95", "--heads", "3"]) == 0
    assert "heads:" in capsys.readouterr().out
    written = next(out.glob("*.heads.json"))
    slug = written.name.removesuffix(".heads.json")
    heads, graph_json = json.loads(written.read_text()), json.loads((out / f"{slug}.json").read_text())
    positions = {node["node_id"]: node["ctx_idx"] for node in graph_json["nodes"]}
    links = {f"{link['source']}->{link['target']}": link["weight"] for link in graph_json["links"]}
    crossing = {key for key in links if positions[key.split("->")[0]] != positions[key.split("->")[1]]}
    assert crossing and set(heads["edges"]) == crossing  # every kept crossing edge, nothing else
    for key, record in heads["edges"].items():
        assert record["weight"] == pytest.approx(links[key], rel=1e-6)
        assert 1 <= len(record["heads"]) <= 3
        sizes = [abs(value) for _, _, value in record["heads"]]
        assert sizes == sorted(sizes, reverse=True)
        assert all(0 <= layer < heads["layers"] and 0 <= head < heads["heads"] for layer, head, _ in record["heads"])
        split = sum(value for _, _, value in record["heads"]) + record["other"]
        assert split == pytest.approx(record["weight"], abs=1e-5 * max(1.0, abs(record["weight"])))
    totals = heads["totals"]
    assert totals["edges"] == len(crossing) and totals["largest_residual"] < 1e-5
    assert len(totals["heads"]) == heads["layers"] * heads["heads"]
    # --heads 0 is one line, before any work.
    assert main(["attribute", str(trained), "--prompt", PROMPT, "--out", str(tmp_path / "other"), "--heads", "0"]) == 1
    err = capsys.readouterr().err.strip()
    assert "--heads" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "other").exists()
