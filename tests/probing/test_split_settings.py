"""sae-probes' data-scarce and class-imbalanced splits: the counts by its rule, the draws, AUC at its extremes, the
refusals (one line, before any model loads, nothing written), and one end-to-end run on the tiny model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from saekit.cli import main
from saekit.data.labelled import Example, balanced_task
from saekit.errors import SaekitError
from saekit.probing.probes import BinaryTask, binary_split, fit_probe, split_counts
from saekit.probing.sparse_probing import ProbeSettings, check_examples, split_plan

from .test_sparse_probing import labelled_rows


def test_split_counts_follow_sae_probes_rule():
    assert split_counts(40, 120, 0.5) == (40, 40)  # no size at 0.5: every positive and as many negatives (SAEBench)
    assert split_counts(40, 40, 0.25, size=20) == (5, 15)  # ceil(0.25 * 20) positives, the rest negatives
    assert split_counts(100, 100, 0.1, size=30) == (3, 27)  # 0.1 * 30 is 3.0000000000000004 in floats: still 3
    assert split_counts(40, 40, 0.2) == (10, 40)  # the largest size the 40 negatives allow: 50
    assert split_counts(40, 160, 0.95) == (40, 2)  # the largest the 40 positives allow: floor(40 / 0.95) = 42


def test_imbalanced_split_draws_exact_counts_per_class():
    features = torch.arange(30, dtype=torch.float32)[:, None]
    labels = ["a", "b", "c"] * 10
    x, y = binary_split(features, labels, "a", torch.Generator().manual_seed(0), positives=3, negatives=12)
    assert y.tolist() == [1] * 3 + [0] * 12
    positives, negatives = set(x[:3, 0].tolist()), set(x[3:, 0].tolist())
    assert len(positives) == 3 and positives <= {float(i) for i in range(0, 30, 3)}  # three distinct rows of "a"
    assert len(negatives) == 12 and not negatives & {float(i) for i in range(0, 30, 3)}
    again, _ = binary_split(features, labels, "a", torch.Generator().manual_seed(0), positives=3, negatives=12)
    assert torch.equal(x, again)
    with pytest.raises(SaekitError, match="needs at least one of each, from the 10 and 20 there are"):
        binary_split(features, labels, "a", torch.Generator().manual_seed(0), positives=11, negatives=5)


def test_auc_is_one_when_separable_and_zero_when_reversed():
    train_x = torch.tensor([[0.0], [0.1], [0.2], [1.0], [1.1], [1.2]])
    train_y = torch.tensor([0, 0, 0, 1, 1, 1])
    test_x = torch.tensor([[0.05], [0.15], [1.05], [1.15]])
    separable = fit_probe(BinaryTask("s", train_x, train_y, test_x, torch.tensor([0, 0, 1, 1])))
    reversed_ = fit_probe(BinaryTask("r", train_x, train_y, test_x, torch.tensor([1, 1, 0, 0])))
    assert (separable.auc, separable.accuracy) == (1.0, 1.0)
    assert (reversed_.auc, reversed_.accuracy) == (0.0, 0.0)


def _task(per_class: int = 20, classes: str = "abc"):
    examples = [Example(f"{c} text {i}", c, f"{c}{i}") for c in classes for i in range(per_class)]
    # every example in training but a few: the split comes from ``split_of``, the counts are known
    return balanced_task("toy", "hand-made", examples, 16, 4, split_of=lambda e: int(e.document[1:]) >= 16)


def test_split_plan_counts_and_refusals():
    task = _task()  # 16 training texts per class, 32 of the other classes
    plan = split_plan(task, ProbeSettings(train_size=10, positive_fraction=0.3))
    assert (plan.setting, plan.train_positives, plan.train_negatives) == ("data-scarce, class-imbalanced", 3, 7)
    assert (plan.test_positives, plan.test_negatives) == (None, None)  # the test split stays balanced
    plan = split_plan(task, ProbeSettings(positive_fraction=0.2, test_positive_fraction=0.25))
    assert (plan.setting, plan.train_positives, plan.train_negatives) == ("class-imbalanced", 8, 32)
    assert (plan.test_positives, plan.test_negatives) == (3, 7)  # 10 = floor(min(4 / 0.25, 8 / 0.75))
    assert split_plan(task, ProbeSettings()).setting == "balanced"
    with pytest.raises(SaekitError, match="asks 20 positives and 20 negatives per class, the task has 16 and 32; "
                                          "use a smaller --train-size"):
        check_examples(task, ProbeSettings(train_size=40, k=(1,)))
    with pytest.raises(SaekitError, match="has 1 training positives per class, fewer than k = 2"):
        check_examples(task, ProbeSettings(train_size=10, positive_fraction=0.05, k=(1, 2)))
    with pytest.raises(SaekitError, match="a training split of 3 positives and 0 negatives needs at least one"):
        check_examples(task, ProbeSettings(train_size=3, positive_fraction=0.9, k=(1,)))


@pytest.mark.parametrize("flags, message", [
    (["--positive-fraction", "1.5"], "positive-fraction must be > 0 and < 1, got 1.5"),
    (["--positive-fraction", "0"], "positive-fraction must be > 0 and < 1, got 0"),
    (["--test-positive-fraction", "1"], "test-positive-fraction must be > 0 and < 1, got 1"),
    (["--train-size", "1"], "train-size must be >= 2, got 1"),
    (["--train-size", "10", "--positive-fraction", "0.05", "--k", "1,2"], "fewer than k = 2"),
    (["--train-size", "500"], "asks 250 positives and 250 negatives per class"),
])
def test_bad_split_settings_are_one_line_and_write_nothing(probe_run_dir, tmp_path, capsys, flags, message):
    data = tmp_path / "pets.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in labelled_rows()))
    out = tmp_path / "out"
    assert main(["probe", str(probe_run_dir), "--task", str(data), "--out", str(out), *flags]) == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("saekit: error:")]
    assert len(errors) == 1 and message in errors[0]
    assert not out.exists()


def write_split_files(root: Path, per_class: int = 40) -> None:
    """A local dataset folder: train and test JSON Lines files, the cat/dog rows split by row number."""
    rows = labelled_rows(per_class)
    (root / "data").mkdir(parents=True)
    for split, keep in (("train", lambda i: i % 5 != 0), ("test", lambda i: i % 5 == 0)):
        lines = [json.dumps(row) + "\n" for i, row in enumerate(rows) if keep(i)]
        (root / "data" / f"{split}-00000-of-00001.jsonl").write_text("".join(lines))


def test_scarce_imbalanced_probe_end_to_end_on_a_local_dataset(probe_run_dir, tmp_path, capsys):
    data = tmp_path / "pets"
    write_split_files(data)  # 32 training and 8 test texts per class, the files' own split
    out = tmp_path / "out"
    assert main(["probe", str(probe_run_dir), "--task", f"hf:{data}", "--out", str(out), "--k", "1,2",
                 "--context-length", "8", "--train-size", "12", "--positive-fraction", "0.25"]) == 0
    results = json.loads((out / "probing.json").read_text())
    assert results["task"]["train_per_class"] == 32 and results["task"]["test_per_class"] == 8
    assert {k: results["split"][k] for k in ("setting", "train_positives", "train_negatives", "test_positives",
                                             "test_negatives")} == {
        "setting": "data-scarce, class-imbalanced", "train_positives": 3, "train_negatives": 9,
        "test_positives": 8, "test_negatives": 8}
    assert all(0.0 <= c["top_k"]["sae"]["2"]["auc"] <= 1.0 for c in results["classes"])
    saebench = json.loads((out / "sparse_probing_saebench.json").read_text())
    assert saebench["eval_config"]["probe_train_set_size"] == 12
    assert saebench["eval_config"]["probe_test_set_size"] == 16
    report = (out / "probing.md").read_text()
    assert "Split setting: data-scarce, class-imbalanced (sae-probes" in report
    assert "3 positive and 9 negative training texts" in report and "## By class (test AUC)" in report
    printed = capsys.readouterr().out
    assert "(AUC " in printed and "data-scarce, class-imbalanced split" in printed


def test_split_settings_are_refused_outside_sparse_probing(probe_run_dir, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["probe", str(probe_run_dir), "--tpp", "--task", "language", "--positive-fraction", "0.2",
                 "--out", str(out)]) == 1
    assert "apply to sparse probing, not --tpp" in capsys.readouterr().err
    assert not out.exists()
