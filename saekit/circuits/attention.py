"""Attention attribution in the local replacement model: which heads carry a graph's edges, and what made a
head attend where it did.

One job: split the attribution graph's position-crossing edges by attention head, and attribute one head's
attention scores to the graph's nodes. Both read the replacement model of :mod:`.replacement` (attention
patterns and norm scales frozen at the clean run), which is linear in its nodes.

**Head split (first crossing).** Write each frozen pattern as ``A = D + O``, its diagonal and its
off-diagonal part, and ``O = sum_h O_h`` by head. The direct effect of a source ``s`` at position ``j`` on a
target ``t`` at position ``i`` (an edge) is a sum over paths, and a path leaves position ``j`` only through
some ``O_h``. Every path with ``i != j`` has one *first* crossing, at attention layer ``L`` and head ``h``:
below ``L`` it stays at ``j`` (only ``D`` in every attention layer), at ``L`` it moves through ``O_h``, above
``L`` it goes anywhere (the full ``A``). The part of the edge at ``(L, h)`` is the effect carried by the paths
whose first crossing is ``(L, h)``:

    part(L, h) = < g_t(L, h)[j], v_s(L, h) >

where ``v_s(L, h)`` is head ``h``'s value vector at layer ``L``, position ``j``, that ``s`` makes through
position-local paths alone (the model run with ``D`` in place of every pattern, the source alone minus no
node at all: the constant parts cancel), and ``g_t(L, h)[j]`` is the gradient of the target with respect to
that value vector through the off-diagonal part of layer ``L``'s pattern only (a zero probe added to the
values ``O`` mixes), the model above ``L`` as it is. The parts sum to the edge exactly: with ``f`` the
effect as a function of the per-layer patterns, ``f(D.., A_L, A..) - f(D.., D_L, A..) = f(D.., O_L, A..)``
telescopes over ``L`` to ``f(A, .., A) - f(D, .., D)``, and ``f(D, .., D) = 0`` when ``i != j``. Why the
first crossing and not the last: it needs one backward pass per target (batched as
:mod:`.attribution` does) and one forward pass per source, where the last would need a backward pass per
target, layer and head; on paths that cross positions once (all of them in a model whose edges cross at
most one attention layer) the two agree. Heads are query heads (grouped-query key/value heads are shared
by the query heads they serve, as the values are). Edges of weight zero (BOS error nodes under
``--zero-bos-errors``, whose edges are zero by convention) are not split.

**QK view.** For attention layer ``L``, head ``h`` and query position ``i``, the score at key position
``k <= i`` is ``S_k = scaling * q_i . k_k``: the pre-softmax logit, before any attention-logit softcap and
the mask. In the replacement model (norms frozen, and any q/k norms inside the attention frozen at their
clean scales too) ``q_i`` and ``k_k`` are affine in the nodes, so ``S_k`` is bilinear in them. Each node
``n`` gets

    query part = scaling * q_i(n) . k_k      key part = scaling * q_i . k_k(n)

where ``q_i(n)``, ``k_k(n)`` are its contributions to the query and the key (its value times the gradient,
the other side held at its clean value). Over every node the query parts plus the query bias
(``scaling * q_i(0) . k_k``, ``q_i(0)`` the query with every node at zero: biases, learned positions) sum
to ``S_k``, and likewise on the key side; a node's query part plus key part is its value times the
gradient of ``S_k``, the first-order change of the score when it moves. The nodes: the active latents,
one error node per replaced layer and position, one token node per position (the graph's). ``saekit attribute
--qk LAYER.HEAD[@POS]`` writes the view beside the graph as ``SLUG.qk.json`` (:func:`write_qk_view`): the
pattern row, and for the most attended keys each side's largest parts, the rest summed, and the bias.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from functools import cache, partial
from pathlib import Path

import torch
from torch import Tensor, nn

from saekit.circuits.graph import Graph, PrunedGraph
from saekit.circuits.replacement import ReplacementModel, _frozen_norm, _inverse_scale
from saekit.circuits.targets import LatentTarget, LogitTarget, Target, from_record
from saekit.errors import SaekitError
from saekit.models.loading import LoadedModel

Nodes = tuple[Tensor, dict[int, Tensor], dict[int, Tensor]]  # embeddings, latents, errors: [B, S, ...]
_QK_IMPLEMENTATION = "saekit_qk"  # the attention implementation the QK view registers (transformers' registry)
_QK_NORMS = ("q_norm", "k_norm")  # per-head or per-projection norms inside the attention (Qwen3, OLMo 2)


# ---------------------------------------------------------------- the head split of edges


@dataclass
class HeadSplit:
    """Position-crossing edges of a graph and their parts per (attention layer, query head)."""

    sources: Tensor  # [E] graph node ids
    targets: Tensor  # [E]
    edges: Tensor  # [E] the graph's edge values
    parts: Tensor  # [E, layers, heads]; parts[e].sum() == edges[e]

    @property
    def residual(self) -> Tensor:
        """[E]: the edge minus the sum of its parts (float error only)."""
        return self.edges - self.parts.sum((1, 2))


def node_positions(graph: Graph) -> Tensor:
    """[N]: the prompt position of every node (logits: the last)."""
    return graph.node_positions()


def crossing_edges(graph: Graph, pruned: PrunedGraph | None = None) -> tuple[Tensor, Tensor]:
    """(targets, sources) of the nonzero edges whose ends sit at different positions (of the pruned graph's kept
    edges where ``pruned`` is given, else of every edge), from the graph's stored rows."""
    row_nodes = graph.row_nodes
    mask = graph.rows != 0
    if pruned is not None:
        mask &= pruned.edge_mask
        mask &= pruned.node_mask[row_nodes][:, None]
        mask &= pruned.node_mask[None, :]
    positions = node_positions(graph)
    mask &= positions[row_nodes][:, None] != positions[None, :]
    rows, sources = mask.nonzero(as_tuple=True)
    return row_nodes[rows], sources


