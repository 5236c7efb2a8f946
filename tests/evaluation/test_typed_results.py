"""metrics.json read into typed results: the damage, effective compute and generations are dataclasses whose
attributes hold the numbers of the file, and writing them back gives the same JSON, key for key.

The legacy fixture (``tests/fixtures/legacy_run``, written by an older saekit) and a freshly written
evaluation are both checked against the file read independently with ``json.load``.
"""

import json
import shutil
from pathlib import Path

import pytest

from saekit.evaluation.damage import TokenDamage, TokenDamageRow, WorstPosition
from saekit.evaluation.effective_compute import (
    ComputeNotReported,
    EffectiveCompute,
    ParameterEquivalent,
    ScalingLaw,
    SensitivityRow,
)
from saekit.evaluation.evaluate import evaluate_run
from saekit.evaluation.results import EvaluationResults, SideBySide
from saekit.evaluation.summary import load_results

LEGACY = Path(__file__).parents[1] / "fixtures" / "legacy_run"


def _read(path: Path) -> dict:
    with open(path, encoding="utf-8") as file:
        return json.load(file)


def _check_damage(damage: TokenDamage, data: dict) -> None:
    assert isinstance(damage, TokenDamage)
    assert damage.note == data["note"]
    for name in ("tokens_by_mean_increase", "tokens_by_total_increase"):
        rows = getattr(damage, name)
        assert len(rows) == len(data[name]) > 0
        for row, expected in zip(rows, data[name]):
            assert isinstance(row, TokenDamageRow)
            assert (row.token, row.token_id, row.count) == (expected["token"], expected["token_id"], expected["count"])
            assert row.mean_delta_nats == expected["mean_delta_nats"]
            assert row.total_delta_nats == expected["total_delta_nats"]
    assert len(damage.worst_positions) == len(data["worst_positions"]) > 0
    for worst, expected in zip(damage.worst_positions, data["worst_positions"]):
        assert isinstance(worst, WorstPosition)
        assert (worst.delta_nats, worst.context, worst.token) == (
            expected["delta_nats"], expected["context"], expected["token"])


def _check_compute(compute: EffectiveCompute, data: dict) -> None:
    assert isinstance(compute, EffectiveCompute)
    assert isinstance(compute.law, ScalingLaw)
    for key in ("name", "E", "A", "B", "alpha", "beta", "source"):
        assert getattr(compute.law, key) == data["law"][key], key
    for key in ("gamma", "loss_clean", "loss_spliced", "degradation", "compute_fraction", "statement"):
        assert getattr(compute, key) == data[key], key
    assert [(row.E, row.compute_fraction) for row in compute.sensitivity] == [
        (row["E"], row["compute_fraction"]) for row in data["sensitivity"]]
    assert all(isinstance(row, SensitivityRow) for row in compute.sensitivity)
    if data["parameter_equivalent"] is None:
        assert compute.parameter_equivalent is None
    else:
        assert isinstance(compute.parameter_equivalent, ParameterEquivalent)
        for key, value in data["parameter_equivalent"].items():
            assert getattr(compute.parameter_equivalent, key) == value, key


def test_the_legacy_metrics_read_as_types_with_the_numbers_of_the_file():
    data = _read(LEGACY / "metrics.json")
    results = load_results(LEGACY)
    _check_damage(results.token_damage, data["token_damage"])
    _check_compute(results.effective_compute, data["effective_compute"])
    assert results.effective_compute.compute_fraction == pytest.approx(1.008812807605618)
    assert results.token_damage.tokens_by_mean_increase[0].token == " type"
    assert results.generations == [] and results.training is None
    # ``run`` is kept as the config.json it copied (a JSON boundary): the old flat form stays flat...
    assert results.run == data["run"] and "data" not in results.run
    # ...and reads as a TrainConfig on request, upgraded.
    config = results.run_config()
    assert config.dictionary.architecture == "jumprelu" and config.dictionary.l0_coefficient == 0.002


