"""The embedded default model (SmolLM2-135M) end to end: train briefly, splice, check the numbers are sane."""

import pytest

from saekit.errors import SaekitError
from saekit.evaluation.evaluate import evaluate_run
from saekit.training.config import TrainConfig
from saekit.training.run import train_run

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def default_run(default_loaded, tmp_path_factory):
    root = tmp_path_factory.mktemp("default-runs")
    config = TrainConfig.from_flat(dict(name="smoke", site="blocks.14.resid_post", train_tokens=8192, batch_size=1024,
                         contexts_per_chunk=64, shuffle_buffer_tokens=8192, cache_dir=str(root / "cache"),
                         eval_tokens=2000, eval_batch_contexts=8))
    run_dir = train_run(config, root / "runs", loaded=default_loaded, progress=False)
    return run_dir, evaluate_run(run_dir, loaded=default_loaded, generations=0)  # losses only: no samples


def test_default_model_losses_are_sane(default_run):
    _, metrics = default_run
    losses = metrics.losses
    # A 135M model on held-out English prose and documentation: a few nats per token.
    assert 2.0 < losses.ce_clean.mean < 5.0
    assert losses.ce_clean.mean < losses.ce_spliced.mean < losses.ce_zero.mean
    assert losses.ce_clean.mean < losses.ce_mean.mean
    assert 0 < losses.kl_spliced.mean < losses.kl_zero.mean
    assert 0 < losses.loss_recovered_vs_zero_ablation < 1
    assert 0 < metrics.effective_compute.compute_fraction < 1
    reconstruction = metrics.reconstruction["blocks.14.resid_post"]
    assert 0 < reconstruction.fvu < 1
    assert reconstruction.l0_mean == pytest.approx(32)
    # SmolLM2's residual stream has rare tokens with ~100x the median norm (the training rule drops
    # them); where any are in the eval tokens they hold most of the variance.
    assert 0 < reconstruction.fvu_without_outliers < 1
    assert reconstruction.outlier_token_fraction < 0.01
    if reconstruction.outlier_token_fraction > 0:
        assert reconstruction.outlier_variance_share > 0.5


def test_dictionary_from_another_model_is_refused(default_run, tiny_loaded):
    run_dir, _ = default_run
    with pytest.raises(SaekitError, match="has width 576 but blocks.14.resid_post|out of range"):
        evaluate_run(run_dir, loaded=tiny_loaded)
