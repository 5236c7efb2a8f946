"""Gated SAE (gate/magnitude paths, frozen-decoder auxiliary loss) and the gated_rescale ablation."""

from __future__ import annotations

import torch


def _gradients(dictionary, loss):
    parameters = dict(dictionary.named_parameters())
    grads = torch.autograd.grad(loss, list(parameters.values()), allow_unused=True, retain_graph=True)
    return {name: g for name, g in zip(parameters, grads)}


def _none_or_zero(grad):
    return grad is None or (grad == 0).all()


def test_gated_latents_are_gate_times_relu_of_the_weight_shared_magnitude(make_dictionary, perturbed):
    dictionary = perturbed(make_dictionary("gated"), scale=0.3)
    x = torch.randn(32, 16)
    centred = x - dictionary.b_dec
    pi_gate = centred @ dictionary.W_enc + dictionary.b_enc
    pi_mag = centred @ (dictionary.W_enc * dictionary.r_mag.exp()) + dictionary.b_mag
    expected = (pi_gate > 0) * pi_mag.relu()
    latents = dictionary(x).latents
    torch.testing.assert_close(latents, expected)
    assert 0 < (latents > 0).float().mean() < 1


def test_gated_losses_train_the_right_paths(make_dictionary, perturbed):
    dictionary = perturbed(make_dictionary("gated", l1_coefficient=0.3), scale=0.3)
    x = torch.randn(32, 16)
    losses = dictionary(x).losses
    assert set(losses) == {"reconstruction", "l1", "gate_reconstruction", "loss"}
    gate = _gradients(dictionary, losses["gate_reconstruction"])
    # the auxiliary reconstruction goes through a frozen decoder and decoder bias...
    assert _none_or_zero(gate["W_dec"])
    # ...but its input centring x - b_dec still belongs to the encoder, as in the main path
    assert gate["W_enc"].abs().sum() > 0 and gate["b_enc"].abs().sum() > 0
    assert _none_or_zero(gate["r_mag"]) and _none_or_zero(gate["b_mag"])
    l1 = _gradients(dictionary, losses["l1"])
    assert _none_or_zero(l1["r_mag"]) and _none_or_zero(l1["b_mag"])  # no shrinkage of magnitudes
    main = _gradients(dictionary, losses["reconstruction"])
    assert main["r_mag"].abs().sum() > 0 and main["b_mag"].abs().sum() > 0


def test_gated_auxiliary_value(make_dictionary, perturbed):
    dictionary = perturbed(make_dictionary("gated"), scale=0.3)
    x = torch.randn(32, 16)
    with torch.no_grad():
        via_gate = dictionary.pre_activations(x).relu() @ dictionary.W_dec + dictionary.b_dec
        expected = (via_gate - x).pow(2).sum(-1).mean()
    torch.testing.assert_close(dictionary(x).losses["gate_reconstruction"], expected)


def test_gated_rescale_scales_latents_after_an_unscaled_l1(make_dictionary, perturbed):
    dictionary = perturbed(make_dictionary("gated_rescale", l1_coefficient=0.5), scale=0.3)
    x = torch.randn(32, 16)
    pre = dictionary.pre_activations(x)
    output = dictionary(x)
    torch.testing.assert_close(output.latents, pre.relu() * dictionary.r_scale.exp())
    expected_l1 = 0.5 * (pre.relu() * dictionary.decoder_norms()).sum(-1).mean()
    torch.testing.assert_close(output.losses["l1"], expected_l1)
    assert _none_or_zero(_gradients(dictionary, output.losses["l1"])["r_scale"])
    assert (dictionary.r_scale != 0).any()  # the check above is not about an untouched zero


def test_resampling_resets_gate_scales(make_dictionary, perturbed):
    chosen = torch.zeros(64, dtype=torch.bool)
    chosen[::2] = True
    gated = perturbed(make_dictionary("gated"))
    pairs = gated.reset_latent_parameters(chosen)
    assert {id(p) for p, _ in pairs} == {id(gated.r_mag), id(gated.b_mag)}
    assert (gated.r_mag[chosen] == 0).all() and (gated.r_mag[~chosen] != 0).all()
    rescale = perturbed(make_dictionary("gated_rescale"))
    rescale.reset_latent_parameters(chosen)
    assert (rescale.r_scale[chosen] == 0).all()
    assert make_dictionary("relu").reset_latent_parameters(chosen) == []
