"""A run directory written by saekit before the sectioned config (flat config.json, JumpReLU's
l0_coefficient in ``extra``) still loads, evaluates to the same numbers, and summarises.

``tests/fixtures/legacy_run`` was made at the commit before the change: a JumpReLU trained on the
tests' tiny model (same seed, so the same weights as ``tiny_model_dir``) and evaluated there; its
``metrics.json`` is that commit's evaluation.
"""

import json
import shutil
from pathlib import Path

import pytest

from saekit.dictionaries.registry import load_dictionary
from saekit.evaluation.evaluate import evaluate_run
from saekit.evaluation.summary import summarize
from saekit.training.config import TrainConfig, load_run_config

LEGACY = Path(__file__).parents[1] / "fixtures" / "legacy_run"


@pytest.fixture
def legacy_run(tmp_path, tiny_model_dir):
    run = tmp_path / "legacy"
    shutil.copytree(LEGACY, run)
    config = json.loads((run / "config.json").read_text())
    assert "data" not in config and config["extra"] == {"l0_coefficient": 0.002}  # really the old format
    config.update(model=str(tiny_model_dir), cache_dir=str(tmp_path / "cache"))  # the machine that made it
    (run / "config.json").write_text(json.dumps(config))
    return run


def test_flat_config_loads_into_sections(legacy_run, tiny_model_dir):
    config = load_run_config(legacy_run)
    assert config.dictionary.architecture == "jumprelu" and config.dictionary.l0_coefficient == 0.002
    assert config.dictionary.extra == {}
    assert config.data.model == str(tiny_model_dir) and config.data.context_length == 16
    assert config.data.seed == 0 and config.optim.seed == 0 and config.optim.train_tokens == 2048
    assert config.run.eval_tokens == 280 and config.run.checkpoint_every == 4
    dictionary, _ = load_dictionary(legacy_run / "dictionary")
    assert dictionary.config.l0_coefficient == 0.002 and dictionary.config.extra == {}


def test_legacy_run_evaluates_to_the_numbers_it_had(legacy_run, tiny_loaded):
    before = json.loads((LEGACY / "metrics.json").read_text())
    after = evaluate_run(legacy_run, loaded=tiny_loaded, generations=0)
    for condition in ("clean", "spliced", "zero", "mean"):
        assert after.losses.ce(condition).mean == pytest.approx(
            before["losses"][f"ce_{condition}"]["mean"], rel=1e-6)
    site = "blocks.1.resid_post"
    assert after.reconstruction[site].fvu == pytest.approx(before["reconstruction"][site]["fvu"], rel=1e-6)
    assert after.run["dictionary"]["l0_coefficient"] == 0.002  # rewritten in the sectioned form


def test_old_metrics_summarise_with_their_architecture(tmp_path):
    run = tmp_path / "legacy"
    shutil.copytree(LEGACY, run)
    summary = summarize([run], tmp_path / "summary")
    assert [row["architecture"] for row in summary["runs"]] == ["jumprelu"]


def test_old_flat_config_round_trips_through_the_new_form():
    flat = json.loads((LEGACY / "config.json").read_text())
    config = TrainConfig.from_dict(flat)
    assert TrainConfig.from_dict(config.to_dict()) == config
