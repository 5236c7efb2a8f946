"""Streaming reconstruction and sparsity metrics: MSE, FVU, L0 distribution, dead and dense latents.

Formulas (sums over evaluated tokens t and dimensions j; x_t the target, x̂_t the reconstruction,
μ the per-dimension mean of the targets over the evaluated tokens):

    mse_per_token = Σ_t ||x_t - x̂_t||² / N
    fvu           = Σ_t ||x_t - x̂_t||² / Σ_t ||x_t - μ||²      (fraction of variance unexplained)
    explained_variance = 1 - fvu

``fvu`` counts every spliced token. ``fvu_without_outliers`` applies the training rule instead: it
leaves out tokens whose target norm exceeds ``outlier_norm_factor`` x the median norm of the
evaluated tokens, and takes μ over the rest. The two can disagree completely: in SmolLM2-135M's
layer-14 residual stream 0.04% of held-out tokens have norms about 100x the median and carry 83% of
Σ_t ||x_t - μ||², so ``fvu`` measures little but how well a dictionary copes with them.
``outlier_variance_share`` says how much of the denominator they hold.

Shrinkage and direction (Wright & Sharkey; Rajamanoharan et al.'s gated SAE paper), over the same tokens:

    cosine_similarity_mean       = mean_t cos(x_t, x̂_t)
    norm_ratio_mean              = mean_t ||x̂_t|| / ||x_t||
    relative_reconstruction_bias = Σ_t ||x̂_t||² / Σ_t <x_t, x̂_t>

``relative_reconstruction_bias_without_outliers`` is the bias over the tokens ``fvu_without_outliers``
keeps. The bias is 1/γ for the scale γ that best rescales every reconstruction (min_γ Σ_t ||x_t - γ x̂_t||²):
below 1 the dictionary shrinks its outputs (an L1 penalty's signature), above 1 it overshoots.
(SAEBench's ``relative_reconstruction_bias`` averages the per-batch ratio, and its ``l2_ratio`` and
``cossim`` are these means.)

``legacy_fvu_per_token_mean`` is the older per-token form: mean over tokens of
||x_t - x̂_t||² / ||x_t - μ||², which over-weights tokens near the mean and is kept only for
comparison with other tools.
"""

from __future__ import annotations

import torch
from torch import Tensor

from saekit.evaluation.results import ReconstructionResults

L0_HISTOGRAM_EDGES = (0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 1 << 30)


