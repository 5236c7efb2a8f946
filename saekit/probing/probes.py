"""SAEBench's sparse probe on pooled features: one-vs-rest binary tasks, top-k mean-difference selection, and
an L2 logistic regression scored by test accuracy and AUC.

The procedure follows SAEBench's ``sparse_probing/probe_training.py``: positives are every example of a class,
negatives as many drawn (seeded) from the other classes; the k features with the largest
|mean(positive) - mean(negative)| on the training split are kept in ascending index order; sklearn's
``LogisticRegression(penalty="l2", C=1.0, max_iter=1000)`` (lbfgs) is fitted on them; the test accuracy is that
of ``predict``. AUC (from ``decision_function``) is added, as ``sae-probes`` reports it.
"""

from __future__ import annotations

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
    is_positive = torch.tensor([name == label for name in labels])
    positives = features[is_positive]
    others = features[~is_positive]
    if len(others) < len(positives):
        raise SaekitError(f"class {label!r} has more examples than all other classes together; balance the task")
    negatives = others[torch.randperm(len(others), generator=generator)[:len(positives)]]
    y = torch.cat([torch.full((len(positives),), POSITIVE), torch.full((len(negatives),), NEGATIVE)])
    return torch.cat([positives, negatives]), y


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
