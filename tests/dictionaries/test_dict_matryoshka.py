"""Matryoshka BatchTopK: group sizes and their checks, the prefix loss terms, and what it shares with BatchTopK."""

from __future__ import annotations

import pytest
import torch

from saekit.dictionaries import DictionaryConfig, build_dictionary, load_dictionary, save_dictionary
from saekit.dictionaries.matryoshka import default_group_sizes
from saekit.dictionaries.topk import TopKDictionary
from saekit.errors import SaekitError
from saekit.training.config import TrainConfig

NAME = "matryoshka_batchtopk"


def _prefix_errors(dictionary, latents: torch.Tensor, target: torch.Tensor, ends: list[int]) -> list[torch.Tensor]:
    return [(latents[:, :end] @ dictionary.W_dec[:end] + dictionary.b_dec - target).pow(2).sum(-1).mean()
            for end in ends]


def test_default_groups_double_up_to_the_width(make_dictionary):
    assert default_group_sizes(512) == [32, 32, 64, 128, 256]
    assert default_group_sizes(24) == [1, 2, 3, 6, 12]
    assert default_group_sizes(3) == [1, 2] and default_group_sizes(1) == [1]
    dictionary = make_dictionary(NAME, width=64, k=4)
    assert dictionary.group_sizes == [4, 4, 8, 16, 32] and dictionary.prefix_ends == [4, 8, 16, 32, 64]


@pytest.mark.parametrize(("value", "sizes"), [([16, 16, 32], [16, 16, 32]), ((32.0, 32), [32, 32]),
                                              ("8, 8,48", [8, 8, 48]), (64, [64])])
def test_group_sizes_as_a_list_a_whole_number_or_command_line_text(value, sizes, make_dictionary):
    assert make_dictionary(NAME, width=64, k=4, extra={"group_sizes": value}).group_sizes == sizes


@pytest.mark.parametrize(("value", "refusal"), [
    ("abc", "must be a list of ints or null, got 'abc'"), ("8,x", "must be a list of ints or null, got '8,x'"),
    ([16, 0, 48], "must be >= 1, got [16, 0, 48]"), ([16, -16, 64], "must be >= 1, got [16, -16, 64]"),
    ("0,64", "must be >= 1, got '0,64'"), ([16.5, 47.5], "must be a list of ints or null, got [16.5, 47.5]"),
    ({"a": 1}, "must be a list of ints or null, got {'a': 1}"), (True, "must be a list of ints or null, got True"),
    ([True, 63], "must be a list of ints or null, got [True, 63]"), ([], "is empty; give group sizes")])
def test_bad_group_sizes_are_one_line_errors_when_the_config_is_checked(value, refusal):
    # TrainConfig.validate (before any model loads) and the build both refuse them, naming the setting and
    # showing the value as it was given.
    config = TrainConfig.from_flat({"architecture": NAME, "extra": {"group_sizes": value}})
    for check in (config.validate, lambda: build_dictionary(DictionaryConfig(NAME, 16, 64, k=4,
                                                                            extra={"group_sizes": value}))):
        with pytest.raises(SaekitError) as err:
            check()
        assert str(err.value).startswith(f"architecture '{NAME}': extra setting 'group_sizes' {refusal}"), err.value
        assert "\n" not in str(err.value)


def test_group_sizes_that_miss_the_width_are_refused_at_build():
    with pytest.raises(SaekitError, match=r"'group_sizes' \[16, 16\] sums to 32, not the width 64; give group") as err:
        build_dictionary(DictionaryConfig(NAME, 16, 64, k=4, extra={"group_sizes": [16, 16]}))
    assert "[4, 4, 8, 16, 32]" in str(err.value)  # the default it would get


