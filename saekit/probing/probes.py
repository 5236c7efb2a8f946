"""SAEBench's sparse probe on pooled features: one-vs-rest binary tasks, top-k mean-difference selection, and
an L2 logistic regression scored by test accuracy and AUC.

The procedure follows SAEBench's ``sparse_probing/probe_training.py``: positives are every example of a class,
negatives as many drawn (seeded) from the other classes; the k features with the largest
|mean(positive) - mean(negative)| on the training split are kept in ascending index order; sklearn's
``LogisticRegression(penalty="l2", C=1.0, max_iter=1000)`` (lbfgs) is fitted on them; the test accuracy is that
of ``predict``. AUC (from ``decision_function``) is added, as ``sae-probes`` reports it.

``sae-probes`` (Kantamneni et al. 2025) also probes with few training examples and with a minority positive class:
``split_counts`` gives a binary split's positives and negatives for a size and a positive fraction by its rule
(``ceil(fraction * size)`` positives, the rest negatives), and ``binary_split`` draws them.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, roc_auc_score
from torch import Tensor

from saekit.errors import SaekitError

POSITIVE, NEGATIVE = 1, 0  # SAEBench's label values
MAX_ITER = 1000  # SAEBench's setting (sklearn's default is 100)


@dataclass(frozen=True)
class BinaryTask:
    """One class against the rest: features and 0/1 labels for both splits."""

    label: str
    train_x: Tensor
    train_y: Tensor
    test_x: Tensor
    test_y: Tensor


@dataclass(frozen=True)
class ProbeScore:
    """A fitted probe's test accuracy and AUC, and the features it read (None: all of them)."""

    accuracy: float
    auc: float
    features: list[int] | None = None


def one_vs_rest(features: Tensor, labels: list[str], label: str, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Every row of ``label`` (1) and as many rows drawn from the other labels (0), the negatives drawn with
    ``generator``. Rows keep their order: positives first, negatives in draw order."""
    return binary_split(features, labels, label, generator)


def binary_split(features: Tensor, labels: list[str], label: str, generator: torch.Generator,
                 positives: int | None = None, negatives: int | None = None) -> tuple[Tensor, Tensor]:
    """``positives`` rows of ``label`` (1; None: all of them, in order) and ``negatives`` rows of the other labels
    (0; None: as many as the positives), each drawn with ``generator``, positives first.

    All positives in order and the negatives' one draw is SAEBench's balanced split exactly, so the default
    consumes the generator as before; only a subset of positives costs a draw of its own (made first)."""
    is_positive = torch.tensor([name == label for name in labels])
    pool, others = features[is_positive], features[~is_positive]
    wanted_pos = len(pool) if positives is None else positives
    wanted_neg = wanted_pos if negatives is None else negatives
    if negatives is None and len(others) < wanted_pos:
        raise SaekitError(f"class {label!r} has more examples than all other classes together; balance the task")
    if not (1 <= wanted_pos <= len(pool) and 1 <= wanted_neg <= len(others)):
        raise SaekitError(f"class {label!r}: a split of {wanted_pos} positives and {wanted_neg} negatives needs at "
                          f"least one of each, from the {len(pool)} and {len(others)} there are")
    if wanted_pos < len(pool):
        pool = pool[torch.randperm(len(pool), generator=generator)[:wanted_pos]]
    drawn = others[torch.randperm(len(others), generator=generator)[:wanted_neg]]
    y = torch.cat([torch.full((wanted_pos,), POSITIVE), torch.full((wanted_neg,), NEGATIVE)])
    return torch.cat([pool, drawn]), y


def split_counts(available_positives: int, available_negatives: int, fraction: float,
                 size: int | None = None) -> tuple[int, int]:
    """(positives, negatives) of a binary split of ``size`` texts with a share ``fraction`` of positives, by
    sae-probes' rule: ``ceil(fraction * size)`` positives, the rest negatives. Without a size, the largest one the
    available texts allow at that fraction (sae-probes takes the largest its data allow too); at 0.5 that is every
    positive and as many negatives, SAEBench's split. The counts are not checked against what is available."""
    if size is None:
        size = math.floor(min(available_positives / fraction, available_negatives / (1 - fraction)) + 1e-9)
    positives = math.ceil(round(fraction * size, 9))  # round: 0.1 * 30 is 3.0000000000000004, 3 positives not 4
    return positives, size - positives


def top_k_mean_diff(x: Tensor, y: Tensor, k: int) -> list[int]:
    """Indices of the ``k`` columns with the largest |mean over positives - mean over negatives|, ascending."""
    if not 1 <= k <= x.shape[1]:
        raise SaekitError(f"k = {k} must be between 1 and the number of features ({x.shape[1]})")
    diff = (x[y == POSITIVE].mean(0) - x[y == NEGATIVE].mean(0)).abs()
    order = torch.argsort(diff, descending=True, stable=True)[:k]
    return sorted(order.tolist())


def fit_probe(task: BinaryTask, features: list[int] | None = None) -> ProbeScore:
    """SAEBench's logistic regression on the chosen columns (all when None), scored on the test split."""
    train_x, test_x = task.train_x, task.test_x
    if features is not None:
        train_x, test_x = train_x[:, features], test_x[:, features]
    train_np, test_np = train_x.float().numpy(), test_x.float().numpy()
    test_y = task.test_y.numpy()
    probe = LogisticRegression(C=1.0, max_iter=MAX_ITER)  # L2, lbfgs: the defaults
    with warnings.catch_warnings():  # SAEBench fits these unconverged too; the score is what counts
        warnings.simplefilter("ignore", ConvergenceWarning)
        probe.fit(train_np, task.train_y.numpy())
    accuracy = float(accuracy_score(test_y, probe.predict(test_np)))
    auc = float(roc_auc_score(test_y, probe.decision_function(test_np))) if len(np.unique(test_y)) == 2 else 0.5
    return ProbeScore(accuracy, auc, features)


def sparse_probe(task: BinaryTask, k: int) -> ProbeScore:
    """Select ``k`` features by mean difference on the training split, then fit and score the probe."""
    return fit_probe(task, top_k_mean_diff(task.train_x, task.train_y, k))
