"""The optional decoder orthogonality penalty: its value, its cost path and that it spreads rows out."""

from __future__ import annotations

import pytest
import torch

from saekit.dictionaries.losses import orthogonality_penalty


def _brute_force(decoder: torch.Tensor) -> torch.Tensor:
    unit = torch.nn.functional.normalize(decoder, dim=1)
    cosines = unit @ unit.T
    off_diagonal = ~torch.eye(len(decoder), dtype=torch.bool)
    return cosines[off_diagonal].pow(2).mean()


@pytest.mark.parametrize(("rows", "dim"), [(64, 8), (8, 64), (5, 5)])
def test_penalty_is_the_mean_squared_off_diagonal_cosine(rows, dim):
    decoder = torch.randn(rows, dim, dtype=torch.float64) * torch.rand(rows, 1, dtype=torch.float64)
    torch.testing.assert_close(orthogonality_penalty(decoder), _brute_force(decoder))


def test_penalty_is_zero_for_orthogonal_rows():
    assert orthogonality_penalty(torch.eye(6)[:4] * 3).item() == pytest.approx(0.0, abs=1e-7)


def test_penalty_is_off_by_default_and_weighted_when_on(make_dictionary):
    x = torch.randn(4, 16)
    assert "orthogonality" not in make_dictionary("relu")(x).losses
    dictionary = make_dictionary("topk", k=4, extra={"orthogonality_coefficient": 3.0})
    torch.testing.assert_close(dictionary(x).losses["orthogonality"], 3.0 * _brute_force(dictionary.W_dec))


def test_training_on_the_penalty_alone_spreads_bunched_rows(make_dictionary):
    dictionary = make_dictionary("relu", d_in=16, width=48, extra={"orthogonality_coefficient": 1.0})
    with torch.no_grad():  # rows bunched around one direction: cosines around 0.8
        dictionary.W_dec.copy_(2 * torch.randn(16) + torch.randn(48, 16))
        dictionary.normalize_decoder()
    initial = _brute_force(dictionary.W_dec.detach())
    optimizer = torch.optim.Adam([dictionary.W_dec], lr=1e-2)
    for _ in range(150):
        optimizer.zero_grad()
        dictionary.decoder_losses()["orthogonality"].backward()
        optimizer.step()
        dictionary.normalize_decoder()
    final = _brute_force(dictionary.W_dec.detach())
    floor = (48 / 16 - 1) / 47  # a tight frame of 48 unit rows in 16 dims: (n / d - 1) / (n - 1)
    assert initial > 0.4 and final < 0.1 and final > floor - 1e-3
