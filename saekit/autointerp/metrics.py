"""Scoring arithmetic: balanced accuracy, F1, AUROC and intruder accuracy, with missing answers left out.

Every metric returns None when it is undefined (a class is empty, nothing was answered), never 0.
AUROC is the Mann-Whitney probability that a random positive outscores a random negative, ties 1/2.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any


def balanced_accuracy(labels: Sequence[bool], predictions: Sequence[bool]) -> float | None:
    """Mean of the true-positive and true-negative rates; chance is 0.5 whatever the class balance."""
    positives = [p for y, p in zip(labels, predictions) if y]
    negatives = [p for y, p in zip(labels, predictions) if not y]
    if not positives or not negatives:
        return None
    tpr = sum(positives) / len(positives)
    tnr = sum(not p for p in negatives) / len(negatives)
    return (tpr + tnr) / 2


def f1_score(labels: Sequence[bool], predictions: Sequence[bool]) -> float | None:
    """F1 of the positive class; None when there are no positives and none was predicted."""
    tp = sum(1 for y, p in zip(labels, predictions) if y and p)
    fp = sum(1 for y, p in zip(labels, predictions) if not y and p)
    fn = sum(1 for y, p in zip(labels, predictions) if y and not p)
    return None if 2 * tp + fp + fn == 0 else 2 * tp / (2 * tp + fp + fn)


def auroc(labels: Sequence[bool], scores: Sequence[float]) -> float | None:
    """Area under the ROC curve via average ranks (O(n log n)); None if a class is empty."""
    n = len(scores)
    n_pos = sum(1 for y in labels if y)
    n_neg = n - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    order = sorted(range(n), key=lambda i: scores[i])
    ranks = [0.0] * n
    i = 0
    while i < n:
        j = i
        while j + 1 < n and scores[order[j + 1]] == scores[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1  # 1-based average rank of the tie group
        i = j + 1
    rank_sum = sum(r for r, y in zip(ranks, labels) if y)
    return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


@dataclass
class Judgement:
    """One scored item: its true label, the scorer's yes/no (None: unparsed or failed), its logprob margin."""

    label: bool
    prediction: bool | None
    score: float | None = None  # log P(yes) - log P(no) when the backend gave logprobs
    error: str | None = None


@dataclass
class ScoreResult:
    """One scorer's result for one explanation of one latent."""

    balanced_accuracy: float | None = None
    f1: float | None = None
    auroc: float | None = None
    accuracy: float | None = None  # intruder: fraction of trials where the intruder was found
    chance: float = 0.5
    n: int = 0  # items with an answer
    n_positive: int = 0
    n_negative: int = 0
    n_missing: int = 0  # items whose request failed or whose answer could not be read
    errors: list[str] = field(default_factory=list)
    note: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def failed(cls, error: str, chance: float = 0.5) -> ScoreResult:
        return cls(chance=chance, errors=[error])


def summarize_judgements(judgements: Sequence[Judgement], max_errors: int = 5) -> ScoreResult:
    """Balanced accuracy and F1 over answered items; AUROC only when every answered item has a logprob margin."""
    answered = [j for j in judgements if j.prediction is not None]
    errors = list(dict.fromkeys(j.error for j in judgements if j.error))[:max_errors]
    labels = [j.label for j in answered]
    predictions = [bool(j.prediction) for j in answered]
    scored = [j for j in judgements if j.score is not None]
    area = None
    if scored and len(scored) == len(answered):
        area = auroc([j.label for j in scored], [float(j.score) for j in scored])
    return ScoreResult(
        balanced_accuracy=balanced_accuracy(labels, predictions), f1=f1_score(labels, predictions), auroc=area,
        n=len(answered), n_positive=sum(labels), n_negative=len(labels) - sum(labels),
        n_missing=len(judgements) - len(answered), errors=errors,
    )


def mean(values: Sequence[float | None]) -> tuple[float | None, int]:
    """Mean of the non-missing values and how many there were."""
    present = [float(v) for v in values if v is not None]
    return (sum(present) / len(present) if present else None), len(present)
