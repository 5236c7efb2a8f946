"""Decoder geometry: blocked running top-k against brute force, ranks, the random baseline, peak analysis."""

from __future__ import annotations

import math

import pytest
import torch

from saekit.analysis.geometry import (
    GeometryConfig,
    decoder_geometry,
    nearest_cosines,
    peak_analysis,
    random_unit_vectors,
    unit_rows,
)
from saekit.errors import SaekitError


def _brute(directions: torch.Tensor, k: int) -> torch.return_types.topk:
    unit = unit_rows(directions)
    sims = unit @ unit.T
    sims.fill_diagonal_(float("-inf"))
    return sims.topk(k, dim=1)


@pytest.fixture(scope="module")
def decoder_4096() -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return torch.randn(4096, 64, generator=generator)


def test_all_rows_match_brute_force_4096x64(decoder_4096):
    expected = _brute(decoder_4096, 100)
    found = nearest_cosines(decoder_4096, k=100, col_block=4096)  # symmetric schedule, 4x4 block pairs
    torch.testing.assert_close(found.values, expected.values, atol=1e-5, rtol=0)
    assert (found.indices[:, :10] == expected.indices[:, :10]).float().mean() > 0.999  # ties aside
    assert torch.all(found.indices != torch.arange(4096)[:, None])  # never itself


def test_row_subset_matches_brute_force(decoder_4096):
    rows = torch.tensor([4095, 0, 17, 2048, 1000])
    expected = _brute(decoder_4096, 100)
    found = nearest_cosines(decoder_4096, rows=rows, k=100, row_block=2, col_block=1500)
    torch.testing.assert_close(found.values, expected.values[rows], atol=1e-5, rtol=0)
    assert torch.equal(found.indices[:, 0], expected.indices[rows, 0])


def test_ranks_and_small_dictionaries():
    directions = torch.eye(5)
    directions[1] = directions[0] + 0.1  # latent 1 nearly parallel to latent 0
    found = nearest_cosines(directions, k=100)
    assert found.values.shape == (5, 4)
    assert found.indices[0, 0] == 1 and found.indices[1, 0] == 0
    assert math.isnan(float(found.rank(10)[0]))
    with pytest.raises(SaekitError):
        nearest_cosines(torch.randn(1, 3))


def test_random_baseline_overlap_is_about_one_over_sqrt_d():
    result = decoder_geometry(random_unit_vectors(2000, 256, seed=3), config=GeometryConfig(baseline_rows=500))
    summary = result.summary
    # max over 1999 Gaussian-like overlaps of std 1/sqrt(d): a few standard deviations, well below 0.5
    assert 2 / 16 < summary["decoder"]["rank_1"]["median"] < 5 / 16
    assert abs(summary["decoder"]["rank_1"]["median"] - summary["random_baseline"]["rank_1"]["median"]) < 0.02
    assert summary["random_baseline"]["rows"] == 500
    assert sum(summary["decoder"]["rank_1"]["histogram"]) == 2000
    assert result.neighbour_ids.shape == (2000, 10)


def test_peak_analysis_finds_a_shared_neighbour():
    generator = torch.Generator().manual_seed(1)
    d = 256
    hub = torch.zeros(d)
    hub[0] = 1.0

    def orthogonal_to_hub(n: int) -> torch.Tensor:
        vectors = torch.randn(n, d, generator=generator)
        vectors[:, 0] = 0
        return unit_rows(vectors)

    # 200 latents at cosine 0.4 to one hub latent (their mutual cosines stay lower), 300 spread out
    bunched = 0.4 * hub + (1 - 0.16) ** 0.5 * orthogonal_to_hub(200)
    directions = torch.cat([hub[None], orthogonal_to_hub(300), bunched])
    result = decoder_geometry(directions, config=GeometryConfig(peak_range=(0.35, 0.45)))
    peak = result.summary["peak"]
    assert peak["latents_in_peak"] == 201  # the 200 and the hub itself (its nearest is one of them)
    assert peak["most_common_neighbour"] == 0
    assert peak["share"] > 0.95
    auto = peak_analysis(result.ranked[1], result.neighbour_ids[:, 0], result.latent_ids)
    assert auto["latents_in_peak"] > 0 and auto["range"][1] - auto["range"][0] == pytest.approx(0.01, abs=1e-6)