class ReconstructionMetrics:
    """Accumulates over batches; the result does not depend on how tokens are batched."""

    def __init__(self, width: int, dense_threshold: float = 0.1, outlier_norm_factor: float | None = 10.0) -> None:
        self.width = width
        self.dense_threshold = dense_threshold
        self.outlier_norm_factor = outlier_norm_factor
        self.fire_counts = torch.zeros(width, dtype=torch.long)
        self.l0_values: list[Tensor] = []
        # Per-token errors and targets: the outlier rule and the legacy form need statistics over
        # all evaluated tokens (the median norm, the mean), known only at the end.
        self.errors: list[Tensor] = []
        self.targets: list[Tensor] = []
        # Per-token ||x̂||² and <x, x̂>: the shrinkage and direction metrics.
        self.reconstruction_norms: list[Tensor] = []
        self.inner_products: list[Tensor] = []

    @property
    def tokens(self) -> int:
        return sum(e.numel() for e in self.errors)

    @torch.no_grad()
    def update(self, target: Tensor, reconstruction: Tensor, latents: Tensor) -> None:
        target = target.reshape(-1, target.shape[-1]).double()
        reconstruction = reconstruction.reshape(-1, reconstruction.shape[-1]).double()
        latents = latents.reshape(-1, latents.shape[-1])
        self.errors.append((target - reconstruction).pow(2).sum(-1).cpu())
        self.targets.append(target.float().cpu())  # activations are at most float32: stored exactly, half the memory
        self.reconstruction_norms.append(reconstruction.pow(2).sum(-1).cpu())
        self.inner_products.append((target * reconstruction).sum(-1).cpu())
        active = latents != 0
        self.fire_counts += active.sum(0).cpu()
        self.l0_values.append(active.sum(-1).cpu())

    def outlier_mask(self, target: Tensor) -> Tensor:
        """[tokens] True where the target's norm exceeds the factor x the median norm (the training rule)."""
        norms = target.norm(dim=-1)
        if self.outlier_norm_factor is None:
            return torch.zeros_like(norms, dtype=torch.bool)
        return norms > self.outlier_norm_factor * norms.median()

    def _shrinkage(self, target: Tensor, outlier: Tensor) -> dict[str, float]:
        """Cosine, norm ratio and relative bias (the module docstring); tokens with a zero target or
        reconstruction have no direction and are left out of the cosine and the ratio. The bias is a ratio
        of sums, so outlier-norm tokens dominate it as they dominate FVU: it is given without them too."""
        squared_norm, inner = torch.cat(self.reconstruction_norms), torch.cat(self.inner_products)
        target_norm, norm = target.norm(dim=-1), squared_norm.sqrt()
        directed = (target_norm > 0) & (norm > 0)
        ratio_defined = target_norm > 0
        return {
            "cosine_similarity_mean": (inner[directed] / (target_norm[directed] * norm[directed])).mean().item(),
            "norm_ratio_mean": (norm[ratio_defined] / target_norm[ratio_defined]).mean().item(),
            "relative_reconstruction_bias": (squared_norm.sum() / inner.sum()).item(),
            "relative_reconstruction_bias_without_outliers":
                (squared_norm[~outlier].sum() / inner[~outlier].sum()).item(),
        }

    def result(self) -> ReconstructionResults:
        assert self.errors, "no tokens were evaluated"
        error, target = torch.cat(self.errors), torch.cat(self.targets).double()
        deviation = (target - target.mean(0)).pow(2).sum(-1)
        outlier = self.outlier_mask(target)
        inlier_target = target[~outlier]
        inlier_deviation = (inlier_target - inlier_target.mean(0)).pow(2).sum(-1)
        fvu = (error.sum() / deviation.sum()).item()
        l0 = torch.cat(self.l0_values).float()
        density = self.fire_counts.double() / self.tokens
        histogram = torch.histogram(l0, torch.tensor(L0_HISTOGRAM_EDGES, dtype=torch.float))[0]
        return ReconstructionResults(**{
            "tokens": self.tokens,
            "mse_per_token": error.mean().item(),
            "mse_per_element": error.mean().item() / target.shape[-1],
            "fvu": fvu,
            "explained_variance": 1 - fvu,
            "fvu_without_outliers": (error[~outlier].sum() / inlier_deviation.sum()).item(),
            "outlier_norm_factor": self.outlier_norm_factor,
            "outlier_token_fraction": outlier.double().mean().item(),
            "outlier_variance_share": (deviation[outlier].sum() / deviation.sum()).item(),
            "outlier_error_share": (error[outlier].sum() / error.sum().clamp_min(1e-300)).item(),
            "legacy_fvu_per_token_mean": (error / deviation).mean().item(),
            **self._shrinkage(target, outlier),
            "fvu_formula": "sum_t ||x_t - xhat_t||^2 / sum_t ||x_t - mean||^2 (mean per dimension over eval tokens); "
                           "fvu_without_outliers: the same over tokens with norm <= factor x median norm",
            "l0_mean": l0.mean().item(),
            "l0_percentiles": {str(q): torch.quantile(l0, q / 100).item() for q in (5, 25, 50, 75, 95)},
            "l0_histogram": {"edges": list(L0_HISTOGRAM_EDGES[:-1]), "counts": histogram.long().tolist()},
            "dead_fraction": (self.fire_counts == 0).double().mean().item(),
            "dense_fraction": (density > self.dense_threshold).double().mean().item(),
            "dense_threshold": self.dense_threshold,
            "latent_density": density.tolist(),
        })
