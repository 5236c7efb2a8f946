"""A tiny trained run (2-layer random Llama, TopK SAE at blocks.1.resid_post), shared by the probing tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from saekit.training.config import TrainConfig
from saekit.training.run import train_run


@pytest.fixture(scope="session")
def probe_run_dir(tiny_loaded, tiny_model_dir, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("probe-runs")
    config = TrainConfig.from_flat(dict(
        name="tiny", model=str(tiny_model_dir), site="blocks.1.resid_post", context_length=16,
        contexts_per_chunk=16, expansion_factor=4, k=4, train_tokens=1024, batch_size=256,
        shuffle_buffer_tokens=512, cache_dir=str(root / "cache"), eval_tokens=140, eval_batch_contexts=4))
    return train_run(config, root / "runs", loaded=tiny_loaded, progress=False)
