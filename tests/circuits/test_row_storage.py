"""The graph stored as its latents' and logits' rows against the dense N x N computation it replaces: the rows
are the dense adjacency's (the others zero), and pruning's masks and influence, and the scores, equal what the
dense algebra gives (a reference copy of it below), on synthetic graphs and on the tiny model's; and a prompt of
hundreds of tokens traces and prunes in less memory than the dense matrix alone would take."""

from __future__ import annotations

import math

import pytest
import torch
from memory_helpers import allocated_peak

from saekit.circuits.attribution import AttributionConfig, _direct_effects, attribute
from saekit.circuits.graph import Graph, graph_scores, prune, to_dense
from saekit.circuits.replacement import ReplacementModel
from saekit.circuits.targets import LatentTarget, LogitTarget
from saekit.circuits.transcoders import TranscoderSet
from saekit.dictionaries import DictionaryConfig, build_dictionary
from saekit.errors import SaekitError

PROMPT = "The cat sat on the mat because it was warm and the dog was not"


# ---------------------------------------------------------------- the dense reference (saekit's former graph.py)

def dense_normalised_abs(adjacency: torch.Tensor) -> torch.Tensor:
    magnitude = adjacency.abs()
    return magnitude / magnitude.sum(1, keepdim=True).clamp_min(1e-10)


def dense_total_influence(normalised: torch.Tensor, weights: torch.Tensor, max_depth: int) -> torch.Tensor:
    influence = torch.zeros_like(weights)
    current = weights
    for _ in range(max_depth):
        current = current @ normalised
        if not current.any():
            break
        influence = influence + current
    return influence


def dense_share_threshold(scores: torch.Tensor, share: float) -> torch.Tensor:
    ordered = scores.flatten().sort(descending=True).values
    cumulative = ordered.cumsum(0) / ordered.sum().clamp_min(1e-12)
    index = min(int(torch.searchsorted(cumulative, torch.tensor(share, dtype=cumulative.dtype))), ordered.numel() - 1)
    return ordered[index]


def dense_weights(graph: Graph) -> torch.Tensor:
    weights = torch.zeros(graph.n_nodes)
    weights[graph.logit_node(0):] = graph.logit_probabilities.float()
    return weights


def dense_scores(graph: Graph, adjacency: torch.Tensor) -> tuple[float, float]:
    weights = dense_weights(graph)
    normalised = dense_normalised_abs(adjacency)
    influence = dense_total_influence(normalised, weights, graph.n_nodes)
    errors = slice(graph.n_features, graph.n_features + graph.n_errors)
    tokens = slice(graph.token_node(0), graph.logit_node(0))
    token_share, error_share = influence[tokens].sum(), influence[errors].sum()
    output = influence + weights
    completeness = ((1 - normalised[:, errors].sum(-1)) * output).sum() / output.sum()
    return float(token_share / (token_share + error_share).clamp_min(1e-30)), float(completeness)


