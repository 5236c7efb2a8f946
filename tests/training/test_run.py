"""Training runs on a tiny model: outputs, exact resume after a real kill, and bad input."""

import json

import pytest
import torch
from run_helpers import assert_resume_after_kill_matches

from saekit.dictionaries.registry import load_dictionary
from saekit.errors import SaekitError
from saekit.io import load_tensors
from saekit.rundir import CHECKPOINT_FILE, LOG_FILE
from saekit.training.config import TrainConfig
from saekit.training.run import read_checkpoint_step, train_run


def _config(tiny_model_dir, tmp_path, **overrides) -> TrainConfig:
    values = dict(name="tiny", model=str(tiny_model_dir), site="blocks.1.resid_post", context_length=16,
                  contexts_per_chunk=16, model_batch_contexts=16, expansion_factor=4, k=4, train_tokens=4096,
                  batch_size=256, shuffle_buffer_tokens=1024, checkpoint_every=4, warmup_steps=2,
                  cache_dir=str(tmp_path / "cache"), eval_tokens=256)
    values.update(overrides)
    return TrainConfig.from_flat(values)


def test_run_writes_folded_dictionary_stats_and_log(tiny_loaded, tiny_model_dir, tmp_path):
    config = _config(tiny_model_dir, tmp_path)
    run_dir = train_run(config, tmp_path / "runs", loaded=tiny_loaded, progress=False)
    dictionary, source = load_dictionary(run_dir / "dictionary")
    assert source["site"] == "blocks.1.resid_post" and dictionary.config.width == 128
    log = [json.loads(line) for line in (run_dir / LOG_FILE).read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(1, config.total_steps + 1))
    assert log[-1]["fvu"] < log[0]["fvu"]  # it learned something
    assert read_checkpoint_step(run_dir / CHECKPOINT_FILE) == config.total_steps
    stats = load_tensors(run_dir / "activation_stats.safetensors")
    assert stats["mean.blocks.1.resid_post"].shape == (32,)
    # The folded dictionary takes raw activations: its reconstruction error is small relative to the norm.
    from saekit.activations.source import ActivationSource
    source = ActivationSource(config.activation_spec(), config.run.cache_dir, lambda: tiny_loaded)
    raw = source.chunk(0)["blocks.1.resid_post"]
    with torch.no_grad():
        output = dictionary(raw)
    fvu = (output.reconstruction - raw).pow(2).sum() / (raw - raw.mean(0)).pow(2).sum()
    assert fvu < 0.9 and (output.latents > 0).sum(-1).max() <= 4


def test_resume_after_kill_matches_uninterrupted_run(tiny_model_dir, tmp_path):
    overrides = dict(train_tokens=256 * 120, expansion_factor=64, k=8, checkpoint_every=3)
    reference = _config(tiny_model_dir, tmp_path, name="reference", **overrides)
    killed = _config(tiny_model_dir, tmp_path, name="killed", **overrides)
    run_dir = assert_resume_after_kill_matches(reference, killed, tmp_path / "runs")
    steps = [json.loads(line)["step"] for line in (run_dir / LOG_FILE).read_text().splitlines()]
    assert steps == list(range(1, killed.total_steps + 1))  # no duplicated or missing log lines

def test_existing_run_and_changed_resume_are_refused(tiny_loaded, tiny_model_dir, tmp_path):
    config = _config(tiny_model_dir, tmp_path, train_tokens=512)
    train_run(config, tmp_path / "runs", loaded=tiny_loaded, progress=False)
    with pytest.raises(SaekitError, match="already holds a run"):
        train_run(config, tmp_path / "runs", loaded=tiny_loaded, progress=False)
    changed = _config(tiny_model_dir, tmp_path, train_tokens=512, k=8)
    with pytest.raises(SaekitError, match=r"different config \(changed: \['k'\]\)"):
        train_run(changed, tmp_path / "runs", resume=True, loaded=tiny_loaded, progress=False)


