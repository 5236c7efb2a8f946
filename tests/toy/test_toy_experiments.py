"""Tests for saekit.toy.experiments and saekit.cli.toy: the parser, and tiny end-to-end experiment runs."""

from __future__ import annotations

import argparse
import json

import pytest

from saekit.cli.toy import add_toy_parser, run_toy
from saekit.errors import SaekitError
from saekit.toy.experiments import RecoveryConfig, ToyRunConfig, common, run_experiment, run_recovery
from saekit.toy.worlds import AnimalsWorldConfig, SparseWorldConfig


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="saekit")
    add_toy_parser(parser.add_subparsers(dest="command", required=True))
    return parser


def test_parser_defaults_and_handler():
    args = _parser().parse_args(["toy", "recovery"])
    assert args.experiment == "recovery" and str(args.out) == "runs/toy"
    assert args.seed == 0 and args.steps > 0 and args.handler is run_toy
    with pytest.raises(SystemExit):
        _parser().parse_args(["toy", "no-such-experiment"])


def test_rescaling_experiment_writes_outputs(tmp_path, capsys):
    args = _parser().parse_args(["toy", "rescaling", "--out", str(tmp_path), "--steps", "30", "--no-progress"])
    assert run_toy(args) == 0
    directory = tmp_path / "rescaling"
    data = json.loads((directory / "rescaling.json").read_text())
    rows = data["models"][0]["rows"]
    ratio = rows[-1]["frobenius_features_per_dimension"] / rows[0]["frobenius_features_per_dimension"]
    assert ratio == pytest.approx((rows[-1]["scale"] / rows[0]["scale"]) ** 2, rel=1e-4)
    assert rows[0]["dimensionality"] == pytest.approx(rows[-1]["dimensionality"], abs=1e-5)
    assert (directory / "rescaling.png").stat().st_size > 1000
    assert "sum_i D_i" in (directory / "summary.md").read_text()
    assert "rescaling" in capsys.readouterr().out


def test_tiny_recovery_experiment(tmp_path, monkeypatch):
    real_fit = common.fit_at_l0

    def fit_or_fail(name, *args):
        if name == "jumprelu":  # stands in for an architecture whose loss blows up
            raise SaekitError("loss became nan at step 3")
        return real_fit(name, *args)

    monkeypatch.setattr(common, "fit_at_l0", fit_or_fail)
    config = RecoveryConfig(
        sparse_world=SparseWorldConfig(n_features=16, d=8, firing_probability=0.1),
        animals_world=AnimalsWorldConfig(d=12, n_attributes=4, n_animals=6, attributes_per_animal=2,
                                         n_unrelated=8, animal_firing_probability=0.1),
        width=32, batch_size=64, eval_samples=500, architectures=["topk", "relu", "jumprelu"],
    )
    run = ToyRunConfig(out=tmp_path, steps=30, progress=False)
    files = run_recovery(run, tmp_path, config)
    assert {"recovery.json", "summary.md", "recovery_sparse.png", "recovery_animals.png"} <= set(files)
    data = json.loads((tmp_path / "recovery.json").read_text())
    assert set(data["sparse"]["results"]) == {"topk", "relu"}
    topk = data["sparse"]["results"]["topk"]
    assert {"trained", "random", "fit"} <= set(topk) and topk["fit"]["knob"] == "k"
    assert len(data["animals"]["references"]) == 4
    summary = (tmp_path / "summary.md").read_text()
    assert "| topk |" in summary and "reference: true attributes + unrelated" in summary
    assert data["animals"]["failures"] == {"jumprelu": "loss became nan at step 3"}
    assert "jumprelu failed to train" in summary


def test_unknown_experiment_and_architecture_raise(tmp_path):
    with pytest.raises(SaekitError, match="unknown toy experiment"):
        run_experiment("nope", ToyRunConfig(out=tmp_path))
    with pytest.raises(SaekitError, match="unknown architectures"):
        run_recovery(ToyRunConfig(out=tmp_path), tmp_path, RecoveryConfig(architectures=["nope"]))
