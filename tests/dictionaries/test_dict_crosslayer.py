"""Cross-layer dictionaries over several layers: the CLT's maths by hand, norms, folding, save/load, recovery.

At one layer each is its single-site parent, and the tests every architecture passes (interface,
folding, recovery) run on it; the tests here use two or three layers.
"""

from __future__ import annotations

import copy

import pytest
import torch

from saekit.dictionaries import DictionaryConfig, build_dictionary, load_dictionary, save_dictionary
from saekit.errors import SaekitError
from saekit.training.schedule import OptimConfig
from saekit.training.trainer import fit_dictionary

LAYERED = ["clt_topk", "clt_jumprelu", "crosscoder"]


def _layered(name: str, layers: int = 3, d: int = 4, per_layer: int = 6, skip: bool = False, **kwargs):
    torch.manual_seed(0)
    transcoder = name.startswith("clt_")
    width = per_layer * layers if transcoder else per_layer
    return build_dictionary(DictionaryConfig(name, d * layers, width, d_out=d * layers if transcoder else None,
                                             layers=layers, extra={"skip_connection": skip}, **kwargs))


def test_clt_forward_equals_a_hand_computation():
    # Two layers, d = 2, two latents per layer, k = 1 per layer.
    clt = build_dictionary(DictionaryConfig("clt_topk", 4, 4, d_out=4, k=1, layers=2))
    with torch.no_grad():
        clt.W_enc.copy_(torch.tensor([[1.0, -1.0, 2.0, 0.0], [0.0, 1.0, 0.0, 1.0]]))
        clt.b_enc.copy_(torch.tensor([0.0, 0.5, -1.0, 0.0]))
        clt.b_dec.copy_(torch.tensor([0.1, 0.2, 0.3, 0.4]))
        # Packed rows: layer 0's latents (each: into layer 0, into layer 1), then layer 1's (into layer 1).
        clt.W_dec.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0],    # latent 0 -> layer 0, layer 1
                                      [2.0, 1.0], [1.0, 1.0],    # latent 1 -> layer 0, layer 1
                                      [0.0, 3.0], [1.0, -1.0]]))  # latents 2, 3 -> layer 1
    x = torch.tensor([[2.0, 1.0, 3.0, 1.0]])  # x_0 = (2, 1), x_1 = (3, 1)
    # Layer 0: pre = (2, -2 + 1 + 0.5) = (2, -0.5): top-1 keeps latent 0 (2).
    # Layer 1: pre = (6 - 1, 1) = (5, 1): top-1 keeps latent 2 (5).
    output = clt(x, torch.zeros(1, 4))
    torch.testing.assert_close(output.latents, torch.tensor([[2.0, 0.0, 5.0, 0.0]]))
    y0 = torch.tensor([0.1, 0.2]) + 2 * torch.tensor([1.0, 0.0])
    y1 = torch.tensor([0.3, 0.4]) + 2 * torch.tensor([0.0, 1.0]) + 5 * torch.tensor([0.0, 3.0])
    torch.testing.assert_close(output.reconstruction, torch.cat([y0, y1])[None])
    assert output.losses["reconstruction"].item() == pytest.approx(float(torch.cat([y0, y1]).pow(2).sum()))
    # One layer at a time (how the splice runs it) gives the same.
    z0, z1 = clt.encode_layer(0, x[:, :2]), clt.encode_layer(1, x[:, 2:])
    torch.testing.assert_close(clt.decode_layer(0, [z0], x[:, :2]), y0[None])
    torch.testing.assert_close(clt.decode_layer(1, [z0, z1], x[:, 2:]), y1[None])


@pytest.mark.parametrize("name", ["clt_topk", "clt_jumprelu"])
def test_clt_layer_at_a_time_equals_the_full_forward(name):
    clt = _layered(name, skip=True, k=2).eval()
    with torch.no_grad():
        clt.W_skip.normal_()
        clt.b_dec.normal_()
    x = torch.randn(7, 12)
    full = clt(x)
    latents = [clt.encode_layer(layer, x[:, 4 * layer:4 * layer + 4]) for layer in range(3)]
    torch.testing.assert_close(torch.cat(latents, -1), full.latents)
    pieces = [clt.decode_layer(layer, latents, x[:, 4 * layer:4 * layer + 4]) for layer in range(3)]
    torch.testing.assert_close(torch.cat(pieces, -1), full.reconstruction)
    if name == "clt_topk":
        assert ((full.latents.view(7, 3, 6) > 0).sum(-1) <= 2).all()  # k per layer


