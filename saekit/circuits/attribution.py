"""Build the attribution graph of one prompt: batched backward passes through the local replacement model.

Every target (a chosen logit minus the mean logit, at the last position; a difference of two logits;
or a latent's pre-activation: :mod:`.targets`) is one copy of the prompt in a batch; one backward pass
of the sum of the copies' targets gives, per copy, the gradient of its target with respect to every node value (token
embeddings, latents, errors: leaf tensors of the replacement model). A node's value times that
gradient is its direct effect: exact, since the replacement model is linear in its nodes. Paths
through other latents do not count (latents are nodes, held at their values); paths through
attention (frozen patterns) and the residual stream do.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass

import torch
from torch import Tensor
from tqdm.auto import tqdm

from saekit.circuits.budget import (
    attribution_budgets,
    check_attribution_memory,
    estimate_attribution,
    matmul_rate,
    sizes_of,
)
from saekit.circuits.graph import Graph, graph_scores
from saekit.circuits.replacement import ReplacementModel, ReplacementOutput
from saekit.circuits.targets import UNITS, LatentTarget, LogitTarget, Target, label
from saekit.errors import SaekitError
from saekit.settings import setting

__all__ = ["AttributionConfig", "LatentTarget", "LogitTarget", "Target", "attribute"]


@dataclass(frozen=True)
class AttributionConfig:
    """What the graph covers; the defaults are circuit-tracer's."""

    max_logits: int = setting(10, "at most this many output logits as target nodes", minimum=1)
    logit_probability: float = setting(0.95, "target logits: the most probable tokens until they hold this "
                                       "probability", above=0, maximum=1)
    batch_size: int = setting(32, "targets per backward pass; memory grows with it", minimum=1)
    max_feature_nodes: int | None = setting(None, "keep only this many latents (largest activations; none: all "
                                            "active). The adjacency's rows (one per latent and target, one "
                                            "column per node), and the memory to prune them, grow with it", minimum=1)
    progress: bool = setting(True, "show progress and the memory estimate")
    max_memory_gb: float | None = setting(None, "refuse to start when the estimated peak memory is over this many "
                                          "GB (none: 90% of the memory free when the check runs)", above=0)
    zero_bos_errors: bool = setting(False, "give the BOS error nodes no edges, as circuit-tracer does (its pruned "
                                    "graph and scores then compare like for like)", switch=True)

    def __post_init__(self) -> None:
        if self.max_logits < 1 or not 0 < self.logit_probability <= 1 or self.batch_size < 1:
            raise SaekitError("attribution needs max_logits >= 1, 0 < logit_probability <= 1 and batch_size >= 1")
        if self.max_memory_gb is not None and self.max_memory_gb <= 0:
            raise SaekitError(f"--max-memory-gb must be positive, got {self.max_memory_gb}")


def chosen_logits(logits: Tensor, config: AttributionConfig) -> tuple[Tensor, Tensor]:
    """The most probable next tokens at the last position until their probability reaches the setting."""
    probabilities = logits[-1].float().softmax(-1)
    top = probabilities.topk(config.max_logits)
    count = int((top.values.cumsum(0) < config.logit_probability).sum()) + 1
    return top.indices[:count], top.values[:count]


def active_features(replacement: ReplacementModel, config: AttributionConfig) -> tuple[Tensor, Tensor]:
    """[F, 3] (layer, position, latent) of the latents active on the prompt, and their values."""
    rows, values = [], []
    for layer, latents in replacement.clean.latents.items():
        position, latent = (latents > 0).nonzero(as_tuple=True)
        rows.append(torch.stack([torch.full_like(position, layer), position, latent], 1))
        values.append(latents[position, latent])
    features, activations = torch.cat(rows), torch.cat(values)
    if config.max_feature_nodes is not None and features.shape[0] > config.max_feature_nodes:
        keep = activations.topk(config.max_feature_nodes).indices.sort().values
        features, activations = features[keep], activations[keep]
    return features.cpu(), activations.cpu()


