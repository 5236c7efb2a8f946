"""The attribution graph as data: its nodes, the dense matrix of direct effects, and its pruning.

Nodes, in this order (circuit-tracer's): the active latents ``features`` (F rows of (model layer,
position, latent)), one error node per (replaced layer, position) (layer-major), one token node per
position, and the output logits chosen at the last position (T). ``adjacency[target, source]`` is the
direct effect of the source node on the target node in the local replacement model: the source's
value times the gradient of the target's value (a latent's pre-activation, or a logit minus the
mean logit) with respect to it, through frozen attention and norms only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from saekit.errors import SaekitError

# circuit-tracer's feature_type names of a transcoder latent and an error node (its viewer keys on them)
FEATURE_TYPE = "cross layer transcoder"
ERROR_TYPE = "mlp reconstruction error"


@dataclass
class Graph:
    prompt: str
    input_ids: list[int]
    tokens: list[str]  # the decoded prompt tokens
    model: str
    transcoders: str  # where the transcoders came from (a path)
    layers: list[int]  # the replaced model layers, in order
    features: Tensor  # [F, 3] long: model layer, position, latent
    activations: Tensor  # [F] the latents' values on the prompt
    logit_tokens: Tensor  # [T] vocabulary ids, most probable first
    logit_probabilities: Tensor  # [T]
    logit_strings: list[str]
    adjacency: Tensor  # [N, N] float32, row = target, column = source
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def n_features(self) -> int:
        return int(self.features.shape[0])

    @property
    def n_positions(self) -> int:
        return len(self.input_ids)

    @property
    def n_errors(self) -> int:
        return len(self.layers) * self.n_positions

    @property
    def n_logits(self) -> int:
        return int(self.logit_tokens.shape[0])

    @property
    def n_nodes(self) -> int:
        return self.n_features + self.n_errors + self.n_positions + self.n_logits

    def error_node(self, layer: int, position: int) -> int:
        return self.n_features + self.layers.index(layer) * self.n_positions + position

    def token_node(self, position: int) -> int:
        return self.n_features + self.n_errors + position

    def logit_node(self, index: int) -> int:
        return self.n_features + self.n_errors + self.n_positions + index

    def node_kind(self, node: int) -> str:
        """'feature', 'error', 'token' or 'logit'."""
        bounds = (("feature", self.n_features), ("error", self.n_errors), ("token", self.n_positions),
                  ("logit", self.n_logits))
        for kind, count in bounds:
            if node < count:
                return kind
            node -= count
        raise IndexError(node)

    def node_position(self, node: int) -> int:
        """The prompt position a node sits at (logits: the last)."""
        kind = self.node_kind(node)
        if kind == "feature":
            return int(self.features[node, 1])
        if kind == "error":
            return (node - self.n_features) % self.n_positions
        if kind == "token":
            return node - self.n_features - self.n_errors
        return self.n_positions - 1

    def node_layer(self, node: int) -> int:
        """The model layer a node sits at: -1 for tokens (the embedding), n_layers for logits."""
        kind = self.node_kind(node)
        if kind == "feature":
            return int(self.features[node, 0])
        if kind == "error":
            return self.layers[(node - self.n_features) // self.n_positions]
        return -1 if kind == "token" else self.settings.get("model_layers", max(self.layers) + 1)


@dataclass
class PrunedGraph:
    """Which nodes and edges survive pruning, and every node's influence on the chosen logits."""

    node_mask: Tensor  # [N] bool
    edge_mask: Tensor  # [N, N] bool
    influence: Tensor  # [N]: the node's logit-weighted, normalised total effect (paths of every length)
    node_threshold: float
    edge_threshold: float


def normalised_abs(adjacency: Tensor) -> Tensor:
    """|A| with each row scaled to sum to one (rows without inputs stay zero; sums floored at circuit-tracer's
    1e-10)."""
    magnitude = adjacency.abs()
    return magnitude / magnitude.sum(1, keepdim=True).clamp_min(1e-10)


def total_influence(normalised: Tensor, weights: Tensor, max_depth: int) -> Tensor:
    """weights @ (A + A^2 + ...): every path's share of the weighted targets (the graph is acyclic)."""
    influence = torch.zeros_like(weights)
    current = weights
    for _ in range(max_depth):
        current = current @ normalised
        if not current.any():
            break
        influence = influence + current
    return influence