def target_of(graph: Graph, node: int) -> Target:
    """The quantity a target node stands for: a latent's pre-activation, or the logit target it was built for."""
    if graph.node_kind(node) == "feature":
        return LatentTarget(*map(int, graph.features[node]))
    index = node - graph.logit_node(0)
    records = graph.settings.get("targets") or []
    return from_record(records[index]) if index < len(records) else LogitTarget(int(graph.logit_tokens[index]))


def _zero_nodes(replacement: ReplacementModel, batch: int) -> Nodes:
    embeddings, latents, errors = replacement.clean_nodes(batch)
    return (torch.zeros_like(embeddings), {k: torch.zeros_like(v) for k, v in latents.items()},
            {k: torch.zeros_like(v) for k, v in errors.items()})


def _place(graph: Graph, replacement: ReplacementModel, nodes: Nodes, copy: int, node: int) -> None:
    """Set one source node to its clean value in copy ``copy`` of ``nodes``."""
    embeddings, latents, errors = nodes
    clean, kind, position = replacement.clean, graph.node_kind(node), graph.node_position(node)
    if kind == "feature":
        layer, _, latent = map(int, graph.features[node])
        latents[layer][copy, position, latent] = clean.latents[layer][position, latent]
    elif kind == "error":
        layer = graph.node_layer(node)
        errors[layer][copy, position] = clean.errors[layer][position]
    else:
        embeddings[copy, position] = clean.embeddings[position]


def _diagonal(pattern: Tensor) -> Tensor:
    """[..., heads, S, 1]: each position's attention to itself."""
    return torch.diagonal(pattern, dim1=-2, dim2=-1).unsqueeze(-1)


def _diagonal_only(record: dict[int, Tensor], layer: int, pattern: Tensor, values: Tensor) -> Tensor:
    """Attention cut to each position's attention to itself; the values recorded per layer."""
    record[layer] = values
    return _diagonal(pattern) * values


@contextmanager
def _mixing(replacement: ReplacementModel, mix) -> Iterator[None]:
    replacement.value_mix = mix
    try:
        yield
    finally:
        replacement.value_mix = None


@torch.no_grad()
def local_values(replacement: ReplacementModel, graph: Graph, sources: list[int],
                 batch_size: int) -> Tensor:
    """[len(sources), layers, heads, head_dim]: the value vectors each source makes at its own position in every
    attention layer through position-local paths (every pattern cut to its diagonal)."""
    n_layers = replacement.loaded.adapter.n_layers
    out: Tensor | None = None
    for start in range(0, len(sources), batch_size):
        chunk = sources[start:start + batch_size]
        nodes = _zero_nodes(replacement, len(chunk) + 1)  # copy 0: no node at all, the constant parts
        for copy, node in enumerate(chunk, start=1):
            _place(graph, replacement, nodes, copy, node)
        values: dict[int, Tensor] = {}
        with _mixing(replacement, partial(_diagonal_only, values)):
            replacement.forward(*nodes, last_logits_only=True)
        positions = torch.tensor([graph.node_position(node) for node in chunk])
        copies = torch.arange(1, len(chunk) + 1)
        stacked = torch.stack([values[layer][copies, :, positions] - values[layer][copies * 0, :, positions]
                               for layer in range(n_layers)], 1).float().cpu()  # [chunk, layers, heads, hd]
        out = stacked if out is None else torch.cat([out, stacked])
    assert out is not None
    return out