def test_clt_decoder_norms_constraint_and_gradient_projection():
    clt = _layered("clt_topk", k=2)
    assert clt.W_dec.shape == (6 * (3 + 2 + 1), 4)  # only j >= i is stored
    with torch.no_grad():
        clt.W_dec.mul_(torch.rand(clt.W_dec.shape[0], 1) + 0.5)
    norms = clt.output_norms()
    assert norms.shape == (18, 3) and (norms[6:12, 0] == 0).all() and (norms[12:, :2] == 0).all()
    torch.testing.assert_close(clt.decoder_norms(), norms.sum(-1))
    clt.normalize_decoder()
    torch.testing.assert_close(clt.output_norms().pow(2).sum(-1), torch.ones(18))  # concatenated norm 1
    clt(torch.randn(5, 12), torch.randn(5, 12)).losses["loss"].backward()
    clt.remove_parallel_decoder_gradient()
    for source in range(3):
        block = clt.decoder_block(source)
        grad = clt.W_dec.grad[6 * (3 * source - source * (source - 1) // 2):][:block.numel() // 4].view_as(block)
        torch.testing.assert_close((grad * block).sum(1), torch.zeros(6), atol=1e-6, rtol=0)


def test_jumprelu_penalty_is_weighted_by_the_summed_decoder_norms():
    clt = _layered("clt_jumprelu", l0_coefficient=1.0)
    x = torch.randn(9, 12)
    with torch.no_grad():
        clt.W_dec.mul_(2.0)  # concatenated norm 2; per-layer norms then sum to more than 2 for early layers
        pre = clt.pre_activations(x)
    fired = (pre > clt.threshold).float()
    expected = (fired * clt.output_norms().sum(-1)).sum(-1).mean()
    torch.testing.assert_close(clt.eval()(x).losses["l0"], expected)


@pytest.mark.parametrize("name", LAYERED)
def test_folded_per_layer_scales_on_raw_equal_unfolded_on_scaled(name):
    dictionary = _layered(name, skip=True, k=3).double().eval()
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for parameter in dictionary.parameters():
            if parameter.dtype.is_floating_point and parameter.dim() > 0:
                parameter.add_(0.3 * torch.randn(parameter.shape, generator=generator, dtype=parameter.dtype))
    c_in, c_out = [3.0, 0.5, 1.5], ([0.4, 2.0, 7.0] if name.startswith("clt_") else [3.0, 0.5, 1.5])
    x = torch.randn(64, 12, generator=generator, dtype=torch.float64) + 0.5
    scale_in = torch.tensor(c_in, dtype=torch.float64).repeat_interleave(4)
    scale_out = torch.tensor(c_out, dtype=torch.float64).repeat_interleave(4)
    if name == "clt_jumprelu":
        with torch.no_grad():
            dictionary.log_threshold.copy_(dictionary.pre_activations(x * scale_in).pow(2).mean().sqrt().log())
    trained = dictionary(x * scale_in)
    folded = copy.deepcopy(dictionary)
    folded.fold_input_scale(c_in, c_out)
    raw = folded(x)
    reference = torch.tensor(c_out, dtype=torch.float64).log().mean().exp()
    active = (trained.latents > 0).double().mean().item()
    assert 0.02 < active < 0.98
    torch.testing.assert_close(raw.latents, trained.latents / reference)
    torch.testing.assert_close(raw.reconstruction, trained.reconstruction / scale_out)


@pytest.mark.parametrize("name", LAYERED)
def test_save_load_round_trip_and_non_finite_refusal(name, tmp_path):
    dictionary = _layered(name, k=2)
    x = torch.randn(32, 12)
    dictionary.train()(x)  # JumpReLU calibrates
    save_dictionary(tmp_path / "d", dictionary, {"model": "toy", "sites": ["a", "b", "c"]})
    loaded, source = load_dictionary(tmp_path / "d")
    assert loaded.config == dictionary.config and source["sites"] == ["a", "b", "c"]
    torch.testing.assert_close(loaded.eval()(x).reconstruction, dictionary.eval()(x).reconstruction)
    with torch.no_grad():
        dictionary.W_dec[0, 0] = float("nan")
    save_dictionary(tmp_path / "bad", dictionary)
    with pytest.raises(SaekitError, match="NaN or infinite"):
        load_dictionary(tmp_path / "bad")


def test_bad_layer_settings_are_one_line():
    with pytest.raises(SaekitError, match="divisible by 3"):
        build_dictionary(DictionaryConfig("clt_topk", 10, 18, d_out=12, k=2, layers=3))
    with pytest.raises(SaekitError, match="k=7 .per layer."):
        build_dictionary(DictionaryConfig("clt_topk", 12, 18, d_out=12, k=7, layers=3))
    with pytest.raises(SaekitError, match=r"does not support \['aux_k'\] over several layers"):
        build_dictionary(DictionaryConfig("clt_topk", 12, 18, d_out=12, k=2, layers=3, extra={"aux_k": 4}))


# ---- planted features over layers ----------------------------------------------------------------
D, FEATURES, P_FIRE, STEPS, BATCH = 16, 48, 0.06, 300, 256


def _unit(*shape: int, generator: torch.Generator) -> torch.Tensor:
    return torch.nn.functional.normalize(torch.randn(*shape, generator=generator), dim=-1)


def _batches(pairs: tuple[torch.Tensor, torch.Tensor]):
    generator = torch.Generator().manual_seed(1)
    while True:
        for rows in torch.randperm(len(pairs[0]), generator=generator).split(BATCH):
            yield pairs[0][rows], pairs[1][rows]


def _max_cosine(truth: torch.Tensor, learned: torch.Tensor) -> float:
    return (truth @ torch.nn.functional.normalize(learned.detach(), dim=1).T).max(1).values.mean().item()


def test_clt_recovers_planted_cross_layer_features():
    # Two layers. Each layer's features have an input direction at that layer and output directions at
    # that layer and the next: the true CLT decoders. The CLT must find them (concatenated over outputs).
    generator = torch.Generator().manual_seed(0)
    enc = [_unit(FEATURES, D, generator=generator) for _ in range(2)]
    dec0, dec1 = _unit(FEATURES, 2 * D, generator=generator), _unit(FEATURES, D, generator=generator)
    n = 20_480
    acts = [(torch.rand(n, FEATURES, generator=generator) < P_FIRE) * torch.rand(n, FEATURES, generator=generator)
            for _ in range(2)]
    x = torch.cat([acts[0] @ enc[0], acts[1] @ enc[1]], -1)
    y = acts[0] @ dec0 + torch.nn.functional.pad(acts[1] @ dec1, (D, 0))
    x, y = x / x.pow(2).sum(-1).mean().sqrt(), y / y.pow(2).sum(-1).mean().sqrt()
    torch.manual_seed(5)  # not the world's seed: the initial decoder would be the truth
    clt = build_dictionary(DictionaryConfig("clt_topk", 2 * D, 4 * FEATURES, d_out=2 * D, k=4, layers=2))
    before = _max_cosine(dec0, clt.decoder_block(0))
    log = fit_dictionary(clt, _batches((x, y)), STEPS, OptimConfig(lr=3e-3, dead_window_tokens=20 * BATCH))
    recovered = _max_cosine(dec0, clt.decoder_block(0))
    assert before < 0.5 and recovered > 0.8, (before, recovered)
    assert _max_cosine(dec1, clt.decoder_block(1)) > 0.8
    assert log[-1]["fvu"] < 0.5 * log[0]["fvu"] and {"l0_layer_0", "l0_layer_1", "fvu_layer_1"} <= set(log[-1])


def test_crosscoder_recovers_features_shared_across_layers():
    generator = torch.Generator().manual_seed(0)
    truth = _unit(FEATURES, 2 * D, generator=generator)  # each feature's directions in both layers
    n = 20_480
    acts = (torch.rand(n, FEATURES, generator=generator) < P_FIRE) * torch.rand(n, FEATURES, generator=generator)
    x = acts @ truth
    x = x / x.pow(2).sum(-1).mean().sqrt()
    torch.manual_seed(5)
    coder = build_dictionary(DictionaryConfig("crosscoder", 2 * D, 2 * FEATURES, l1_coefficient=0.3,
                                              layers=2))
    with torch.no_grad():
        coder.b_dec.copy_(x.mean(0))
    before = _max_cosine(truth, coder.W_dec)
    fit_dictionary(coder, _batches((x, x)), STEPS, OptimConfig(lr=3e-3, dead_window_tokens=20 * BATCH))
    recovered = _max_cosine(truth, coder.W_dec)
    assert before < 0.5 and recovered > 0.8, (before, recovered)


def test_clt_sparse_forward_matches_the_dense_one_in_value_and_gradient():
    # k = 3 of 16 latents per layer is below the sparse share, so the bagged decode runs.
    sparse = _layered("clt_topk", layers=3, d=8, per_layer=16, skip=True, k=3)
    with torch.no_grad():
        for parameter in (sparse.W_skip, sparse.b_dec, sparse.b_enc):
            parameter.normal_()
    dense = copy.deepcopy(sparse)
    dense.uses_sparse_forward = lambda: False
    x, target = torch.randn(40, 24), torch.randn(40, 24)
    out_sparse, out_dense = sparse(x, target), dense(x, target)
    assert out_sparse.sparse is not None and out_dense.sparse is None
    torch.testing.assert_close(out_sparse.reconstruction, out_dense.reconstruction)
    torch.testing.assert_close(out_sparse.latents, out_dense.latents)
    def metrics(dictionary, latents, output):
        return {name: float(value) for name, value in
                dictionary.layer_metrics(latents, output.reconstruction.detach(), target).items()}
    assert metrics(sparse, out_sparse.sparse, out_sparse) == pytest.approx(metrics(dense, out_dense.latents, out_dense))
    out_sparse.losses["loss"].backward()
    out_dense.losses["loss"].backward()
    for (name, a), b in zip(sparse.named_parameters(), dense.parameters()):
        torch.testing.assert_close(a.grad, b.grad, msg=name)


def test_clt_decoder_gradient_projection_leaves_each_block_orthogonal():
    clt = _layered("clt_topk", layers=3, d=4, per_layer=6, k=2)
    clt.W_dec.grad = torch.randn_like(clt.W_dec)
    clt.remove_parallel_decoder_gradient()
    for weight, grad in zip(clt._blocks_of(clt.W_dec), clt._blocks_of(clt.W_dec.grad)):
        torch.testing.assert_close((weight * grad).sum(1), torch.zeros(6), atol=1e-6, rtol=0)


@pytest.mark.parametrize("name", LAYERED)
def test_output_decoders_are_what_each_latent_adds_to_each_layer(name):
    # Decoding one latent at value 1 (bias removed) gives exactly its row of output_decoders.
    dictionary = _layered(name, layers=3, d=4, per_layer=6, k=2)
    width, d = dictionary.config.width, dictionary.layer_output_width
    ids = torch.tensor([0, 1, width // 2, width - 1])
    unit = torch.zeros(len(ids), width)
    unit[torch.arange(len(ids)), ids] = 1.0
    with torch.no_grad():
        decoded = (dictionary.decode(unit) - dictionary.b_dec).view(len(ids), 3, d)
        torch.testing.assert_close(dictionary.output_decoders(ids), decoded)
        assert dictionary.decoder_directions().shape[0] == width
        total = dictionary.logit_directions(ids)
    if name.startswith("clt_"):
        torch.testing.assert_close(total, decoded.sum(1))
        assert decoded[3, :2].abs().sum() == 0  # a last-layer latent writes only its own layer
    else:
        torch.testing.assert_close(total, decoded[:, -1])
