"""The attribution graph as data: its nodes, the rows of its matrix of direct effects, and its pruning.

Nodes, in this order (circuit-tracer's): the active latents ``features`` (F rows of (model layer,
position, latent)), one error node per (replaced layer, position) (layer-major), one token node per
position, and the output logits chosen at the last position (T). The adjacency ``A[target, source]`` is the
direct effect of the source node on the target node in the local replacement model: the source's
value times the gradient of the target's value (a latent's pre-activation, or a logit minus the
mean logit) with respect to it, through frozen attention and norms only.

Only latents and logits have inputs: the rows of error and token nodes are zero. So, as circuit-tracer does
while it builds a graph, only the F + T non-zero rows are stored (``Graph.rows``: the latents' rows, then the
logits', every column a node). N x N would not fit a long prompt: 2,048 tokens through 30 replaced MLPs make
~63k error nodes, 16 GB of float32. ``Graph.adjacency`` gives the dense square for small graphs; pruning,
the scores, the files, the subgraph and the head split all work from the rows, and give what the dense
computation gives (``tests/circuits/test_row_storage.py`` holds them to it).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
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
    rows: Tensor  # [F + T, N] float32: the adjacency's rows of the latents, then of the logits; column = source node
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

    @property
    def row_nodes(self) -> Tensor:
        """[F + T] long: the node each stored row is the input of (the latents, then the logits)."""
        return torch.cat([torch.arange(self.n_features), torch.arange(self.logit_node(0), self.n_nodes)])

    def row_index(self, nodes: Tensor) -> Tensor:
        """The stored row of each latent or logit node in ``nodes`` (error and token nodes have none)."""
        return torch.where(nodes < self.n_features, nodes, nodes - (self.logit_node(0) - self.n_features))

    @property
    def adjacency(self) -> Tensor:
        """[N, N] float32, row = target, column = source: the dense matrix, for small graphs only (N^2 memory)."""
        return to_dense(self, self.rows)

    def with_adjacency(self, adjacency: Tensor) -> Graph:
        """This graph with another dense [N, N] adjacency over the same nodes (circuit-tracer's, say)."""
        return replace(self, rows=dense_to_rows(self, adjacency, "the adjacency"))

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

    def node_positions(self) -> Tensor:
        """[N] long: the prompt position of every node (logits: the last), without a Python loop over nodes."""
        return torch.cat([self.features[:, 1].long(), torch.arange(self.n_positions).repeat(len(self.layers)),
                          torch.arange(self.n_positions), torch.full((self.n_logits,), self.n_positions - 1)])

    def node_layer(self, node: int) -> int:
        """The model layer a node sits at: -1 for tokens (the embedding), n_layers for logits."""
        kind = self.node_kind(node)
        if kind == "feature":
            return int(self.features[node, 0])
        if kind == "error":
            return self.layers[(node - self.n_features) // self.n_positions]
        return -1 if kind == "token" else self.settings.get("model_layers", max(self.layers) + 1)


def to_dense(graph: Graph, rows: Tensor) -> Tensor:
    """[N, N]: rows laid out as ``graph.rows`` (the adjacency, an edge mask) put back in the square, the error and
    token nodes' rows zero (False)."""
    dense = torch.zeros(graph.n_nodes, graph.n_nodes, dtype=rows.dtype)
    dense[graph.row_nodes] = rows
    return dense


def dense_to_rows(graph: Graph, dense: Tensor, what: str) -> Tensor:
    """The latents' and logits' rows of an [N, N] matrix over the graph's nodes; refused if any other row holds
    something (error and token nodes have no inputs: such a matrix is not over these nodes)."""
    if tuple(dense.shape) != (graph.n_nodes, graph.n_nodes):
        raise SaekitError(f"{what} is {tuple(dense.shape)} but the graph has {graph.n_nodes} nodes")
    rest = dense[graph.n_features:graph.logit_node(0)]
    if bool(rest.any()):
        raise SaekitError(f"{what} gives error or token nodes inputs; they have none in an attribution graph")
    return dense[graph.row_nodes].contiguous()


@dataclass
class PrunedGraph:
    """Which nodes and edges survive pruning, and every node's influence on the chosen logits."""

    node_mask: Tensor  # [N] bool
    edge_mask: Tensor  # [F + T, N] bool, laid out as Graph.rows (error and token nodes have no incoming edges)
    influence: Tensor  # [N]: the node's logit-weighted, normalised total effect (paths of every length)
    node_threshold: float
    edge_threshold: float


def normalised_abs(adjacency: Tensor) -> Tensor:
    """|A| with each row scaled to sum to one (rows without inputs stay zero; sums floored at circuit-tracer's
    1e-10). Works on the square or on its stored rows alike (each row on its own)."""
    magnitude = adjacency.abs()
    return magnitude.div_(magnitude.sum(1, keepdim=True).clamp_min(1e-10))  # in place: one copy, not two


def total_influence(normalised: Tensor, weights: Tensor, max_depth: int, row_nodes: Tensor | None = None) -> Tensor:
    """weights @ (A + A^2 + ...): every path's share of the weighted targets (the graph is acyclic).

    ``normalised`` is the square [N, N], or (``row_nodes`` given) only its rows of those nodes, [R, N]: the other
    rows are zero, so each step's product over N rows is the product over these R, and nothing N x N is formed."""
    influence = torch.zeros_like(weights)
    current = weights
    for _ in range(max_depth):
        current = current @ normalised if row_nodes is None else current[row_nodes] @ normalised
        if not current.any():
            break
        influence = influence + current
    return influence


def share_threshold(scores: Tensor, share: float) -> Tensor:
    """The smallest score among the largest scores that together hold ``share`` of the total (scores >= 0).

    Sorted without indices (numpy, in place, on a negated copy): torch's sort would add 12 bytes per score; the
    edge scores are one per stored adjacency entry."""
    ordered = scores.flatten().neg()
    ordered.numpy().sort()  # ascending -scores: the scores descending once negated back
    ordered.neg_()
    cumulative = ordered.cumsum(0).div_(ordered.sum().clamp_min(1e-12))
    index = min(int(torch.searchsorted(cumulative, torch.tensor(share, dtype=cumulative.dtype))), ordered.numel() - 1)
    return ordered[index]


def cumulative_share(scores: Tensor) -> Tensor:
    """Per node, the share of the total held by it and every node scoring higher (what circuit-tracer's JSON
    calls influence: small for the most influential nodes)."""
    ordered, order = scores.sort(descending=True)
    shares = torch.zeros_like(scores)
    shares[order] = ordered.cumsum(0) / ordered.sum().clamp_min(1e-12)
    return shares


def edge_influence(normalised: Tensor, weights: Tensor, depth: int, row_nodes: Tensor | None = None) -> Tensor:
    """Each edge's normalised weight times its target's influence (a logit's own weight included). With
    ``row_nodes`` (``normalised`` holds those rows only) the scores overwrite ``normalised``, saving a copy."""
    if row_nodes is None:
        return normalised * (total_influence(normalised, weights, depth) + weights)[:, None]
    reach = total_influence(normalised, weights, depth, row_nodes) + weights
    return normalised.mul_(reach[row_nodes][:, None])


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
    The unnormalised error nodes' inputs count: a graph with frozen MLPs counts their outputs as errors.
    Error and token nodes have no row: none of their input is error."""
    weights = target_weights(graph)
    row_nodes = graph.row_nodes
    normalised = normalised_abs(graph.rows.float())
    influence = total_influence(normalised, weights, graph.n_nodes, row_nodes)  # stops when the paths run out
    errors = slice(graph.n_features, graph.n_features + graph.n_errors)
    tokens = slice(graph.token_node(0), graph.logit_node(0))
    token_share, error_share = influence[tokens].sum(), influence[errors].sum()
    replacement = token_share / (token_share + error_share).clamp_min(1e-30)
    output = influence + weights
    from_errors = torch.zeros(graph.n_nodes)
    from_errors[row_nodes] = normalised[:, errors].sum(-1)
    completeness = ((1 - from_errors) * output).sum() / output.sum()
    return GraphScores(float(replacement), float(completeness))


def prune(graph: Graph, node_threshold: float = 0.8, edge_threshold: float = 0.98) -> PrunedGraph:
    """circuit-tracer's pruning rule: keep the nodes holding ``node_threshold`` of the influence on the
    logits (every node counted, tokens and logits then always kept), then the edges holding
    ``edge_threshold`` of the edge influence among them, then drop latents and errors left without a
    kept outgoing edge and latents without a kept incoming one, until nothing changes.

    Influence: rows of |A| normalised to one, the logit nodes weighted by their probabilities, summed
    over paths of every length. All of it on the stored rows: what the square would give, nothing N x N formed.
    """
    if not (0 <= node_threshold <= 1 and 0 <= edge_threshold <= 1):
        raise SaekitError("node and edge thresholds are shares of the influence: give values in [0, 1]")
    weights = target_weights(graph)
    depth = len(graph.layers) + 3
    row_nodes = graph.row_nodes
    influence = total_influence(normalised_abs(graph.rows.float()), weights, depth, row_nodes)
    nodes = influence >= share_threshold(influence, node_threshold)
    first_token = graph.token_node(0)
    nodes[first_token:] = True
    # |A masked| = |A| masked (a mask is 0 or 1): the masked rows normalised, in place
    kept = graph.rows.float().abs().mul_(nodes[row_nodes][:, None]).mul_(nodes[None, :])
    kept.div_(kept.sum(1, keepdim=True).clamp_min(1e-10))
    scores = edge_influence(kept, weights, depth, row_nodes)
    threshold = share_threshold(scores, edge_threshold)
    edges = scores >= threshold
    del scores, kept
    # A zero threshold keeps the square's zero-score edges too, the token nodes' (always kept) empty rows among
    # them: every kept node then feeds one, so none is dropped for feeding nothing.
    feeding_rule = bool(threshold > 0)
    while True:  # at most a layer's worth of rounds: each can strand the nodes upstream of what it removed
        before = nodes.clone()
        edges &= nodes[row_nodes][:, None]
        edges &= nodes[None, :]
        if feeding_rule:
            nodes[:first_token] &= edges[:, :first_token].any(0)  # latents and errors must feed something
        nodes[:graph.n_features] &= edges[:graph.n_features].any(1)  # latents must be fed
        if torch.equal(nodes, before):
            break
    return PrunedGraph(nodes, edges, influence, node_threshold, edge_threshold)
