"""JumpReLU: threshold calibration relative to the data, straight-through gradients, training moves theta."""

from __future__ import annotations

import math

import torch

from saekit.training.schedule import OptimConfig
from saekit.training.trainer import fit_dictionary


def _calibrated(make_dictionary, x, **settings):
    dictionary = make_dictionary("jumprelu", **settings).train()
    dictionary(x)  # the first training forward measures the pre-activation scale
    return dictionary


def test_initial_threshold_and_bandwidth_scale_with_the_input(make_dictionary):
    x = torch.randn(256, 16)
    small = _calibrated(make_dictionary, x)
    large = _calibrated(make_dictionary, 10 * x)  # same seed, same weights, inputs 10x larger
    torch.testing.assert_close(large.log_threshold - small.log_threshold, torch.full((64,), math.log(10)))
    torch.testing.assert_close(large.bandwidth, 10 * small.bandwidth)
    rms = small.pre_activations(x).pow(2).mean().sqrt()
    torch.testing.assert_close(small.threshold.detach(), torch.full((64,), rms.item()))  # fraction 1
    torch.testing.assert_close(small.bandwidth, 0.5 * rms.detach())


def test_calibration_fractions_are_settings(make_dictionary):
    x = torch.randn(256, 16)
    dictionary = _calibrated(make_dictionary, x, extra=dict(threshold_init_fraction=0.01, bandwidth_fraction=0.002))
    rms = dictionary.pre_activations(x).pow(2).mean().sqrt().item()
    assert math.isclose(dictionary.threshold[0].item(), 0.01 * rms, rel_tol=1e-5)
    assert math.isclose(dictionary.bandwidth.item(), 0.002 * rms, rel_tol=1e-5)


def test_no_calibration_outside_a_training_forward(make_dictionary):
    dictionary = make_dictionary("jumprelu")
    initial = dictionary.log_threshold.detach().clone()
    with torch.no_grad():
        dictionary.train()(100 * torch.randn(8, 16))
    dictionary.eval()(100 * torch.randn(8, 16))
    assert dictionary.calibrated == 0
    torch.testing.assert_close(dictionary.log_threshold.detach(), initial)


def _window(pre, dictionary):
    return ((pre - dictionary.threshold).abs() < dictionary.bandwidth / 2).double()


def test_l0_penalty_counts_pre_activations_above_threshold_and_its_gradient_uses_the_kernel(make_dictionary):
    dictionary = _calibrated(make_dictionary, torch.randn(256, 16), l0_coefficient=0.1).double()
    x = torch.randn(128, 16, dtype=torch.float64)
    output = dictionary(x, sparsity_scale=0.5)
    pre = dictionary.pre_activations(x).detach()
    theta, eps = dictionary.threshold.detach(), dictionary.bandwidth
    count = (pre > theta).double().sum(-1).mean()
    torch.testing.assert_close(output.losses["l0"], 0.1 * 0.5 * count)

    dictionary.zero_grad()
    output.losses["l0"].backward()
    in_window = _window(pre, dictionary).sum(0)
    assert in_window.sum() > 0
    weight = 0.1 * 0.5 / 128 / eps
    # d/dtheta = -k, through theta = exp(log_threshold); d/dpre = +k reaches the encoder bias and weights
    torch.testing.assert_close(dictionary.log_threshold.grad, -weight * in_window * theta)
    torch.testing.assert_close(dictionary.b_enc.grad, weight * in_window)
    assert dictionary.W_enc.grad.abs().sum() > 0


def test_jump_pseudo_derivative_in_threshold_and_pre(make_dictionary):
    dictionary = _calibrated(make_dictionary, torch.randn(256, 16)).double()
    x = torch.randn(128, 16, dtype=torch.float64)
    latents = dictionary.encode(x)
    pre = dictionary.pre_activations(x).detach()
    theta, eps = dictionary.threshold.detach(), dictionary.bandwidth
    torch.testing.assert_close(latents, pre * (pre > theta))
    dictionary.zero_grad()
    latents.sum().backward()
    in_window = _window(pre, dictionary).sum(0)
    active = (pre > theta).double().sum(0)
    torch.testing.assert_close(dictionary.log_threshold.grad, -theta * in_window / eps * theta)
    torch.testing.assert_close(dictionary.b_enc.grad, active + theta * in_window / eps)


def _sparse_batches(d: int = 16, n_features: int = 32, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    features = torch.nn.functional.normalize(torch.randn(n_features, d, generator=generator), dim=1)
    while True:
        codes = torch.rand(256, n_features, generator=generator) * (torch.rand(256, n_features, generator=generator)
                                                                    < 0.1)
        x = codes @ features
        yield x / x.pow(2).sum(-1).mean().sqrt()


def test_threshold_moves_during_a_short_training_run(make_dictionary):
    dictionary = make_dictionary("jumprelu", width=64, l0_coefficient=0.02)
    batches = _sparse_batches()
    dictionary.train()(next(batches))  # calibrate first, so "before" is the starting threshold
    before = dictionary.log_threshold.detach().clone()
    log = fit_dictionary(dictionary, batches, 80, OptimConfig(lr=3e-3, warmup_steps=5))
    change = (dictionary.log_threshold.detach() - before).abs()
    assert change.mean() > 0.02 and (change > 0).float().mean() > 0.5
    assert log[-1]["l0"] < log[0]["l0"]


def test_resampled_latents_get_the_median_threshold(make_dictionary):
    dictionary = make_dictionary("jumprelu")
    with torch.no_grad():
        dictionary.log_threshold.copy_(torch.linspace(-3, -1, 64))
    chosen = torch.zeros(64, dtype=torch.bool)
    chosen[:4] = True
    pairs = dictionary.reset_latent_parameters(chosen)
    assert pairs[0][0] is dictionary.log_threshold
    assert (dictionary.log_threshold[:4] == torch.linspace(-3, -1, 64)[4:].median()).all()