def share_threshold(scores: Tensor, share: float) -> Tensor:
    """The smallest score among the largest scores that together hold ``share`` of the total."""
    ordered = scores.flatten().sort(descending=True).values
    cumulative = ordered.cumsum(0) / ordered.sum().clamp_min(1e-12)
    index = min(int(torch.searchsorted(cumulative, torch.tensor(share, dtype=cumulative.dtype))), ordered.numel() - 1)
    return ordered[index]


def cumulative_share(scores: Tensor) -> Tensor:
    """Per node, the share of the total held by it and every node scoring higher (what circuit-tracer's JSON
    calls influence: small for the most influential nodes)."""
    ordered, order = scores.sort(descending=True)
    shares = torch.zeros_like(scores)
    shares[order] = ordered.cumsum(0) / ordered.sum().clamp_min(1e-12)
    return shares


def edge_influence(normalised: Tensor, weights: Tensor, depth: int) -> Tensor:
    """Each edge's normalised weight times its target's influence (a logit's own weight included)."""
    return normalised * (total_influence(normalised, weights, depth) + weights)[:, None]


def target_weights(graph: Graph) -> Tensor:
    """[N]: each target node's weight (a top logit's probability, an explicit target's share), zero elsewhere."""
    weights = torch.zeros(graph.n_nodes)
    weights[graph.logit_node(0):] = graph.logit_probabilities.float()
    return weights


@dataclass(frozen=True)
class GraphScores:
    """circuit-tracer's two scores of how much of the targets the graph explains through latents (1: all)."""

    replacement: float  # token nodes' share of the influence reaching the targets from tokens and error nodes
    completeness: float  # the non-error share of every node's inputs, averaged with weight (influence + weight)


def graph_scores(graph: Graph) -> GraphScores:
    """circuit-tracer's ``compute_graph_scores``: with N = rows of |A| normalised to one and w the target weights,
    influence = w (N + N^2 + ...); replacement = influence of the tokens / influence of tokens and errors;
    completeness = sum over nodes of (1 - the errors' share of its row) (influence + w) / sum of (influence + w).
    The unnormalised error nodes' inputs count: a graph with frozen MLPs counts their outputs as errors."""
    weights = target_weights(graph)
    normalised = normalised_abs(graph.adjacency.float())
    influence = total_influence(normalised, weights, graph.n_nodes)  # stops when the paths run out
    errors = slice(graph.n_features, graph.n_features + graph.n_errors)
    tokens = slice(graph.token_node(0), graph.logit_node(0))
    token_share, error_share = influence[tokens].sum(), influence[errors].sum()
    replacement = token_share / (token_share + error_share).clamp_min(1e-30)
    output = influence + weights
    completeness = ((1 - normalised[:, errors].sum(-1)) * output).sum() / output.sum()
    return GraphScores(float(replacement), float(completeness))


def prune(graph: Graph, node_threshold: float = 0.8, edge_threshold: float = 0.98) -> PrunedGraph:
    """circuit-tracer's pruning rule: keep the nodes holding ``node_threshold`` of the influence on the
    logits (every node counted, tokens and logits then always kept), then the edges holding
    ``edge_threshold`` of the edge influence among them, then drop latents and errors left without a
    kept outgoing edge and latents without a kept incoming one, until nothing changes.

    Influence: rows of |A| normalised to one, the logit nodes weighted by their probabilities, summed
    over paths of every length.
    """
    if not (0 <= node_threshold <= 1 and 0 <= edge_threshold <= 1):
        raise SaekitError("node and edge thresholds are shares of the influence: give values in [0, 1]")
    weights = target_weights(graph)
    depth = len(graph.layers) + 3
    influence = total_influence(normalised_abs(graph.adjacency.float()), weights, depth)
    nodes = influence >= share_threshold(influence, node_threshold)
    first_token = graph.token_node(0)
    nodes[first_token:] = True
    kept = graph.adjacency.float() * nodes[:, None] * nodes[None, :]
    scores = edge_influence(normalised_abs(kept), weights, depth)
    edges = scores >= share_threshold(scores, edge_threshold)
    while True:  # at most a layer's worth of rounds: each can strand the nodes upstream of what it removed
        before = nodes.clone()
        edges &= nodes[:, None] & nodes[None, :]
        nodes[:first_token] &= edges[:, :first_token].any(0)  # latents and errors must feed something
        nodes[:graph.n_features] &= edges[:graph.n_features].any(1)  # latents must be fed
        if torch.equal(nodes, before):
            break
    return PrunedGraph(nodes, edges, influence, node_threshold, edge_threshold)
