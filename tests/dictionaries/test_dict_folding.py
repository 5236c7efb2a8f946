"""Folding the training-time input scaling into the weights, for every architecture and transcoders.

A dictionary trained on c_in * x (target c_out * t) and folded with ``fold_input_scale(c_in, c_out)``
must, on raw x, give the unfolded dictionary's latents and reconstruction on scaled x divided by
c_out. Every parameter is perturbed first (gate and magnitude biases, rescalings, thresholds, skip
weights) so a forgotten rescaling cannot hide behind an initial zero.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch

from saekit.dictionaries import ARCHITECTURES
from saekit.dictionaries.batchtopk import BatchTopKDictionary
from saekit.dictionaries.jumprelu import JumpReLUDictionary

CASES = [  # (d_out, skip, c_in, c_out)
    (None, False, 2.5, 2.5),  # SAE: one scale
    (7, False, 3.0, 0.4),  # transcoder to a smaller site
    (7, True, 3.0, 0.4),  # skip transcoder
    (16, True, 0.2, 5.0),  # equal-width skip transcoder (MLP in -> MLP out)
]


@torch.no_grad()
def _set_thresholds(dictionary, pre: torch.Tensor) -> None:
    """Thresholds inside the pre-activation range, so they decide which latents fire."""
    scale = pre.pow(2).mean().sqrt().item()
    if isinstance(dictionary, JumpReLUDictionary):
        spread = torch.rand(dictionary.config.width, generator=torch.Generator().manual_seed(2))
        dictionary.log_threshold.copy_(math.log(scale) + spread - 0.5)
        dictionary.bandwidth.fill_(0.3 * scale)
    if isinstance(dictionary, BatchTopKDictionary):
        dictionary.threshold.fill_(0.7 * scale)


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
@pytest.mark.parametrize(("d_out", "skip", "c_in", "c_out"), CASES)
def test_folded_on_raw_equals_unfolded_on_scaled(name, d_out, skip, c_in, c_out, make_dictionary, perturbed):
    dictionary = make_dictionary(name, d_out=d_out, k=5, extra={"skip_connection": True} if skip else {})
    dictionary = perturbed(dictionary.double(), scale=0.3).eval()
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(64, 16, generator=generator, dtype=torch.float64) + 0.5
    x_train = c_in * x
    _set_thresholds(dictionary, dictionary.pre_activations(x_train))
    trained = dictionary(x_train)

    folded = copy.deepcopy(dictionary)
    folded.fold_input_scale(c_in, c_out)
    raw = folded(x)

    active = (trained.latents > 0).double().mean().item()
    assert 0.02 < active < 0.9, "the check needs latents on both sides of the threshold"
    torch.testing.assert_close(raw.latents, trained.latents / c_out)
    torch.testing.assert_close(raw.reconstruction, trained.reconstruction / c_out)
    torch.testing.assert_close(folded.decoder_norms(), dictionary.decoder_norms())


def test_folding_rescales_jumprelu_threshold_and_bandwidth(make_dictionary):
    dictionary = make_dictionary("jumprelu")
    threshold, bandwidth = dictionary.threshold.detach().clone(), dictionary.bandwidth.clone()
    dictionary.fold_input_scale(4.0)
    torch.testing.assert_close(dictionary.threshold.detach(), threshold / 4)
    torch.testing.assert_close(dictionary.bandwidth, bandwidth / 4)


def test_folding_leaves_an_unset_batchtopk_threshold_unset(make_dictionary):
    dictionary = make_dictionary("batchtopk", k=4)
    dictionary.fold_input_scale(4.0)
    assert not dictionary.threshold_is_set
