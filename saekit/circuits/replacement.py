"""The local replacement model of one prompt: transcoders in place of the MLPs, everything else frozen.

On the clean run of the prompt we record, per replaced layer, the MLP input and output, and for the
whole model every residual-path norm's scale and every attention pattern. The replacement model then
runs the real model's modules with these changes (forward hooks; what differs between families, which
norms sit where, how the attention makes its values, any logit softcap, is read from the family's row
of the architecture table, ``saekit/models/architecture.py``):

- each norm multiplies its input by the scale it had on the clean run (1/rms per token; LayerNorm
  also centres), so it is linear in its input (affine, with a LayerNorm's bias);
- each attention layer applies its clean pattern to the values of its input (``o_proj(A v_proj(x))``,
  the values sliced out of a fused q/k/v projection where the family has one), so queries and keys,
  and with them positions and attention softcapping, no longer move;
- each replaced MLP outputs ``decode(latents) + error``, where the latents are given (the nodes) and
  ``error`` = clean MLP output - the transcoders' reconstruction on the clean run. The pre-activation
  of every latent is read from the MLP's (now linear) input on the way;
- a final logit softcap (Gemma 2: cap * tanh(z / cap)) multiplies each logit by the factor it had on
  the clean run, as the norms do.

With the latents, errors and token embeddings at their clean values the output is the clean model's
exactly; and the whole map from (embeddings, latents, errors) to logits and pre-activations is
linear (plus constant biases: learned position embeddings, the projections' and norms' biases), so a
gradient times a value is an exact direct effect. At the BOS position no latent is a node: its MLP
output is all error (transcoders are trained without BOS). Families the table marks as unsupported are
refused (one line) before the clean run.

A transcoder set that leaves some MLPs unreplaced is refused (a live MLP would make the map non-linear
and the edges no longer direct effects), unless ``freeze_unreplaced``: then each unreplaced MLP outputs
its clean output, a constant held as that layer's error nodes (all of the MLP is error there), and the
graph stays linear; ``error_layers`` lists every layer with error nodes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from saekit.circuits.transcoders import TranscoderSet, check_fits
from saekit.errors import SaekitError
from saekit.models.architecture import AttentionLayout, NormLayout, replacement_layout
from saekit.models.loading import LoadedModel

FREEZE_FLAG = "--freeze-unreplaced-mlps"
ValueMix = Callable[[Tensor, Tensor], Tensor]  # (pattern [., heads, S, S], values [B, heads, S, hd]) -> mixed


def check_coverage(transcoders: TranscoderSet, n_layers: int, freeze_unreplaced: bool) -> list[int]:
    """The model layers whose MLPs the transcoders leave unreplaced; one line refusing them unless frozen."""
    missing = [layer for layer in range(n_layers) if layer not in transcoders.layers]
    if missing and not freeze_unreplaced:
        raise SaekitError(f"the transcoders replace the MLPs of layers {_ranges(transcoders.layers)} but not of "
                          f"layers {_ranges(missing)}, which would run live and make the graph non-linear; add "
                          f"transcoders for them, or pass {FREEZE_FLAG} to freeze their outputs at their clean "
                          "values (counted as error nodes)")
    return missing


def _ranges(layers: list[int]) -> str:
    """``[0, 1, 2, 5]`` as ``0-2, 5``."""
    runs: list[list[int]] = []
    for layer in layers:
        if runs and layer == runs[-1][-1] + 1:
            runs[-1].append(layer)
        else:
            runs.append([layer])
    return ", ".join(str(run[0]) if len(run) == 1 else f"{run[0]}-{run[-1]}" for run in runs)


@dataclass
class CleanRun:
    """What the clean forward of one prompt leaves behind (batch of one, [S, ...])."""

    input_ids: Tensor  # [S]
    logits: Tensor  # [S, vocab]
    embeddings: Tensor  # [S, d]: the input embeddings (the token nodes' values)
    latents: dict[int, Tensor]  # layer -> [S, m], zero at BOS
    errors: dict[int, Tensor]  # layer -> [S, d]
    mlp_in: dict[int, Tensor]


@dataclass
class ReplacementOutput:
    logits: Tensor  # [B, S, vocab]
    pre_activations: dict[int, Tensor]  # layer -> [B, S, m]


def _norm_eps(norm: nn.Module, norms: NormLayout) -> float:
    if norms.fixed_eps is not None:
        return norms.fixed_eps
    for name in ("variance_epsilon", "eps"):
        if hasattr(norm, name):
            return float(getattr(norm, name))
    raise SaekitError(f"cannot freeze the norm {type(norm).__name__}: no epsilon attribute")


def _inverse_scale(norm: nn.Module, x: Tensor, norms: NormLayout) -> Tensor:
    """The per-token factor the norm multiplies by on input ``x`` (float32, [..., 1]): 1/rms or 1/std."""
    x = x.float()
    if norms.kind == "layer":
        return torch.rsqrt(x.var(-1, keepdim=True, unbiased=False) + _norm_eps(norm, norms))
    return torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + _norm_eps(norm, norms))


def _frozen_norm(norm: nn.Module, x: Tensor, inverse: Tensor, norms: NormLayout) -> Tensor:
    """The norm with its per-token factor held at ``inverse``: linear in ``x`` (affine with a bias)."""
    out = x.float()
    if norms.kind == "layer":
        out = out - out.mean(-1, keepdim=True)
    out = out * inverse
    weight = getattr(norm, "weight", None)
    if weight is not None:
        out = out * (weight.float() + norms.weight_offset)
    bias = getattr(norm, "bias", None)
    if bias is not None:
        out = out + bias.float()
    return out.to(x.dtype)


def _attention_values(attention: nn.Module, x: Tensor, pattern: Tensor, layout: AttentionLayout,
                      mix: ValueMix | None = None) -> Tensor:
    """output(pattern @ values(x)), the values made as the family's row says (grouped-query heads repeated).

    ``mix``: ``mix(pattern, values)`` in place of ``pattern @ values`` (values [B, heads, S, head_dim]), where
    a caller splits the mixing by head or by position (:mod:`.attention`)."""
    batch, seq, _ = x.shape
    heads, head_dim = pattern.shape[-3], int(getattr(attention, layout.head_dim))
    projected = getattr(attention, layout.values)(x)
    if layout.value_layout == "per_head":  # [.., heads, q | k | v] (GPT-NeoX)
        values = projected.view(batch, seq, heads, 3 * head_dim)[..., 2 * head_dim:]
    else:
        if layout.value_layout == "fused":  # [q | k | v], k and v alike (GPT-2, Phi-3)
            projected = projected[..., heads * head_dim + (projected.shape[-1] - heads * head_dim) // 2:]
        values = projected.view(batch, seq, -1, head_dim)
    values = values.transpose(1, 2)  # [B, kv, S, hd]
    values = values.repeat_interleave(heads // values.shape[1], dim=1)
    pattern = pattern.to(values.dtype)
    mixed = (pattern @ values if mix is None else mix(pattern, values)).transpose(1, 2).reshape(batch, seq, -1)
    return getattr(attention, layout.output)(mixed)


def _hidden_states(args: tuple, kwargs: dict) -> Tensor:
    return args[0] if args else kwargs["hidden_states"]


class ReplacementModel:
    """The local replacement model of ``input_ids`` (one prompt) under ``transcoders``."""

    def __init__(self, loaded: LoadedModel, transcoders: TranscoderSet, input_ids: Tensor,
                 freeze_unreplaced: bool = False) -> None:
        adapter = loaded.adapter
        self.layout = replacement_layout(adapter.model_type)  # one line for a family it cannot handle, first
        check_fits(transcoders, adapter.n_layers, adapter.d_model)
        self.frozen_layers = check_coverage(transcoders, adapter.n_layers, freeze_unreplaced)
        self.error_layers = sorted([*transcoders.layers, *self.frozen_layers])
        self.loaded, self.transcoders = loaded, transcoders
        self.model = loaded.model
        self.norms = [norm for layer in range(adapter.n_layers) for norm in adapter.block_norms(layer)]
        self.norms.append(adapter.final_norm())
        cap = getattr(self.model.config, self.layout.logit_softcap, None) if self.layout.logit_softcap else None
        self.logit_softcap: float | None = None if cap is None else float(cap)
        # layer -> mix(pattern, values) in place of pattern @ values (None: that), set by :mod:`.attention`
        self.value_mix: Callable[[int, Tensor, Tensor], Tensor] | None = None
        self.clean = self._clean_run(input_ids.reshape(-1).to(loaded.device))

    @torch.no_grad()
    def _clean_run(self, input_ids: Tensor) -> CleanRun:
        adapter, transcoders, norms = self.loaded.adapter, self.transcoders, self.layout.norms
        self.inverse_scales: dict[int, Tensor] = {}
        self.patterns: dict[int, Tensor] = {}
        mlp_in: dict[int, Tensor] = {}
        mlp_out: dict[int, Tensor] = {}
        unembedded: list[Tensor] = []
        hooks = []
        for index, norm in enumerate(self.norms):
            hooks.append(norm.register_forward_hook(
                lambda module, args, out, index=index: self.inverse_scales.__setitem__(
                    index, _inverse_scale(module, args[0], norms))))
        for layer in range(adapter.n_layers):
            hooks.append(adapter.attention(layer).register_forward_hook(
                lambda module, args, out, layer=layer: self.patterns.__setitem__(layer, out[1])))  # None: not eager
        def record_mlp(args: tuple, out: Tensor, layer: int) -> None:
            mlp_in[layer], mlp_out[layer] = args[0][0], out[0]

        for layer in self.error_layers:
            hooks.append(adapter.mlp(layer).register_forward_hook(
                lambda module, args, out, layer=layer: record_mlp(args, out, layer)))
        if self.logit_softcap is not None:
            hooks.append(adapter.unembedding().register_forward_hook(lambda module, args, out: unembedded.append(out)))
        previous = self.model.config._attn_implementation
        try:
            self.model.set_attn_implementation("eager")  # the only implementation that returns its pattern
            embeddings = self.model.get_input_embeddings()(input_ids[None])
            logits = self.model(inputs_embeds=embeddings, use_cache=False).logits[0]
        finally:
            self.model.set_attn_implementation(previous)
            for hook in hooks:
                hook.remove()
        if len(self.patterns) != adapter.n_layers or any(p is None for p in self.patterns.values()):
            raise SaekitError("the model's attention did not return its pattern; attribution needs eager attention")
        if self.logit_softcap is not None:
            # cap * tanh(z / cap) = z * factor, the factor held at its clean value as the norms' scales are
            raw, cap = unembedded[0][0].float(), self.logit_softcap
            self.softcap_factor = torch.where(raw == 0, torch.ones_like(raw), cap * torch.tanh(raw / cap) / raw)
        latents = {}
        for layer in transcoders.layers:
            latents[layer] = transcoders.encode(layer, mlp_in[layer]).float()
            latents[layer][0] = 0.0  # BOS: no latent nodes, its MLP output is all error
        errors = {layer: mlp_out[layer].float() - transcoders.decode(layer, latents, mlp_in[layer]).float()
                  for layer in transcoders.layers}
        errors.update({layer: mlp_out[layer].float() for layer in self.frozen_layers})  # all of it error
        errors = dict(sorted(errors.items()))
        return CleanRun(input_ids.cpu(), logits.float(), embeddings[0].float(), latents, errors, mlp_in)

    @contextmanager
    def _frozen(self, latents: dict[int, Tensor], errors: dict[int, Tensor],
                pre_activations: dict[int, Tensor]) -> Iterator[None]:
        adapter, transcoders, layout = self.loaded.adapter, self.transcoders, self.layout
        hooks = []
        for index, norm in enumerate(self.norms):
            hooks.append(norm.register_forward_hook(
                lambda module, args, out, index=index: _frozen_norm(module, args[0], self.inverse_scales[index],
                                                                    layout.norms)))
        for layer in range(adapter.n_layers):
            hooks.append(adapter.attention(layer).register_forward_hook(
                lambda module, args, kwargs, out, layer=layer: (
                    _attention_values(module, _hidden_states(args, kwargs), self.patterns[layer],
                                      layout.attention_layout, self._mix(layer)), None),
                with_kwargs=True))

        def replaced_mlp(module: nn.Module, args: tuple, out: Tensor, layer: int) -> Tensor:
            x = args[0]
            pre_activations[layer] = transcoders.pre_activations(layer, x)
            return (transcoders.decode(layer, latents, x) + errors[layer]).to(out.dtype)

        for layer in transcoders.layers:
            hooks.append(adapter.mlp(layer).register_forward_hook(
                lambda module, args, out, layer=layer: replaced_mlp(module, args, out, layer)))
        for layer in self.frozen_layers:  # the clean output, as a node (a leaf), not the live MLP
            hooks.append(adapter.mlp(layer).register_forward_hook(
                lambda module, args, out, layer=layer: errors[layer].to(out.dtype).expand_as(out)))
        if self.logit_softcap is not None:  # the model's own softcap off, its clean factor applied instead
            setattr(self.model.config, layout.logit_softcap, None)
            hooks.append(adapter.unembedding().register_forward_hook(
                lambda module, args, out: out * self.softcap_factor[-out.shape[-2]:].to(out.dtype)))
        try:
            yield
        finally:
            for hook in hooks:
                hook.remove()
            if self.logit_softcap is not None:
                setattr(self.model.config, layout.logit_softcap, self.logit_softcap)

    def _mix(self, layer: int) -> ValueMix | None:
        value_mix = self.value_mix
        return None if value_mix is None else lambda pattern, values: value_mix(layer, pattern, values)

    def forward(self, embeddings: Tensor, latents: dict[int, Tensor], errors: dict[int, Tensor],
                last_logits_only: bool = False) -> ReplacementOutput:
        """Logits and pre-activations of the replacement model for a batch of node values ([B, S, ...]).

        ``last_logits_only``: the logits of the last position alone ([B, 1, V]; the unembedding of the
        others is most of a small model's cost and attribution never reads them).
        """
        pre_activations: dict[int, Tensor] = {}
        with self._frozen(latents, errors, pre_activations):
            logits = self.model(inputs_embeds=embeddings, use_cache=False,
                                logits_to_keep=1 if last_logits_only else 0).logits
        return ReplacementOutput(logits, pre_activations)

    def clean_nodes(self, batch: int = 1, requires_grad: bool = False) -> tuple[Tensor, dict[int, Tensor],
                                                                                 dict[int, Tensor]]:
        """The clean node values repeated ``batch`` times (fresh leaf tensors)."""
        def leaf(value: Tensor) -> Tensor:
            return value.expand(batch, *value.shape).clone().requires_grad_(requires_grad)
        clean = self.clean
        return (leaf(clean.embeddings), {layer: leaf(v) for layer, v in clean.latents.items()},
                {layer: leaf(v) for layer, v in clean.errors.items()})
