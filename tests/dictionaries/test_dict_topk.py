"""TopK's auxiliary-K loss and BatchTopK's batch-level selection and inference threshold."""

from __future__ import annotations

import pytest
import torch

DEAD = torch.zeros(64, dtype=torch.bool)
DEAD[40:] = True  # latents 40..63 "dead"


def _aux_gradients(dictionary, x, dead_mask):
    output = dictionary(x, dead_mask=dead_mask)
    parameters = dict(dictionary.named_parameters())
    grads = torch.autograd.grad(output.losses["aux_k"], list(parameters.values()), allow_unused=True)
    return output, {name: g for name, g in zip(parameters, grads)}


@pytest.mark.parametrize("name", ["topk", "batchtopk", "matryoshka_batchtopk"])
def test_aux_k_reaches_only_dead_latents_and_never_the_decoder_bias(name, make_dictionary, perturbed):
    dictionary = perturbed(make_dictionary(name, k=4, extra={"aux_k": 6}))
    _, grads = _aux_gradients(dictionary, torch.randn(32, 16), DEAD)
    assert grads["b_dec"] is None or (grads["b_dec"] == 0).all()
    assert grads["W_enc"][:, ~DEAD].abs().max() == 0 and grads["W_enc"][:, DEAD].abs().max() > 0
    assert grads["W_dec"][~DEAD].abs().max() == 0 and grads["W_dec"][DEAD].abs().max() > 0
    assert grads["b_enc"][~DEAD].abs().max() == 0


def test_aux_k_reconstructs_the_detached_residual_without_decoder_bias(make_dictionary, perturbed):
    dictionary = perturbed(make_dictionary("topk", k=4, extra={"aux_k": 6, "aux_k_coefficient": 0.5}))
    with torch.no_grad():
        dictionary.b_dec.fill_(2.0)  # a bias in the auxiliary decode would show up in the value
    x = torch.randn(32, 16)
    output = dictionary(x, dead_mask=DEAD)
    with torch.no_grad():
        residual = x - output.reconstruction
        dead_pre = dictionary.pre_activations(x)[:, DEAD]
        values, indices = dead_pre.topk(6, dim=-1)
        dead_latents = torch.zeros_like(dead_pre).scatter_(-1, indices, values.relu())
        expected = 0.5 * (dead_latents @ dictionary.W_dec[DEAD] - residual).pow(2).sum(-1).mean()
    torch.testing.assert_close(output.losses["aux_k"], expected)


def test_aux_k_leaves_the_main_loss_and_its_gradients_unchanged(make_dictionary, perturbed):
    plain = perturbed(make_dictionary("topk", k=4))
    with_aux = perturbed(make_dictionary("topk", k=4, extra={"aux_k": 6}))
    x = torch.randn(32, 16)
    outputs = [d(x, dead_mask=DEAD) for d in (plain, with_aux)]
    torch.testing.assert_close(outputs[0].losses["reconstruction"], outputs[1].losses["reconstruction"])
    for output in outputs:
        output.losses["reconstruction"].backward()
    for (name, a), (_, b) in zip(plain.named_parameters(), with_aux.named_parameters()):
        torch.testing.assert_close(a.grad, b.grad, msg=name)


@pytest.mark.parametrize("dead_mask", [None, torch.zeros(64, dtype=torch.bool)])
def test_aux_k_is_zero_without_dead_latents(dead_mask, make_dictionary):
    output = make_dictionary("topk", k=4, extra={"aux_k": 6})(torch.randn(8, 16), dead_mask=dead_mask)
    assert output.losses["aux_k"].item() == 0.0
    assert "aux_k" not in make_dictionary("topk", k=4)(torch.randn(8, 16), dead_mask=DEAD).losses


def test_aux_k_uses_at_most_the_dead_latents(make_dictionary):
    dead = torch.zeros(64, dtype=torch.bool)
    dead[:2] = True  # fewer dead latents than aux_k
    output = make_dictionary("topk", k=4, extra={"aux_k": 6})(torch.randn(8, 16), dead_mask=dead)
    assert torch.isfinite(output.losses["aux_k"]) and output.losses["aux_k"] > 0


# ---- BatchTopK ------------------------------------------------------------------------------------