def dense_prune(graph: Graph, adjacency: torch.Tensor, node_threshold: float,
                edge_threshold: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    weights = dense_weights(graph)
    depth = len(graph.layers) + 3
    influence = dense_total_influence(dense_normalised_abs(adjacency), weights, depth)
    nodes = influence >= dense_share_threshold(influence, node_threshold)
    first_token = graph.token_node(0)
    nodes[first_token:] = True
    kept = dense_normalised_abs(adjacency * nodes[:, None] * nodes[None, :])
    scores = kept * (dense_total_influence(kept, weights, depth) + weights)[:, None]
    edges = scores >= dense_share_threshold(scores, edge_threshold)
    while True:
        before = nodes.clone()
        edges &= nodes[:, None] & nodes[None, :]
        nodes[:first_token] &= edges[:, :first_token].any(0)
        nodes[:graph.n_features] &= edges[:graph.n_features].any(1)
        if torch.equal(nodes, before):
            break
    return nodes, edges, influence


def check_against_dense(graph: Graph, thresholds: list[tuple[float, float]]) -> None:
    """Rows, scores and every pruning of ``graph`` equal the dense reference's."""
    dense = graph.adjacency
    assert dense.shape == (graph.n_nodes, graph.n_nodes)
    assert torch.equal(dense[graph.row_nodes], graph.rows)
    assert not dense[graph.n_features:graph.logit_node(0)].any()  # error and token nodes have no inputs
    scores = graph_scores(graph)
    replacement, completeness = dense_scores(graph, dense)
    assert scores.replacement == pytest.approx(replacement, abs=1e-6)
    assert scores.completeness == pytest.approx(completeness, abs=1e-6)
    for node_threshold, edge_threshold in thresholds:
        pruned = prune(graph, node_threshold, edge_threshold)
        nodes, edges, influence = dense_prune(graph, dense, node_threshold, edge_threshold)
        torch.testing.assert_close(pruned.influence, influence, atol=1e-6, rtol=1e-6)
        assert torch.equal(pruned.node_mask, nodes), (node_threshold, edge_threshold)
        assert torch.equal(pruned.edge_mask, edges[graph.row_nodes]), (node_threshold, edge_threshold)
        if edge_threshold < 1:  # at 1 the dense threshold is 0: the square's empty rows come out "kept" too
            assert torch.equal(to_dense(graph, pruned.edge_mask), edges)


def synthetic_graph(seed: int, features: int = 40, layers: int = 3, positions: int = 6, logits: int = 3) -> Graph:
    """A random acyclic graph over real node bookkeeping: a latent's inputs come from earlier latents (in node
    order), errors and tokens, sparsely; a logit's from anything but logits."""
    generator = torch.Generator().manual_seed(seed)
    n_sources = features + (layers + 1) * positions
    rows = torch.randn(features + logits, n_sources + logits, generator=generator)
    rows *= torch.rand(rows.shape, generator=generator) < 0.3
    rows[:features, :features] = rows[:features, :features].tril(-1)
    rows[:, n_sources:] = 0
    return Graph(prompt="p", input_ids=list(range(positions)), tokens=["t"] * positions, model="m", transcoders="t",
                 layers=list(range(layers)),
                 features=torch.stack([torch.randint(0, layers, (features,), generator=generator),
                                       torch.randint(0, positions, (features,), generator=generator),
                                       torch.arange(features)], 1),
                 activations=torch.rand(features, generator=generator) + 0.1,
                 logit_tokens=torch.arange(logits), logit_probabilities=torch.tensor([0.5, 0.3, 0.1])[:logits],
                 logit_strings=["a", "b", "c"][:logits], rows=rows, settings={})


@pytest.mark.parametrize("seed", range(6))
def test_row_storage_equals_the_dense_computation_on_synthetic_graphs(seed):
    check_against_dense(synthetic_graph(seed), [(0.8, 0.98), (0.5, 0.9), (0.95, 0.5), (1.0, 1.0), (0.3, 1.0)])


def test_a_dense_adjacency_goes_in_and_out_of_the_rows():
    graph = synthetic_graph(0)
    assert torch.equal(graph.with_adjacency(graph.adjacency).rows, graph.rows)
    assert torch.equal(graph.row_index(graph.row_nodes), torch.arange(graph.n_features + graph.n_logits))
    wrong = graph.adjacency
    wrong[graph.token_node(0), 0] = 1.0  # a token node with an input: not an attribution graph's matrix
    with pytest.raises(SaekitError, match="error or token nodes inputs"):
        graph.with_adjacency(wrong)
    with pytest.raises(SaekitError, match="the graph has"):
        graph.with_adjacency(torch.zeros(3, 3))
    positions = torch.tensor([graph.node_position(n) for n in range(graph.n_nodes)])
    assert torch.equal(graph.node_positions(), positions)


# ---------------------------------------------------------------- the tiny model's graph

def _per_layer(width: int = 96, threshold: float = -3.0) -> TranscoderSet:
    torch.manual_seed(0)
    per_layer = {layer: build_dictionary(DictionaryConfig("jumprelu", 32, width, d_out=32)).eval() for layer in (0, 1)}
    for dictionary in per_layer.values():
        with torch.no_grad():
            dictionary.log_threshold.fill_(threshold)  # many latents fire
        dictionary.requires_grad_(False)
    return TranscoderSet.per_layer(per_layer)


def dense_reference_adjacency(replacement: ReplacementModel, graph: Graph, batch_size: int = 8) -> torch.Tensor:
    """The N x N matrix built as saekit built it before it stored rows: every target's direct effects placed in
    its node's row, through a forward whose attention broadcasts the clean pattern (no shared-pattern mix)."""
    features, activations = graph.features, graph.activations
    targets = [LogitTarget(int(t)) for t in graph.logit_tokens] + [LatentTarget(*f) for f in features.tolist()]
    target_nodes = list(range(graph.logit_node(0), graph.n_nodes)) + list(range(graph.n_features))
    n_sources = graph.logit_node(0)
    dense = torch.zeros(graph.n_nodes, graph.n_nodes)
    nodes = replacement.clean_nodes(min(batch_size, len(targets)), requires_grad=True)
    output = replacement.forward(*nodes, last_logits_only=True)
    for start in range(0, len(targets), batch_size):
        chunk = slice(start, start + batch_size)
        dense[target_nodes[chunk], :n_sources] = _direct_effects(output, nodes, targets[chunk], features, activations)
    return dense


@pytest.mark.parametrize("batch_size", [1, 7])
def test_the_tiny_models_row_graph_equals_the_dense_one(tiny_loaded, batch_size):
    ids = tiny_loaded.prompt_ids(PROMPT)
    replacement = ReplacementModel(tiny_loaded, _per_layer(), ids)
    graph = attribute(replacement, PROMPT, AttributionConfig(progress=False, batch_size=batch_size,
                                                             max_feature_nodes=150))
    assert graph.rows.shape == (graph.n_features + graph.n_logits, graph.n_nodes) and graph.n_features == 150
    dense = dense_reference_adjacency(replacement, graph)
    scale = float(dense.abs().max())
    # the kept forward mixes values with the shared pattern, the reference with the broadcast one: float order only
    torch.testing.assert_close(graph.adjacency, dense, atol=1e-6 * scale, rtol=0)
    check_against_dense(graph, [(0.8, 0.98), (0.5, 0.9), (0.9, 1.0)])


def test_a_long_prompt_traces_in_less_memory_than_the_dense_matrix_alone(tiny_loaded, tmp_path):
    # 600 tokens: ~2,000 nodes (two error layers x 600, 600 tokens, 200 latents), a 16 MB dense matrix; the rows
    # are 1.7 MB and the forward of one copy is a few MB, so attribution, pruning and scores stay well below it.
    ids = tiny_loaded.prompt_ids(" ".join(["the cat sat on the mat and looked at the dog"] * 60))[:600]
    replacement = ReplacementModel(tiny_loaded, _per_layer(), ids)
    config = AttributionConfig(progress=False, batch_size=1, max_feature_nodes=200)

    def trace() -> tuple[Graph, object]:
        graph = attribute(replacement, "long", config)
        return graph, prune(graph)
    peak, (graph, pruned) = allocated_peak(trace, tmp_path / "trace.json")
    dense_bytes = 4 * graph.n_nodes ** 2
    assert graph.n_positions == 600 and graph.n_nodes > 2000
    assert graph.rows.numel() * 4 < dense_bytes / 9
    assert peak < 0.6 * dense_bytes, (peak, dense_bytes)  # the dense version held the matrix and 7 copies more
    assert int(pruned.node_mask.sum()) > graph.n_logits and math.isfinite(graph.settings["scores"]["replacement"])


def test_a_graph_file_of_the_dense_format_reads_back_as_rows(tmp_path):
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from saekit.circuits.graph_files import read_graph, save_graph

    graph = synthetic_graph(1)
    pruned = prune(graph)
    save_graph(graph, pruned, tmp_path / "rows.safetensors")
    tensors = load_file(str(tmp_path / "rows.safetensors"))
    assert tensors["adjacency_rows"].shape == (graph.n_features + graph.n_logits, graph.n_nodes)
    with safe_open(str(tmp_path / "rows.safetensors"), "pt") as handle:
        metadata = handle.metadata()
    # saekit's earlier files held the square adjacency and edge mask
    del tensors["adjacency_rows"]
    tensors.update(adjacency=graph.adjacency, edge_mask=to_dense(graph, pruned.edge_mask))
    save_file(tensors, str(tmp_path / "dense.safetensors"), metadata=metadata)
    for name in ("rows", "dense"):
        again, again_pruned = read_graph(tmp_path / f"{name}.safetensors")
        assert torch.equal(again.rows, graph.rows) and torch.equal(again_pruned.edge_mask, pruned.edge_mask)
        assert torch.equal(again_pruned.node_mask, pruned.node_mask)
    tensors["adjacency"] = torch.zeros(3, 3)
    save_file(tensors, str(tmp_path / "bad.safetensors"), metadata=metadata)
    with pytest.raises(SaekitError, match="damaged"):
        read_graph(tmp_path / "bad.safetensors")


def test_the_copies_of_a_long_prompt_share_the_clean_attention_patterns(tiny_loaded, tmp_path):
    # 400 tokens, 8 copies: broadcast, each copy would keep its own 5 MB of patterns (2 layers x 4 heads x 400^2
    # floats) for the backward pass, 41 MB; shared, the passes hold the copies' nodes and activations only.
    from saekit.circuits.budget import estimate_attribution, sizes_of

    ids = tiny_loaded.prompt_ids(" ".join(["the cat sat on the mat and looked at the dog"] * 40))[:400]
    transcoders = _per_layer()
    replacement = ReplacementModel(tiny_loaded, transcoders, ids)
    config = AttributionConfig(progress=False, batch_size=8, max_feature_nodes=16)
    peak, graph = allocated_peak(lambda: attribute(replacement, "long", config), tmp_path / "attribute.json")
    patterns_per_copy = 4 * 2 * 4 * 400 ** 2
    assert peak < 8 * patterns_per_copy / 2, (peak, patterns_per_copy)
    estimate = estimate_attribution(sizes_of(tiny_loaded, transcoders, 400, graph.n_features, graph.n_logits, 8))
    # an upper bound (the budget refuses on it); at this length its per-position terms other than the latents
    # run high (measured 1.7x), the latents' (3 floats a latent a position a copy) as measured
    assert peak <= estimate.forward + estimate.adjacency <= 2 * peak
