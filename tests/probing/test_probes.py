"""The probe itself on hand-made features: mean-difference selection, one-vs-rest tasks, planted labels."""

from __future__ import annotations

import pytest
import torch

from saekit.errors import SaekitError
from saekit.probing.pooling import mean_pool
from saekit.probing.probes import BinaryTask, fit_probe, one_vs_rest, sparse_probe, top_k_mean_diff
from saekit.probing.sparse_probing import ClassResult, _averages


def test_mean_diff_selection_by_hand():
    x = torch.tensor([[1.0, 0.0, 5.0, 2.0],
                      [3.0, 0.0, 5.0, 2.0],
                      [0.0, 1.0, 1.0, 2.0],
                      [0.0, 0.0, 2.0, 3.0]])
    y = torch.tensor([1, 1, 0, 0])
    # |mean pos - mean neg| per column: |2 - 0| = 2, |0 - 0.5| = 0.5, |5 - 1.5| = 3.5, |2 - 2.5| = 0.5
    assert top_k_mean_diff(x, y, 1) == [2]
    assert top_k_mean_diff(x, y, 2) == [0, 2]  # ascending index order, as SAEBench keeps the columns
    assert top_k_mean_diff(x, y, 3) == [0, 1, 2]  # the tie 0.5 / 0.5 goes to the lower index
    with pytest.raises(SaekitError, match="k = 5 must be between 1 and the number of features"):
        top_k_mean_diff(x, y, 5)


def _planted(n: int, width: int, column: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 2
    x = torch.rand(n, width, generator=generator)
    x[:, column] = 3.0 * y + 0.1 * torch.rand(n, generator=generator)  # the label, planted in one latent
    return x, y


def test_planted_latent_is_chosen_and_classifies_perfectly():
    train_x, train_y = _planted(200, 64, column=37, seed=0)
    test_x, test_y = _planted(100, 64, column=37, seed=1)
    score = sparse_probe(BinaryTask("planted", train_x, train_y, test_x, test_y), k=1)
    assert score.features == [37]
    assert score.accuracy == 1.0 and score.auc == 1.0
    noise = fit_probe(BinaryTask("noise", train_x, train_y, test_x, test_y), features=[3])  # no signal there
    assert noise.accuracy < 0.7


def test_one_vs_rest_keeps_every_positive_and_draws_as_many_negatives():
    features = torch.arange(12, dtype=torch.float32)[:, None]
    labels = ["a", "b", "c"] * 4
    x, y = one_vs_rest(features, labels, "b", torch.Generator().manual_seed(0))
    assert y.tolist() == [1] * 4 + [0] * 4
    assert x[:4, 0].tolist() == [1.0, 4.0, 7.0, 10.0]
    negatives = set(x[4:, 0].tolist())
    assert len(negatives) == 4 and negatives <= {0.0, 2.0, 3.0, 5.0, 6.0, 8.0, 9.0, 11.0}
    again, _ = one_vs_rest(features, labels, "b", torch.Generator().manual_seed(0))
    assert torch.equal(x, again)  # the draw is the seed's


def test_one_vs_rest_refuses_a_majority_class():
    with pytest.raises(SaekitError, match="more examples than all other classes"):
        one_vs_rest(torch.zeros(5, 2), ["a", "a", "a", "b", "c"], "a", torch.Generator().manual_seed(0))


def test_mean_pool_skips_unkept_positions():
    values = torch.tensor([[[1.0], [2.0], [4.0]], [[8.0], [16.0], [0.0]]])
    keep = torch.tensor([[False, True, True], [False, True, False]])
    assert mean_pool(values, keep)[:, 0].tolist() == [3.0, 16.0]


def test_averages_over_classes():
    from saekit.probing.probes import ProbeScore

    classes = [ClassResult(label, ProbeScore(acc, 0.5), {"sae": {"1": ProbeScore(acc / 2, auc)}})
               for label, acc, auc in (("a", 1.0, 0.9), ("b", 0.5, 0.7))]
    table, llm_all = _averages(classes)
    assert table == {"sae": {"1": {"accuracy": 0.375, "auc": pytest.approx(0.8)}}}
    assert llm_all == {"accuracy": 0.75, "auc": 0.5}