def test_the_legacy_metrics_write_back_key_for_key():
    data = _read(LEGACY / "metrics.json")
    written = EvaluationResults.from_dict(data, "legacy metrics.json").to_dict()
    assert list(written) == list(data)
    # The typed sections and the run's config come back exactly, in order. (The losses and reconstruction were
    # written in another order then, and lack the metrics added since, which come back as null.)
    for key in ("model", "runs", "sites", "token_damage", "effective_compute", "run"):
        assert json.dumps(written[key], indent=2) == json.dumps(data[key], indent=2), key


def test_a_fresh_evaluation_writes_the_layout_and_reads_back_the_same(tmp_path, tiny_model_dir, tiny_loaded):
    run = tmp_path / "legacy"
    shutil.copytree(LEGACY, run)
    config = _read(run / "config.json")
    config.update(model=str(tiny_model_dir), cache_dir=str(tmp_path / "cache"))
    (run / "config.json").write_text(json.dumps(config))
    throughput = {"tokens_trained_this_session": 2048, "wall_seconds": 1.5, "device": "cpu", "note": "test"}
    (run / "throughput.json").write_text(json.dumps(throughput))

    results = evaluate_run(run, loaded=tiny_loaded, generations=1)
    data = _read(run / "metrics.json")
    assert list(data) == ["model", "runs", "sites", "eval_contexts", "context_length", "bos_handling", "losses",
                          "reconstruction", "token_damage", "effective_compute", "generations", "run", "training"]
    assert list(data["token_damage"]) == ["tokens_by_mean_increase", "tokens_by_total_increase", "worst_positions",
                                          "note"]
    assert list(data["token_damage"]["tokens_by_total_increase"][0]) == [
        "token", "token_id", "count", "mean_delta_nats", "total_delta_nats"]
    assert list(data["token_damage"]["worst_positions"][0]) == ["delta_nats", "context", "token"]
    assert list(data["effective_compute"]) == ["law", "gamma", "loss_clean", "loss_spliced", "degradation",
                                               "compute_fraction", "sensitivity", "parameter_equivalent", "statement"]
    assert data["generations"] == [{"prompt": results.generations[0].prompt, "clean": results.generations[0].clean,
                                    "spliced": results.generations[0].spliced}]
    assert data["training"] == throughput  # kept as the JSON document it is
    assert data["run"]["dictionary"]["architecture"] == "jumprelu"  # the config, upgraded, as evaluation wrote it

    for loaded in (results, load_results(run)):  # as evaluated, and as read back from the file
        _check_damage(loaded.token_damage, data["token_damage"])
        _check_compute(loaded.effective_compute, data["effective_compute"])
        assert loaded.generations == [SideBySide(**row) for row in data["generations"]]
        assert loaded.training == throughput
        assert loaded.to_dict() == data
    assert json.dumps(load_results(run).to_dict(), indent=2) + "\n" == (run / "metrics.json").read_text()


def test_no_effective_compute_and_a_joint_evaluation_round_trip():
    data = _read(LEGACY / "metrics.json")
    data["effective_compute"] = {"error": "the law's floor E=1.69 is at or above the clean loss"}
    joint = {**data, "alone": {"runs/a": {**data, "effective_compute": {}, "token_damage": {}}}}
    results = EvaluationResults.from_dict(joint, "joint metrics.json")
    assert results.effective_compute == ComputeNotReported("the law's floor E=1.69 is at or above the clean loss")
    alone = results.alone["runs/a"]
    assert alone.effective_compute is None and alone.token_damage is None  # {}: none recorded
    assert results.is_joint
    written = results.to_dict()
    assert written["effective_compute"] == data["effective_compute"]
    assert written["alone"]["runs/a"]["effective_compute"] == written["alone"]["runs/a"]["token_damage"] == {}
    assert written["alone"]["runs/a"]["losses"] == written["losses"]
