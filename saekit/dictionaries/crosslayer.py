"""Dictionaries over a range of L layers read from one forward: the cross-layer transcoder and the crosscoder.

Both take the L layers' activations concatenated, x = [x_0 | ... | x_{L-1}] (each d wide, so
``DictionaryConfig.d_in`` = L d; likewise ``d_out``), and their ``width`` counts every latent; the
layer count is ``DictionaryConfig.layers`` (set by the run from its ``layers`` range; 1 = one site, where
each class is exactly its single-site parent, options included: the tests of every architecture run on it).

Cross-layer transcoder (``clt_topk``, ``clt_jumprelu``): width = L m, latents [z_0 | ... | z_{L-1}].
Layer i's encoder reads only that layer's MLP input; its latents write to the MLP output of layer i
and of every later layer in the range::

    z_i   = activation_i(x_i @ W_enc[:, i m:(i+1) m] + b_enc[i m:(i+1) m])     W_enc [d, L m]
    y_j   = b_dec[j] + sum_{i <= j} z_i @ D(i -> j)  [+ x_j @ W_skip[:, j]]     W_skip [d, L d]

The decoders D(i -> j) (j >= i) are stored packed in one ``W_dec`` of [m L(L+1)/2, d] rows: source
layer i's block holds, for each of its latents, its L - i decoder vectors in a row
(``decoder_block(i)`` = [m, (L - i) d], a view), so no memory goes to the empty j < i half. TopK keeps
the k largest pre-activations of each layer (k per layer; the dense forward); JumpReLU is the
``jumprelu`` activation with its thresholds, calibration and straight-through gradients over all
L m latents. The reconstruction loss is the squared error summed over all output layers (the
concatenation's squared error), and the log has per-layer FVU and L0 (:meth:`layer_metrics`).

Decoder norms with several decoders per latent: ``normalize_decoder`` keeps each latent's
*concatenated* decoder (all its output layers together) at unit norm, so a latent may split its
norm between layers as it likes; ``decoder_norms`` is the *sum* of its per-output-layer norms
(between 1 and sqrt(L - i) under that constraint), which weights JumpReLU's L0 penalty and the
crosscoder's L1: a latent that writes to more layers costs more. Keep ``normalize_decoder`` on for
JumpReLU too: a norm-weighted step penalty is not invariant to moving scale from the decoder to the
encoder and threshold, so free decoders would drift towards zero norm.

Crosscoder (``crosscoder``): one latent space over the L layers (acausal): the ReLU SAE on the
concatenation, so each latent's encoder is the sum of per-layer encoders (W_enc [L d, width]) and
its decoder has one part per layer (W_dec [width, L d]); the L1 is weighted by the sum of the
per-layer decoder norms.

Input scaling is per layer (each layer's input and output scaled to E||x||^2 = 1 in training).
Folding (``fold_input_scale`` with L scales each) keeps the single-site convention where it can:
the latents are divided by one reference scale, the geometric mean r of the output scales (r =
c_out for one layer), so thresholds fold by r; each layer's encoder block is multiplied by
c_in_i / r and each decoder vector into layer j by r / c_out_j, so raw decoders are unit-norm only
when the layers' scales agree.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from saekit.dictionaries.base import Dictionary, DictionaryConfig, DictionaryOptions, DictionaryOutput, Span
from saekit.dictionaries.jumprelu import JumpReLUDictionary, _JumpReLU, _Step
from saekit.dictionaries.relu import ReLUDictionary
from saekit.dictionaries.sparse import SparseLatents, selected_preactivations, top_k_per_token
from saekit.dictionaries.topk import TopKDictionary, scatter_top
from saekit.errors import SaekitError


def per_layer(scale: float | list[float] | Tensor, layers: int) -> Tensor:
    """A scale per layer (float64): one number repeated, or a list of ``layers`` numbers."""
    values = torch.as_tensor(scale, dtype=torch.float64).reshape(-1)
    if values.numel() == 1:
        values = values.expand(layers)
    if values.numel() != layers or not (values > 0).all():
        raise SaekitError(f"need {layers} positive per-layer scales, got {scale}")
    return values


class LayeredDictionary(Dictionary):
    """What the cross-layer dictionaries share: the layer count, per-layer folding and per-layer metrics."""

    # Options whose mechanism assumes one site: refused (when on) above one layer.
    SINGLE_LAYER_ONLY: ClassVar[tuple[str, ...]] = ()
    # The sizes that count every layer's share, so must divide by the layer count.
    LAYERED_SIZES: ClassVar[tuple[str, ...]] = ("d_in", "d_out")

    @classmethod
    def check_shape(cls, architecture: str, options: DictionaryOptions, layers: int, width: int | None) -> None:
        used = [name for name in cls.SINGLE_LAYER_ONLY if layers > 1 and getattr(options, name, None)]
        if used:
            raise SaekitError(f"architecture {architecture!r} does not support {used} over several layers")
        if "width" in cls.LAYERED_SIZES and width is not None and width % layers:
            raise SaekitError(f"width {width} must be a multiple of the {layers} layers "
                              "(width counts every layer's latents)")

    @classmethod
    def check_layered_sizes(cls, config: DictionaryConfig) -> None:
        """Refuse a config whose layered sizes (``LAYERED_SIZES``) do not divide by its layer count."""
        sizes = {"d_in": config.d_in, "d_out": config.output_dim, "width": config.width}
        stated = {name: sizes[name] for name in cls.LAYERED_SIZES}
        if any(size % config.layers for size in stated.values()):
            *first, last = stated
            names = f"{', '.join(first)} and {last}"
            raise SaekitError(f"a {config.layers}-layer {config.architecture} needs {names} divisible by "
                              f"{config.layers}, got {', '.join(map(str, stated.values()))}")

    @property
    def layer_input_width(self) -> int:
        return self.config.d_in // self.layers

    @property
    def layer_output_width(self) -> int:
        return self.config.output_dim // self.layers

    def layer_slice(self, layer: int, width: int) -> slice:
        return slice(layer * width, (layer + 1) * width)

    @torch.no_grad()
    def fold_input_scale(self, input_scale: float | list[float],
                         output_scale: float | list[float] | None = None) -> None:
        """Fold per-layer training scales into the weights (see the module docstring); one float = every layer."""
        dtype = self.W_enc.dtype
        c_in = per_layer(input_scale, self.layers)
        c_out = per_layer(output_scale if output_scale is not None else input_scale, self.layers)
        reference = float(c_out.log().mean().exp())
        self.scale_encoder_inputs((c_in / reference).to(dtype))
        self.scale_decoder_outputs((reference / c_out).to(dtype))
        self.b_enc.div_(reference)
        self.b_dec.view(self.layers, -1).div_(c_out.to(dtype)[:, None])
        if self.W_skip is not None:
            self.scale_skip(c_in.to(dtype), c_out.to(dtype))
        self.fold_thresholds(reference)

    def scale_encoder_inputs(self, factors: Tensor) -> None:
        """Multiply the encoder weights reading layer i by ``factors[i]``."""
        raise NotImplementedError

    def scale_decoder_outputs(self, factors: Tensor) -> None:
        """Multiply every decoder vector writing to layer j by ``factors[j]``."""
        raise NotImplementedError

    def scale_skip(self, c_in: Tensor, c_out: Tensor) -> None:
        raise NotImplementedError

    def training_metrics(self, latents: Tensor | SparseLatents, reconstruction: Tensor,
                         target: Tensor) -> dict[str, Tensor]:
        """Above one layer, each layer's figures (:meth:`layer_metrics`)."""
        return self.layer_metrics(latents, reconstruction, target) if self.layers > 1 else {}

    def layer_metrics(self, latents: Tensor | SparseLatents, reconstruction: Tensor,
                      target: Tensor) -> dict[str, Tensor]:
        """Per output layer j (position in the range): ``fvu_layer_j``; per-layer latents add ``l0_layer_j``."""
        error = (reconstruction - target).pow(2).reshape(-1, self.layers, self.layer_output_width).sum((0, 2))
        centred = target - target.reshape(-1, target.shape[-1]).mean(0)
        variance = centred.pow(2).reshape(-1, self.layers, self.layer_output_width).sum((0, 2))
        metrics = {f"fvu_layer_{j}": error[j] / variance[j] for j in range(self.layers)}
        return metrics


