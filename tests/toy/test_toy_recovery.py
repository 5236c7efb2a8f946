"""Tests for saekit.toy.recovery and saekit.toy.fitting: metrics on known answers, baselines, trade-off."""

from __future__ import annotations

import pytest
import torch

from saekit.dictionaries.base import DictionaryConfig
from saekit.dictionaries.registry import ARCHITECTURES, build_dictionary
from saekit.toy.fitting import K_KNOB, L0_KNOB, L1_KNOB, FitConfig, fit_at_l0, next_penalty, sparsity_knob
from saekit.toy.recovery import (
    MIXTURE,
    ProjectionDictionary,
    animals_report,
    direction_recovery,
    encode,
    magnitude_match,
    pearson_columns,
    r2_columns,
    random_dictionary_like,
    reference_dictionaries,
    set_alignment,
    sparse_world_report,
)
from saekit.toy.worlds import AnimalsWorld, AnimalsWorldConfig, SparseFeatureWorld, SparseWorldConfig, activation_stream


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def small_world() -> SparseFeatureWorld:
    return SparseFeatureWorld(SparseWorldConfig(n_features=32, d=16, firing_probability=0.06, seed=1))


def test_perfect_dictionary_scores_one_and_random_much_lower(small_world):
    perfect = direction_recovery(small_world.directions, small_world.directions)
    assert perfect.recovery == pytest.approx(1.0) and perfect.precision == pytest.approx(1.0)
    assert perfect.fraction_recovered == 1.0
    # a shuffled and duplicated copy still recovers everything
    shuffled = torch.cat([small_world.directions.flip(0), small_world.directions[:5]])
    assert direction_recovery(small_world.directions, shuffled).recovery == pytest.approx(1.0)
    random = random_dictionary_like(build_dictionary(DictionaryConfig("topk", 16, 64, k=2)), seed=0)
    baseline = direction_recovery(small_world.directions, random.W_dec)
    assert baseline.recovery < 0.75 and baseline.precision < 0.75 and baseline.fraction_recovered < 0.1


def test_perfect_magnitudes_with_exact_encoding():
    world = SparseFeatureWorld(SparseWorldConfig(n_features=8, d=16, firing_probability=0.2))  # undercomplete
    x, magnitudes = world.sample(2000, _gen(0))
    report = sparse_world_report(ProjectionDictionary(world.directions, l1=0.0, iterations=500),
                                 world.directions, x, magnitudes)
    assert report["directions"]["recovery"] == pytest.approx(1.0, abs=1e-5)
    assert report["magnitude_correlation"] == pytest.approx(1.0, abs=1e-3)
    assert report["fvu"] < 1e-4


def test_magnitude_match_picks_the_closest_decoder_row():
    directions = torch.eye(3)
    decoder = torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    magnitudes = torch.rand(100, 3, generator=_gen(0))
    latents = magnitudes[:, [1, 0, 2]].clone()
    latents[:, 2] = 0.0  # latent 2 never fires: correlation 0, not NaN
    match = magnitude_match(directions, magnitudes, decoder, latents)
    assert match.matched_latent == [1, 0, 2]
    assert match.correlation == pytest.approx([1.0, 1.0, 0.0], abs=1e-5)
    assert match.mean_correlation == pytest.approx(2 / 3, abs=1e-5)
    magnitudes[:, 2] = 0.0  # a feature that never fires is left out of the means
    match = magnitude_match(directions, magnitudes, decoder, latents)
    assert match.n_scored == 2 and match.mean_correlation == pytest.approx(1.0, abs=1e-5)


def test_pearson_columns():
    a = torch.tensor([[1.0, 2.0], [2.0, 2.0], [3.0, 2.0]])
    b = torch.tensor([[2.0, 1.0], [4.0, 5.0], [6.0, 0.0]])
    assert pearson_columns(a, b).tolist() == pytest.approx([1.0, 0.0])
    assert pearson_columns(a[:, :1], -b[:, :1]).item() == pytest.approx(-1.0)


def test_set_alignment_labels():
    world = AnimalsWorld(AnimalsWorldConfig())
    sets = {"animal": world.animal_directions, "attribute": world.attribute_directions,
            "unrelated": world.unrelated_directions}
    blend = world.animal_directions[0] + world.unrelated_directions[0]
    decoder = torch.stack([world.animal_directions[3], world.attribute_directions[1],
                           world.unrelated_directions[2], blend / blend.norm()])
    alignment = set_alignment(decoder, sets)
    assert alignment.labels == ["animal", "attribute", "unrelated", MIXTURE]
    assert alignment.counts == {"animal": 1, "attribute": 1, "unrelated": 1, MIXTURE: 1}


def test_briefly_trained_topk_beats_the_random_baseline(small_world):
    config = FitConfig(width=64, k=2, steps=300, batch_size=256, lr=1e-2)
    result = fit_at_l0("topk", 16, lambda: activation_stream(small_world, 256, seed=0), config)
    x, magnitudes = small_world.sample(4000, _gen(9))
    trained = sparse_world_report(result.dictionary, small_world.directions, x, magnitudes)
    random = sparse_world_report(random_dictionary_like(result.dictionary), small_world.directions, x, magnitudes)
    assert trained["directions"]["recovery"] > 0.9
    assert trained["directions"]["recovery"] > random["directions"]["recovery"] + 0.25
    assert trained["magnitude_correlation"] > random["magnitude_correlation"] + 0.25
    assert trained["l0"] == pytest.approx(2.0, abs=0.2)


