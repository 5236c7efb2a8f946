"""Interventions on latents: clamp, scale, add to or ablate chosen latents in the real model, and the
graph's prediction of what an ablation does.

The model runs with its own MLPs; at each replaced layer the transcoders encode the live MLP input,
the chosen latents are changed, and the MLP output moves by the decoded difference: output =
MLP(x) + decode(z') - decode(z). With no intervention the model is exactly the clean model, and
everything downstream (attention, norms, later MLPs) responds as the real model does; a CLT latent's
change reaches every later layer it writes. Works for a forward pass and for generation.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from saekit.circuits.graph import Graph
from saekit.circuits.targets import LatentTarget, LogitTarget, Target, from_record
from saekit.circuits.transcoders import TranscoderSet, check_fits
from saekit.errors import SaekitError
from saekit.models.loading import LoadedModel

MODES = ("clamp", "scale", "add", "ablate")
_SPEC = re.compile(r"^(\d+):(\d+)(?:@(\d+))?=(clamp|scale|add|ablate)(?::(-?[\d.eE+-]+))?$")


@dataclass(frozen=True)
class Intervention:
    """Set (clamp), multiply (scale), add to, or zero (ablate) one latent at a position (None: every position)."""

    layer: int
    latent: int
    mode: str
    value: float = 0.0
    position: int | None = None

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise SaekitError(f"intervention mode {self.mode!r} is not one of {', '.join(MODES)}")

    @classmethod
    def parse(cls, text: str) -> Intervention:
        """``LAYER:LATENT[@POSITION]=MODE[:VALUE]``, e.g. ``12:345=ablate``, ``3:7@5=clamp:4.0``."""
        match = _SPEC.match(text.strip())
        if match is None or (match.group(4) != "ablate" and match.group(5) is None):
            raise SaekitError(f"cannot read intervention {text!r}; write LAYER:LATENT[@POSITION]=MODE[:VALUE] "
                              "with MODE clamp, scale or add and a value, or =ablate")
        layer, latent, position, mode, value = match.groups()
        return cls(int(layer), int(latent), mode, float(value or 0.0), None if position is None else int(position))

    @property
    def text(self) -> str:
        """The ``LAYER:LATENT[@POSITION]=MODE[:VALUE]`` form :meth:`parse` reads."""
        where = "" if self.position is None else f"@{self.position}"
        value = "" if self.mode == "ablate" else f":{self.value:g}"
        return f"{self.layer}:{self.latent}{where}={self.mode}{value}"

    def apply(self, latents: Tensor) -> None:
        """In place on one layer's latents [B, S, m]."""
        where = slice(None) if self.position is None else self.position
        if self.position is not None and self.position >= latents.shape[1]:
            return  # a position beyond this forward's tokens
        column = latents[:, where, self.latent]
        if self.mode == "ablate":
            new = torch.zeros_like(column)
        elif self.mode == "clamp":
            new = torch.full_like(column, self.value)
        elif self.mode == "scale":
            new = column * self.value
        else:
            new = column + self.value
        latents[:, where, self.latent] = new


def check_interventions(transcoders: TranscoderSet, interventions: list[Intervention]) -> None:
    for item in interventions:
        if item.layer not in transcoders.layers:
            raise SaekitError(f"intervention on layer {item.layer}, but the transcoders replace layers "
                              f"{transcoders.layers[0]}-{transcoders.layers[-1]}")
        if not 0 <= item.latent < transcoders.width(item.layer):
            raise SaekitError(f"latent {item.latent} is out of range: layer {item.layer} has "
                              f"{transcoders.width(item.layer)} latents")


def check_positions(interventions: list[Intervention], n_positions: int) -> None:
    """One line for a position outside the prompt: :meth:`Intervention.apply` would skip it silently."""
    for item in interventions:
        if item.position is not None and item.position >= n_positions:
            raise SaekitError(f"--latent {item.text}: position {item.position} is outside the prompt, which has "
                              f"{n_positions} tokens with BOS (positions 0-{n_positions - 1})")


@contextmanager
def intervened(loaded: LoadedModel, transcoders: TranscoderSet, interventions: list[Intervention]) -> Iterator[None]:
    """Within the block, the model's forward applies ``interventions`` (see the module docstring)."""
    adapter = loaded.adapter
    check_fits(transcoders, adapter.n_layers, adapter.d_model)
    check_interventions(transcoders, interventions)
    by_layer = {layer: [i for i in interventions if i.layer == layer] for layer in transcoders.layers}
    changes: dict[int, Tensor] = {}  # layer -> z' - z of this forward

    def hook(module: nn.Module, args: tuple, out: Tensor, layer: int) -> Tensor | None:
        x = args[0]
        if layer == transcoders.layers[0]:
            changes.clear()  # a new forward (generation runs one per token)
        if by_layer[layer]:
            latents = transcoders.encode(layer, x.float())
            changed = latents.clone()
            for item in by_layer[layer]:
                item.apply(changed)
            changes[layer] = changed - latents
        moved = [source for source in transcoders.writers(layer) if source in changes]
        if not moved:
            return None
        delta = sum(changes[source] @ transcoders.decoder(source, layer) for source in moved)
        return out + delta.to(out.dtype)

    hooks = [adapter.mlp(layer).register_forward_hook(lambda m, a, o, layer=layer: hook(m, a, o, layer))
             for layer in transcoders.layers]
    try:
        yield
    finally:
        for handle in hooks:
            handle.remove()


