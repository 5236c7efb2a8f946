"""JumpReLU dictionary: a learned threshold per latent, trained through straight-through estimators.

    theta   = exp(log_threshold)                          per latent, positive
    latents = pre * H(pre - theta)                        H: Heaviside step
    l0      = l0_coefficient * sparsity_scale * mean_tokens sum_i H(pre_i - theta_i)

H has zero gradient almost everywhere, so both the jump in the output and the L0 penalty use
pseudo-derivatives with a rectangle kernel K(u) = 1[|u| < 1/2] of bandwidth eps; with
k = K((pre - theta) / eps) / eps:

    output  z = pre * H(pre - theta):   dz/dtheta = -theta * k     dz/dpre = H(pre - theta) + theta * k
    penalty s = H(pre - theta):         ds/dtheta = -k             ds/dpre = +k

Both act on the pre-activations as well as on theta, so the gradients reach the encoder weights and
biases: the L0 term pushes pre-activations just around the threshold down, and the reconstruction
term can pull them up when firing would help. Using the jump's pseudo-derivative in pre too (not
only in theta, where the original JumpReLU recipe stops) keeps the two forces symmetric: with only
the L0 term acting on pre, pre-activations near the threshold are pushed down with nothing pushing
back; in the planted-feature toy (settings of the recovery test) 96% of latents died, L0 fell to
1.5 and recovery to 0.42, against 39% dead (mostly surplus latents: 512 for 256 features), L0 10.5
and 0.88 with it.

Scale of theta and eps. Both live in pre-activation units, so they are set relative to the data: on
the first training forward the dictionary measures the RMS s of its pre-activations and sets
theta_0 = ``threshold_init_fraction`` * s and eps = ``bandwidth_fraction`` * s (defaults 1 and 0.5).
For inputs scaled to E||x||^2 = 1 and the (scaled) tied initialisation, s is about
encoder_init_scale / sqrt(d_in). Why theta_0 of order s rather than the tiny absolute values of
long runs: log_threshold moves by at most about the learning rate per Adam step, so a threshold
that starts orders of magnitude too small cannot grow into place within a run of a few thousand
steps; starting at the scale of the pre-activations lets the threshold separate signal from
interference early. In the planted-feature toy of ``tests/dictionaries/test_dict_recovery.py`` (400
steps) the mean max cosine to the true features was 0.51, 0.54, 0.67, 0.88 and 0.90 for theta_0 =
0.01, 0.1, 0.5, 1 and 2 times the RMS (eps = theta_0 / 2, at least 0.05 RMS); 1 is the default,
the middle of the good range, leaving room for data whose useful thresholds sit lower. The
bandwidth is a fraction of the same scale so that, even in batches of a few hundred tokens, a few
tokens per latent fall inside the kernel without blurring the step. Until the first training
forward (e.g. when evaluating an untrained dictionary) the same fractions of the nominal scale are
used. The measured bandwidth is a buffer, saved and folded with the weights; ``calibrated`` records
that the measurement happened, so a reloaded or folded dictionary is never re-calibrated.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from saekit.dictionaries.base import Dictionary, DictionaryConfig, DictionaryOptions
from saekit.settings import setting


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
        jump = grad_out * threshold * _rectangle(pre, threshold, bandwidth)
        grad_pre = grad_out * (pre > threshold).to(pre.dtype) + jump
        return grad_pre, -_sum_to_latents(jump), None


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


@dataclass(frozen=True)
class JumpReLUOptions(DictionaryOptions):
    """Where the thresholds and the bandwidth start, relative to the first batch (see the module docstring)."""

    # Both are scales, so zero (log(0) for the threshold, a kernel of no width) or less is refused.
    threshold_init_fraction: float = setting(
        1.0, "initial threshold as a fraction of the RMS pre-activation on the first training batch", above=0)
    bandwidth_fraction: float = setting(
        0.5, "width of the straight-through gradients' rectangle kernel, as a fraction of the same RMS", above=0)


class JumpReLUDictionary(Dictionary):
    """JumpReLU SAE with an L0 penalty; thresholds and bandwidth calibrated on the first training batch."""

    SPARSITY_SETTING = "l0_coefficient"
    OPTIONS = JumpReLUOptions
    options: JumpReLUOptions

    bandwidth: Tensor
    calibrated: Tensor

    def __init__(self, config: DictionaryConfig) -> None:
        super().__init__(config)
        nominal_scale = self.encoder_init_scale() * config.d_in**-0.5
        theta_0 = self.options.threshold_init_fraction * nominal_scale
        self.log_threshold = nn.Parameter(torch.full((config.width,), math.log(theta_0)))
        self.register_buffer("bandwidth", torch.tensor(self.options.bandwidth_fraction * nominal_scale))
        self.register_buffer("calibrated", torch.tensor(0.0))

    @property
    def threshold(self) -> Tensor:
        """Per-latent threshold theta in pre-activation units (differentiable in log_threshold)."""
        return self.log_threshold.exp()

    @torch.no_grad()
    def calibrate(self, pre: Tensor) -> None:
        """Set theta_0 and eps relative to the RMS of these pre-activations (see the module docstring)."""
        scale = pre.detach().pow(2).mean().sqrt().clamp_min(1e-12)
        self.log_threshold.fill_(math.log(self.options.threshold_init_fraction * scale.item()))
        self.bandwidth.fill_(self.options.bandwidth_fraction * scale.item())
        self.calibrated.fill_(1.0)

    def activation(self, pre: Tensor) -> Tensor:
        if self.learning and not self.calibrated.item():
            self.calibrate(pre)
        return _JumpReLU.apply(pre, self.threshold, self.bandwidth)

    def sparsity_losses(self, pre: Tensor, latents: Tensor, sparsity_scale: float) -> dict[str, Tensor]:
        l0 = _Step.apply(pre, self.threshold, self.bandwidth).sum(-1).mean()
        return {"l0": self.config.l0_coefficient * sparsity_scale * l0}

    @torch.no_grad()
    def reset_latent_parameters(self, chosen: Tensor) -> list[tuple[nn.Parameter, tuple[Any, ...]]]:
        # A resampled latent starts at the typical (median) threshold of the others: on scale
        # with the current pre-activations, unlike the first-batch calibration value.
        others = self.log_threshold[~chosen]
        if others.numel() > 0:
            self.log_threshold[chosen] = others.median()
        return [(self.log_threshold, (chosen,))]

    def fold_thresholds(self, output_scale: float) -> None:
        self.log_threshold.sub_(math.log(output_scale))
        self.bandwidth.div_(output_scale)
