import pytest
import torch

from saekit.evaluation.reconstruction import ReconstructionMetrics


def _data(n=300, d=8, width=16):
    generator = torch.Generator().manual_seed(0)
    target = torch.randn(n, d, generator=generator) * 3 + 1
    reconstruction = target + 0.5 * torch.randn(n, d, generator=generator)
    latents = torch.relu(torch.randn(n, width, generator=generator) - 1)
    latents[:, 0] = 0  # one dead latent
    latents[:, 1] = 1  # one dense latent
    return target, reconstruction, latents


def _metrics(batch_size):
    target, reconstruction, latents = _data()
    metrics = ReconstructionMetrics(width=16)
    for t, r, z in zip(target.split(batch_size), reconstruction.split(batch_size), latents.split(batch_size)):
        metrics.update(t, r, z)
    return metrics.result()


def test_matches_brute_force_formulas():
    target, reconstruction, latents = _data()
    result = _metrics(batch_size=300)
    error = (target - reconstruction).pow(2).sum(-1)
    expected_fvu = error.sum() / (target - target.mean(0)).pow(2).sum()
    assert abs(result.fvu - expected_fvu.item()) < 1e-5
    assert abs(result.mse_per_token - error.mean().item()) < 1e-4
    legacy = (error / (target - target.mean(0)).pow(2).sum(-1)).mean()
    assert abs(result.legacy_fvu_per_token_mean - legacy.item()) < 1e-4
    assert abs(result.l0_mean - (latents > 0).sum(-1).float().mean().item()) < 1e-6
    assert result.dead_fraction == 1 / 16 and result.dense_fraction >= 1 / 16
    assert sum(result.l0_histogram["counts"]) == 300


def test_metrics_do_not_depend_on_batch_size():
    whole, small, odd = _metrics(300), _metrics(7), _metrics(64)
    for key in ("fvu", "mse_per_token", "legacy_fvu_per_token_mean", "l0_mean", "dead_fraction"):
        assert abs(getattr(whole, key) - getattr(small, key)) < 1e-9, key
        assert abs(getattr(whole, key) - getattr(odd, key)) < 1e-9, key


def _with_outliers():
    """Mostly ordinary tokens plus a few with 100x the norm, as SmolLM2's residual stream has."""
    target, reconstruction, latents = _data()
    target[::50] *= 100  # 6 of 300 tokens
    reconstruction[::50] = target[::50] * 0.5  # reconstructed badly: they dominate the all-token FVU
    return target, reconstruction, latents


def test_fvu_without_outliers_applies_the_training_rule():
    target, reconstruction, latents = _with_outliers()
    metrics = ReconstructionMetrics(width=16, outlier_norm_factor=10.0)
    for t, r, z in zip(target.split(64), reconstruction.split(64), latents.split(64)):
        metrics.update(t, r, z)
    result = metrics.result()
    inlier = torch.ones(300, dtype=torch.bool)
    inlier[::50] = False
    error = (target - reconstruction).pow(2).sum(-1)
    kept = target[inlier]
    expected = error[inlier].sum() / (kept - kept.mean(0)).pow(2).sum()
    assert abs(result.fvu_without_outliers - expected.item()) < 1e-6
    assert result.outlier_token_fraction == 6 / 300
    assert result.outlier_variance_share > 0.9 and result.outlier_error_share > 0.99
    assert result.fvu > 0.2 > 0.05 > result.fvu_without_outliers  # the all-token FVU is the outliers'


def test_no_outlier_rule_keeps_every_token():
    target, reconstruction, latents = _with_outliers()
    metrics = ReconstructionMetrics(width=16, outlier_norm_factor=None)
    metrics.update(target, reconstruction, latents)
    result = metrics.result()
    assert result.fvu_without_outliers == result.fvu and result.outlier_token_fraction == 0


def test_shrinkage_metrics_find_a_known_scale():
    """Reconstructions that are the target scaled by 0.8 (plus noise orthogonal on average) have a
    relative bias of 0.8: the scale that best fits x̂ back to x is 1/0.8."""
    target, _, latents = _data()
    noise = 0.3 * torch.randn(target.shape, generator=torch.Generator().manual_seed(1))
    reconstruction = 0.8 * target + noise
    metrics = ReconstructionMetrics(width=16)
    for t, r, z in zip(target.split(64), reconstruction.split(64), latents.split(64)):
        metrics.update(t, r, z)
    result = metrics.result()
    x, xhat = target.double(), reconstruction.double()
    assert result.relative_reconstruction_bias == pytest.approx((xhat.pow(2).sum() / (x * xhat).sum()).item(), rel=1e-9)
    assert result.relative_reconstruction_bias == pytest.approx(0.8, abs=0.02)  # the noise adds a little norm
    cosine = torch.nn.functional.cosine_similarity(x, xhat, dim=-1).mean().item()
    assert result.cosine_similarity_mean == pytest.approx(cosine, rel=1e-9) and 0.9 < cosine < 1
    assert result.norm_ratio_mean == pytest.approx((xhat.norm(dim=-1) / x.norm(dim=-1)).mean().item(), rel=1e-9)
    assert result.relative_reconstruction_bias_without_outliers == result.relative_reconstruction_bias  # none here
    # One token with 100x the typical norm, reconstructed at a third of its size, dominates the sums:
    # the all-token bias follows it, the bias without outlier-norm tokens does not.
    outlier = target[:1] * 100
    metrics.update(outlier, outlier / 3, latents[:1])
    skewed = metrics.result()
    assert skewed.relative_reconstruction_bias < 0.5
    assert skewed.relative_reconstruction_bias_without_outliers == pytest.approx(result.relative_reconstruction_bias)
    perfect = ReconstructionMetrics(width=16)
    perfect.update(target, target, latents)
    assert perfect.result().relative_reconstruction_bias == pytest.approx(1.0)
    assert perfect.result().cosine_similarity_mean == pytest.approx(1.0)
