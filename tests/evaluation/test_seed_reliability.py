"""``saekit reliability``: seed SD, SNR, checkpoint separation and rank correlation, on hand-made tables and on
real runs of the tiny model and a toy world."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

import pytest

from saekit.cli import main
from saekit.evaluation.reliability import (
    Observation,
    checkpoint_separation,
    pooled_sd,
    reliability_markdown,
    reliability_table,
    signal_to_noise,
    spearman,
)
from saekit.evaluation.report import render_report
from saekit.evaluation.results import EvaluationResults
from saekit.probing.scr_tpp import RemovalSettings, tpp_run
from saekit.probing.sparse_probing import ProbeSettings, probe_run

# A run config small enough to train in a second: 8 steps of 256 tokens at blocks.1.resid_post of the tiny model.
TINY = ["--site", "blocks.1.resid_post", "--context-length", "16", "--contexts-per-chunk", "16",
        "--expansion-factor", "4", "--train-tokens", "2048", "--batch-size", "256", "--shuffle-buffer-tokens", "512",
        "--eval-tokens", "280", "--eval-batch-contexts", "4"]


def tiny_args(model_dir: Path, root: Path, *extra: str) -> list[str]:
    return ["reliability", "--model", str(model_dir), "--cache-dir", str(root / "cache"), "--runs-dir",
            str(root / "runs"), "--name", "rel", *TINY, *extra]


def observations(table: dict[str, dict[int, float]], metric: str = "m", fraction: float = 1.0) -> list[Observation]:
    """recipe -> seed -> value, as observations of one metric."""
    return [Observation(recipe, seed, fraction, {metric: value})
            for recipe, by_seed in table.items() for seed, value in by_seed.items()]


# ---- the statistics, on tables small enough to check by hand -----------------------------------------------------


def test_seed_sd_and_snr_on_a_known_table():
    # Recipe a: 1, 2, 3 (mean 2); recipe b: 4, 5, 9 (mean 6). Squared deviations 2 + 14 = 16 over 2 + 2 dof.
    table = reliability_table(observations({"a": {0: 1, 1: 2, 2: 3}, "b": {0: 4, 1: 5, 2: 9}}), {"m": "m"}, "hand")
    (row,) = table.metrics
    assert row.seed_sd == pytest.approx(2.0)  # sqrt(16 / 4)
    assert row.mean == pytest.approx(4.0)
    # Recipe means 2 and 6: SD (n - 1) = sqrt(8) = 2.828...; over the seed SD 2.
    assert row.snr == pytest.approx(math.sqrt(8) / 2)
    assert pooled_sd([[1.0, 2.0, 3.0], [4.0, 5.0, 9.0]]) == pytest.approx(2.0)
    assert pooled_sd([[1.0], [5.0]]) is None  # one seed per recipe: no spread to measure


def test_a_metric_identical_across_seeds_has_sd_zero_and_infinite_snr():
    table = reliability_table(observations({"a": {0: 7, 1: 7}, "b": {0: 9, 1: 9}}), {"m": "L0"}, "hand")
    (row,) = table.metrics
    assert row.seed_sd == 0 and row.snr is None and row.snr_note.startswith("infinite")
    assert "| L0 | 8 | 0 | ∞ |" in reliability_markdown(table)
    # The same seeds agreeing and the recipes agreeing too: no signal, no noise, no SNR.
    assert signal_to_noise([[3.0, 3.0], [3.0, 3.0]]) == (None, "undefined: neither the recipes nor the seeds differ")
    # One recipe: the SNR needs a grid.
    assert signal_to_noise([[1.0, 2.0]])[0] is None


def test_checkpoint_separation_against_the_seed_noise():
    # Seeds at 0.5 and 1.0 of the budget: 1, 3 then 11, 13; noise sqrt((2 + 2) / 2) = sqrt(2); step 10.
    ratio, separated, note = checkpoint_separation({"a": {0.5: [1.0, 3.0], 1.0: [11.0, 13.0]}})
    assert ratio == pytest.approx(10 / math.sqrt(2)) and separated and note is None
    # The same noise, a step of 1: not told apart.
    ratio, separated, _ = checkpoint_separation({"a": {0.5: [1.0, 3.0], 1.0: [2.0, 4.0]}})
    assert ratio == pytest.approx(1 / math.sqrt(2)) and separated is False
    # The smallest step over recipes decides: recipe b barely moves.
    ratio, separated, _ = checkpoint_separation({"a": {0.5: [1.0, 3.0], 1.0: [11.0, 13.0]},
                                                 "b": {0.5: [1.0, 3.0], 1.0: [1.5, 3.5]}})
    assert ratio == pytest.approx(0.5 / math.sqrt(2)) and separated is False
    assert checkpoint_separation({"a": {1.0: [1.0, 2.0]}}) == (None, None, "no checkpoints besides the full run")


def test_spearman_on_constructed_cases():
    assert spearman([1, 2, 3, 4], [10, 20, 25, 100]) == pytest.approx(1.0)  # monotone, not linear
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # Ties share their average rank: y ranks 1, 2, 3.5, 5, 3.5 against 1..5 give 8 / sqrt(10 * 9.5).
    assert spearman([1, 2, 3, 4, 5], [5, 6, 7, 8, 7]) == pytest.approx(8 / math.sqrt(95))
    assert spearman([1, 2, 3], [5, 5, 5]) is None  # a constant side has no ranking
    assert spearman([1, 2], [1, 2]) is None  # too few runs


# ---- the command on the tiny model -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model_study(tiny_model_dir, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("reliability")
    assert main(tiny_args(tiny_model_dir, root, "--seeds", "0,1", "--grid", "topk:k=2,4", "--checkpoints",
                          "0.5")) == 0
    return root / "runs" / "rel"


def test_cli_writes_both_files_and_the_seed_sd_of_the_runs(model_study):
    study = json.loads((model_study / "reliability.json").read_text())
    assert (model_study / "reliability.md").read_text().startswith("# How much to trust each metric")
    assert study["seeds"] == [0, 1] and study["fractions"] == [0.5, 1.0]
    assert study["recipes"] == ["rel/topk-k2", "rel/topk-k4"]
    metrics = {m["metric"]: m for m in study["metrics"]}
    assert {"delta_ce", "kl", "fvu", "fvu_without_outliers", "l0", "dead_fraction", "compute_fraction"} <= set(metrics)
    # Recompute FVU's seed SD and SNR from the runs' own metrics.json.
    fvu = {recipe: [json.loads((model_study / f"{recipe}-seed{seed}" / "metrics.json").read_text())
                    ["reconstruction"]["blocks.1.resid_post"]["fvu"] for seed in (0, 1)] for recipe in ("topk-k2",
                                                                                                   "topk-k4")}
    sd = math.sqrt((statistics.variance(fvu["topk-k2"]) + statistics.variance(fvu["topk-k4"])) / 2)
    assert metrics["fvu"]["seed_sd"] == pytest.approx(sd)
    assert metrics["fvu"]["snr"] == pytest.approx(statistics.stdev(map(statistics.fmean, fvu.values())) / sd)
    # TopK's L0 is its k on every seed: no seed noise, recipes apart.
    assert metrics["l0"]["seed_sd"] == 0 and metrics["l0"]["snr_note"].startswith("infinite")
    assert metrics["fvu"]["rank_correlation"] is None  # no ground truth on a model


def test_seeds_train_from_one_model_pass(model_study):
    # The first seed's full runs compute the activations; every other run reads them from the cache.
    forward = {d.name: json.loads((d / "throughput.json").read_text())["model_forward_tokens"]
               for d in model_study.iterdir() if d.is_dir()}
    assert len(forward) == 8  # 2 recipes x 2 seeds x (full, half)
    assert {name for name, tokens in forward.items() if tokens > 0} == {"topk-k2-seed0", "topk-k4-seed0"}


def test_run_reports_show_the_seed_sd(model_study):
    study = json.loads((model_study / "reliability.json").read_text())
    sd = {m["metric"]: m["seed_sd"] for m in study["metrics"]}
    run = model_study / "topk-k4-seed1"
    metrics = EvaluationResults.from_dict(json.loads((run / "metrics.json").read_text()))
    report = (run / "report.md").read_text()
    assert f"**{metrics.reconstruction['blocks.1.resid_post'].fvu:.4f}** (seed SD {sd['fvu']:.3g})" in report
    assert f"**{metrics.losses.delta_ce_spliced.mean:.4f} nats** (seed SD {sd['delta_ce']:.3g})" in report
    # Passed explicitly, it is shown whatever sits beside the run; with an empty map, nothing is.
    assert "(seed SD 0.0123)" in render_report(metrics, {"fvu": 0.0123})
    assert "seed SD" not in render_report(metrics, {})


def test_task_adds_sparse_probing_accuracy_and_tpp(tiny_model_dir, tiny_loaded, tmp_path):
    rows = [{"text": f"{' '.join(words)} n{i}", "label": label}
            for label, words in (("cat", ("meow", "purr", "whiskers")), ("dog", ("woof", "bark", "leash")))
            for i in range(40)]
    task = tmp_path / "pets.jsonl"
    task.write_text("".join(json.dumps(row) + "\n" for row in rows))
    assert main(tiny_args(tiny_model_dir, tmp_path, "--seeds", "3,4", "--checkpoints", "none", "--task",
                          str(task), "--train-per-class", "25", "--test-per-class", "8", "--tpp")) == 0
    study = json.loads((tmp_path / "runs" / "rel" / "reliability.json").read_text())
    metrics = {m["metric"]: m for m in study["metrics"]}
    assert {"probe_accuracy_k1", "probe_accuracy_k2", "probe_accuracy_k5"} <= set(metrics)
    seed3 = next(o for o in study["observations"] if o["seed"] == 3)
    # every run's texts pooled in one pass give what probing that run alone gives, on the sizes asked for
    probed = probe_run(seed3["run"], str(task), ProbeSettings(train_per_class=25, test_per_class=8), tiny_loaded)
    assert probed.task["train_per_class"] == 25 and probed.task["test_per_class"] == 8
    assert seed3["values"]["probe_accuracy_k2"] == probed.mean["sae"]["2"]["accuracy"]
    assert seed3["values"]["probe_accuracy_k1"] == probed.mean["sae"]["1"]["accuracy"]
    values = [o["values"]["probe_accuracy_k5"] for o in study["observations"]]
    assert metrics["probe_accuracy_k5"]["seed_sd"] == pytest.approx(statistics.stdev(values))
    # TPP wired through (zero here: SAEBench's probe lr barely moves on the tiny model; tests/probing/
    # test_tpp_of_runs.py compares non-zero scores)
    alone = tpp_run(seed3["run"], str(task), ProbeSettings(train_per_class=25, test_per_class=8),
                    RemovalSettings(n_values=(2, 20)), tiny_loaded)
    for n in (2, 20):
        assert seed3["values"][f"tpp_n{n}"] == alone.metrics[f"tpp_threshold_{n}_total_metric"]
    assert {"tpp_n2", "tpp_n20"} <= set(metrics)


@pytest.mark.parametrize(("flags", "message"), [
    (["--seeds", "0"], "--seeds needs at least 2 distinct seeds to measure seed noise, got 0"),
    (["--seeds", "1,1"], "--seeds needs at least 2 distinct seeds to measure seed noise, got 1,1"),
    (["--task", "no-such-task"], "unknown task 'no-such-task'"),
    (["--checkpoints", "0.01"], "--checkpoints 0.01 of 8 steps is less than one step"),
    (["--toy", "sparse", "--task", "language"], "--task probes the model's activations"),
    (["--train-per-class", "20"], "--train-per-class and --test-per-class size the --task's splits; give --task"),
    (["--tpp"], "--tpp runs on the classes of a --task; give --task too"),
    (["--grid", "nope:k=1"], "unknown architecture 'nope' in grid"),
    (["--cache-dir", "none"], "--cache-dir none would run the model again for every seed"),
])
def test_bad_input_is_one_line_and_writes_nothing(tiny_model_dir, tmp_path, capsys, flags, message):
    assert main(tiny_args(tiny_model_dir, tmp_path, *flags)) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("saekit: error: ") and message in lines[0]
    assert sorted(tmp_path.iterdir()) == []  # no runs, no cache, no reliability files


# ---- the command on a toy world ----------------------------------------------------------------------------------


def test_toy_world_rank_correlates_every_metric_with_recovery(tmp_path):
    from scipy.stats import spearmanr

    assert main(["reliability", "--toy", "sparse", "--seeds", "0,1,2", "--grid", "topk:k=1,4", "--checkpoints",
                 "0.5", "--runs-dir", str(tmp_path), "--name", "toy", "--train-tokens", "5120", "--batch-size",
                 "256", "--lr", "0.01"]) == 0
    study = json.loads((tmp_path / "toy" / "reliability.json").read_text())
    assert study["ground_truth"] == "mcc" and len(study["observations"]) == 2 * 3 * 2
    metrics = {m["metric"]: m for m in study["metrics"]}
    assert metrics["mcc"]["rank_correlation"] is None  # the ground truth itself
    mcc = [o["values"]["mcc"] for o in study["observations"]]
    for key in ("fvu", "recovery", "f1"):
        values = [o["values"][key] for o in study["observations"]]
        assert metrics[key]["rank_correlation"] == pytest.approx(spearmanr(values, mcc).statistic)
    assert "rank corr. with mcc" in (tmp_path / "toy" / "reliability.md").read_text()
    assert not any(d.is_dir() for d in (tmp_path / "toy").iterdir())  # a toy study keeps no run directories