def test_animals_trade_off_reference_points():
    world = AnimalsWorld(AnimalsWorldConfig())
    sample = world.sample(1500, _gen(3))
    refs = reference_dictionaries(world)
    animal_ref = animals_report(refs["reference: true animals + unrelated"], world, sample)
    attribute_ref = animals_report(refs["reference: true attributes + unrelated"], world, sample)
    assert animal_ref["animal"]["magnitude_correlation"] > 0.9
    assert animal_ref["attribute"]["magnitude_correlation"] < 0.6
    assert attribute_ref["attribute"]["magnitude_correlation"] > 0.99
    assert attribute_ref["animal"]["magnitude_correlation"] < 0.6
    assert attribute_ref["unrelated"]["magnitude_correlation"] > 0.95
    assert animal_ref["fvu"] < 1e-3 and attribute_ref["fvu"] < 1e-3  # both decoders explain the data
    assert animal_ref["alignment_counts"]["animal"] == world.config.n_animals
    # scale-aware R^2 agrees: each corner gets its own set right and the other wrong
    assert animal_ref["animal"]["magnitude_r2"] > 0.9 and animal_ref["attribute"]["magnitude_r2"] < 0.2
    assert attribute_ref["attribute"]["magnitude_r2"] > 0.99 and attribute_ref["animal"]["magnitude_r2"] < 0.2


class _SplitCode:
    """Animals + attributes + unrelated decoder whose code gives half of each magnitude to each set."""

    def __init__(self, world: AnimalsWorld) -> None:
        self.world = world
        self.W_dec = torch.cat([world.animal_directions, world.attribute_directions, world.unrelated_directions])

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        animal_part = x @ self.world.attribute_directions.T @ self.world.attribute_directions
        unrelated_coords = torch.linalg.lstsq(self.world.unrelated_directions.T, (x - animal_part).T).solution.T
        animal_coords = torch.linalg.lstsq(self.world.animal_directions.T, animal_part.T).solution.T
        attribute_coords = x @ self.world.attribute_directions.T
        return torch.cat([0.5 * animal_coords, 0.5 * attribute_coords, unrelated_coords], dim=1)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return latents @ self.W_dec


def test_split_code_fools_correlation_but_not_r2():
    world = AnimalsWorld(AnimalsWorldConfig(n_animals=8, n_unrelated=10))  # few enough for exact solves
    sample = world.sample(1000, _gen(4))
    report = animals_report(_SplitCode(world), world, sample)
    assert report["fvu"] < 1e-6  # a perfect reconstruction ...
    assert report["attribute"]["magnitude_correlation"] > 0.999  # ... correlating with attributes ...
    assert report["animal"]["magnitude_correlation"] > 0.999  # ... and with animals at once,
    assert report["attribute"]["magnitude_r2"] < 0.9 and report["animal"]["magnitude_r2"] < 0.9  # but half-size


def test_r2_needs_the_right_scale():
    truth = torch.rand(200, 2, generator=_gen(0))
    assert r2_columns(truth, truth).tolist() == pytest.approx([1.0, 1.0])
    assert r2_columns(0.5 * truth, truth).max().item() < 0.9
    assert r2_columns(-truth, truth).tolist() == [0.0, 0.0]  # clipped at 0


def test_encode_leaves_the_module_mode_alone():
    dictionary = build_dictionary(DictionaryConfig("topk", 8, 16, k=2))
    dictionary.train()
    encode(dictionary, torch.randn(5, 8))
    assert dictionary.training


def test_every_registry_architecture_has_a_sparsity_knob():
    for name, cls in ARCHITECTURES.items():
        knob = sparsity_knob(name)
        assert knob in (K_KNOB, L1_KNOB, L0_KNOB)
        assert knob == cls.SPARSITY_SETTING and (knob == K_KNOB) == cls.fixed_l0()


def test_next_penalty_moves_the_coefficient_the_right_way():
    assert next_penalty([{"value": 1.0, "l0": 8.0}], target=4.0) > 1.0  # too dense: penalise more
    assert next_penalty([{"value": 1.0, "l0": 2.0}], target=4.0) < 1.0
    # with two probes the log-log secant lands on the interpolated target
    probes = [{"value": 1.0, "l0": 8.0}, {"value": 2.0, "l0": 4.0 / 2 ** 0.5}]
    # L0 = 8 c^-1.5 through both points, so L0 = 4 at c = 2^(2/3)
    assert next_penalty(probes, target=4.0) == pytest.approx(2 ** (2 / 3), rel=1e-6)


def test_penalty_architecture_is_tuned_towards_the_target_l0(small_world):
    config = FitConfig(width=32, k=2, steps=80, batch_size=128, lr=1e-2, max_probes=2)
    result = fit_at_l0("relu", 16, lambda: activation_stream(small_world, 128, seed=0), config)
    assert result.knob == L1_KNOB and 1 <= len(result.probes) <= 2
    assert result.knob_value in [probe["value"] for probe in result.probes]
    assert not result.dictionary.training