class CrossLayerTranscoder(LayeredDictionary):
    """The CLT layout and forward (module docstring); subclasses choose the activation."""

    SPAN = Span.CAUSAL
    LOGIT_DIRECTION_NOTE = ("a CLT latent's decoders into every later MLP output added up: its total direct write to "
                            "the residual stream")
    RESAMPLES = False  # a latent's decoders into several layers have no single direction to resample along
    SINGLE_LAYER_ONLY = ("aux_k", "orthogonality_coefficient")
    LAYERED_SIZES = ("d_in", "d_out", "width")

    def __init__(self, config: DictionaryConfig) -> None:
        self.check_layered_sizes(config)
        layers = config.layers
        # The parent builds one layer's shapes (d_in / L, d_out / L, all L m latents); above one layer
        # the decoder, its bias and the skip are then replaced by the packed cross-layer ones.
        super().__init__(replace(config, d_in=config.d_in // layers,
                                 d_out=None if config.d_out is None else config.d_out // layers))
        self.config = config
        if layers > 1:
            self._build_cross_layer_decoder()

    def encoder_init_scale(self) -> float:
        # Called while ``self.config`` is the one-layer config: per layer, m latents read d inputs.
        latents = self.config.width // self.config.layers
        return min(1.0, (2 * self.config.d_in / latents) ** (0.5 if self.config.is_transcoder else 1.0))

    def _build_cross_layer_decoder(self) -> None:
        layers, m, d_out = self.layers, self.latents_per_layer, self.layer_output_width
        blocks = []
        for source in range(layers):
            direction = torch.randn(m, (layers - source) * d_out)
            blocks.append((direction / direction.norm(dim=1, keepdim=True)).reshape(-1, d_out))
        self.W_dec = nn.Parameter(torch.cat(blocks))
        self.b_dec = nn.Parameter(torch.zeros(layers * d_out))
        if self.W_skip is not None:
            self.W_skip = nn.Parameter(torch.zeros(self.layer_input_width, layers * d_out))

    @property
    def latents_per_layer(self) -> int:
        return self.config.width // self.layers

    def decoder_block(self, source: int) -> Tensor:
        """[m, (L - source) d_out]: each of layer ``source``'s latents' decoders into layers source..L-1 (a view)."""
        layers, m = self.layers, self.latents_per_layer
        start = m * (source * layers - source * (source - 1) // 2)
        return self.W_dec[start:start + m * (layers - source)].view(m, -1)

    def _blocks_of(self, tensor: Tensor) -> list[Tensor]:
        """``tensor`` (W_dec-shaped: the weights or their gradient) as the per-source blocks (views)."""
        layers, m = self.layers, self.latents_per_layer
        sizes = [m * (layers - source) for source in range(layers)]
        return [block.view(m, -1) for block in tensor.split(sizes)]

    def pre_activations(self, x: Tensor) -> Tensor:
        if x.shape[-1] != self.config.d_in:
            raise SaekitError(f"activation width {x.shape[-1]} does not match the dictionary's d_in={self.config.d_in} "
                              f"({self.layers} layers); was it trained on another model or layer range?")
        d, m = self.layer_input_width, self.latents_per_layer
        centred = (x - self.b_pre).unflatten(-1, (self.layers, d))
        pre = torch.einsum("...ld,dlm->...lm", centred, self.W_enc.view(d, self.layers, m))
        return pre.flatten(-2) + self.b_enc

    def decode(self, latents: Tensor | SparseLatents) -> Tensor:
        dense = latents.dense() if isinstance(latents, SparseLatents) else latents
        m, d_out = self.latents_per_layer, self.layer_output_width
        out = self.b_dec.expand(*dense.shape[:-1], -1)
        for source in range(self.layers):
            contribution = dense[..., source * m:(source + 1) * m] @ self.decoder_block(source)
            out = out + F.pad(contribution, (source * d_out, 0))
        return out

    def skip(self, x: Tensor) -> Tensor | None:
        if self.W_skip is None:
            return None
        d, d_out = self.layer_input_width, self.layer_output_width
        weight = self.W_skip.view(d, self.layers, d_out)
        return torch.einsum("...ld,dle->...le", x.unflatten(-1, (self.layers, d)), weight).flatten(-2)

    # ---- one layer at a time: what splicing into the model and the circuits use -----------------
    def _check_layer(self, layer: int) -> None:
        if not 0 <= layer < self.layers:
            raise SaekitError(f"this {self.config.architecture} spans layers 0..{self.layers - 1} of its range, "
                              f"not {layer}")

    def writers(self, layer: int) -> list[int]:
        """Every layer of the range up to ``layer``: their latents all write to its output."""
        self._check_layer(layer)
        return list(range(layer + 1))

    def layer_pre_activations(self, layer: int, x: Tensor) -> Tensor:
        """Layer ``layer``'s pre-activations [..., m] from its input [..., d] alone."""
        self._check_layer(layer)
        inputs, latents = (self.layer_slice(layer, w) for w in (self.layer_input_width, self.latents_per_layer))
        return (x - self.b_pre[inputs]) @ self.W_enc[:, latents] + self.b_enc[latents]

    def encode_layer(self, layer: int, x: Tensor) -> Tensor:
        """Layer ``layer``'s latents [..., m] from its input [..., d] alone."""
        return self.layer_activation(layer, self.layer_pre_activations(layer, x))

    def decoder_into(self, source: int, layer: int) -> Tensor:
        """[m, d_out]: the decoders of layer ``source``'s latents into layer ``layer`` (a view; ``source <= layer``)."""
        self._check_layer(layer)
        if not 0 <= source <= layer:
            raise SaekitError(f"layer {source}'s latents do not write to layer {layer} (they write to {source} "
                              "and later layers)")
        return self.decoder_block(source).view(self.latents_per_layer, -1, self.layer_output_width)[:, layer - source]

    def decode_layer(self, layer: int, latents: Sequence[Tensor], x: Tensor) -> Tensor:
        """Layer ``layer``'s output from the latents of layers 0..layer (``latents[i]`` [..., m]) and its input."""
        d_out = self.layer_output_width
        out = self.b_dec[self.layer_slice(layer, d_out)]
        for source in self.writers(layer):
            out = out + latents[source] @ self.decoder_into(source, layer)
        if self.W_skip is not None:
            out = out + x @ self.W_skip[:, self.layer_slice(layer, d_out)]
        return out

    def layer_activation(self, layer: int, pre: Tensor) -> Tensor:
        """One layer's pre-activations [..., m] -> its latents."""
        raise NotImplementedError

    # ---- decoder norms with several decoders per latent ---------------------------------------
    def output_norms(self) -> Tensor:
        """[L m, L]: each latent's decoder norm into each output layer (0 for layers before its own)."""
        rows = []
        for source, block in enumerate(self._blocks_of(self.W_dec)):
            norms = block.view(block.shape[0], -1, self.layer_output_width).norm(dim=-1)
            rows.append(F.pad(norms, (source, 0)))
        return torch.cat(rows)

    def decoder_norms(self) -> Tensor:
        return self.output_norms().sum(-1)

    def output_decoders(self, latent_ids: Tensor) -> Tensor:
        layers, m, d_out = self.layers, self.latents_per_layer, self.layer_output_width
        out = self.W_dec.new_zeros(len(latent_ids), layers, d_out)
        source_of = torch.div(latent_ids, m, rounding_mode="floor")
        for source in source_of.unique().tolist():
            chosen = (source_of == source).nonzero().squeeze(1)
            rows = self.decoder_block(source)[latent_ids[chosen] - source * m]
            out[chosen, source:] = rows.view(len(chosen), layers - source, d_out)
        return out

    def decoder_directions(self) -> Tensor:
        """Each latent's decoder into its own layer's MLP output (the residual stream's basis for every layer)."""
        return torch.cat([self.decoder_block(source)[:, :self.layer_output_width] for source in range(self.layers)])

    def logit_directions(self, latent_ids: Tensor) -> Tensor:
        """The latent's total write: its decoders into every later MLP output add up in the residual stream."""
        return self.output_decoders(latent_ids).sum(1)

    @torch.no_grad()
    def normalize_decoder(self) -> None:
        for block in self._blocks_of(self.W_dec):
            block.div_(block.norm(dim=1, keepdim=True).clamp_min(1e-8))

    @torch.no_grad()
    def remove_parallel_decoder_gradient(self) -> None:
        if self.W_dec.grad is None:
            return
        for weight, grad in zip(self._blocks_of(self.W_dec), self._blocks_of(self.W_dec.grad)):
            # In place, without a decoder-sized temporary (the blocks hold most of a CLT's weights).
            grad.addcmul_(weight, torch.linalg.vecdot(grad, weight)[:, None], value=-1)

    def scale_encoder_inputs(self, factors: Tensor) -> None:
        self.W_enc.view(self.layer_input_width, self.layers, -1).mul_(factors[None, :, None])

    def scale_decoder_outputs(self, factors: Tensor) -> None:
        for source, block in enumerate(self._blocks_of(self.W_dec)):
            block.view(block.shape[0], -1, self.layer_output_width).mul_(factors[source:, None])

    def scale_skip(self, c_in: Tensor, c_out: Tensor) -> None:
        self.W_skip.view(self.layer_input_width, self.layers, -1).mul_((c_in / c_out)[None, :, None])

    def layer_metrics(self, latents: Tensor | SparseLatents, reconstruction: Tensor,
                      target: Tensor) -> dict[str, Tensor]:
        metrics = super().layer_metrics(latents, reconstruction, target)
        m = self.latents_per_layer
        if isinstance(latents, SparseLatents):
            layer = torch.div(latents.columns, m, rounding_mode="floor")
            fired = (latents.values.detach() > 0).float()
            active = fired.new_zeros(self.layers).index_add_(0, layer, fired) / max(latents.tokens, 1)
        else:
            active = (latents.detach().reshape(-1, self.layers, m) > 0).sum(-1).float().mean(0)
        metrics.update({f"l0_layer_{j}": active[j] for j in range(self.layers)})
        return metrics


class CrossLayerTopK(CrossLayerTranscoder, TopKDictionary):
    """CLT with TopK per layer: each layer keeps its k largest pre-activations (k per layer).

    The forward is sparse, as the single-site TopK's is, but over (token, layer) pairs: the top k of
    each layer's pre-activations carry the gradient to the encoder through the active entries only,
    and the decode is one ``embedding_bag`` over the packed decoder rows, a bag per (token, output
    layer j) holding the k (j + 1) active latents of layers 0..j, each pointing at its decoder row
    into j. A dense decode costs tokens x L m x (L (L + 1) / 2) d; this one tokens x k x L (L + 1) / 2 x d.
    Measured on the default model's shape (30 layers, d 576, 1024 latents per layer, k 16, 2048
    tokens, 2 cores): see ``benchmarks/crosslayer_step.py``.
    """

    def __init__(self, config: DictionaryConfig) -> None:
        super().__init__(config)
        if not 0 < config.k <= self.latents_per_layer:
            raise SaekitError(f"k={config.k} (per layer) must be between 1 and the {self.latents_per_layer} "
                              "latents per layer")
        self._decode_plans: dict[str, tuple[Tensor, Tensor, Tensor]] = {}

    def uses_sparse_forward(self) -> bool:
        return self.config.k <= self.SPARSE_MAX_ACTIVE_SHARE * self.latents_per_layer

    def forward(
        self, x: Tensor, target: Tensor | None = None, *, sparsity_scale: float = 1.0,
        dead_mask: Tensor | None = None,
    ) -> DictionaryOutput:
        if not self.uses_sparse_forward():
            return Dictionary.forward(self, x, target, sparsity_scale=sparsity_scale, dead_mask=dead_mask)
        layers, m, d = self.layers, self.latents_per_layer, self.layer_input_width
        with torch.no_grad():
            pre = self.pre_activations(x)
        # Rows of the selection are (token, layer) pairs, token-major: row = token * L + layer.
        selected, pair_rows, columns, pair_offsets = top_k_per_token(pre.reshape(-1, m), self.config.k)
        columns = columns + (pair_rows % layers) * m
        centred = (x.reshape(-1, self.config.d_in) - self.b_pre).reshape(-1, d)
        values = selected_preactivations(selected, centred, centred.new_zeros(d), self.W_enc, self.b_enc,
                                         pair_rows, columns, pair_offsets).relu()
        sparse = SparseLatents(values, torch.div(pair_rows, layers, rounding_mode="floor"), columns,
                               pair_offsets[::layers], pre.shape)
        return self.assemble_output(x, target, pre, sparse, self.reconstruct(x, sparse),
                                    sparsity_scale=sparsity_scale, dead_mask=dead_mask)

    def decode(self, latents: Tensor | SparseLatents) -> Tensor:
        if isinstance(latents, SparseLatents):  # one layer: the single-site sparse decode
            return Dictionary.decode(self, latents) if self.layers == 1 else self._decode_sparse(latents)
        return super().decode(latents)

    def _decode_sparse(self, latents: SparseLatents) -> Tensor:
        """The bagged decode (class docstring) of sparse latents with k entries per (token, layer), layer-major."""
        layers, k, d_out = self.layers, self.config.k, self.layer_output_width
        tokens = latents.tokens
        if latents.values.numel() != tokens * layers * k:
            return super().decode(latents.dense())
        source, target_offset, bag_starts = self._decode_plan(latents.values.device)
        values = latents.values.view(tokens, layers, k)
        local = (latents.columns.view(tokens, layers, k) - torch.arange(layers, device=values.device)[:, None]
                 * self.latents_per_layer)
        starts = self._block_starts(values.device)
        # For pair p = (output j, source i): decoder row of latent c of layer i into j.
        rows = starts[source][None, :, None] + local[:, source] * (layers - source)[None, :, None] \
            + target_offset[None, :, None]
        pairs = source.shape[0]
        offsets = (torch.arange(tokens, device=values.device)[:, None] * pairs * k + bag_starts[None] * k).reshape(-1)
        decoded = F.embedding_bag(rows.reshape(-1), self.W_dec, offsets, mode="sum",
                                  per_sample_weights=values[:, source].reshape(-1).to(self.W_dec.dtype))
        out = decoded.view(*latents.shape[:-1], layers * d_out)
        return out + self.b_dec

    def _decode_plan(self, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
        """(source layer, output minus source, first pair of each output layer) of the pairs (j, i <= j), j-major."""
        key = str(device)
        if key not in self._decode_plans:
            pairs = [(j, i) for j in range(self.layers) for i in range(j + 1)]
            target = torch.tensor([j for j, _ in pairs], device=device)
            source = torch.tensor([i for _, i in pairs], device=device)
            bag_starts = torch.tensor([j * (j + 1) // 2 for j in range(self.layers)], device=device)
            self._decode_plans[key] = (source, target - source, bag_starts)
        return self._decode_plans[key]

    def _block_starts(self, device: torch.device) -> Tensor:
        """The first packed decoder row of each source layer's block."""
        layers, m = self.layers, self.latents_per_layer
        return torch.tensor([m * (i * layers - i * (i - 1) // 2) for i in range(layers)], device=device)

    def activation(self, pre: Tensor) -> Tensor:
        return scatter_top(pre.unflatten(-1, (self.layers, -1)), self.config.k).flatten(-2)

    def layer_activation(self, layer: int, pre: Tensor) -> Tensor:
        return scatter_top(pre, self.config.k)


class CrossLayerJumpReLU(CrossLayerTranscoder, JumpReLUDictionary):
    """CLT with JumpReLU latents; the L0 penalty is weighted by each latent's summed decoder norms."""

    def layer_activation(self, layer: int, pre: Tensor) -> Tensor:
        latents = self.layer_slice(layer, self.latents_per_layer)
        return _JumpReLU.apply(pre, self.threshold[latents], self.bandwidth)

    def sparsity_losses(self, pre: Tensor, latents: Tensor, sparsity_scale: float) -> dict[str, Tensor]:
        fired = _Step.apply(pre, self.threshold, self.bandwidth)
        return {"l0": self.config.l0_coefficient * sparsity_scale * (fired * self.decoder_norms()).sum(-1).mean()}


class Crosscoder(LayeredDictionary, ReLUDictionary):
    """Acausal crosscoder: the ReLU SAE on the concatenated layers, L1 weighted by summed per-layer decoder norms."""

    SPAN = Span.ACAUSAL
    LOGIT_DIRECTION_NOTE = "a crosscoder latent's decoder into the last layer of its range"

    def _check_layer(self, layer: int) -> None:
        raise SaekitError("a crosscoder's latents read every layer of its range together; it has no per-layer "
                          "encoder or decoder (splice it whole)")

    def __init__(self, config: DictionaryConfig) -> None:
        self.check_layered_sizes(config)
        super().__init__(config)

    def decoder_norms(self) -> Tensor:
        return self.W_dec.view(self.config.width, self.layers, -1).norm(dim=-1).sum(-1)

    def output_decoders(self, latent_ids: Tensor) -> Tensor:
        return self.W_dec.view(self.config.width, self.layers, -1)[latent_ids]

    def decoder_directions(self) -> Tensor:
        return self.W_dec  # the concatenated decoders: cosines over all layers at once

    def logit_directions(self, latent_ids: Tensor) -> Tensor:
        """The decoder into the last layer of the range: the residual stream nearest the unembedding."""
        return self.output_decoders(latent_ids)[:, -1]

    def scale_encoder_inputs(self, factors: Tensor) -> None:
        self.W_enc.view(self.layers, -1, self.config.width).mul_(factors[:, None, None])

    def scale_decoder_outputs(self, factors: Tensor) -> None:
        self.W_dec.view(self.config.width, self.layers, -1).mul_(factors[None, :, None])

    def scale_skip(self, c_in: Tensor, c_out: Tensor) -> None:
        weight = self.W_skip.view(self.layers, self.layer_input_width, self.layers, -1)
        weight.mul_(c_in[:, None, None, None] / c_out[None, None, :, None])

