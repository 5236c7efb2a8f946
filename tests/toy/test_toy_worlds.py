"""Tests for saekit.toy.worlds: sparsity, seeding, correlation structure and the animals geometry."""

from __future__ import annotations

import pytest
import torch

from saekit.errors import SaekitError
from saekit.toy.worlds import (
    AnimalsWorld,
    AnimalsWorldConfig,
    SparseFeatureWorld,
    SparseWorldConfig,
    activation_stream,
)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("correlation", ["independent", "correlated", "anticorrelated"])
def test_firing_probability_is_respected(correlation):
    world = SparseFeatureWorld(SparseWorldConfig(n_features=64, d=16, firing_probability=0.05,
                                                 correlation=correlation, group_size=4))
    _, magnitudes = world.sample(40_000, _gen(0))
    rate = (magnitudes > 0).float().mean().item()
    assert rate == pytest.approx(0.05, abs=0.004)


def test_directions_are_unit_and_activations_are_their_combination():
    world = SparseFeatureWorld(SparseWorldConfig(n_features=40, d=10, min_importance=0.1))
    assert torch.allclose(world.directions.norm(dim=1), torch.ones(40), atol=1e-5)
    x, magnitudes = world.sample(100, _gen(1))
    assert x.shape == (100, 10) and magnitudes.shape == (100, 40)
    assert torch.allclose(x, magnitudes @ world.directions, atol=1e-5)
    # importance decays geometrically from 1 to min_importance and bounds the magnitudes
    assert world.importance[0].item() == pytest.approx(1.0)
    assert world.importance[-1].item() == pytest.approx(0.1)
    assert bool((magnitudes <= world.importance + 1e-6).all())


def test_seeds_fix_geometry_and_samples():
    a = SparseFeatureWorld(SparseWorldConfig(seed=3))
    b = SparseFeatureWorld(SparseWorldConfig(seed=3))
    c = SparseFeatureWorld(SparseWorldConfig(seed=4))
    assert torch.equal(a.directions, b.directions)
    assert not torch.allclose(a.directions, c.directions)
    assert torch.equal(a.sample(50, _gen(7))[0], b.sample(50, _gen(7))[0])
    assert not torch.equal(a.sample(50, _gen(7))[0], a.sample(50, _gen(8))[0])


def test_correlated_groups_cofire_and_anticorrelated_groups_exclude():
    config = dict(n_features=8, d=4, firing_probability=0.1, group_size=4, correlation_strength=1.0)
    _, together = SparseFeatureWorld(SparseWorldConfig(correlation="correlated", **config)).sample(5000, _gen(0))
    fired = together > 0
    assert torch.equal(fired[:, 0], fired[:, 3])  # same group, strength 1: identical firing
    assert not torch.equal(fired[:, 0], fired[:, 4])  # different groups
    _, apart = SparseFeatureWorld(SparseWorldConfig(correlation="anticorrelated", **config)).sample(5000, _gen(0))
    per_group = (apart > 0).view(5000, 2, 4).sum(-1)
    assert int(per_group.max()) == 1  # at most one member of a group fires


def test_invalid_configs_raise_one_line_errors():
    with pytest.raises(SaekitError, match="firing_probability"):
        SparseWorldConfig(firing_probability=0.0)
    with pytest.raises(SaekitError, match="anticorrelated"):
        SparseWorldConfig(correlation="anticorrelated", firing_probability=0.5, group_size=4)
    with pytest.raises(SaekitError, match="distinct"):
        AnimalsWorldConfig(n_attributes=4, attributes_per_animal=2, n_animals=7)


def test_animals_lie_in_the_attribute_span_and_unrelated_are_orthogonal_to_it():
    world = AnimalsWorld(AnimalsWorldConfig(d=24, n_attributes=6, n_animals=15, n_unrelated=20))
    attributes = world.attribute_directions
    assert torch.allclose(attributes @ attributes.T, torch.eye(6), atol=1e-5)  # orthonormal
    projection = world.animal_directions @ attributes.T @ attributes
    assert (world.animal_directions - projection).norm().item() < 1e-5
    assert torch.allclose(world.animal_directions.norm(dim=1), torch.ones(15), atol=1e-5)
    assert (world.unrelated_directions @ attributes.T).abs().max().item() < 1e-5
    assert torch.allclose(world.unrelated_directions.norm(dim=1), torch.ones(20), atol=1e-5)
    # every animal uses exactly attributes_per_animal attributes, nonnegatively, in a distinct set
    support = world.animal_weights > 0
    assert bool((support.sum(1) == 3).all()) and bool((world.animal_weights >= 0).all())
    assert len({tuple(row.tolist()) for row in support}) == 15


def test_animals_sample_carries_consistent_ground_truths():
    world = AnimalsWorld(AnimalsWorldConfig())
    sample = world.sample(4000, _gen(2))
    # attribute magnitudes are the projections of the activation onto the attribute directions
    assert torch.allclose(sample.activations @ world.attribute_directions.T, sample.attribute_magnitudes,
                          atol=1e-5)
    rebuilt = (sample.animal_magnitudes @ world.animal_directions
               + sample.unrelated_magnitudes @ world.unrelated_directions)
    assert torch.allclose(sample.activations, rebuilt, atol=1e-5)
    animal_rate = (sample.animal_magnitudes > 0).float().mean().item()
    attribute_rate = (sample.attribute_magnitudes > 0).float().mean().item()
    assert animal_rate == pytest.approx(world.config.animal_firing_probability, abs=0.005)
    assert attribute_rate > 5 * animal_rate  # attributes are dense relative to animals


def test_activation_stream_repeats_for_the_same_seed():
    world = SparseFeatureWorld(SparseWorldConfig())
    first, second = activation_stream(world, 32, seed=5), activation_stream(world, 32, seed=5)
    for _ in range(3):
        assert torch.equal(next(first), next(second))
    animals = activation_stream(AnimalsWorld(AnimalsWorldConfig()), 16, seed=0)
    assert next(animals).shape == (16, 32)