@torch.no_grad()
def intervened_logits(loaded: LoadedModel, transcoders: TranscoderSet, input_ids: Tensor,
                      interventions: list[Intervention]) -> Tensor:
    """[S, vocab] logits of the prompt with the interventions applied (float32)."""
    with intervened(loaded, transcoders, interventions):
        return loaded.model(input_ids=input_ids.reshape(1, -1).to(loaded.device), use_cache=False).logits[0].float()


@torch.no_grad()
def intervened_generation(loaded: LoadedModel, transcoders: TranscoderSet, input_ids: Tensor,
                          interventions: list[Intervention], new_tokens: int) -> str:
    """Greedy continuation of the prompt with the interventions applied at every forward."""
    ids = input_ids.reshape(1, -1).to(loaded.device)
    with intervened(loaded, transcoders, interventions):
        out = loaded.model.generate(ids, max_new_tokens=new_tokens, do_sample=False, use_cache=False,
                                    pad_token_id=loaded.tokenizer.eos_token_id)
    return loaded.tokenizer.decode(out[0, ids.shape[1]:])


def predicted_ablation(graph: Graph, feature: int) -> Tensor:
    """[T]: the change of each target (in its unit, :mod:`.targets`) the graph predicts when ``feature`` is zeroed.

    Its direct effects, plus what they do through every downstream latent taken as linear while active:
    latent f's value moves by its pre-activation's change, and its effects scale with its value, so
    the per-unit matrix M[t, f] = A[t, f] / a_f carries the change on; the total is (I - M)^-1 applied
    to the direct change.
    """
    n_features = graph.n_features
    activations = graph.activations.double()
    # float64 copies of the blocks read from the stored rows (latents', then logits'), never of a whole matrix
    per_unit = graph.rows[:n_features, :n_features].double() / activations[None, :]
    per_unit[feature] = 0.0  # the ablated latent is held at zero, whatever reaches it
    source = torch.zeros(n_features, dtype=torch.float64)
    source[feature] = -activations[feature]
    change = torch.linalg.solve(torch.eye(n_features, dtype=torch.float64) - per_unit, source)
    logit_rows = graph.rows[n_features:, :n_features].double()
    return (logit_rows / activations[None, :]) @ change


def graph_targets(graph: Graph) -> list[Target]:
    """The graph's target nodes as targets (a graph file without target records: its logits)."""
    records = graph.settings.get("targets")
    if records:
        return [from_record(record) for record in records]
    return [LogitTarget(int(token)) for token in graph.logit_tokens]


@torch.no_grad()
def measure_targets(loaded: LoadedModel, transcoders: TranscoderSet, input_ids: Tensor,
                    interventions: list[Intervention], targets: list[Target]) -> list[float]:
    """Each target's value in the real model with the interventions applied (the unit the graph uses)."""
    layers = sorted({t.layer for t in targets if isinstance(t, LatentTarget)})
    pre: dict[int, Tensor] = {}

    def record(args: tuple, layer: int) -> None:
        pre[layer] = transcoders.pre_activations(layer, args[0][0].float())

    hooks = [loaded.adapter.mlp(layer).register_forward_hook(lambda m, a, o, layer=layer: record(a, layer))
             for layer in layers]
    try:
        logits = intervened_logits(loaded, transcoders, input_ids, interventions)[-1]
    finally:
        for handle in hooks:
            handle.remove()
    return [target.measured(logits, pre) for target in targets]


def ablation_check(loaded: LoadedModel, transcoders: TranscoderSet, graph: Graph, features: list[int]) -> list[dict]:
    """For each feature node: the predicted and the measured change of each target when it is ablated."""
    input_ids = torch.tensor(graph.input_ids)
    targets = graph_targets(graph)
    clean = torch.tensor(measure_targets(loaded, transcoders, input_ids, [], targets), dtype=torch.float64)
    rows = []
    for feature in features:
        layer, position, latent = map(int, graph.features[feature])
        ablation = [Intervention(layer, latent, "ablate", position=position)]
        measured = torch.tensor(measure_targets(loaded, transcoders, input_ids, ablation, targets),
                                dtype=torch.float64) - clean
        rows.append({"node": feature, "layer": layer, "position": position, "latent": latent,
                     "activation": float(graph.activations[feature]),
                     "predicted": predicted_ablation(graph, feature).tolist(), "measured": measured.tolist(),
                     "direct": (-graph.rows[graph.n_features:, feature]).tolist()})
    return rows