def _crossing_gradients(replacement: ReplacementModel, targets: list[Target],
                        batch_size: int) -> Iterator[tuple[slice, list[Tensor]]]:
    """Per chunk of targets, per attention layer: [chunk, heads, S, head_dim], the gradient of each target with
    respect to the layer's value vectors through the off-diagonal part of its pattern only."""
    n_layers = replacement.loaded.adapter.n_layers
    probes: dict[int, Tensor] = {}

    def with_probe(layer: int, pattern: Tensor, values: Tensor) -> Tensor:
        probes[layer] = torch.zeros_like(values, requires_grad=True)
        off_diagonal = pattern - torch.diag_embed(torch.diagonal(pattern, dim1=-2, dim2=-1))
        return pattern @ values + off_diagonal @ probes[layer]  # the probe: zero, so the output is unchanged
    # One forward pass, kept: each chunk of targets is one backward pass through it (as attribution.py does).
    nodes = replacement.clean_nodes(min(batch_size, len(targets)))
    with _mixing(replacement, with_probe):
        output = replacement.forward(*nodes, last_logits_only=True)
    leaves = [probes[layer] for layer in range(n_layers)]
    for start in range(0, len(targets), batch_size):
        chunk = targets[start:start + batch_size]
        objective = torch.stack([target.value(output, copy, -1) for copy, target in enumerate(chunk)]).sum()
        grads = torch.autograd.grad(objective, leaves, retain_graph=True, allow_unused=True)
        yield slice(start, start + len(chunk)), [
            torch.zeros_like(leaf[:len(chunk)]) if grad is None else grad[:len(chunk)].detach()
            for leaf, grad in zip(leaves, grads)]


def check_graph_matches(graph: Graph, replacement: ReplacementModel) -> None:
    """One line when the graph was not built from this replacement model (prompt, transcoders)."""
    if graph.input_ids != replacement.clean.input_ids.tolist():
        raise SaekitError("the graph's prompt is not the replacement model's; rebuild both from the same prompt")
    clean = replacement.clean.latents
    sample = graph.features[:1000].tolist()  # a sample is enough to catch a mismatch
    missing = sorted({layer for layer, _, _ in sample if layer not in clean})
    if missing:
        raise SaekitError(f"the graph has latents at layers {missing}, which these transcoders do not replace")
    values = torch.tensor([float(clean[layer][position, latent]) for layer, position, latent in sample])
    if not torch.allclose(values, graph.activations[:len(sample)].float().cpu(), rtol=1e-3, atol=1e-5):
        raise SaekitError("the graph's latent activations differ from these transcoders' on its prompt; the graph "
                          "was built from other transcoders or another model")


def head_split(replacement: ReplacementModel, graph: Graph, pruned: PrunedGraph | None = None,
               batch_size: int = 32) -> HeadSplit:
    """Every position-crossing edge of ``graph`` (of its kept edges, given ``pruned``) split by (layer, head)
    at its first position crossing; see the module docstring."""
    check_graph_matches(graph, replacement)
    targets, sources = crossing_edges(graph, pruned)
    attention = replacement.patterns[0]
    n_layers, heads = replacement.loaded.adapter.n_layers, attention.shape[-3]
    parts = torch.zeros(len(targets), n_layers, heads)
    if len(targets):
        source_nodes, source_index = sources.unique(return_inverse=True)
        values = local_values(replacement, graph, source_nodes.tolist(), batch_size)  # [sources, L, H, hd]
        target_nodes, target_index = targets.unique(return_inverse=True)
        positions = node_positions(graph)[sources]
        wanted = [target_of(graph, node) for node in target_nodes.tolist()]
        for chunk, grads in _crossing_gradients(replacement, wanted, batch_size):
            in_chunk = ((target_index >= chunk.start) & (target_index < chunk.stop)).nonzero().squeeze(1)
            copies = target_index[in_chunk] - chunk.start
            for layer, grad in enumerate(grads):
                at_source = grad.float().cpu()[copies, :, positions[in_chunk]]  # [edges, heads, hd]
                parts[in_chunk, layer] = (at_source * values[source_index[in_chunk], layer]).sum(-1)
    return HeadSplit(sources, targets, graph.rows[graph.row_index(targets), sources].float(), parts)