def test_batchtopk_training_keeps_k_per_token_on_average_across_the_batch(make_dictionary):
    dictionary = make_dictionary("batchtopk", k=4).train()
    x = torch.randn(32, 16) * torch.linspace(0.1, 3.0, 32)[:, None]  # tokens of very different norms
    latents = dictionary(x).latents
    per_token = (latents > 0).sum(-1)
    assert per_token.sum() == 4 * 32
    assert per_token.max() > 4 and per_token.min() < 4  # the budget moves between tokens
    values = dictionary.pre_activations(x).flatten().topk(4 * 32).values
    torch.testing.assert_close(latents.flatten().sort().values[-4 * 32:], values.sort().values)


def test_batchtopk_threshold_is_an_ema_of_the_smallest_kept_activation(make_dictionary):
    dictionary = make_dictionary("batchtopk", k=4, extra={"threshold_momentum": 0.9}).train()
    assert not dictionary.threshold_is_set
    x1, x2 = torch.randn(32, 16), 2 * torch.randn(32, 16)
    first = dictionary(x1).latents
    smallest1 = first[first > 0].min()
    torch.testing.assert_close(dictionary.threshold, smallest1.detach())
    second = dictionary(x2).latents
    smallest2 = second[second > 0].min().detach()
    torch.testing.assert_close(dictionary.threshold, 0.9 * smallest1.detach() + 0.1 * smallest2)
    before = dictionary.threshold.clone()
    with torch.no_grad():  # evaluation-style calls never move it (the trainer's resampling uses no_grad)
        dictionary(3 * x1)
    dictionary.eval()(3 * x1)
    torch.testing.assert_close(dictionary.threshold, before)


def test_batchtopk_eval_latents_do_not_depend_on_the_rest_of_the_batch(make_dictionary):
    dictionary = make_dictionary("batchtopk", k=4).train()
    dictionary(torch.randn(64, 16))  # sets the inference threshold
    dictionary.eval()
    token = torch.randn(1, 16)
    others = torch.randn(31, 16) * 5  # large tokens that would win a batch-level top-k
    alone = dictionary(token).latents
    in_batch = dictionary(torch.cat([token, others])).latents[:1]
    assert (alone > 0).any()
    torch.testing.assert_close(alone, in_batch)
    pre = dictionary.pre_activations(token)
    torch.testing.assert_close(alone, pre * (pre > dictionary.threshold))


def test_batchtopk_eval_before_training_falls_back_to_per_token_topk(make_dictionary):
    dictionary = make_dictionary("batchtopk", k=4).eval()
    latents = dictionary(torch.randn(8, 16)).latents
    assert ((latents > 0).sum(-1) <= 4).all()


def test_batchtopk_inference_threshold_matches_the_training_sparsity_after_a_short_run(make_dictionary):
    """The threshold must track the end of training, not its start (a slow average kept L0 far above k)."""
    from saekit.training.schedule import OptimConfig
    from saekit.training.trainer import DictionaryTrainer

    generator = torch.Generator().manual_seed(0)
    features = torch.nn.functional.normalize(torch.randn(64, 16, generator=generator), dim=-1)
    codes = torch.rand(100 * 256, 64, generator=generator) * (torch.rand(100 * 256, 64, generator=generator) < 0.05)
    data = codes @ features
    data = data / data.pow(2).sum(-1).mean().sqrt()
    dictionary = make_dictionary("batchtopk", d_in=16, width=128, k=4)
    trainer = DictionaryTrainer(dictionary, OptimConfig(lr=3e-3), total_steps=99)
    for step in range(99):
        trainer.train_step(data[step * 256:(step + 1) * 256])
    held = data[-256:]
    with torch.no_grad():
        batch_fvu = (dictionary(held).reconstruction - held).pow(2).sum() / (held - held.mean(0)).pow(2).sum()
        dictionary.eval()
        output = dictionary(held)
    l0 = (output.latents > 0).float().sum(-1).mean()
    fvu = (output.reconstruction - held).pow(2).sum() / (held - held.mean(0)).pow(2).sum()
    assert 3.0 <= l0 <= 5.5, l0
    assert fvu <= batch_fvu + 0.05, (fvu, batch_fvu)
