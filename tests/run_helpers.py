"""What the training tests share: a run config as ``saekit train`` flags, the kill-and-resume check, small
cross-layer runs (a CLT and a crosscoder over both layers of the tiny model), and the graph tests' per-layer
transcoders.

Imported by name: ``pythonpath = ["tests"]`` in pyproject.toml puts ``tests/`` on ``sys.path``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from saekit.cli import main
from saekit.io import load_tensors
from saekit.rundir import CHECKPOINT_FILE, LOG_FILE
from saekit.settings import flat_values
from saekit.training.config import TrainConfig
from saekit.training.run import read_checkpoint_step

ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}
CROSSLAYER_BASE = dict(context_length=16, contexts_per_chunk=16, expansion_factor=4, k=4, batch_size=256, lr=3e-3,
                       shuffle_buffer_tokens=512, eval_tokens=280, eval_batch_contexts=4)


def crosslayer_configs(model_dir: Path, cache_dir: Path) -> dict[str, TrainConfig]:
    """A CLT (TopK, layers 0-1, MLP in -> out) and a crosscoder (layers 0-1, resid_post) on the tiny model."""
    common = dict(CROSSLAYER_BASE, model=str(model_dir), cache_dir=str(cache_dir))
    return {
        "clt": TrainConfig.from_flat(dict(common, name="clt", architecture="clt_topk", layers="0-1",
                                          train_tokens=256 * 64, site="blocks.0.mlp_in",
                                          target_site="blocks.0.mlp_out")),
        "cc": TrainConfig.from_flat(dict(common, name="cc", architecture="crosscoder", layers="0-1",
                                         site="blocks.0.resid_post", l1_coefficient=0.05, train_tokens=256 * 24)),
    }


def train_flags(config: TrainConfig, runs_dir: Path) -> list[str]:
    """``train --runs-dir RUNS`` and every setting of ``config`` as a flag (the CLI's arguments)."""
    args = ["train", "--runs-dir", str(runs_dir)]
    for key, value in flat_values(config).items():
        if key not in ("extra", "betas") and value is not None and value != ():
            shown = ",".join(value) if isinstance(value, tuple) else str(value)
            args += ["--" + key.replace("_", "-"), shown]
    return args


def train_command(config: TrainConfig, runs_dir: Path, *extra: str) -> list[str]:
    """``python -m saekit train ...`` for ``config``."""
    return [sys.executable, "-m", "saekit", *train_flags(config, runs_dir), *extra]


def assert_resume_after_kill_matches(reference: TrainConfig, killed: TrainConfig, runs_dir: Path) -> Path:
    """Train ``reference`` whole; SIGKILL ``killed`` (the same settings) mid-run, resume it; same weights.

    Both in a subprocess with one thread: bf16 autocast sums in an order that depends on the threads.
    Returns the resumed run's directory.
    """
    subprocess.run(train_command(reference, runs_dir), env=ONE_THREAD, check=True, capture_output=True)
    process = subprocess.Popen(train_command(killed, runs_dir), env=ONE_THREAD, stderr=subprocess.DEVNULL)
    log = runs_dir / killed.name / LOG_FILE
    deadline = time.time() + 120
    while time.time() < deadline and process.poll() is None:
        if log.exists() and len(log.read_text().splitlines()) >= 10:
            process.send_signal(signal.SIGKILL)
            break
        time.sleep(0.005)
    assert process.wait() == -signal.SIGKILL, "the run finished before it could be killed"
    step = read_checkpoint_step(runs_dir / killed.name / CHECKPOINT_FILE)
    assert step is not None and 0 < step < killed.total_steps

    resumed = subprocess.run(train_command(killed, runs_dir, "--resume"), env=ONE_THREAD, capture_output=True,
                             text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    expected = load_tensors(runs_dir / reference.name / "dictionary" / "weights.safetensors")
    actual = load_tensors(runs_dir / killed.name / "dictionary" / "weights.safetensors")
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], rtol=1e-5, atol=1e-6)
    return runs_dir / killed.name


def train_tiny_transcoders(model_dir: Path, root: Path, train_tokens: int = 4096, eval_tokens: int = 200) -> Path:
    """JumpReLU transcoders on both MLPs of the tiny model, as ``saekit train --sites 'blocks.*.mlp_in->...'``
    trains them (the graph tests' replacement set); returns the directory holding the two runs."""
    assert main(["train", "--model", str(model_dir), "--sites", "blocks.*.mlp_in->blocks.*.mlp_out",
                 "--name", "tc", "--runs-dir", str(root), "--architecture", "jumprelu", "--expansion-factor", "4",
                 "--train-tokens", str(train_tokens), "--batch-size", "256", "--context-length", "16",
                 "--contexts-per-chunk", "16", "--shuffle-buffer-tokens", "512", "--eval-tokens", str(eval_tokens),
                 "--cache-dir", str(root / "cache")]) == 0
    return root / "tc"
