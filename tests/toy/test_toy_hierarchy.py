"""The hierarchical world's rules, the recovery and absorption metrics on known answers, and the experiment."""

from __future__ import annotations

import itertools
import json

import pytest
import torch

from saekit.errors import SaekitError
from saekit.toy.experiments import HierarchyConfig, ToyRunConfig, run_hierarchy
from saekit.toy.recovery import absorption, feature_recovery, hungarian_matching
from saekit.toy.worlds import HierarchicalWorld, HierarchicalWorldConfig, activation_stream


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


SMALL = HierarchicalWorldConfig(n_parents=4, children_per_parent=3, n_independent=4, d=32,
                                max_firing_probability=0.4, zipf_exponent=1.0, seed=3)


@pytest.fixture(scope="module")
def drawn() -> tuple[HierarchicalWorld, torch.Tensor, torch.Tensor]:
    world = HierarchicalWorld(SMALL)
    x, magnitudes = world.sample(40_000, _gen(0))
    return world, x, magnitudes


# ---- the world ------------------------------------------------------------------------------------


def test_children_fire_only_with_their_parent_and_exclude_each_other(drawn):
    world, x, magnitudes = drawn
    active = magnitudes > 0
    for parent in range(SMALL.n_parents):
        children = world.children(parent)
        assert world.parent_of[children].tolist() == [parent] * len(children)
        assert not (active[:, children].any(1) & ~active[:, parent]).any()  # never without the parent
        assert int(active[:, children].sum(1).max()) == 1  # at most one child at a time
        share = active[:, children].any(1)[active[:, parent]].float().mean().item()
        assert share == pytest.approx(SMALL.child_probability, abs=0.02)
    assert (world.parent_of[: SMALL.n_roots] == -1).all()
    torch.testing.assert_close(x, magnitudes @ world.directions)


def test_root_frequencies_are_zipfian_and_every_marginal_is_as_configured(drawn):
    world, _, magnitudes = drawn
    rates = (magnitudes > 0).float().mean(0)
    torch.testing.assert_close(rates, world.probabilities, atol=0.01, rtol=0.05)
    roots = rates[: SMALL.n_roots]
    assert (roots[:-1] > roots[1:]).all()  # exponent 1: 0.4, 0.2, 0.13, 0.1, ... well apart at 40k samples
    assert world.probabilities[0].item() == pytest.approx(0.4) and world.probabilities[3].item() == pytest.approx(0.1)
    assert SMALL.expected_active == pytest.approx(world.probabilities.sum().item(), rel=1e-5)


def test_correlated_roots_cofire_and_keep_their_marginals():
    config = HierarchicalWorldConfig(n_parents=0, n_independent=4, d=8, max_firing_probability=0.2,
                                     zipf_exponent=0.0, correlated_group_size=2, correlation_strength=0.8)
    _, magnitudes = HierarchicalWorld(config).sample(40_000, _gen(1))
    active = (magnitudes > 0).float()
    assert active.mean(0).tolist() == pytest.approx([0.2] * 4, abs=0.01)
    correlation = torch.corrcoef(active.T)
    assert correlation[0, 1] > 0.4 and correlation[2, 3] > 0.4  # within a group
    assert abs(correlation[0, 2]) < 0.05 and abs(correlation[1, 3]) < 0.05  # across groups


def test_the_seeds_fix_directions_and_samples():
    a, b = HierarchicalWorld(SMALL), HierarchicalWorld(SMALL)
    assert torch.equal(a.directions, b.directions)
    assert torch.equal(a.sample(100, _gen(5))[1], b.sample(100, _gen(5))[1])
    assert not torch.equal(a.sample(100, _gen(5))[1], a.sample(100, _gen(6))[1])
    first, second = activation_stream(a, 16, seed=2), activation_stream(b, 16, seed=2)
    assert torch.equal(next(first), next(second))


@pytest.mark.parametrize("bad", [dict(children_per_parent=0), dict(max_firing_probability=0.0),
                                 dict(child_probability=1.5), dict(correlation_strength=1.0),
                                 dict(n_parents=0, n_independent=0), dict(zipf_exponent=-1.0)])
def test_invalid_hierarchy_configs_raise(bad):
    with pytest.raises(SaekitError):
        HierarchicalWorldConfig(**bad)


# ---- the metrics ------------------------------------------------------------------------------------


def _best_assignment(scores: torch.Tensor) -> float:
    """The largest total over all one-to-one assignments, by brute force (rows <= columns)."""
    rows, columns = scores.shape
    return max(sum(scores[r, c].item() for r, c in enumerate(chosen))
               for chosen in itertools.permutations(range(columns), rows))