def test_resuming_a_finished_run_keeps_the_training_sessions_throughput(tiny_loaded, tiny_model_dir, tmp_path):
    config = _config(tiny_model_dir, tmp_path, train_tokens=512)
    run_dir = train_run(config, tmp_path / "runs", loaded=tiny_loaded, progress=False)
    trained = json.loads((run_dir / "throughput.json").read_text())
    assert trained["steps_this_session"] == config.total_steps
    train_run(config, tmp_path / "runs", resume=True, loaded=tiny_loaded, progress=False)
    assert json.loads((run_dir / "throughput.json").read_text()) == trained


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tiny_loaded, tiny_model_dir, tmp_path):
    config = _config(tiny_model_dir, tmp_path, lr=1e30, warmup_steps=1, checkpoint_every=1, train_tokens=256 * 20)
    message = r"loss became (nan|inf) at step \d+ in run tiny; stopped. The last good checkpoint \(step \d+\)"
    with pytest.raises(SaekitError, match=message):
        train_run(config, tmp_path / "runs", loaded=tiny_loaded, progress=False)
    step = read_checkpoint_step(tmp_path / "runs" / "tiny" / CHECKPOINT_FILE)
    assert step is not None and step >= 1
    assert not (tmp_path / "runs" / "tiny" / "dictionary").exists()  # no half-finished output


def test_prefetching_trains_the_same_dictionary(tiny_loaded, tiny_model_dir, tmp_path):
    runs = {}
    for prefetch in (0, 2):
        config = _config(tiny_model_dir, tmp_path, name=f"prefetch-{prefetch}", prefetch_chunks=prefetch,
                         cache_dir=None, train_tokens=256 * 12)
        runs[prefetch] = train_run(config, tmp_path / "runs", loaded=tiny_loaded, progress=False)
    expected = load_tensors(runs[0] / "dictionary" / "weights.safetensors")
    for name, value in load_tensors(runs[2] / "dictionary" / "weights.safetensors").items():
        torch.testing.assert_close(value, expected[name], rtol=1e-5, atol=1e-6, msg=name)
    assert json.loads((runs[2] / "throughput.json").read_text())["prefetch_chunks"] == 2


def test_scalars_read_every_few_steps_never_let_a_nan_into_a_checkpoint(tiny_loaded, tiny_model_dir, tmp_path):
    """The scalars are read every 3 steps; a checkpoint every 2 reads first, so only finite steps are saved."""
    config = _config(tiny_model_dir, tmp_path, read_every=3, checkpoint_every=2, train_tokens=256 * 20)
    run_dir = train_run(config, tmp_path / "runs", loaded=tiny_loaded, progress=False)
    log = [json.loads(line) for line in (run_dir / LOG_FILE).read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(1, 21))  # every step logged, in order, once
    exploding = _config(tiny_model_dir, tmp_path, name="exploding", lr=1e30, warmup_steps=1, read_every=5,
                        checkpoint_every=20, train_tokens=256 * 20)
    with pytest.raises(SaekitError, match="stopped before its first checkpoint"):
        train_run(exploding, tmp_path / "runs", loaded=tiny_loaded, progress=False)
    assert read_checkpoint_step(tmp_path / "runs" / "exploding" / CHECKPOINT_FILE) is None


@pytest.mark.parametrize("overrides, message", [
    (dict(site="blocks.7.resid_post"), "out of range: the model has layers 0..1"),
    (dict(site="blocks.1.residual"), r"site must be blocks.<layer>.<kind> .*, got 'blocks.1.residual'"),
    (dict(architecture="sparse-magic"), "architecture must be one of batchtopk, clt_jumprelu, .*, got 'sparse-magic'"),
    (dict(extra={"aux_kk": 64}), r"does not understand extra settings \['aux_kk'\]"),
    (dict(train_tokens=10), "less than one batch"),
])
def test_bad_config_is_one_line(tiny_loaded, tiny_model_dir, tmp_path, overrides, message):
    with pytest.raises(SaekitError, match=message) as info:
        train_run(_config(tiny_model_dir, tmp_path, **overrides), tmp_path / "runs", loaded=tiny_loaded,
                  progress=False)
    assert "\n" not in str(info.value)


def test_empty_corpus(tiny_loaded, tiny_model_dir, tmp_path):
    (tmp_path / "empty.txt").write_text("   \n")
    with pytest.raises(SaekitError, match="empty"):
        train_run(_config(tiny_model_dir, tmp_path, corpus=str(tmp_path / "empty.txt")), tmp_path / "runs",
                  loaded=tiny_loaded, progress=False)


def test_config_file_unknown_key(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"site": "blocks.1.resid_post", "learning_rate": 1e-3}))
    with pytest.raises(SaekitError, match=r"unknown keys \['learning_rate'\]"):
        TrainConfig.from_file(path)
    path.write_text("{not json")
    with pytest.raises(SaekitError, match="is corrupt"):
        TrainConfig.from_file(path)
