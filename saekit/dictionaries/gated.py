"""Gated dictionary: a gate decides whether a latent is on, a separate magnitude path how much.

With the encoder weights and bias serving as the gate (W_gate = W_enc, b_gate = b_enc):

    pi_gate = (x - b_pre) @ W_gate + b_gate
    pi_mag  = (x - b_pre) @ (W_gate * exp(r_mag)) + b_mag      weight sharing: one scale per latent
    latents = 1[pi_gate > 0] * ReLU(pi_mag)

The Heaviside gate passes no gradient, so the gate path is trained by two terms of its own: the
decoder-norm-weighted L1 on ReLU(pi_gate) (sparsity), and an auxiliary reconstruction of the
target from ReLU(pi_gate) through the decoder and decoder bias with their gradients stopped (so the
gate learns to be useful without pulling the decoder towards the shrunk gate activations; the input
centring x - b_pre inside pi_gate stays part of the encoder, as in the main path). The magnitude
path's own parameters (r_mag, b_mag) get only reconstruction gradient, so the L1 never shrinks them.

pi_mag is computed from pi_gate ((pi_gate - b_gate) * exp(r_mag) + b_mag), which shares the one
encoder matmul between both paths.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from saekit.dictionaries.base import Dictionary, DictionaryConfig
from saekit.dictionaries.losses import squared_error, weighted_l1


class GatedDictionary(Dictionary):
    """Gated SAE (pre_activations are the gate pre-activations pi_gate)."""

    def __init__(self, config: DictionaryConfig) -> None:
        super().__init__(config)
        self.r_mag = nn.Parameter(torch.zeros(config.width))
        self.b_mag = nn.Parameter(torch.zeros(config.width))

    def magnitude_pre_activations(self, pi_gate: Tensor) -> Tensor:
        return (pi_gate - self.b_enc) * self.r_mag.exp() + self.b_mag

    def activation(self, pre: Tensor) -> Tensor:
        gate = (pre > 0).to(pre.dtype)
        return gate * self.magnitude_pre_activations(pre).relu()

    def sparsity_losses(self, pre: Tensor, latents: Tensor, sparsity_scale: float) -> dict[str, Tensor]:
        l1 = weighted_l1(pre.relu(), self.decoder_norms())
        return {"l1": self.config.l1_coefficient * sparsity_scale * l1}

    def auxiliary_losses(
        self, x: Tensor, target: Tensor, pre: Tensor, latents: Tensor, reconstruction: Tensor,
        dead_mask: Tensor | None,
    ) -> dict[str, Tensor]:
        via_gate = pre.relu() @ self.W_dec.detach() + self.b_dec.detach()
        skipped = self.skip(x)
        if skipped is not None:  # the gate explains what the skip path leaves, as the latents do
            via_gate = via_gate + skipped.detach()
        return {"gate_reconstruction": squared_error(via_gate, target)}

    @torch.no_grad()
    def reset_latent_parameters(self, chosen: Tensor) -> list[tuple[nn.Parameter, tuple[Any, ...]]]:
        # Back to the initial state: magnitude path identical to the gate path.
        self.r_mag[chosen] = 0.0
        self.b_mag[chosen] = 0.0
        return [(self.r_mag, (chosen,)), (self.b_mag, (chosen,))]

    def fold_thresholds(self, output_scale: float) -> None:
        # pi_mag is divided by c_out like pi_gate once its own bias is.
        self.b_mag.div_(output_scale)
