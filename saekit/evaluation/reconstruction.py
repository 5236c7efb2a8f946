"""Streaming reconstruction and sparsity metrics: MSE, FVU, L0 distribution, dead and dense latents.

Formulas (sums over evaluated tokens t and dimensions j; x_t the target, x̂_t the reconstruction,
μ the per-dimension mean of the targets over the evaluated tokens):

    mse_per_token = Σ_t ||x_t - x̂_t||² / N
    fvu           = Σ_t ||x_t - x̂_t||² / Σ_t ||x_t - μ||²      (fraction of variance unexplained)
    explained_variance = 1 - fvu

``legacy_fvu`` (flag) is the older per-token form: mean over tokens of ||x_t - x̂_t||² / ||x_t - μ||²,
which over-weights tokens near the mean and is kept only for comparison with other tools.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

L0_HISTOGRAM_EDGES = (0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 1 << 30)


class ReconstructionMetrics:
    """Accumulates over batches; the result does not depend on how tokens are batched."""

    def __init__(self, width: int, dense_threshold: float = 0.1) -> None:
        self.width = width
        self.dense_threshold = dense_threshold
        self.tokens = 0
        self.squared_error = 0.0
        self.legacy_ratio_sum = 0.0
        self.target_sum: Tensor | None = None
        self.target_squared_norm = 0.0
        self.fire_counts = torch.zeros(width, dtype=torch.long)
        self.l0_values: list[Tensor] = []
        self._targets_for_legacy: list[tuple[Tensor, Tensor]] = []

    @torch.no_grad()
    def update(self, target: Tensor, reconstruction: Tensor, latents: Tensor) -> None:
        target = target.reshape(-1, target.shape[-1]).double()
        reconstruction = reconstruction.reshape(-1, reconstruction.shape[-1]).double()
        latents = latents.reshape(-1, latents.shape[-1])
        error = (target - reconstruction).pow(2).sum(-1)
        self.tokens += target.shape[0]
        self.squared_error += error.sum().item()
        self.target_sum = target.sum(0) if self.target_sum is None else self.target_sum + target.sum(0)
        self.target_squared_norm += target.pow(2).sum().item()
        active = latents != 0
        self.fire_counts += active.sum(0).cpu()
        self.l0_values.append(active.sum(-1).cpu())
        # The legacy form needs the final mean, so keep (error, target) pairs; both are small per token.
        self._targets_for_legacy.append((error.cpu(), target.cpu()))

    def result(self) -> dict[str, Any]:
        assert self.target_sum is not None, "no tokens were evaluated"
        mean = self.target_sum / self.tokens
        total_variance = self.target_squared_norm - self.tokens * mean.pow(2).sum().item()
        fvu = self.squared_error / total_variance
        legacy = torch.cat([err / (tgt - mean.cpu()).pow(2).sum(-1) for err, tgt in self._targets_for_legacy])
        l0 = torch.cat(self.l0_values).float()
        density = self.fire_counts.double() / self.tokens
        histogram = torch.histogram(l0, torch.tensor(L0_HISTOGRAM_EDGES, dtype=torch.float))[0]
        return {
            "tokens": self.tokens,
            "mse_per_token": self.squared_error / self.tokens,
            "mse_per_element": self.squared_error / self.tokens / mean.numel(),
            "fvu": fvu,
            "explained_variance": 1 - fvu,
            "legacy_fvu_per_token_mean": legacy.mean().item(),
            "fvu_formula": "sum_t ||x_t - xhat_t||^2 / sum_t ||x_t - mean||^2 (mean per dimension over eval tokens)",
            "l0_mean": l0.mean().item(),
            "l0_percentiles": {str(q): torch.quantile(l0, q / 100).item() for q in (5, 25, 50, 75, 95)},
            "l0_histogram": {"edges": list(L0_HISTOGRAM_EDGES[:-1]), "counts": histogram.long().tolist()},
            "dead_fraction": (self.fire_counts == 0).double().mean().item(),
            "dense_fraction": (density > self.dense_threshold).double().mean().item(),
            "dense_threshold": self.dense_threshold,
            "latent_density": density.tolist(),
        }
