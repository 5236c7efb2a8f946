"""The registry, config validation, shapes, the skip connection, initialisation and save/load."""

from __future__ import annotations

import pytest
import torch

from saekit.dictionaries import ARCHITECTURES, DictionaryConfig, build_dictionary, load_dictionary, save_dictionary
from saekit.errors import SaekitError

NAMES = sorted(ARCHITECTURES)


def test_registry_names():
    assert set(ARCHITECTURES) == {"relu", "gated", "gated_rescale", "topk", "batchtopk", "jumprelu",
                                 "matryoshka_batchtopk", "clt_topk", "clt_jumprelu", "crosscoder"}


def test_unknown_extra_setting_is_rejected():
    with pytest.raises(SaekitError, match="does not understand"):
        build_dictionary(DictionaryConfig("relu", 8, 16, extra={"aux_k": 4}))  # a TopK setting
    build_dictionary(DictionaryConfig("topk", 8, 16, k=2, extra={"aux_k": 4, "orthogonality_coefficient": 0.1}))


@pytest.mark.parametrize("name", ["topk", "batchtopk", "matryoshka_batchtopk"])
def test_k_is_validated_for_the_topk_family(name):
    with pytest.raises(SaekitError, match="k=20"):
        build_dictionary(DictionaryConfig(name, 8, 16, k=20))


@pytest.mark.parametrize("name", NAMES)
def test_forward_shapes_losses_and_gradients(name, make_dictionary):
    dictionary = make_dictionary(name, k=4, extra={"orthogonality_coefficient": 0.01})
    x = torch.randn(3, 5, 16)  # leading token dims of any shape
    output = dictionary(x, dead_mask=torch.ones(64, dtype=torch.bool))
    assert output.latents.shape == (3, 5, 64) and output.reconstruction.shape == x.shape
    assert (output.latents >= 0).all()
    assert {"reconstruction", "orthogonality", "loss"} <= set(output.losses)
    total = sum(value for key, value in output.losses.items() if key != "loss")
    torch.testing.assert_close(output.losses["loss"], total)
    output.losses["loss"].backward()
    assert dictionary.W_enc.grad is not None and dictionary.W_enc.grad.abs().sum() > 0
    torch.testing.assert_close(dictionary.encode(x), output.latents)


@pytest.mark.parametrize("name", NAMES)
def test_skip_connection_starts_at_zero_and_adds_a_linear_path(name, make_dictionary):
    dictionary = make_dictionary(name, d_out=6, k=4, extra={"skip_connection": True})
    assert dictionary.W_skip.shape == (16, 6) and (dictionary.W_skip == 0).all()
    assert "W_skip" in dict(dictionary.named_parameters())
    x, target = torch.randn(10, 16), torch.randn(10, 6)
    before = dictionary(x, target).reconstruction
    with torch.no_grad():
        dictionary.W_skip.normal_()
    after = dictionary(x, target)
    torch.testing.assert_close(after.reconstruction, before + x @ dictionary.W_skip)
    torch.testing.assert_close(after.reconstruction, dictionary.reconstruct(x, after.latents))
    torch.testing.assert_close(after.losses["reconstruction"], (after.reconstruction - target).pow(2).sum(-1).mean())
    after.losses["loss"].backward()
    assert dictionary.W_skip.grad.abs().sum() > 0
    assert make_dictionary(name, k=4).W_skip is None


@pytest.mark.parametrize("name", NAMES)
def test_transcoder_without_target_returns_reconstruction_but_no_target_losses(name, make_dictionary):
    # How evaluation splices a transcoder in: forward(read activations) with no target.
    output = make_dictionary(name, d_out=6, k=4, extra={"aux_k": 2} if "topk" in name else {})(
        torch.randn(4, 16), dead_mask=torch.ones(64, dtype=torch.bool))
    assert output.reconstruction.shape == (4, 6)
    assert not {"reconstruction", "aux_k", "gate_reconstruction"} & set(output.losses)


def test_an_explicit_d_out_is_a_transcoder_even_at_equal_width(make_dictionary):
    # MLP in -> MLP out has equal widths; the target's bias must not be subtracted from the input.
    transcoder = make_dictionary("relu", d_out=16)
    assert transcoder.config.is_transcoder
    with torch.no_grad():
        transcoder.b_dec.fill_(3.0)
    assert (transcoder.b_pre == 0).all()
    assert not make_dictionary("relu").config.is_transcoder


@pytest.mark.parametrize("name", NAMES)
def test_encoder_starts_tied_and_scaled_down_for_wide_dictionaries(name, make_dictionary):
    dictionary = make_dictionary(name, d_in=16, width=128, k=4)  # 2 d / width = 1/4
    torch.testing.assert_close(dictionary.W_enc, dictionary.W_dec.T * 0.25)
    narrow = make_dictionary(name, d_in=16, width=24, k=4)  # 2 d / width > 1: never scaled up
    torch.testing.assert_close(narrow.W_enc, narrow.W_dec.T)


@torch.no_grad()
def _exercise_state(dictionary, x: torch.Tensor) -> None:
    """Give buffers and parameters non-initial values (BatchTopK threshold, JumpReLU calibration)."""
    with torch.enable_grad():
        dictionary.train()(x)
    for parameter in dictionary.parameters():
        parameter.add_(0.05 * torch.randn_like(parameter))


@pytest.mark.parametrize("name", NAMES)
def test_save_load_round_trip(name, make_dictionary, tmp_path):
    dictionary = make_dictionary(name, k=4, d_out=12, extra={"skip_connection": True})
    x = torch.randn(32, 16)
    _exercise_state(dictionary, x)
    save_dictionary(tmp_path / "dict", dictionary, {"model": "toy"})
    loaded, source = load_dictionary(tmp_path / "dict")
    assert source == {"model": "toy"} and loaded.config == dictionary.config
    for key, value in dictionary.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], value)
    dictionary.eval(), loaded.eval()
    torch.testing.assert_close(loaded(x).reconstruction, dictionary(x).reconstruction)


def test_save_load_keeps_batchtopk_threshold_and_jumprelu_calibration(make_dictionary, tmp_path):
    x = torch.randn(32, 16)
    batch = make_dictionary("batchtopk", k=4)
    jump = make_dictionary("jumprelu")
    for dictionary, directory in ((batch, "b"), (jump, "j")):
        _exercise_state(dictionary, x)
        save_dictionary(tmp_path / directory, dictionary)
    loaded_batch, _ = load_dictionary(tmp_path / "b")
    loaded_jump, _ = load_dictionary(tmp_path / "j")
    assert batch.threshold > 0 and loaded_batch.threshold == batch.threshold
    assert loaded_jump.calibrated == 1 and loaded_jump.bandwidth == jump.bandwidth
    before = loaded_jump.log_threshold.detach().clone()
    loaded_jump.train()(100 * x)  # a calibrated dictionary is never re-calibrated
    torch.testing.assert_close(loaded_jump.log_threshold.detach(), before)
