"""Scoring arithmetic on hand-made cases: balanced accuracy, F1, AUROC (against brute force), answer parsing."""

import itertools
import math
import random

import pytest

from saekit.autointerp.backends import Completion
from saekit.autointerp.metrics import (
    Judgement,
    auroc,
    balanced_accuracy,
    f1_score,
    mean,
    summarize_judgements,
)
from saekit.autointerp.scorers import judge, parse_choice, parse_yes_no, yes_no_margin


def test_balanced_accuracy_and_f1_by_hand():
    labels = [True, True, True, False]
    predictions = [True, False, False, False]
    # TPR 1/3, TNR 1: balanced accuracy 2/3 (plain accuracy would be 1/2).
    assert balanced_accuracy(labels, predictions) == pytest.approx(2 / 3)
    # TP 1, FP 0, FN 2: F1 = 2/(2+0+2) = 0.5
    assert f1_score(labels, predictions) == pytest.approx(0.5)
    # Saying Yes to everything is chance, whatever the class balance.
    assert balanced_accuracy(labels, [True] * 4) == 0.5
    assert f1_score(labels, [True] * 4) == pytest.approx(6 / 7)
    # Undefined is None, never 0.
    assert balanced_accuracy([True, True], [True, False]) is None
    assert f1_score([False, False], [False, False]) is None
    assert f1_score([False, False], [True, False]) == 0.0


def _brute_auroc(labels, scores):
    pairs = [(p, n) for p, y in zip(scores, labels) if y for n, z in zip(scores, labels) if not z]
    return sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in pairs) / len(pairs)


def test_auroc_matches_brute_force_with_ties():
    rng = random.Random(0)
    for _ in range(200):
        n = rng.randint(2, 12)
        labels = [rng.random() < 0.5 for _ in range(n)]
        if all(labels) or not any(labels):
            assert auroc(labels, [0.0] * n) is None
            continue
        scores = [float(rng.randint(0, 4)) for _ in range(n)]  # many ties
        assert auroc(labels, scores) == pytest.approx(_brute_auroc(labels, scores))
    assert auroc([True, False], [2.0, 1.0]) == 1.0 and auroc([True, False], [1.0, 2.0]) == 0.0
    assert auroc([True, False, True], [3.0, 3.0, 3.0]) == 0.5


def test_missing_answers_are_left_out_not_counted_as_wrong():
    judgements = [Judgement(True, True, 1.0), Judgement(False, False, -1.0),
                  Judgement(True, None, None, "HTTP 500: boom"), Judgement(False, None, None, "HTTP 500: boom")]
    result = summarize_judgements(judgements)
    assert result.balanced_accuracy == 1.0 and result.auroc == 1.0 and result.f1 == 1.0
    assert result.n == 2 and result.n_missing == 2 and result.errors == ["HTTP 500: boom"]
    everything_failed = summarize_judgements([Judgement(True, None, None, "down")] * 3)
    assert everything_failed.balanced_accuracy is None and everything_failed.f1 is None
    assert everything_failed.auroc is None and everything_failed.n_missing == 3
    # AUROC only when every answered item has a margin (no mixing of ranked and unranked items).
    assert summarize_judgements([Judgement(True, True, 0.3), Judgement(False, False, None)]).auroc is None
    assert mean([None, 1.0, 0.0]) == (0.5, 2) and mean([None]) == (None, 0)


def test_answer_parsing_and_logprob_margin():
    assert parse_yes_no("Yes.") is True and parse_yes_no(" no, because") is False
    assert parse_yes_no("**Yes**") is True and parse_yes_no("The feature") is None and parse_yes_no("") is None
    assert parse_choice("3", 5) == 3 and parse_choice("Text 2.", 5) == 2 and parse_choice("9", 5) is None
    assert parse_choice("none", 5) is None
    top = [("Yes", math.log(0.5)), (" yes", math.log(0.1)), ("No", math.log(0.2)), ("The", math.log(0.05))]
    assert yes_no_margin(top) == pytest.approx(math.log(0.6) - math.log(0.2))
    # Only one listed: the other is bounded by the smallest listed logprob.
    assert yes_no_margin([("No", -0.1), ("The", -3.0)]) == pytest.approx(-3.0 + 0.1)
    assert yes_no_margin([("The", -0.1)]) is None and yes_no_margin(None) is None
    # An unreadable text answer falls back on the margin; with neither it is missing.
    assert judge(Completion("Hmm", [("No", -0.1), ("Yes", -2.0)]), True).prediction is False
    missing = judge(Completion("Hmm", None), True)
    assert missing.prediction is None and "unreadable" in missing.error


def test_balanced_accuracy_brute_force_grid():
    for labels in itertools.product([True, False], repeat=4):
        for predictions in itertools.product([True, False], repeat=4):
            pos = [p for y, p in zip(labels, predictions) if y]
            neg = [p for y, p in zip(labels, predictions) if not y]
            value = balanced_accuracy(labels, predictions)
            if not pos or not neg:
                assert value is None
            else:
                assert value == pytest.approx((sum(pos) / len(pos) + sum(not p for p in neg) / len(neg)) / 2)
