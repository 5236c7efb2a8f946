"""SCR's and TPP's parts on hand-made features: effects, selection, ablation, scores, and planted dictionaries whose
spurious (or class) latent is known, so the selected latents and the scores are known by hand."""

from __future__ import annotations

import math

import pytest
import torch

from saekit.errors import SaekitError
from saekit.probing.ablation import (
    ablate,
    latent_effects,
    probe_accuracy,
    scr_score,
    select_top,
    tpp_scores,
    train_probe,
)
from saekit.probing.probes import BinaryTask
from saekit.probing.scr_tpp import scr_from_pooled, tpp_from_tasks


def linear(weight: torch.Tensor, bias: float = 0.0) -> torch.nn.Linear:
    """A probe with the given weight: the SCR/TPP arithmetic is then known by hand."""
    probe = torch.nn.Linear(len(weight), 1)
    with torch.no_grad():
        probe.weight.copy_(weight[None])
        probe.bias.fill_(bias)
    return probe


def test_effects_selection_and_ablation_by_hand():
    decoder = torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0], [1 / math.sqrt(2), 1 / math.sqrt(2), 0]])
    latents = torch.tensor([[2.0, 0, 1, 1], [4.0, 0, 1, 1], [0.0, 1, 1, 3], [0.0, 1, 1, 3]])
    labels = torch.tensor([1, 1, 0, 0])
    weight = torch.tensor([1.0, 0, 0])  # the probe reads axis 0: W_dec · w = [1, 0, 0, 0.707]
    # mean differences: [3, -1, 0, -2]; SCR: |3 * 1|, 0, 0, |-2 * 0.707|
    scr = latent_effects(latents, labels, weight, decoder, scr=True)
    torch.testing.assert_close(scr, torch.tensor([3.0, 0.0, 0.0, 2 / math.sqrt(2)]))
    tpp = latent_effects(latents, labels, weight, decoder, scr=False)  # negatives clamped to 0 first
    torch.testing.assert_close(tpp, torch.tensor([3.0, 0.0, 0.0, 0.0]))
    assert select_top(scr, 1) == [0] and select_top(scr, 2) == [0, 3]
    assert select_top(scr, 4) == [0, 3]  # only the non-zero effects, as SAEBench
    assert select_top(torch.zeros(4), 2) == []
    with pytest.raises(SaekitError, match="N = 5 is more than the dictionary's 4 latents"):
        select_top(scr, 5)
    raw = torch.tensor([[5.0, 5.0, 5.0]])
    pooled = torch.tensor([[1.0, 2.0, 0.0, math.sqrt(2)]])
    torch.testing.assert_close(ablate(raw, pooled, decoder, [1, 3]), torch.tensor([[4.0, 2.0, 5.0]]))
    assert ablate(raw, pooled, decoder, []) is raw


def test_scores_by_hand():
    assert scr_score(0.9, 0.6, 1.0) == pytest.approx(0.75)
    assert scr_score(0.9, 0.6, 0.6005) == 0.0  # under SAEBench's 0.001 floor
    scores = tpp_scores({"a": 1.0, "b": 0.9, "c": 0.8}, {"a": {"a": 0.5, "b": 0.8, "c": 0.8}})
    assert scores["a"]["intended_diff_only"] == pytest.approx(0.5)
    assert scores["a"]["unintended_diff_only"] == pytest.approx(0.05)
    assert scores["a"]["total_metric"] == pytest.approx(0.45)


def _planted_quadrants(per_quadrant: int, seed: int) -> dict[tuple[bool, bool], torch.Tensor]:
    """Latents of 8 features: 0 / 1 fire (1.0) for the target attribute's two values, 2 / 3 (3.0: louder, so a
    biased probe leans on them) for the spurious attribute's, the rest are noise."""
    generator = torch.Generator().manual_seed(seed)
    quadrants = {}
    for target in (True, False):
        for spurious in (True, False):
            f = 0.3 * torch.rand(per_quadrant, 8, generator=generator)
            f[:, 0 if target else 1] += 1.0
            f[:, 2 if spurious else 3] += 3.0
            quadrants[target, spurious] = f
    return quadrants


