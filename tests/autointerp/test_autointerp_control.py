"""The randomized-weights control on the tiny model, and the command-line parsers."""

from __future__ import annotations

import argparse
import json

import pytest
import torch
from autointerp_fakes import FakeBackend

from saekit.autointerp.examples import SplitConfig
from saekit.autointerp.pipeline import AutointerpConfig
from saekit.autointerp.scorers import ScoringConfig
from saekit.cli.autointerp import add_autointerp_parsers, config_from_args
from saekit.dictionaries.base import DictionaryConfig
from saekit.dictionaries.registry import build_dictionary, save_dictionary
from saekit.errors import SaekitError
from saekit.io import write_json
from saekit.jobs.control import ControlConfig, control_train_config, randomized_control, runs_root
from saekit.settings import differences
from saekit.training.config import TrainConfig

SPLIT = SplitConfig(train_top=4, train_per_quantile=1, window=12, min_train=2, min_test_activating=1,
                    min_test_nonactivating=1)


def test_control_config_keeps_the_recipe_with_its_own_name_and_cache_key(tmp_path):
    config = TrainConfig.from_flat(dict(name="sweep/blocks.3.resid_post", cache_dir=".saekit_cache/"))
    twin = control_train_config(config, seed=7)
    assert twin.name == "sweep/blocks.3.resid_post-randomized" and twin.run.cache_dir == config.run.cache_dir
    assert twin.data.randomize_weights and twin.data.randomization_seed == 7
    assert differences(twin, config) == ["name", "randomization_seed", "randomize_weights"]
    # The randomization is part of the data spec, so the twin's activations get their own cache key.
    assert twin.activation_spec().key() != config.activation_spec().key()
    assert runs_root(tmp_path / "runs" / "sweep" / "blocks.3.resid_post", config) == tmp_path / "runs"


def test_randomized_control_end_to_end(tmp_path, tiny_model_dir, tiny_loaded, tiny_run):
    real_config = json.loads((tiny_run / "config.json").read_text())
    config = TrainConfig.from_dict(real_config).updated(
        name="real", train_tokens=1024, batch_size=256, contexts_per_chunk=16, model_batch_contexts=16,
        shuffle_buffer_tokens=512, cache_dir=str(tmp_path / "cache"))
    run = tmp_path / "runs" / "real"
    write_json(run / "config.json", config.to_dict())
    torch.manual_seed(5)
    save_dictionary(run / "dictionary", build_dictionary(DictionaryConfig("topk", 32, 48, k=6)),
                    {"model": config.data.model, "site": config.site, "target_site": None})
    autointerp = AutointerpConfig(latents=3, split=SPLIT, progress=False, scoring=ScoringConfig(embedding=False))
    control = ControlConfig(analysis_tokens=300, autointerp=autointerp, progress=False)
    report = randomized_control(run, control, backend=FakeBackend(), subject=tiny_loaded)

    twin = tmp_path / "runs" / "real-randomized"
    assert (twin / "dictionary").is_dir() and (twin / "analysis" / "analysis.json").is_file()
    assert json.loads((twin / "control.json").read_text())["randomized_weights"] is True
    # The twin's config records the randomization, so its activations live under their own cache key.
    twin_config = TrainConfig.from_file(twin / "config.json")
    assert twin_config.data.randomize_weights and twin_config.run.cache_dir == config.run.cache_dir
    key = twin_config.activation_spec().key()
    assert key != config.activation_spec().key() and (tmp_path / "cache" / key / "manifest.json").is_file()
    analysed = [json.loads((d / "analysis" / "analysis.json").read_text())["config"]["tokens"] for d in (run, twin)]
    assert analysed == [300, 300]
    assert (twin / "autointerp" / "scores.json").is_file() and (run / "autointerp" / "scores.json").is_file()
    text = report.read_text()
    assert "randomized: LLM" in text and "| detection balanced accuracy | 0.5 |" in text
    assert "fake-llm (test double)" in text and "intruder accuracy | 0.200" in text
    rows = json.loads((run / "autointerp" / "control-comparison.json").read_text())["rows"]
    assert set(rows["detection balanced accuracy"]) == {"chance", "real", "randomized"}
    assert not (run / "autointerp" / "control.json").exists()  # that name is the twin's marker alone

    # A second call reuses the trained control and answers every prompt from the cache.
    again = FakeBackend()
    randomized_control(run, control, backend=again, subject=tiny_loaded)
    assert again.calls == []


def test_control_is_analysed_like_the_real_run(tiny_run, tmp_path):
    from saekit.jobs.control import _analysis_tokens

    assert _analysis_tokens(tiny_run / "analysis", ControlConfig(analysis_tokens=300)) == 600  # the fixture's
    assert _analysis_tokens(tmp_path / "no-analysis", ControlConfig(analysis_tokens=300)) == 300


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="saekit")
    add_autointerp_parsers(parser.add_subparsers(dest="command", required=True))
    return parser


def test_cli_defaults_match_the_configs():
    """The flags' defaults are read from the configs (ExplainSettings, ControlSettings), not repeated."""
    from saekit.cli.autointerp import settings_from_args

    assert config_from_args(_parser().parse_args(["explain", "runs/x"])) == AutointerpConfig()
    assert settings_from_args(_parser().parse_args(["control", "runs/x"])).control() == ControlConfig()


def test_parsers_and_config(monkeypatch):
    args = _parser().parse_args(["explain", "runs/x"])
    config = config_from_args(args)
    assert config.backend.kind == "local" and config.backend.local.model == "default" and config.latents == 20
    args = _parser().parse_args(["explain", "runs/x", "--backend", "openai", "--base-url", "http://127.0.0.1:8000/v1",
                                 "--model", "llama", "--api-key-env", "none", "--latents", "all", "--concurrency",
                                 "3", "--max-cost", "0.5", "--negatives", "neighbours", "--top-logprobs", "0"])
    config = config_from_args(args)
    openai = config.backend.openai
    assert openai.model == "llama" and openai.api_key_env is None and openai.concurrency == 3
    assert openai.max_cost_usd == 0.5 and config.latents is None and config.split.negatives == "neighbours"
    assert config.scoring.top_logprobs == 0 and callable(args.handler)
    monkeypatch.delenv("SAEKIT_NO_SUCH_KEY", raising=False)
    missing_key = _parser().parse_args(["explain", "runs/x", "--backend", "openai", "--api-key-env",
                                        "SAEKIT_NO_SUCH_KEY"])
    with pytest.raises(SaekitError, match="SAEKIT_NO_SUCH_KEY"):  # refused before any model loads
        config_from_args(missing_key)
    from saekit.cli.autointerp import settings_from_args

    control = settings_from_args(_parser().parse_args(["control", "runs/x", "--latents", "5", "--analysis-tokens",
                                                       "1000"])).control()
    assert control.analysis_tokens == 1000 and control.autointerp.latents == 5
    with pytest.raises(SystemExit):  # not a choice: refused while parsing
        _parser().parse_args(["explain", "r", "--backend", "claude"])
    for bad, flag in ((["explain", "r", "--latents", "0"], "--latents"), (["explain", "r", "--max-cost", "-1"],
                                                                           "--max-cost")):
        with pytest.raises(SaekitError, match=f"^{flag} must be >= "):  # out of range: one line naming the flag
            config_from_args(_parser().parse_args(bad))
