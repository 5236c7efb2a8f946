"""Evaluating a run end to end on a tiny model, and every way its files can be bad."""

import json
import subprocess
import sys

import pytest

from saekit.errors import SaekitError
from saekit.evaluation.evaluate import evaluate_run
from saekit.training.config import TrainConfig
from saekit.training.run import train_run


@pytest.fixture(scope="module")
def tiny_run(tiny_loaded, tiny_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("eval-runs")
    config = TrainConfig(name="tiny", model=str(tiny_model_dir), site="blocks.1.resid_post", context_length=16,
                         contexts_per_chunk=16, expansion_factor=4, k=4, train_tokens=2048, batch_size=256,
                         shuffle_buffer_tokens=512, cache_dir=str(root / "cache"), eval_tokens=280,
                         eval_batch_contexts=4)
    return train_run(config, root / "runs", loaded=tiny_loaded, progress=False)


def test_evaluate_writes_metrics_and_report(tiny_run, tiny_loaded):
    metrics = evaluate_run(tiny_run, loaded=tiny_loaded)
    saved = json.loads((tiny_run / "metrics.json").read_text())
    assert saved["losses"]["ce_clean"]["mean"] == pytest.approx(metrics["losses"]["ce_clean"]["mean"])
    assert saved["eval_contexts"] == 20  # ceil(280 / (16 - 2))
    assert saved["reconstruction"]["blocks.1.resid_post"]["tokens"] == 20 * 15
    report = (tiny_run / "report.md").read_text()
    for phrase in ("zero-ablation", "mean-ablation", "Effective compute", "FVU", "ΔCE"):
        assert phrase in report


def test_corrupt_or_missing_files(tiny_run, tiny_loaded, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(tiny_run, broken)
    weights = broken / "dictionary" / "weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(SaekitError, match="corrupt or not safetensors"):
        evaluate_run(broken, loaded=tiny_loaded)
    weights.unlink()
    with pytest.raises(SaekitError, match="dictionary weights not found"):
        evaluate_run(broken, loaded=tiny_loaded)
    (broken / "dictionary" / "config.json").write_text("{")
    with pytest.raises(SaekitError, match="dictionary config .* is corrupt"):
        evaluate_run(broken, loaded=tiny_loaded)
    with pytest.raises(SaekitError, match="run directory not found"):
        evaluate_run(tmp_path / "nowhere", loaded=tiny_loaded)


def test_cli_prints_one_line_and_exits_nonzero(tmp_path):
    result = subprocess.run([sys.executable, "-m", "saekit", "evaluate", str(tmp_path / "missing")],
                            capture_output=True, text=True)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [f"saekit: error: run directory not found: {tmp_path / 'missing'}"]