def head_split_record(graph: Graph, split: HeadSplit, top: int = 5) -> dict:
    """The split as JSON: per edge (``SOURCE_ID->TARGET_ID``, the graph JSON's node ids) its weight and its
    ``top`` heads by size as [layer, head, value] with the rest in ``other``; per head its totals."""
    from saekit.circuits.graph_files import node_record

    ids: dict[int, str] = {}

    def node_id(node: int) -> str:
        if node not in ids:
            ids[node] = node_record(graph, node, 0.0)["node_id"]
        return ids[node]
    edges = {}
    n_layers, heads = split.parts.shape[1:] if split.parts.ndim == 3 else (0, 0)
    for e, (source, target) in enumerate(zip(split.sources.tolist(), split.targets.tolist())):
        flat = split.parts[e].flatten()
        order = flat.abs().argsort(descending=True)[:top].tolist()
        chosen = [[index // heads, index % heads, float(flat[index])] for index in order]
        edges[f"{node_id(source)}->{node_id(target)}"] = {
            "weight": float(split.edges[e]), "heads": chosen,
            "other": float(flat.sum() - sum(value for _, _, value in chosen))}
    totals = [[layer, head, float(split.parts[:, layer, head].sum()), float(split.parts[:, layer, head].abs().sum())]
              for layer in range(n_layers) for head in range(heads)]
    totals.sort(key=lambda row: -row[3])
    largest = float(split.residual.abs().max()) if len(split.edges) else 0.0
    return {"definition": "each edge whose ends sit at different positions, split by the attention head (layer, "
                          "query head) of its paths' first position crossing; the parts of an edge sum to it",
            "layers": int(n_layers), "heads": int(heads), "top": top, "edges": edges,
            "totals": {"edges": len(edges), "largest_residual": largest,
                       "heads": totals, "head_columns": ["layer", "head", "sum", "sum of absolute values"]}}


def write_head_split(graph_path: str | Path, transcoders_path: str | Path, loaded: LoadedModel, device: str,
                     batch_size: int = 32, top: int = 5) -> Path:
    """``SLUG.heads.json`` beside ``SLUG.safetensors`` (written by ``saekit attribute``): the head split of the
    pruned graph's crossing edges, in the replacement model rebuilt from the same transcoders and prompt."""
    from saekit.io import write_json

    graph_path = Path(graph_path)
    graph, pruned, replacement = _rebuilt(graph_path, transcoders_path, loaded, device)
    split = head_split(replacement, graph, pruned, batch_size)
    out = graph_path.with_name(graph_path.name.removesuffix(".safetensors") + ".heads.json")
    write_json(out, head_split_record(graph, split, top))
    return out


# ---------------------------------------------------------------- the QK view of one head


@dataclass
class QKAttribution:
    """One head's scores at one query position, attributed to the nodes; see the module docstring."""

    layer: int
    head: int
    query: int
    scores: Tensor  # [K] scaling * q . k at key positions 0..query (pre-softcap, pre-mask, pre-softmax)
    pattern: Tensor  # [K] the clean pattern there
    nodes: list[str]  # N node ids, the graph JSON's: latents, error nodes, tokens
    positions: Tensor  # [N] each node's position
    query_parts: Tensor  # [K, N]
    key_parts: Tensor  # [K, N]
    query_bias: Tensor  # [K]: the query part of no node (every node at zero)
    key_bias: Tensor  # [K]
    kinds: list[str]  # N: "latent", "error" or "token" (the ids alone are ambiguous: 0_5_3 is both)
    layers: Tensor  # [N] each node's layer (-1: a token)
    latents: Tensor  # [N] each latent node's index in its layer's dictionary (-1: not a latent)

    @property
    def total(self) -> Tensor:
        """[K, N]: each node's value times the gradient of each score."""
        return self.query_parts + self.key_parts

    def by_position(self) -> Tensor:
        """[K, S]: the total per node position: which positions made the head attend to each key."""
        out = torch.zeros(self.scores.shape[0], int(self.positions.max()) + 1)
        return out.index_add_(1, self.positions, self.total)


# The attention layer whose queries and keys the running QK probe reads, and where it puts them. A context
# variable, not the registry: transformers' AttentionInterface is process-global, so one function is registered
# once and each probe says what it wants through this (reset when the probe's forward pass ends).
_QK_CAPTURE: ContextVar[tuple[nn.Module, dict] | None] = ContextVar("saekit_qk_capture", default=None)


def _qk_interface(module: nn.Module, query: Tensor, key: Tensor, value: Tensor, mask: Tensor | None,
                  scaling: float | None = None, **kwargs: object) -> tuple[Tensor, None]:
    """The attention implementation of the QK view: record the probed layer's queries and keys (after rotary and
    any q/k norms, as the model's own implementation receives them) and return zeros of the output's shape."""
    capture = _QK_CAPTURE.get()
    if capture is None:
        raise RuntimeError(f"attention implementation {_QK_IMPLEMENTATION!r} runs only inside a QK probe")
    attention, captured = capture
    if module is attention:
        captured.update(query=query, key=key, scaling=scaling or query.shape[-1] ** -0.5)
    # any output of the right shape: the replacement's hook replaces it by the frozen pattern's
    return torch.zeros_like(query).transpose(1, 2).contiguous(), None


@cache
def _register_qk_interface() -> None:
    """Register :func:`_qk_interface` in transformers' attention registry, once per process."""
    from transformers import AttentionInterface

    AttentionInterface.register(_QK_IMPLEMENTATION, _qk_interface)


class QKProbe:
    """Runs the replacement model and reads one attention layer's queries and keys (with any q/k norms frozen at
    their clean scales, so that both are affine in the nodes)."""

    def __init__(self, replacement: ReplacementModel, layer: int, head: int) -> None:
        adapter = replacement.loaded.adapter
        heads = replacement.patterns[0].shape[-3]
        if not 0 <= layer < adapter.n_layers:
            raise SaekitError(f"attention layer {layer} does not exist; the model has layers 0-{adapter.n_layers - 1}")
        if not 0 <= head < heads:
            raise SaekitError(f"head {head} does not exist; layer {layer} has heads 0-{heads - 1}")
        self.replacement, self.layer, self.head = replacement, layer, head
        self.attention = adapter.attention(layer)
        self.norms = {name: getattr(self.attention, name) for name in _QK_NORMS
                      if isinstance(getattr(self.attention, name, None), nn.Module)}
        self.scales: dict[str, Tensor] = {}
        with torch.no_grad():  # the clean scales of any q/k norms: the replacement at its clean nodes is the clean run
            self.run(replacement.clean_nodes(1), record=True)

    @contextmanager
    def _capture(self, captured: dict, record: bool) -> Iterator[None]:
        layout = self.replacement.layout.norms

        def norm_hook(name: str):
            def hook(module: nn.Module, args: tuple, out: Tensor) -> Tensor | None:
                if record:
                    self.scales[name] = _inverse_scale(module, args[0], layout)
                    return None
                return _frozen_norm(module, args[0], self.scales[name], layout)
            return hook
        _register_qk_interface()
        model = self.replacement.model
        previous = model.config._attn_implementation
        hooks = [norm.register_forward_hook(norm_hook(name)) for name, norm in self.norms.items()]
        token = _QK_CAPTURE.set((self.attention, captured))
        try:
            model.set_attn_implementation(_QK_IMPLEMENTATION)
            yield
        finally:
            model.set_attn_implementation(previous)
            _QK_CAPTURE.reset(token)
            for hook in hooks:
                hook.remove()

    def run(self, nodes: Nodes, record: bool = False) -> tuple[Tensor, Tensor, float]:
        """The head's queries and keys [B, S, head_dim] on ``nodes``, and the scaling of their product."""
        captured: dict = {}
        with self._capture(captured, record):
            self.replacement.forward(*nodes, last_logits_only=True)
        query, key = captured["query"], captured["key"]
        group = query.shape[1] // key.shape[1]  # grouped-query: a key head serves ``group`` query heads
        return query[:, self.head].float(), key[:, self.head // group].float(), float(captured["scaling"])

    def scores(self, nodes: Nodes, query: int) -> Tensor:
        """[B, query + 1]: every copy's scores of the query position against keys 0..query."""
        q, k, scaling = self.run(nodes)
        return scaling * (k[:, :query + 1] @ q[:, query, :, None]).squeeze(-1)


@dataclass
class _NodeIndex:
    """The QK view's nodes in the order of :func:`_times_values`: graph JSON ids, kinds, positions, layers and
    latent indices (-1 where a node has none)."""

    names: list[str]
    kinds: list[str]
    positions: list[int]
    layers: list[int]
    latents: list[int]


def _node_ids(replacement: ReplacementModel, features: Tensor) -> _NodeIndex:
    """The nodes: latents, error nodes layer-major, then tokens."""
    ids_, n_positions = replacement.clean.input_ids.tolist(), len(replacement.clean.input_ids)
    rows = features.tolist()
    index = _NodeIndex([f"{layer}_{latent}_{position}" for layer, position, latent in rows], ["latent"] * len(rows),
                       [position for _, position, _ in rows], [layer for layer, _, _ in rows],
                       [latent for _, _, latent in rows])
    for layer in replacement.error_layers:
        index.names += [f"0_{layer}_{position}" for position in range(n_positions)]
        index.kinds += ["error"] * n_positions
        index.positions += list(range(n_positions))
        index.layers += [layer] * n_positions
        index.latents += [-1] * n_positions
    index.names += [f"E_{token}_{position}" for position, token in enumerate(ids_)]
    index.kinds += ["token"] * n_positions
    index.positions += list(range(n_positions))
    index.layers += [-1] * n_positions
    index.latents += [-1] * n_positions
    return index


def _times_values(grads: list[Tensor | None], nodes: Nodes, features: Tensor) -> Tensor:
    """[B, N]: each node's value times its gradient (nodes in the order of :func:`_node_ids`)."""
    embeddings, latents, errors = nodes
    grad_embeddings, grad_latents = grads[0], dict(zip(latents, grads[1:1 + len(latents)]))
    grad_errors = dict(zip(errors, grads[1 + len(latents):]))

    def product(grad: Tensor | None, value: Tensor) -> Tensor:
        return torch.zeros(value.shape[:2]) if grad is None else (grad * value).sum(-1).detach().cpu()
    # one gather per layer, not one per latent: with every active latent there are thousands
    columns = torch.zeros(embeddings.shape[0], len(features))
    for layer, value in latents.items():
        rows = (features[:, 0] == layer).nonzero().squeeze(1)
        grad = grad_latents[layer]
        if grad is None or not len(rows):
            continue
        position, latent = features[rows, 1].to(value.device), features[rows, 2].to(value.device)
        columns[:, rows] = (grad[:, position, latent] * value[:, position, latent]).detach().float().cpu()
    return torch.cat([columns, *(product(grad_errors[layer], errors[layer]) for layer in errors),
                      product(grad_embeddings, embeddings)], 1)


def qk_attribution(replacement: ReplacementModel, layer: int, head: int, query: int,
                   features: Tensor | None = None, batch_size: int = 32) -> QKAttribution:
    """Head ``head`` of attention layer ``layer`` at query position ``query``: its score at every key position
    attributed to the nodes on the query and the key side. ``features``: the latent nodes [F, 3] (layer,
    position, latent), e.g. a graph's (none: every active latent)."""
    n_positions = len(replacement.clean.input_ids)
    if not 0 <= query < n_positions:
        raise SaekitError(f"query position {query} is outside the prompt (positions 0-{n_positions - 1}, BOS first)")
    probe = QKProbe(replacement, layer, head)
    if features is None:
        features = torch.cat([torch.stack([torch.full_like(p, lay), p, lat], 1) for lay, latents in
                              replacement.clean.latents.items() for p, lat in [(latents > 0).nonzero(as_tuple=True)]])
    features = features.long().cpu()
    index = _node_ids(replacement, features)
    keys = torch.arange(query + 1)
    with torch.no_grad():
        clean_q, clean_k, scaling = probe.run(replacement.clean_nodes(1))
        zero_q, zero_k, _ = probe.run(_zero_nodes(replacement, 1))
    scores = scaling * (clean_k[0, keys] @ clean_q[0, query])
    query_bias = scaling * (clean_k[0, keys] @ zero_q[0, query])
    key_bias = scaling * (zero_k[0, keys] @ clean_q[0, query])
    query_parts, key_parts = [], []
    for start in range(0, len(keys), batch_size):  # one copy per key position
        chunk = keys[start:start + batch_size]
        nodes = replacement.clean_nodes(len(chunk), requires_grad=True)
        q, k, _ = probe.run(nodes)
        q_i, k_c = q[:, query], k[torch.arange(len(chunk)), chunk]
        leaves = [nodes[0], *nodes[1].values(), *nodes[2].values()]
        for side, objective in ((query_parts, (q_i * k_c.detach()).sum()), (key_parts, (q_i.detach() * k_c).sum())):
            grads = torch.autograd.grad(scaling * objective, leaves, retain_graph=True, allow_unused=True)
            side.append(_times_values(list(grads), nodes, features))
    pattern = replacement.patterns[layer][0, head, query, :query + 1].float().cpu()
    return QKAttribution(layer, head, query, scores.cpu(), pattern, index.names, torch.tensor(index.positions),
                         torch.cat(query_parts), torch.cat(key_parts), query_bias.cpu(), key_bias.cpu(), index.kinds,
                         torch.tensor(index.layers), torch.tensor(index.latents))


# ---------------------------------------------------------------- the QK view on disk (saekit attribute --qk)

QK_SYNTAX = "LAYER.HEAD[@POS]"
QK_KEYS = 5  # key positions listed per head: the most attended
_QK_SPEC = re.compile(r"(-?\d+)\.(-?\d+)(?:@(-?\d+))?")


@dataclass(frozen=True)
class QKSpec:
    """One head of one attention layer at one query position (``None``: the prompt's last)."""

    layer: int
    head: int
    query: int | None = None

    def __str__(self) -> str:
        return f"{self.layer}.{self.head}" + ("" if self.query is None else f"@{self.query}")


def parse_qk_specs(texts: list[str] | tuple[str, ...]) -> list[QKSpec]:
    """``--qk`` values (each one or more comma-separated ``LAYER.HEAD[@POS]``) as specs; one line for a malformed
    one. Only the syntax: the ranges need the model and the prompt (:func:`check_qk_specs`)."""
    specs = []
    for text in texts:
        for part in text.split(","):
            found = _QK_SPEC.fullmatch(part.strip())
            if found is None:
                raise SaekitError(f"--qk {part.strip()!r} is not {QK_SYNTAX}: an attention layer, a head and an "
                                  "optional query position (default: the last), e.g. 1.3 or 1.3@5; several: 1.3,0.2@4")
            layer, head, query = found.groups()
            specs.append(QKSpec(int(layer), int(head), None if query is None else int(query)))
    return specs


def check_qk_specs(specs: list[QKSpec], n_layers: int, heads: int, n_positions: int) -> list[QKSpec]:
    """The specs with their query positions resolved (none: the last) and repeats dropped; one line for a layer,
    head or position that does not exist (the same lines :class:`QKProbe` gives, but before any work)."""
    resolved: list[QKSpec] = []
    for spec in specs:
        query = n_positions - 1 if spec.query is None else spec.query
        if not 0 <= spec.layer < n_layers:
            raise SaekitError(f"--qk {spec}: attention layer {spec.layer} does not exist; the model has layers "
                              f"0-{n_layers - 1}")
        if not 0 <= spec.head < heads:
            raise SaekitError(f"--qk {spec}: head {spec.head} does not exist; layer {spec.layer} has heads "
                              f"0-{heads - 1}")
        if not 0 <= query < n_positions:
            raise SaekitError(f"--qk {spec}: query position {query} is outside the prompt (positions "
                              f"0-{n_positions - 1}, BOS first)")
        if (found := QKSpec(spec.layer, spec.head, query)) not in resolved:
            resolved.append(found)
    return resolved


_GRAPH_KINDS = {"feature": "latent", "error": "error", "token": "token"}


def _node_entry(view: QKAttribution, index: int, tokens: list[str]) -> dict:
    """Node ``index`` of a view, described: its graph JSON id, kind, layer, latent and position."""
    name, kind, position = view.nodes[index], view.kinds[index], int(view.positions[index])
    if kind == "latent":
        return {"node": name, "kind": kind, "layer": int(view.layers[index]), "latent": int(view.latents[index]),
                "position": position}
    if kind == "error":
        return {"node": name, "kind": kind, "layer": int(view.layers[index]), "position": position}
    return {"node": name, "kind": kind, "position": position, "token": tokens[position]}


def _side(view: QKAttribution, parts: Tensor, bias: float, tokens: list[str], shown: set[tuple[str, str]],
          top: int) -> dict:
    """One side of one key's score: its ``top`` nodes by size (nonzero only), the rest summed, and the bias."""
    parts = parts.double()
    order = [index for index in parts.abs().argsort(descending=True)[:top].tolist() if parts[index] != 0]
    rest = torch.ones(len(parts), dtype=torch.bool)
    rest[order] = False
    nodes = [{**_node_entry(view, index, tokens), "part": float(parts[index]),
              "in_graph": (view.kinds[index], view.nodes[index]) in shown} for index in order]
    return {"bias": bias, "nodes": nodes, "other": float(parts[rest].sum())}


def qk_record(graph: Graph, pruned: PrunedGraph, views: list[QKAttribution], top: int = 10,
              keys: int = QK_KEYS) -> dict:
    """The QK views as JSON: per head and query position its pattern row and scores, and for its ``keys`` most
    attended key positions the score split on the query side and on the key side into the ``top`` nodes (the
    graph JSON's node ids), the rest of the nodes (``other``) and the part of no node (``bias``)."""
    from saekit.circuits.graph_files import kept_nodes_and_links, node_record

    shown = {(_GRAPH_KINDS[graph.node_kind(node)], node_record(graph, node, 0.0)["node_id"])
             for node in kept_nodes_and_links(graph, pruned)[0] if graph.node_kind(node) in _GRAPH_KINDS}
    heads, largest = [], 0.0
    for view in views:
        records = []
        for key in view.pattern.argsort(descending=True)[:keys].tolist():
            score = float(view.scores[key])
            sides = {}
            for name, parts, bias in (("query_side", view.query_parts, view.query_bias),
                                      ("key_side", view.key_parts, view.key_bias)):
                sides[name] = _side(view, parts[key], float(bias[key]), graph.tokens, shown, top)
                # float error only: every node is listed or in other
                largest = max(largest, abs(score - float(bias[key]) - float(parts[key].double().sum())))
            records.append({"key": key, "token": graph.tokens[key], "weight": float(view.pattern[key]),
                            "score": score, **sides})
        heads.append({"layer": view.layer, "head": view.head, "query": view.query,
                      "query_token": graph.tokens[view.query], "pattern": view.pattern.tolist(),
                      "scores": view.scores.tolist(), "keys": records})
    return {"definition": "per attention head (layer, query head) and query position: its clean pattern row over "
                          "key positions 0..query (BOS 0) and its pre-softmax scores there (scaling * q . k, before "
                          "any softcap and the mask; norms frozen at the clean run). For the most attended keys, the "
                          "score split into parts: on the query side each node's contribution to the query dotted "
                          "with the clean key, on the key side the clean query dotted with each node's contribution "
                          "to the key; bias is the part of no node (every node at zero: biases, learned positions). "
                          "On each side bias + the listed nodes' parts + other (every other node) = score. Nodes are "
                          "every active latent, error node and token, named as in the graph JSON; in_graph: kept in "
                          "the pruned graph",
            "prompt_tokens": graph.tokens, "top_keys": keys, "top_nodes": top, "heads": heads,
            "largest_residual": largest}


def _rebuilt(graph_path: Path, transcoders_path: str | Path, loaded: LoadedModel,
             device: str) -> tuple[Graph, PrunedGraph, ReplacementModel]:
    """A graph written by ``saekit attribute`` and the replacement model rebuilt from its transcoders and prompt."""
    from saekit.circuits.graph_files import read_graph
    from saekit.circuits.transcoders import load_transcoders

    graph, pruned = read_graph(graph_path)
    replacement = ReplacementModel(loaded, load_transcoders(transcoders_path, device), torch.tensor(graph.input_ids),
                                   freeze_unreplaced=bool(graph.settings.get("frozen_mlp_layers")))
    return graph, pruned, replacement


def write_qk_view(graph_path: str | Path, transcoders_path: str | Path, loaded: LoadedModel, device: str,
                  specs: list[QKSpec], batch_size: int = 32, top: int = 10) -> Path:
    """``SLUG.qk.json`` beside ``SLUG.safetensors`` (written by ``saekit attribute --qk``): the QK view of each
    head in ``specs``, over every active latent (so that each side's parts sum to the score), in the replacement
    model rebuilt from the same transcoders and prompt."""
    from saekit.io import write_json

    graph_path = Path(graph_path)
    graph, pruned, replacement = _rebuilt(graph_path, transcoders_path, loaded, device)
    check_graph_matches(graph, replacement)
    specs = check_qk_specs(specs, loaded.adapter.n_layers, replacement.patterns[0].shape[-3], len(graph.input_ids))
    views = [qk_attribution(replacement, spec.layer, spec.head, int(spec.query), batch_size=batch_size)
             for spec in specs]
    out = graph_path.with_name(graph_path.name.removesuffix(".safetensors") + ".qk.json")
    write_json(out, qk_record(graph, pruned, views, top))
    return out