def check_memory(replacement: ReplacementModel, features: int, logits: int, config: AttributionConfig) -> None:
    """Refuse (one line) a graph whose estimated peak memory is over budget; print the estimate otherwise."""
    device = replacement.loaded.device
    sizes = sizes_of(replacement.loaded, replacement.transcoders, len(replacement.clean.input_ids), features,
                     logits, config.batch_size)
    estimate = estimate_attribution(sizes)
    # The clean run is part of the estimate but already allocated: free memory no longer counts it.
    check_attribution_memory(estimate, attribution_budgets(config.max_memory_gb, device, estimate.clean), device)
    if config.progress:
        print(estimate_attribution(sizes, matmul_rate(sizes, device)).describe(device))


def _shared_pattern_mix(layer: int, pattern: Tensor, values: Tensor) -> Tensor:
    """``pattern @ values`` for one clean pattern [1, heads, S, S] and a batch of values [B, heads, S, hd], as one
    product per head over the copies' values side by side. Broadcast, matmul expands the pattern to every copy
    and keeps that copy for the backward pass: heads x S^2 floats a copy, 4.5 GB at 2,048 tokens on SmolLM2."""
    if pattern.shape[0] != 1:
        return pattern @ values
    batch, heads, seq, head_dim = values.shape
    side_by_side = values.permute(1, 2, 0, 3).reshape(heads, seq, batch * head_dim)
    return (pattern[0] @ side_by_side).view(heads, seq, batch, head_dim).permute(2, 0, 1, 3)


@contextmanager
def _shared_patterns(replacement: ReplacementModel) -> Iterator[None]:
    """The kept forward's attention applies the one clean pattern to every copy (unless a caller already mixes
    values its own way: the head split)."""
    if replacement.value_mix is not None:
        yield
        return
    replacement.value_mix = _shared_pattern_mix
    try:
        yield
    finally:
        replacement.value_mix = None


def _target_values(output: ReplacementOutput, targets: list[Target], last: int) -> Tensor:
    """Each copy's target value: copy i of the forward holds target i's gradient."""
    return torch.stack([target.value(output, copy, last) for copy, target in enumerate(targets)])


def _direct_effects(output: ReplacementOutput, nodes, targets: list[Target], features: Tensor,
                    activations: Tensor) -> Tensor:
    """[len(targets), sources]: the direct effect of every source node (features, errors, tokens) on each target.

    ``output`` is one forward pass of the replacement model over ``nodes`` (at least ``len(targets)`` copies
    of the clean node values); its graph is kept, so every chunk of targets reuses the same pass.
    """
    batch = len(targets)
    embeddings, latents, errors = nodes
    objective = _target_values(output, targets, -1).sum()  # the forward kept the last position's logits only
    layers, error_layers = list(latents), list(errors)  # error_layers: the replaced and any frozen MLPs
    grads = torch.autograd.grad(objective, [embeddings, *latents.values(), *errors.values()], allow_unused=True,
                                retain_graph=True)
    embedding_grad, latent_grads = grads[0], dict(zip(layers, grads[1:1 + len(layers)]))
    error_grads = dict(zip(error_layers, grads[1 + len(layers):]))

    def used(grad: Tensor | None, like: Tensor) -> Tensor:
        """The first ``batch`` copies' gradients (zero where the objective does not reach the node)."""
        return torch.zeros_like(like[:batch]) if grad is None else grad[:batch]

    feature_effects = torch.empty(batch, features.shape[0])
    for layer in layers:
        chosen = (features[:, 0] == layer).nonzero().squeeze(1)
        grad = used(latent_grads[layer], latents[layer])
        feature_effects[:, chosen] = (grad[:, features[chosen, 1], features[chosen, 2]] * activations[chosen]).detach()
    error_effects = torch.cat([(used(error_grads[layer], errors[layer]) * errors[layer][:batch]).sum(-1).detach()
                               for layer in error_layers], dim=1)  # [batch, layers * S], layer-major
    token_effects = (used(embedding_grad, embeddings) * embeddings[:batch]).sum(-1).detach()
    return torch.cat([feature_effects, error_effects, token_effects], dim=1)


def _explicit_weights(targets: list[Target], logits: Tensor) -> tuple[Tensor, Tensor]:
    """Explicit targets' token ids (a difference: its first token; a latent: -1) and weights: a token its
    probability (circuit-tracer's weight for a target given as a token string), a difference or a latent 1
    (circuit-tracer's custom targets carry a weight of the caller's choosing)."""
    probabilities = logits[-1].float().softmax(-1)
    tokens = torch.tensor([target.record()["token"] for target in targets])
    weights = torch.tensor([float(probabilities[t.token]) if isinstance(t, LogitTarget) else 1.0 for t in targets])
    return tokens, weights


