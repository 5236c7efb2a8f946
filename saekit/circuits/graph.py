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
    influence: Tensor  # [N]: the node's share of the logit-weighted, normalised total effect
    node_threshold: float
    edge_threshold: float


def normalised_abs(adjacency: Tensor) -> Tensor:
    """|A| with each row scaled to sum to one (rows without inputs stay zero)."""
    magnitude = adjacency.abs()
    return magnitude / magnitude.sum(1, keepdim=True).clamp_min(1e-12)


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


def _keep_share(scores: Tensor, threshold: float) -> Tensor:
    """The smallest set of entries (by score, largest first) holding ``threshold`` of the total."""
    flat = scores.flatten()
    order = flat.argsort(descending=True)
    cumulative = flat[order].cumsum(0) / flat.sum().clamp_min(1e-12)
    keep = torch.zeros_like(flat, dtype=torch.bool)
    count = int((cumulative < threshold).sum()) + 1
    keep[order[:min(count, flat.numel())]] = True
    return keep.view(scores.shape) & (scores > 0)


def prune(graph: Graph, node_threshold: float = 0.8, edge_threshold: float = 0.98) -> PrunedGraph:
    """Keep the nodes holding ``node_threshold`` of the influence on the logits, then the edges holding
    ``edge_threshold`` of the influence among them (tokens and logits are always kept).

    Influence: rows of |A| normalised to one, the logit nodes weighted by their probabilities, summed
    over paths of every length. An edge's score is its normalised weight times its target's influence
    (a logit's own weight for edges into logits).
    """
    n = graph.n_nodes
    normalised = normalised_abs(graph.adjacency.float())
    weights = torch.zeros(n)
    logits = slice(graph.logit_node(0), n)
    weights[logits] = graph.logit_probabilities / graph.logit_probabilities.sum()
    depth = len(graph.layers) + 3
    influence = total_influence(normalised, weights, depth)
    prunable = torch.zeros(n, dtype=torch.bool)
    prunable[:graph.n_features + graph.n_errors] = True
    kept = _keep_share(torch.where(prunable, influence, 0.0), node_threshold) | ~prunable
    # Influence again on the kept subgraph, so edges are scored by what is left.
    sub = normalised * kept[:, None] * kept[None, :]
    node_score = total_influence(sub, weights, depth) + weights
    edge_scores = sub * node_score[:, None]
    edges = _keep_share(edge_scores, edge_threshold)
    return PrunedGraph(kept, edges, influence, node_threshold, edge_threshold)
