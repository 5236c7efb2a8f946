"""Faults a user can cause while training and evaluating: kill -9 at chosen points, two writers, foreign files.

Each test kills or corrupts for real (SIGKILL through ``kill_at.py``, files copied between runs) and
checks what the next command does: resume exactly, refuse with one line, or keep the old output.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from run_helpers import train_flags

from saekit.cli import main
from saekit.errors import SaekitError
from saekit.evaluation.evaluate import evaluate_run
from saekit.io import TEMP_MARK, load_tensors, save_tensors
from saekit.locks import LOCK_FILE, exclusive
from saekit.rundir import CHECKPOINT_FILE, DICTIONARY_DIR, LOG_FILE
from saekit.training.config import TrainConfig
from saekit.training.run import read_checkpoint_step, train_run

KILL_AT = Path(__file__).with_name("kill_at.py")
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _config(model_dir: Path, tmp_path: Path, **overrides) -> TrainConfig:
    values = dict(name="tiny", model=str(model_dir), site="blocks.1.resid_post", context_length=16,
                  contexts_per_chunk=16, model_batch_contexts=16, expansion_factor=4, k=4, train_tokens=256 * 24,
                  batch_size=256, shuffle_buffer_tokens=1024, checkpoint_every=4, warmup_steps=2,
                  cache_dir=str(tmp_path / "cache"), eval_tokens=256)
    values.update(overrides)
    return TrainConfig.from_flat(values)


def _killed_at(target: str, nth: int, match: str, args: list[str]) -> subprocess.CompletedProcess:
    command = [sys.executable, str(KILL_AT), target, str(nth), match, "--", *args]
    return subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=300)


def _saekit(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "saekit", *args], env=ENV, capture_output=True, text=True,
                          timeout=300)


def _temporaries(directory: Path) -> list[Path]:
    return [p for p in directory.rglob("*") if TEMP_MARK in p.name]


def _assert_same_weights(run_a: Path, run_b: Path) -> None:
    expected = load_tensors(run_a / DICTIONARY_DIR / "weights.safetensors")
    actual = load_tensors(run_b / DICTIONARY_DIR / "weights.safetensors")
    assert expected.keys() == actual.keys()
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], rtol=1e-5, atol=1e-6)


@pytest.fixture
def reference(tiny_loaded, tiny_model_dir, tmp_path) -> Path:
    """An uninterrupted run, the yardstick for every resumed one."""
    config = _config(tiny_model_dir, tmp_path, name="reference")
    return train_run(config, tmp_path / "runs", loaded=tiny_loaded, progress=False)


@pytest.mark.parametrize("match, nth", [
    ("checkpoint", 3),  # inside the third checkpoint write: a temporary of it is left behind
    ("weights.safetensors", 1),  # inside the final dictionary write, after the last checkpoint
])
def test_kill_during_a_write_then_resume_is_exact(reference, tiny_model_dir, tmp_path, match, nth):
    config = _config(tiny_model_dir, tmp_path, name="killed")
    killed = _killed_at("saekit.io:save_file", nth, match, train_flags(config, tmp_path / "runs"))
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    run_dir = tmp_path / "runs" / "killed"
    assert _temporaries(run_dir), "the kill should have left a temporary behind"
    assert not (run_dir / DICTIONARY_DIR).exists()  # never a half-written dictionary in place
    step = read_checkpoint_step(run_dir / CHECKPOINT_FILE)
    assert step == (2 * config.run.checkpoint_every if match == "checkpoint" else config.total_steps)
    with open(run_dir / LOG_FILE, "a", encoding="utf-8") as log:  # what a kill inside a log write leaves
        log.write('{"step": 9999, "fv')

    resumed = _saekit(train_flags(config, tmp_path / "runs") + ["--resume"])
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    _assert_same_weights(reference, run_dir)
    steps = [json.loads(line)["step"] for line in (run_dir / LOG_FILE).read_text().splitlines()]
    assert steps == list(range(1, config.total_steps + 1))
    assert _temporaries(run_dir) == []  # the resumed run recognised the dead writer's leftovers


def test_damaged_log_line_before_the_end_is_one_line(tiny_loaded, tiny_model_dir, tmp_path):
    config = _config(tiny_model_dir, tmp_path, train_tokens=256 * 8)
    run_dir = train_run(config, tmp_path / "runs", loaded=tiny_loaded, progress=False)
    lines = (run_dir / LOG_FILE).read_text().splitlines()
    (run_dir / LOG_FILE).write_text("\n".join([lines[0], "garbage", *lines[1:]]) + "\n")
    with pytest.raises(SaekitError, match=r"line 2 of .*log.jsonl is not a log record") as info:
        train_run(config, tmp_path / "runs", resume=True, loaded=tiny_loaded, progress=False)
    assert "\n" not in str(info.value)


def test_two_writers_of_one_run(tiny_model_dir, tmp_path, capsys):
    runs = tmp_path / "runs"
    first = _config(tiny_model_dir, tmp_path, name="d", k=8, train_tokens=256 * 5000, checkpoint_every=1000)
    process = subprocess.Popen([sys.executable, "-m", "saekit", *train_flags(first, runs)], env=ENV,
                               stderr=subprocess.DEVNULL)
    try:
        log = runs / "d" / LOG_FILE
        deadline = time.time() + 120
        while not (log.exists() and log.stat().st_size) and time.time() < deadline and process.poll() is None:
            time.sleep(0.02)
        assert process.poll() is None, "the first writer ended before the second started"
        config_before = (runs / "d" / "config.json").read_bytes()

        second = _config(tiny_model_dir, tmp_path, name="d", k=32)
        code = main(train_flags(second, runs))
        error = capsys.readouterr().err
        assert process.poll() is None, "the first writer ended before the second was refused"
        assert code == 1 and error.count("\n") == 1 and "Traceback" not in error
        assert f"is in use by pid {process.pid}" in error
        assert (runs / "d" / "config.json").read_bytes() == config_before  # still k=8, the running one's
        assert TrainConfig.from_file(runs / "d" / "config.json").dictionary.k == 8
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    with exclusive(runs / "d"):  # the dead holder's lock is stale: taken at once
        assert (runs / "d" / LOCK_FILE).exists()


def test_checkpoint_of_another_run_is_refused(tiny_loaded, tiny_model_dir, tmp_path):
    runs = tmp_path / "runs"
    donor = train_run(_config(tiny_model_dir, tmp_path, name="donor", train_tokens=256 * 8), runs,
                      loaded=tiny_loaded, progress=False)
    config = _config(tiny_model_dir, tmp_path, name="target", train_tokens=256 * 8, lr=3e-4)
    target = train_run(config, runs, loaded=tiny_loaded, progress=False)
    shutil.copy(donor / CHECKPOINT_FILE, target / CHECKPOINT_FILE)  # same shapes: it used to load silently
    with pytest.raises(SaekitError, match=r"was written by another run \(its config differs in \['lr', 'name'\]\)"):
        train_run(config, runs, resume=True, loaded=tiny_loaded, progress=False)


def test_foreign_cache_entry_is_refused(tiny_loaded, tiny_model_dir, tmp_path):
    config = _config(tiny_model_dir, tmp_path, train_tokens=256 * 8)
    entry = Path(config.run.cache_dir) / config.activation_spec().key()
    entry.mkdir(parents=True)
    (entry / "manifest.json").write_text(json.dumps({"format_version": 1, "model": "another", "sites": []}))
    with pytest.raises(SaekitError, match="holds activations of other settings than this run's"):
        train_run(config, tmp_path / "runs", loaded=tiny_loaded, progress=False)


def test_non_finite_dictionary_is_refused_before_evaluation(tiny_loaded, tiny_model_dir, tmp_path):
    run_dir = train_run(_config(tiny_model_dir, tmp_path, train_tokens=256 * 8), tmp_path / "runs",
                        loaded=tiny_loaded, progress=False)
    weights_path = run_dir / DICTIONARY_DIR / "weights.safetensors"
    weights = load_tensors(weights_path)
    weights["W_dec"][3, 0] = float("nan")
    save_tensors(weights_path, weights)
    with pytest.raises(SaekitError, match=r"hold NaN or infinite values \(W_dec\)") as info:
        evaluate_run(run_dir, loaded=tiny_loaded)
    assert "\n" not in str(info.value) and not (run_dir / "metrics.json").exists()


def test_kill_during_evaluation_keeps_the_previous_metrics(tiny_loaded, tiny_model_dir, tmp_path):
    run_dir = train_run(_config(tiny_model_dir, tmp_path, train_tokens=256 * 8), tmp_path / "runs",
                        loaded=tiny_loaded, progress=False)
    evaluate_run(run_dir, loaded=tiny_loaded, generations=0)
    before = (run_dir / "metrics.json").read_bytes()
    killed = _killed_at("saekit.io:os.replace", 1, "metrics.json", ["evaluate", str(run_dir), "--eval-tokens", "512"])
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert (run_dir / "metrics.json").read_bytes() == before  # the old result stands until the new is whole
    assert _temporaries(run_dir)
    rerun = _saekit(["evaluate", str(run_dir), "--eval-tokens", "512"])
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert json.loads((run_dir / "metrics.json").read_text())["eval_contexts"] != json.loads(before)["eval_contexts"]
    assert _temporaries(run_dir) == []
