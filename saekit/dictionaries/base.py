"""The dictionary interface every architecture implements: encode, decode, forward with loss terms.

A dictionary maps an input activation x (d_in) to sparse latents z (width) and reconstructs a target
(d_out; the input itself for an SAE, another site for a transcoder):

    pre  = (x - b_pre) @ W_enc + b_enc        b_pre = b_dec for an SAE (tied), 0 for a transcoder
    z    = activation(pre)                    architecture-specific (TopK, ReLU, JumpReLU, ...)
    x_hat = z @ W_dec + b_dec                 rows of W_dec are unit-norm feature directions

Architectures subclass :class:`Dictionary` and override ``activation`` and ``sparsity_losses``;
everything else (initialisation, decoder-norm constraint, folding the input scaling into the
weights, loss assembly) is shared here.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

import torch
from torch import Tensor, nn

from saekit.errors import SaekitError


@dataclass
class DictionaryConfig:
    """Shape and sparsity settings of one dictionary. Fields unused by an architecture are ignored."""

    architecture: str
    d_in: int
    width: int
    d_out: int | None = None  # None: an SAE reconstructing its own input
    k: int = 32  # TopK family: active latents per token
    l1_coefficient: float = 5.0  # ReLU family: weight of the decoder-norm-weighted L1 penalty
    extra: dict[str, Any] = field(default_factory=dict)  # architecture-specific settings

    @property
    def is_transcoder(self) -> bool:
        return self.d_out is not None and self.d_out != self.d_in

    @property
    def output_dim(self) -> int:
        return self.d_out if self.d_out is not None else self.d_in

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DictionaryConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise SaekitError(f"dictionary config has unknown fields {sorted(unknown)}; is it from a newer saekit?")
        return cls(**data)


@dataclass
class DictionaryOutput:
    """What a forward pass returns: latents, reconstruction, and named loss terms (``loss`` is the total)."""

    latents: Tensor
    reconstruction: Tensor
    losses: dict[str, Tensor]


class Dictionary(nn.Module):
    """Base class: shared parameters, encoding/decoding and loss assembly."""

    def __init__(self, config: DictionaryConfig) -> None:
        super().__init__()
        if config.width < 1 or config.d_in < 1 or config.output_dim < 1:
            raise SaekitError(f"dictionary sizes must be positive, got d_in={config.d_in} width={config.width}")
        self.config = config
        direction = torch.randn(config.width, config.output_dim)
        direction = direction / direction.norm(dim=1, keepdim=True)
        self.W_dec = nn.Parameter(direction)
        # Tied initialisation (encoder = decoder transpose) when shapes allow: it starts every latent
        # alive and pointed somewhere sensible; a transcoder gets a scaled random encoder instead.
        if config.is_transcoder:
            self.W_enc = nn.Parameter(torch.randn(config.d_in, config.width) / config.d_in**0.5)
        else:
            self.W_enc = nn.Parameter(direction.T.clone())
        self.b_enc = nn.Parameter(torch.zeros(config.width))
        self.b_dec = nn.Parameter(torch.zeros(config.output_dim))

    # ---- the architecture-specific part -------------------------------------------------------
    def activation(self, pre: Tensor) -> Tensor:
        """Pre-activations -> latents. Overridden by every architecture."""
        raise NotImplementedError

    def sparsity_losses(self, pre: Tensor, latents: Tensor, sparsity_scale: float) -> dict[str, Tensor]:
        """Extra loss terms (L1, step penalties...). ``sparsity_scale`` ramps from 0 to 1 during warmup."""
        return {}

    def fold_thresholds(self, output_scale: float) -> None:
        """Rescale any learned thresholds when folding the input scaling (see ``fold_input_scale``)."""

    # ---- shared machinery ----------------------------------------------------------------------
    @property
    def b_pre(self) -> Tensor:
        return torch.zeros_like(self.b_dec) if self.config.is_transcoder else self.b_dec

    def pre_activations(self, x: Tensor) -> Tensor:
        if x.shape[-1] != self.config.d_in:
            raise SaekitError(
                f"activation width {x.shape[-1]} does not match the dictionary's d_in={self.config.d_in}; "
                "was it trained on another model or site?"
            )
        return (x - self.b_pre) @ self.W_enc + self.b_enc

    def encode(self, x: Tensor) -> Tensor:
        return self.activation(self.pre_activations(x))

    def decode(self, latents: Tensor) -> Tensor:
        return latents @ self.W_dec + self.b_dec

    def forward(
        self, x: Tensor, target: Tensor | None = None, *, sparsity_scale: float = 1.0,
        dead_mask: Tensor | None = None,
    ) -> DictionaryOutput:
        target = x if target is None else target
        pre = self.pre_activations(x)
        latents = self.activation(pre)
        reconstruction = self.decode(latents)
        losses = {"reconstruction": (reconstruction - target).pow(2).sum(-1).mean()}
        losses.update(self.sparsity_losses(pre, latents, sparsity_scale))
        losses.update(self.auxiliary_losses(x, target, pre, latents, reconstruction, dead_mask))
        losses["loss"] = sum(losses.values())
        return DictionaryOutput(latents=latents, reconstruction=reconstruction, losses=losses)

    def auxiliary_losses(
        self, x: Tensor, target: Tensor, pre: Tensor, latents: Tensor, reconstruction: Tensor,
        dead_mask: Tensor | None,
    ) -> dict[str, Tensor]:
        """Terms that need the whole forward (dead-latent revival...). None by default."""
        return {}

    def decoder_norms(self) -> Tensor:
        return self.W_dec.norm(dim=1)

    @torch.no_grad()
    def normalize_decoder(self) -> None:
        """Project decoder rows back to unit norm (after an optimizer step)."""
        self.W_dec.div_(self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-8))

    @torch.no_grad()
    def remove_parallel_decoder_gradient(self) -> None:
        """Drop the gradient component along each decoder row, so a step mostly rotates it."""
        if self.W_dec.grad is None:
            return
        parallel = (self.W_dec.grad * self.W_dec).sum(dim=1, keepdim=True)
        self.W_dec.grad.sub_(parallel * self.W_dec)

    @torch.no_grad()
    def fold_input_scale(self, input_scale: float, output_scale: float | None = None) -> None:
        """Fold a training-time scaling (x_train = c_in * x, target_train = c_out * target) into the weights.

        Afterwards the dictionary takes raw activations and returns raw reconstructions, latents are
        divided by c_out and decoder rows stay unit-norm. This needs a positively homogeneous
        activation (true for ReLU/TopK; thresholds are rescaled by ``fold_thresholds``).
        """
        c_in = float(input_scale)
        c_out = float(output_scale if output_scale is not None else input_scale)
        self.W_enc.mul_(c_in / c_out)
        self.b_enc.div_(c_out)
        self.b_dec.div_(c_out)
        self.fold_thresholds(c_out)
