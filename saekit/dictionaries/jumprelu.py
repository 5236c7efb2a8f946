"""JumpReLU dictionary: a learned threshold per latent, trained through straight-through estimators.

    theta   = exp(log_threshold)                          per latent, positive
    latents = pre * H(pre - theta)                        H: Heaviside step
    l0      = l0_coefficient * sparsity_scale * mean_tokens sum_i H(pre_i - theta_i)

H has zero gradient almost everywhere, so both the jump in the output and the L0 penalty use
pseudo-derivatives with a rectangle kernel K(u) = 1[|u| < 1/2] of bandwidth eps:

    d/dtheta  [pre * H(pre - theta)] = -(theta / eps) K((pre - theta) / eps)
    d/dtheta  H(pre - theta)         = -(1 / eps)     K((pre - theta) / eps)
    d/dpre    H(pre - theta)         = +(1 / eps)     K((pre - theta) / eps)

(the output's gradient in pre is the exact H(pre - theta)). The L0 term acts on the pre-activations:
its gradient reaches the encoder weights and biases as well as the threshold, so the encoder can
learn to push rarely-useful pre-activations below the threshold instead of only moving theta.

Scale of theta and eps. Both live in pre-activation units, so they are set relative to the data: on
the first training forward the dictionary measures the RMS of its pre-activations s (for scaled
inputs, E||x||^2 = 1, and the tied initialisation, s is about 1/sqrt(d_in)) and sets
theta_0 = ``threshold_init_fraction`` * s and eps = ``bandwidth_fraction`` * s. The defaults (0.1 and
0.05) correspond, for a d_in ~ 2k model, to the absolute theta_0 ~ eps ~ 0.001-0.002 used on
unit-normalised residual streams; theta_0 is small enough that the dictionary starts close to a ReLU
(nothing useful is cut off before it has been learned), and eps is a fraction of the typical
pre-activation so the kernel sees a few tokens per latent per batch without blurring the step. Until
that first training forward (e.g. when evaluating an untrained dictionary) the same fractions of the
nominal scale 1/sqrt(d_in) are used. The measured bandwidth is a buffer, saved and folded with the
weights, so a folded or reloaded dictionary keeps training consistently; ``calibrated`` records that
the measurement happened so it is never repeated.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from saekit.dictionaries.base import Dictionary, DictionaryConfig


def _rectangle(pre: Tensor, threshold: Tensor, bandwidth: Tensor) -> Tensor:
    """K((pre - theta) / eps) / eps with the rectangle kernel."""
    inside = ((pre - threshold).abs() < bandwidth / 2).to(pre.dtype)
    return inside / bandwidth


def _sum_to_latents(grad: Tensor) -> Tensor:
    """Reduce a [..., width] gradient to the per-latent threshold's shape [width]."""
    return grad.reshape(-1, grad.shape[-1]).sum(0)


class _JumpReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, pre: Tensor, threshold: Tensor, bandwidth: Tensor) -> Tensor:
        ctx.save_for_backward(pre, threshold, bandwidth)
        return pre * (pre > threshold).to(pre.dtype)

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor, Tensor, None]:
        pre, threshold, bandwidth = ctx.saved_tensors
        grad_pre = grad_out * (pre > threshold).to(pre.dtype)
        grad_threshold = -_sum_to_latents(grad_out * threshold * _rectangle(pre, threshold, bandwidth))
        return grad_pre, grad_threshold, None


class _Step(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, pre: Tensor, threshold: Tensor, bandwidth: Tensor) -> Tensor:
        ctx.save_for_backward(pre, threshold, bandwidth)
        return (pre > threshold).to(pre.dtype)

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor, Tensor, None]:
        pre, threshold, bandwidth = ctx.saved_tensors
        pseudo = grad_out * _rectangle(pre, threshold, bandwidth)
        return pseudo, -_sum_to_latents(pseudo), None


class JumpReLUDictionary(Dictionary):
    """JumpReLU SAE with an L0 penalty; thresholds and bandwidth calibrated on the first training batch."""

    EXTRA_DEFAULTS: ClassVar[dict[str, Any]] = {
        "l0_coefficient": 1e-3,  # weight of the mean L0 (with E||x||^2 = 1, reconstruction ~ FVU)
        "threshold_init_fraction": 0.1,  # theta_0 / RMS(pre-activations on the first batch)
        "bandwidth_fraction": 0.05,  # eps / RMS(pre-activations on the first batch)
    }

    bandwidth: Tensor
    calibrated: Tensor

    def __init__(self, config: DictionaryConfig) -> None:
        super().__init__(config)
        nominal_scale = config.d_in**-0.5
        theta_0 = float(self.options["threshold_init_fraction"]) * nominal_scale
        self.log_threshold = nn.Parameter(torch.full((config.width,), math.log(theta_0)))
        self.register_buffer("bandwidth", torch.tensor(float(self.options["bandwidth_fraction"]) * nominal_scale))
        self.register_buffer("calibrated", torch.tensor(0.0))

    def threshold(self) -> Tensor:
        return self.log_threshold.exp()

    @torch.no_grad()
    def calibrate(self, pre: Tensor) -> None:
        """Set theta_0 and eps relative to the RMS of these pre-activations (see the module docstring)."""
        scale = pre.detach().pow(2).mean().sqrt().clamp_min(1e-12)
        self.log_threshold.fill_(math.log(float(self.options["threshold_init_fraction"]) * scale.item()))
        self.bandwidth.fill_(float(self.options["bandwidth_fraction"]) * scale.item())
        self.calibrated.fill_(1.0)

    def activation(self, pre: Tensor) -> Tensor:
        if self.learning and not self.calibrated.item():
            self.calibrate(pre)
        return _JumpReLU.apply(pre, self.threshold(), self.bandwidth)

    def sparsity_losses(self, pre: Tensor, latents: Tensor, sparsity_scale: float) -> dict[str, Tensor]:
        l0 = _Step.apply(pre, self.threshold(), self.bandwidth).sum(-1).mean()
        return {"l0": float(self.options["l0_coefficient"]) * sparsity_scale * l0}

    def fold_thresholds(self, output_scale: float) -> None:
        self.log_threshold.sub_(math.log(output_scale))
        self.bandwidth.div_(output_scale)