def _scr_tasks(decoder: torch.Tensor) -> tuple[dict[str, BinaryTask], dict[str, BinaryTask]]:
    from saekit.probing.scr_tpp import scr_binary_tasks

    pooled = {}
    for split, seed in (("train", 0), ("test", 1)):
        quadrants = _planted_quadrants(60, seed)
        pooled[split] = {q: {"sae": f, "raw": f @ decoder} for q, f in quadrants.items()}
    return scr_binary_tasks(pooled, "raw"), scr_binary_tasks(pooled, "sae")


def test_scr_on_a_planted_dictionary_removes_the_spurious_latent():
    decoder = torch.linalg.qr(torch.randn(16, 8, generator=torch.Generator().manual_seed(3)))[0].T  # [8, 16]
    raw, sae = _scr_tasks(decoder)
    assert len(raw["biased"].train_x) == 120 and len(raw["target"].train_x) == 240
    # hand-made probes: target reads latents 0 - 1, spurious 2 - 3, biased both, the spurious three times louder
    probes = {"target": linear(decoder[0] - decoder[1]), "spurious": linear(decoder[2] - decoder[3]),
              "biased": linear(decoder[0] - decoder[1] + 3 * (decoder[2] - decoder[3]))}
    clean, metrics, details = scr_from_pooled(raw, sae, decoder, (2, 4), probes)
    assert clean["target"] == 1.0 and clean["spurious"] == 1.0  # both attributes are plain in the raw activations
    assert clean["biased on target"] < clean["biased on spurious"]  # it leans on the louder, spurious latents
    assert details["scr_metric_direction"] == 1
    assert details["selected"]["dir1_2"] == [2, 3]  # the spurious probe's top latents are the spurious ones
    assert details["selected"]["dir2_2"] == [0, 1]
    # with latents 2 and 3 gone, the biased probe reads only the target attribute: it recovers the gap
    assert details["ablated_accuracy"]["dir1_2"] == 1.0
    assert metrics["scr_metric_threshold_2"] == metrics["scr_dir1_threshold_2"] == pytest.approx(1.0)


def test_tpp_on_a_planted_dictionary_hits_only_its_class():
    generator = torch.Generator().manual_seed(0)
    decoder = torch.linalg.qr(torch.randn(12, 6, generator=generator))[0].T  # [6, 12]
    labels = ["a", "b", "c"]

    def task(label_index: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed(seed)
        y = torch.arange(90) % 2
        f = 0.2 * torch.rand(90, 6, generator=g)
        others = [i for i in range(3) if i != label_index]
        f[y == 1, label_index] += 2.0  # positives: their class's latent
        f[y == 0, torch.tensor(others).repeat(23)[:int((y == 0).sum())]] += 2.0  # negatives: the other classes'
        return f, y

    raw, sae = [], []
    for i, label in enumerate(labels):
        (train_f, train_y), (test_f, test_y) = task(i, 10 + i), task(i, 20 + i)
        sae.append(BinaryTask(label, train_f, train_y, test_f, test_y))
        raw.append(BinaryTask(label, train_f @ decoder, train_y, test_f @ decoder, test_y))
    # class c's probe: +1 on its latent, -0.5 on the others', bias -0.5; positives score 2 - 0.5, negatives -1.5
    probes = {label: linear(decoder[i] - 0.5 * decoder[[j for j in range(3) if j != i]].sum(0), -0.5)
              for i, label in enumerate(labels)}
    clean, metrics, details = tpp_from_tasks(raw, sae, decoder, (1,), probes)
    assert all(value == 1.0 for value in clean.values())
    assert details["selected"] == {"a": {"1": [0]}, "b": {"1": [1]}, "c": {"1": [2]}}
    for label in labels:  # ablating class c's latent: its positives fall to -0.5 (all wrong), nothing else moves
        scores = details["per_class"][label]
        assert scores["tpp_threshold_1_intended_diff_only"] == pytest.approx(0.5)
        assert scores["tpp_threshold_1_unintended_diff_only"] == pytest.approx(0.0)
    assert metrics["tpp_threshold_1_total_metric"] == pytest.approx(0.5)


def test_the_attribution_probe_is_seeded_and_separates_a_separable_task():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(64, 5, generator=generator)
    y = torch.arange(64) % 2
    x[:, 2] += 3.0 * (2 * y - 1)  # a margin along feature 2
    task = BinaryTask("t", x, y, x, y)
    first, again = (train_probe(task, epochs=10, lr=1e-2, seed=1) for _ in range(2))
    assert torch.equal(first.weight, again.weight)
    assert probe_accuracy(first, x, y) >= 0.95
