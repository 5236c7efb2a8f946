"""The sweep comparison at matched L0: interpolation, exact matches, and groups that miss the target."""

import math

import pytest

from saekit.errors import SaekitError
from saekit.evaluation.summary import SummaryRow, default_match_l0, matched_l0, summarize


def _row(run, architecture, l0, delta_ce, fvu_without_outliers=0.5, site="blocks.1.resid_post"):
    return SummaryRow(run=run, site=site, layer=int(site.split(".")[1]), layers=1, architecture=architecture,
                      width=64, l0=l0, fvu=0.9, fvu_without_outliers=fvu_without_outliers, outlier_variance_share=None,
                      ce_clean=3.0, delta_ce=delta_ce, delta_ce_se=0.01, kl=delta_ce / 2, compute_fraction=None,
                      law=None)


ROWS = [
    _row("topk-k20", "topk", 20.0, 0.8),
    _row("relu-a", "relu", 10.0, 2.0, 0.6),
    _row("relu-b", "relu", 40.0, 1.0, 0.2),
    _row("relu-c", "relu", 160.0, 0.5, 0.1),
    _row("gated-a", "gated", 100.0, 0.4),
    _row("gated-b", "gated", 200.0, 0.3),
]


def test_interpolates_in_log_l0_between_the_bracketing_runs():
    by_architecture = {m.architecture: m for m in matched_l0(ROWS, 20.0)}
    relu = by_architecture["relu"]
    # log(20) is halfway between log(10) and log(40), so the values are the midpoints.
    assert relu.matched and relu.runs == ["relu-a", "relu-b"]
    assert relu.fvu_key == "fvu_without_outliers"
    assert relu.delta_ce == pytest.approx(1.5) and relu.fvu == pytest.approx(0.4)
    assert relu.to_json()["fvu_without_outliers"] == pytest.approx(0.4) and "fvu" not in relu.to_json()
    assert by_architecture["topk"].runs == ["topk-k20"] and by_architecture["topk"].delta_ce == 0.8
    at_80 = {m.architecture: m for m in matched_l0(ROWS, 80.0)}["relu"]
    assert at_80.delta_ce == pytest.approx(0.75) and at_80.runs == ["relu-b", "relu-c"]


def test_a_group_that_never_reaches_the_target_is_marked_unmatched():
    gated = {m.architecture: m for m in matched_l0(ROWS, 20.0)}["gated"]
    assert not gated.matched and gated.delta_ce is None
    assert gated.nearest_run == "gated-a" and math.isclose(gated.nearest_l0, 100.0)


def test_default_target_is_the_topk_l0_and_sites_are_kept_apart():
    assert default_match_l0(ROWS) == 20.0
    assert default_match_l0([r for r in ROWS if r.architecture != "topk"]) == 100.0
    other_site = [*ROWS, _row("relu-z", "relu", 15.0, 9.0, site="blocks.2.resid_post")]
    relu_rows = [m for m in matched_l0(other_site, 20.0) if m.architecture == "relu"]
    assert {m.site: m.matched for m in relu_rows} == {"blocks.1.resid_post": True, "blocks.2.resid_post": False}


def test_rejects_a_non_positive_target(tmp_path):
    with pytest.raises(SaekitError, match="--match-l0 must be positive"):
        summarize([tmp_path], tmp_path / "out", match_l0=0)


def test_the_second_axis_is_read_from_what_probe_explain_and_reliability_left(tmp_path):
    from dataclasses import replace

    from saekit.evaluation.summary import (
        _error,
        _markdown,
        _with_sd,
        autointerp_detection,
        plot_two_axes,
        probing_accuracy,
        seed_sd_near,
    )
    from saekit.io import write_json

    run = tmp_path / "sweep" / "topk-k20"
    for task, accuracy in (("language", 0.8), ("code", 0.6)):
        write_json(run / "probing" / task / "probing.json",
                   {"task": {"name": task}, "mean": {"sae": {"1": {"accuracy": accuracy}, "2": {"accuracy": 0.99}}}})
    write_json(run / "probing" / "odd" / "probing.json", {"task": {"name": "odd"}, "mean": {"sae": {"5": {}}}})
    accuracy, tasks = probing_accuracy(run)
    assert accuracy == pytest.approx(0.7) and tasks == "code, language"  # the k=1 probes only; odd is skipped
    assert probing_accuracy(tmp_path / "never-probed") == (None, None)
    write_json(run / "autointerp" / "scores.json", {"summary": {"explainers": {
        "llm": {"scorers": {"detection": {"balanced_accuracy": {"mean": 0.62}}}},
        "baseline": {"scorers": {"detection": {"balanced_accuracy": {"mean": 0.9}}}}}}})
    assert autointerp_detection(run) == 0.62 and autointerp_detection(tmp_path) is None
    assert seed_sd_near(run) is None
    write_json(tmp_path / "sweep" / "reliability.json", {"metrics": [
        {"metric": "delta_ce", "seed_sd": 0.02}, {"metric": "probe_accuracy_k1", "seed_sd": 0.05},
        {"metric": "kl", "seed_sd": None}]})
    noise = seed_sd_near(run)
    assert noise == {"delta_ce": 0.02, "probe_accuracy_k1": 0.05}

    row = replace(ROWS[0], probing_accuracy=accuracy, probing_tasks=tasks, autointerp_detection=0.62, seed_sd=noise)
    plain = replace(ROWS[1], probing_accuracy=0.5)
    # error bars: the seed SD where the study measured it, ΔCE's standard error otherwise, else none
    assert (_error(row, "delta_ce"), _error(row, "probing_accuracy"), _error(row, "autointerp_detection")) == (
        0.02, 0.05, 0.0)
    assert _error(plain, "delta_ce") == 0.01
    assert _with_sd(row, "probing_accuracy") == "0.700 ± 0.050" and _with_sd(plain, "probing_accuracy") == "0.500"
    assert _with_sd(plain, "autointerp_detection") == "-"
    text = _markdown([row, plain], [], [])
    assert "| probing acc. (k=1) | detection |" in text and "0.700 ± 0.050 | 0.620 |" in text
    assert "tasks each run was probed on: code, language" in text
    path = plot_two_axes([row, plain], [("probing_accuracy", "probing")], tmp_path / "two_axes.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_runs_of_other_objectives_are_their_own_entries_on_the_shared_plots():
    from dataclasses import replace

    from saekit.evaluation.summary import _markdown
    from saekit.training.objectives import ObjectiveConfig

    recipes = [ObjectiveConfig(**kw).recipe for kw in ({}, {"objective": "kl"}, {"finetune_fraction": 0.1})]
    assert recipes == ["mse", "kl", "mse+ft"]
    kl = replace(ROWS[0], run="topk-kl", objective="kl")
    assert (ROWS[0].group, kl.group) == ("topk", "topk, kl")
    text = _markdown([ROWS[0], kl], [], [])
    assert "| topk-k20 | blocks.1.resid_post | topk |" in text
    assert "| topk-kl | blocks.1.resid_post | topk, kl |" in text