@pytest.mark.parametrize("sparse", [True, False])
def test_each_prefix_term_is_its_own_reconstruction_error_and_the_loss_is_their_sum(sparse, make_dictionary,
                                                                                    perturbed, monkeypatch):
    if not sparse:  # the dense training path (k above the sparse share)
        monkeypatch.setattr(TopKDictionary, "SPARSE_MAX_ACTIVE_SHARE", 0.01)
    dictionary = perturbed(make_dictionary(NAME, k=4, extra={"group_sizes": [8, 24, 32]})).train()
    x = torch.randn(32, 16)
    output = dictionary(x)
    assert (output.sparse is not None) == sparse
    latents = output.latents.detach()
    expected = _prefix_errors(dictionary, latents, x, [8, 32, 64])
    assert [key for key in output.losses if key.startswith("reconstruction")] == [
        "reconstruction", "reconstruction_prefix_0", "reconstruction_prefix_1"]
    torch.testing.assert_close(output.losses["reconstruction_prefix_0"], expected[0])
    torch.testing.assert_close(output.losses["reconstruction_prefix_1"], expected[1])
    torch.testing.assert_close(output.losses["reconstruction"], expected[2])
    torch.testing.assert_close(output.losses["loss"], sum(expected))


def test_the_smallest_prefix_trains_only_its_own_decoder_rows(make_dictionary, perturbed):
    dictionary = perturbed(make_dictionary(NAME, k=8, extra={"group_sizes": [8, 56]})).train()
    output = dictionary(torch.randn(32, 16))
    grad = torch.autograd.grad(output.losses["reconstruction_prefix_0"], dictionary.W_dec)[0]
    assert grad[:8].abs().sum() > 0 and grad[8:].abs().max() == 0


def test_one_group_is_batchtopk(make_dictionary, perturbed):
    matryoshka = perturbed(make_dictionary(NAME, k=4, extra={"group_sizes": [64]})).train()
    batch = perturbed(make_dictionary("batchtopk", k=4)).train()
    x = torch.randn(32, 16)
    a, b = matryoshka(x), batch(x)
    assert set(a.losses) == set(b.losses) == {"reconstruction", "loss"}
    torch.testing.assert_close(a.losses["loss"], b.losses["loss"])
    torch.testing.assert_close(matryoshka.threshold, batch.threshold)


def test_inference_uses_batchtopk_threshold_and_keeps_the_prefix_terms(make_dictionary, perturbed):
    matryoshka = perturbed(make_dictionary(NAME, k=4)).train()
    batch = perturbed(make_dictionary("batchtopk", k=4)).train()
    x = torch.randn(64, 16)
    for dictionary in (matryoshka, batch):
        dictionary(x)
    torch.testing.assert_close(matryoshka.threshold, batch.threshold)  # the same EMA of the smallest kept value
    matryoshka.eval(), batch.eval()
    with torch.no_grad():
        out, reference = matryoshka(x), batch(x)
    assert out.sparse is None  # the threshold path is dense
    torch.testing.assert_close(out.latents, reference.latents)
    torch.testing.assert_close(out.latents, matryoshka.encode(x))
    expected = _prefix_errors(matryoshka, out.latents, x, matryoshka.prefix_ends[:-1])
    for index, value in enumerate(expected):
        torch.testing.assert_close(out.losses[f"reconstruction_prefix_{index}"], value)


def test_save_load_keeps_group_sizes_and_threshold(make_dictionary, tmp_path):
    dictionary = make_dictionary(NAME, k=4, extra={"group_sizes": [16, 48]})
    x = torch.randn(32, 16)
    dictionary.train()(x)
    save_dictionary(tmp_path / "m", dictionary)
    loaded, _ = load_dictionary(tmp_path / "m")
    assert loaded.group_sizes == [16, 48] and loaded.threshold == dictionary.threshold
    loaded.eval(), dictionary.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x).losses["loss"], dictionary(x).losses["loss"])


def test_group_sizes_off_the_set_width_are_refused_before_any_model_loads():
    from saekit.training.config import TrainConfig

    config = TrainConfig.from_flat({"architecture": "matryoshka_batchtopk", "width": 512,
                                    "extra": {"group_sizes": [64, 64]}, "model": "/no/such/model"})
    with pytest.raises(SaekitError, match="sums to 128, not the width 512"):
        config.validate()  # the width check comes before the model path check