@pytest.mark.parametrize(("rows", "columns"), [(3, 5), (5, 3), (4, 4)])
def test_hungarian_matching_finds_the_best_one_to_one_assignment(rows, columns):
    for seed in range(5):
        scores = torch.randn(rows, columns, generator=_gen(seed))
        got_rows, got_columns = hungarian_matching(scores)
        assert len(set(got_rows)) == len(set(got_columns)) == min(rows, columns) == len(got_rows)
        best = _best_assignment(scores if rows <= columns else scores.T)
        assert scores[got_rows, got_columns].sum().item() == pytest.approx(best, abs=1e-5)


def test_the_true_dictionary_scores_perfectly(drawn):
    world, _, magnitudes = drawn
    order = torch.randperm(SMALL.n_features, generator=_gen(0))  # latents in any order
    recovery = feature_recovery(world.directions, magnitudes, world.directions[order], magnitudes[:, order])
    assert recovery.mcc == pytest.approx(1.0) and recovery.f1 == pytest.approx(1.0)
    assert recovery.precision == pytest.approx(1.0) and recovery.recall == pytest.approx(1.0)
    assert recovery.uniqueness == 1.0 and recovery.shrinkage == pytest.approx(1.0)
    assert recovery.per_feature["best_latent"] == order.argsort().tolist()
    absorbed = absorption(world.directions, magnitudes, world.parent_of, world.directions, magnitudes)
    assert absorbed.count == 0 and absorbed.n_scored == SMALL.n_parents and absorbed.rate == 0.0


def _absorbing_code(world: HierarchicalWorld, magnitudes: torch.Tensor, parent: int) -> tuple[torch.Tensor, ...]:
    """The true dictionary, except that ``parent``'s children's latents are child + parent directions: they
    fire with the child and carry the parent, whose own latent then fires only when no child does."""
    decoder, latents = world.directions.clone(), magnitudes.clone()
    children = world.children(parent)
    with_child = (magnitudes[:, children] > 0).any(1)
    for child in children:
        both = world.directions[child] + world.directions[parent]
        decoder[child] = both / both.norm()
        latents[:, child] = (magnitudes[:, child] + magnitudes[:, parent]) * (magnitudes[:, child] > 0) / 2**0.5
    latents[with_child, parent] = 0.0
    return decoder, latents


def test_a_parent_moved_into_its_children_latents_is_absorbed(drawn):
    world, _, magnitudes = drawn
    decoder, latents = _absorbing_code(world, magnitudes, parent=1)
    absorbed = absorption(world.directions, magnitudes, world.parent_of, decoder, latents)
    assert absorbed.count == 1
    entry = absorbed.per_parent[1]
    assert entry["absorbed"] and entry["miss_with_child"] == 1.0 and entry["miss_alone"] == 0.0
    assert entry["carried"] > 0.6
    assert not any(other["absorbed"] for index, other in enumerate(absorbed.per_parent) if index != 1)
    recovery = feature_recovery(world.directions, magnitudes, decoder, latents)
    f1 = recovery.per_feature["f1"]
    # the parent's latent fires on its solo samples only: recall = P(no child | parent) = 0.2
    assert f1[1] == pytest.approx(2 * 0.2 / 1.2, abs=0.02) and f1[0] == pytest.approx(1.0)
    assert recovery.f1 < 1.0 and recovery.mcc < 1.0


def test_a_parent_latent_that_also_fires_with_children_is_not_absorbed(drawn):
    world, _, magnitudes = drawn
    decoder, latents = _absorbing_code(world, magnitudes, parent=1)
    latents[:, 1] = magnitudes[:, 1]  # the parent latent keeps firing: the direction alone is not absorption
    assert absorption(world.directions, magnitudes, world.parent_of, decoder, latents).count == 0


# ---- the experiment ---------------------------------------------------------------------------------


def test_tiny_hierarchy_experiment_writes_table_json_and_plot(tmp_path):
    config = HierarchyConfig(world=HierarchicalWorldConfig(n_parents=3, children_per_parent=2, n_independent=3,
                                                           d=16), batch_size=64, eval_samples=500, seeds=2)
    files = run_hierarchy(ToyRunConfig(out=tmp_path, steps=20, progress=False), tmp_path, config)
    assert set(files) == {"hierarchy.png", "hierarchy.json", "summary.md"}
    data = json.loads((tmp_path / "hierarchy.json").read_text())
    assert [repeat["seed"] for repeat in data["repeats"]] == [0, 1]
    assert set(data["means"]) == {"matryoshka_batchtopk", "batchtopk", "topk"}
    report = data["repeats"][0]["results"]["matryoshka_batchtopk"]
    assert {"recovery", "absorption", "l0", "fvu", "parent_f1", "fit"} <= set(report)
    assert data["repeats"][0]["k"] == round(config.world.expected_active)
    summary = (tmp_path / "summary.md").read_text()
    assert "| matryoshka_batchtopk |" in summary and "absorbed parents" in summary
    assert (tmp_path / "hierarchy.png").stat().st_size > 1000
    with pytest.raises(SaekitError, match="unknown architectures"):
        run_hierarchy(ToyRunConfig(out=tmp_path), tmp_path, HierarchyConfig(architectures=["nope"]))