def _target_records(targets: list[Target], logits: Tensor, tokenizer) -> list[dict]:
    """What the graph file says of each target node: kind, token ids, label, unit, the token's probability."""
    probabilities = logits[-1].float().softmax(-1)
    records = []
    for target in targets:
        record = {**target.record(), "label": label(target, tokenizer), "unit": UNITS[target.record()["kind"]]}
        if record["kind"] == "token":
            record["probability"] = float(probabilities[record["token"]])
        records.append(record)
    return records


def attribute(replacement: ReplacementModel, prompt: str, config: AttributionConfig | None = None,
              transcoders_path: str = "", targets: list[Target] | None = None) -> Graph:
    """The full (unpruned) attribution graph of the replacement model's prompt.

    ``targets``: the target nodes (none: the top logits, weighted by their probabilities; given: these,
    weighted as :func:`_explicit_weights` says)."""
    config = config or AttributionConfig()
    started = time.perf_counter()
    clean = replacement.clean
    tokenizer = replacement.loaded.tokenizer
    if targets:
        logit_tokens, logit_probabilities = _explicit_weights(targets, clean.logits)
        outputs = list(targets)
    else:
        logit_tokens, logit_probabilities = chosen_logits(clean.logits, config)
        outputs = [LogitTarget(int(token)) for token in logit_tokens]
    features, activations = active_features(replacement, config)
    check_memory(replacement, features.shape[0], len(outputs), config)  # before the passes and the rows
    all_targets: list[Target] = outputs + \
        [LatentTarget(layer, position, latent) for layer, position, latent in features.tolist()]
    n_features, n_positions = features.shape[0], len(clean.input_ids)
    n_sources = n_features + len(replacement.error_layers) * n_positions + n_positions
    n_nodes = n_sources + len(outputs)
    # Only latents and logits have inputs: their rows are all of the adjacency (Graph.rows: latents, then logits).
    adjacency_rows = torch.zeros(n_features + len(outputs), n_nodes)
    rows = list(range(n_features, n_features + len(outputs))) + list(range(n_features))  # the targets' rows
    batches = math.ceil(len(all_targets) / config.batch_size)
    # One forward pass of batch_size copies, kept: each chunk of targets is one backward pass through it.
    nodes = replacement.clean_nodes(min(config.batch_size, len(all_targets)), requires_grad=True)
    with _shared_patterns(replacement):
        output = replacement.forward(*nodes, last_logits_only=True)
    for index in tqdm(range(batches), desc="attribution", unit="batch", disable=not config.progress):
        chunk = slice(index * config.batch_size, (index + 1) * config.batch_size)
        adjacency_rows[rows[chunk], :n_sources] = _direct_effects(output, nodes, all_targets[chunk], features,
                                                                  activations)
    del output, nodes
    if config.zero_bos_errors:  # circuit-tracer's convention: the BOS MLP outputs are in no node
        adjacency_rows[:, n_features:n_features + len(replacement.error_layers) * n_positions:n_positions] = 0

    def decode(ids: Tensor) -> list[str]:
        return [tokenizer.decode([int(i)]) for i in ids]
    records = _target_records(outputs, clean.logits, tokenizer)
    graph = Graph(
        prompt=prompt, input_ids=clean.input_ids.tolist(), tokens=decode(clean.input_ids),
        model=replacement.loaded.name,
        transcoders=transcoders_path, layers=list(replacement.error_layers), features=features,
        activations=activations, logit_tokens=logit_tokens.cpu(), logit_probabilities=logit_probabilities.cpu(),
        logit_strings=[r["label"] if targets else tokenizer.decode([r["token"]]) for r in records],
        rows=adjacency_rows,
        settings={**asdict(config), "model_layers": replacement.loaded.adapter.n_layers,
                  "seconds": time.perf_counter() - started, "targets": records,
                  "explicit_targets": bool(targets), "frozen_mlp_layers": list(replacement.frozen_layers),
                  "target": "logits: logit minus the mean logit at the last position; differences: logit minus "
                            "logit; latents: pre-activation"})
    graph.settings["scores"] = asdict(graph_scores(graph))
    return graph
