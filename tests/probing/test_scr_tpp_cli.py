"""``saekit probe --tpp / --scr / --structure`` end to end on the tiny run: files, layouts, warning, bad input."""

from __future__ import annotations

import json

import pytest

from saekit.cli import main
from saekit.probing.scr_tpp import RELIABILITY_WARNING

from .test_sparse_probing import labelled_jsonl, labelled_rows  # noqa: F401  (the fixture and its rows)

FAST = ["--context-length", "8", "--n-values", "1,2,500", "--probe-epochs", "2"]


def test_tpp_writes_results_report_warning_and_saebench_layout(probe_run_dir, labelled_jsonl, tmp_path):  # noqa: F811
    out = tmp_path / "tpp"
    assert main(["probe", str(probe_run_dir), "--task", str(labelled_jsonl), "--tpp", "--out", str(out), *FAST]) == 0
    results = json.loads((out / "tpp.json").read_text())
    assert results["warning"] == RELIABILITY_WARNING and results["settings"]["n_values"] == [1, 2]  # 500 > width
    saebench = json.loads((out / "tpp_saebench.json").read_text())
    assert saebench["eval_type_id"] == "tpp"
    assert saebench["eval_result_metrics"]["tpp_metrics"] == results["metrics"]
    assert set(saebench["eval_result_unstructured"]["pets"]) == {"cat", "dog"}
    report = (out / "tpp.md").read_text()
    assert "Chanin" in report and "Ablation over the texts' real tokens only" in report


def test_scr_on_the_builtin_mix(probe_run_dir, tmp_path):
    out = tmp_path / "scr"
    assert main(["probe", str(probe_run_dir), "--scr", "--out", str(out), "--train-per-class", "6",
                 "--test-per-class", "3", "--saebench-masked-positions", *FAST]) == 0
    results = json.loads((out / "scr.json").read_text())
    assert "Ablation as SAEBench 0.6.0 does it" in (out / "scr.md").read_text()
    assert results["task"]["name"] == "topic-language" and results["task"]["train_per_quadrant"] == 6
    assert set(results["clean_accuracy"]) == {"target", "spurious", "biased on target", "biased on spurious",
                                              "biased on biased"}
    saebench = json.loads((out / "scr_saebench.json").read_text())
    assert saebench["eval_type_id"] == "scr"
    assert "scr_dir1_threshold_2" in saebench["eval_result_metrics"]["scr_metrics"]
    assert RELIABILITY_WARNING in (out / "scr.md").read_text()


def test_structure_writes_mdl_and_meta_structure(probe_run_dir, tmp_path):
    out = tmp_path / "structure"
    assert main(["probe", str(probe_run_dir), "--structure", "--out", str(out), "--mdl-tokens", "64",
                 "--meta-steps", "5", "--meta-batch-size", "16", "--num-bins", "4,8"]) == 0
    results = json.loads((out / "structure.json").read_text())
    assert [row["num_bins"] for row in results["mdl"]] == [4, 8]
    assert results["meta"]["meta_width"] == 32  # a quarter of the tiny run's 128 latents
    mdl = json.loads((out / "mdl_saebench.json").read_text())
    assert mdl["eval_type_id"] == "mdl" and len(mdl["eval_results"]) == 2
    meta = json.loads((out / "meta_structure_saebench.json").read_text())
    fve = meta["eval_result_metrics"]["meta_structure"]["decoder_fraction_variance_explained"]
    assert fve == results["meta"]["decoder_fraction_variance_explained"]


@pytest.mark.parametrize("flags, message", [
    (["--tpp"], "saekit probe --tpp needs --task"),
    (["--scr", "--task", "no-such-mix"], "unknown SCR task 'no-such-mix'"),
    (["--tpp", "--task", "PETS", "--n-values", "500"], "every --n-values entry is above the dictionary's 128"),
])
def test_bad_input_is_one_line_and_writes_nothing(probe_run_dir, labelled_jsonl, tmp_path, capsys, flags,  # noqa: F811
                                                  message):
    out = tmp_path / "out"
    flags = [str(labelled_jsonl) if flag == "PETS" else flag for flag in flags]
    assert main(["probe", str(probe_run_dir), "--out", str(out), "--context-length", "8", *flags]) == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("saekit: error:")]
    assert len(errors) == 1 and message in errors[0]
    assert not out.exists()
