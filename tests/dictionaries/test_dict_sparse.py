"""The TopK family's sparse forward against an independent dense reference (scatter + matmul).

The reference below is written from the definitions, not from saekit's code: the pre-activations
(x - b_pre) @ W_enc + b_enc, the top k per token (or the top tokens x k of the batch), the latents
scattered into a dense [tokens, width] tensor, the reconstruction latents @ W_dec + b_dec (+ x @ W_skip).
"""

from __future__ import annotations

import pytest
import torch

from saekit.dictionaries import DictionaryOutput
from saekit.dictionaries.sparse import SparseLatents, top_k_over_batch, top_k_over_batch_bounded
from saekit.dictionaries.topk import TopKDictionary
from saekit.training.schedule import OptimConfig
from saekit.training.trainer import DictionaryTrainer

FAMILY = ["topk", "batchtopk", "matryoshka_batchtopk"]


def dense_reference(dictionary, x: torch.Tensor, target: torch.Tensor | None = None) -> DictionaryOutput:
    """The old dense computation: dense latents, dense decode, the squared error (and no other term);
    for Matryoshka also each proper prefix's squared error, the prefixes' ends summed from its group sizes."""
    k, batch_level = dictionary.config.k, dictionary.config.architecture in ("batchtopk", "matryoshka_batchtopk")
    b_pre = torch.zeros_like(dictionary.W_enc[:, 0]) if dictionary.config.is_transcoder else dictionary.b_dec
    pre = (x - b_pre) @ dictionary.W_enc + dictionary.b_enc
    if batch_level:
        flat = pre.reshape(-1)
        top, index = flat.topk(k * (pre.numel() // pre.shape[-1]))
        latents = torch.zeros_like(flat).scatter(0, index, top.relu()).view_as(pre)
        if dictionary.learning:  # the inference threshold's EMA of the smallest kept activation
            with torch.no_grad():
                smallest = latents[latents > 0].min()
                momentum = dictionary.options.threshold_momentum
                if dictionary.threshold >= 0:
                    smallest = momentum * dictionary.threshold + (1 - momentum) * smallest
                dictionary.threshold.copy_(smallest)
    else:
        top, index = pre.topk(k, dim=-1)
        latents = torch.zeros_like(pre).scatter(-1, index, top.relu())
    skip = 0 if dictionary.W_skip is None else x @ dictionary.W_skip
    reconstruction = latents @ dictionary.W_dec + dictionary.b_dec + skip
    target = x if target is None else target
    losses = {"reconstruction": (reconstruction - target).pow(2).sum(-1).mean()}
    if dictionary.config.architecture == "matryoshka_batchtopk":
        sizes = dictionary.group_sizes
        for index in range(len(sizes) - 1):
            end = sum(sizes[:index + 1])
            prefix = latents[..., :end] @ dictionary.W_dec[:end] + dictionary.b_dec + skip
            losses[f"reconstruction_prefix_{index}"] = (prefix - target).pow(2).sum(-1).mean()
    losses["loss"] = sum(losses.values())
    return DictionaryOutput(latents, reconstruction, losses)


def _gradients(dictionary, loss: torch.Tensor) -> dict[str, torch.Tensor]:
    names, parameters = zip(*dictionary.named_parameters())
    grads = torch.autograd.grad(loss, parameters, allow_unused=True)
    return {name: torch.zeros_like(p) if g is None else g for name, p, g in zip(names, parameters, grads)}


@pytest.mark.parametrize("name", FAMILY)
@pytest.mark.parametrize("transcoder", [False, True])
def test_sparse_forward_and_gradients_equal_the_dense_reference(name, transcoder, make_dictionary, perturbed):
    kwargs = dict(d_out=12, extra={"skip_connection": True}) if transcoder else {}
    dictionary = perturbed(make_dictionary(name, k=4, **kwargs)).train()
    x = torch.randn(32, 16)
    target = torch.randn(32, 12) if transcoder else None
    output = dictionary(x, target)
    assert output.sparse is not None and output._latents is None  # nothing dense built yet
    expected = dense_reference(dictionary, x, target)
    torch.testing.assert_close(output.reconstruction, expected.reconstruction)
    assert output.losses.keys() == expected.losses.keys()
    for term, value in expected.losses.items():
        torch.testing.assert_close(output.losses[term], value, msg=term)
    torch.testing.assert_close(output.latents, expected.latents)  # built on first access
    actual_grads, expected_grads = _gradients(dictionary, output.losses["loss"]), _gradients(
        dictionary, expected.losses["loss"])
    for parameter, grad in expected_grads.items():
        assert grad.abs().sum() > 0 or parameter == "W_skip", parameter
        torch.testing.assert_close(actual_grads[parameter], grad, msg=parameter)


@pytest.mark.parametrize("name", FAMILY)
def test_sparse_gradient_reaches_the_input(name, make_dictionary, perturbed):
    dictionary = perturbed(make_dictionary(name, k=4)).train()
    x = torch.randn(3, 8, 16, requires_grad=True)  # leading dims of any shape
    sparse = torch.autograd.grad(dictionary(x).reconstruction.square().sum(), x)[0]
    dense = torch.autograd.grad(dense_reference(dictionary, x).reconstruction.square().sum(), x)[0]
    torch.testing.assert_close(sparse, dense)


@pytest.mark.parametrize("name", FAMILY)
def test_the_sparse_form_holds_the_active_entries(name, make_dictionary):
    dictionary = make_dictionary(name, k=4).train()
    output = dictionary(torch.randn(10, 16) * torch.linspace(0.1, 3, 10)[:, None])
    sparse = output.sparse
    assert sparse.values.shape == sparse.rows.shape == sparse.columns.shape == (40,)
    assert (sparse.rows[1:] >= sparse.rows[:-1]).all()  # grouped by token
    torch.testing.assert_close(output.active_values, sparse.values)
    assert torch.equal(output.active_indices, sparse.columns)
    dense = output.latents.detach()
    assert torch.equal(output.firing(), (dense > 0).sum(0))
    torch.testing.assert_close(output.mean_l0(), (dense > 0).sum(-1).float().mean())
    # The dense path (other architectures) answers the same questions from its latents.
    plain = DictionaryOutput(dense, output.reconstruction, output.losses)
    assert torch.equal(plain.firing(), output.firing()) and plain.sparse is None and plain.active_values is None


def test_dense_forward_above_the_sparse_share(make_dictionary, monkeypatch):
    dictionary = make_dictionary("topk", k=4)
    assert dictionary.uses_sparse_forward() and not make_dictionary("topk", k=17).uses_sparse_forward()
    monkeypatch.setattr(TopKDictionary, "SPARSE_MAX_ACTIVE_SHARE", 0.01)
    x = torch.randn(8, 16)
    output = dictionary(x)
    assert output.sparse is None and output.latents.shape == (8, 64)
    torch.testing.assert_close(output.reconstruction, dense_reference(dictionary, x).reconstruction)


@pytest.mark.parametrize("name", FAMILY)
def test_a_training_step_never_builds_dense_latents(name, make_dictionary, monkeypatch):
    def refuse(self):
        raise AssertionError("dense latents built in the training step")
    monkeypatch.setattr(SparseLatents, "dense", refuse)
    dictionary = make_dictionary(name, k=4, extra={"aux_k": 4})
    trainer = DictionaryTrainer(dictionary, OptimConfig(lr=1e-3, dead_window_tokens=64), total_steps=5)
    for _ in range(3):
        record = trainer.train_step(torch.randn(64, 16))
    assert 0 < record["l0"] <= 4 and "aux_k" in record


def _train(dictionary, data: torch.Tensor, steps: int, reference: bool) -> list[dict[str, float]]:
    """``steps`` trainer steps; with ``reference`` the dictionary's forward is the dense reference."""
    if reference:
        dictionary.forward = lambda x, target=None, **_: dense_reference(dictionary, x, target)
    trainer = DictionaryTrainer(dictionary, OptimConfig(lr=3e-3, warmup_steps=2), total_steps=steps)
    return [trainer.train_step(data[i * 64:(i + 1) * 64]) for i in range(steps)]


@pytest.mark.parametrize("name", FAMILY)
def test_twenty_training_steps_equal_the_dense_reference(name, make_dictionary):
    """In float64, so that rounding cannot flip a near-tie in the top-k and send the runs apart."""
    generator = torch.Generator().manual_seed(3)
    features = torch.nn.functional.normalize(torch.randn(48, 16, generator=generator, dtype=torch.float64), dim=-1)
    codes = torch.rand(20 * 64, 48, generator=generator, dtype=torch.float64)
    data = (codes * (codes > 0.9)) @ features
    sparse, dense = (make_dictionary(name, k=4).double() for _ in range(2))
    sparse_log, dense_log = _train(sparse, data, 20, False), _train(dense, data, 20, True)
    for parameter, value in dense.named_parameters():
        torch.testing.assert_close(dict(sparse.named_parameters())[parameter], value, rtol=1e-9, atol=1e-10,
                                   msg=parameter)
    for got, want in zip(sparse_log, dense_log):
        assert got.keys() == want.keys()
        for key in ("loss", "fvu", "l0", "dead_fraction"):
            assert got[key] == pytest.approx(want[key], rel=1e-9, abs=1e-12), key
    if name != "topk":
        torch.testing.assert_close(sparse.threshold, dense.threshold, rtol=1e-9, atol=0)


@pytest.mark.parametrize("name", FAMILY)
def test_forward_under_cpu_autocast_keeps_fp32_reconstruction_and_losses(name, make_dictionary):
    """embedding_bag is not autocast on CPU: the decode casts the values to the (fp32) decoder's dtype."""
    dictionary = make_dictionary(name, k=4).train()
    x = torch.randn(32, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        output = dictionary(x)
    assert output.reconstruction.dtype == torch.float32 and output.losses["loss"].dtype == torch.float32
    output.losses["loss"].backward()
    assert all(p.grad.dtype == torch.float32 for p in dictionary.parameters())
    # bf16 pre-activations move the error by about bf16's precision (and the odd flipped near-tie), not more.
    expected = dense_reference(dictionary, x).losses["loss"]
    assert abs(output.losses["loss"].item() - expected.item()) <= 0.05 * expected.item()


def test_the_two_stage_batch_top_k_equals_the_flat_one_or_says_it_cannot():
    pre = torch.randn(64, 256) * torch.linspace(0.1, 3.0, 64)[:, None]  # high-norm tokens take many entries
    flat = top_k_over_batch(pre, 64 * 4)
    assert top_k_over_batch_bounded(pre, 64 * 4, 8) is None  # a token has more than 8 of the batch's top
    for got, want in zip(top_k_over_batch_bounded(pre, 64 * 4, 64), flat):
        assert torch.equal(got, want)


def test_batchtopk_takes_more_candidates_when_a_token_needs_them(make_dictionary):
    dictionary = make_dictionary("batchtopk", k=4).train()
    assert dictionary.candidates_per_token == 16
    x = torch.randn(32, 16) * torch.linspace(0.1, 5.0, 32)[:, None]
    output = dictionary(x)
    assert dictionary.candidates_per_token > 16  # grown (here past the two-stage's use: the flat top-k ran)
    torch.testing.assert_close(output.latents, dense_reference(dictionary, x).latents)
