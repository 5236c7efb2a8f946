"""saekit's selection and probe against SAEBench's own code (sae-bench 0.6.0) on the same pooled features: the
fixture was written by ``scripts/interop/compare_saebench_probing.py`` running SAEBench's ``probe_training``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from saekit.io import load_tensors
from saekit.probing.probes import BinaryTask, fit_probe, top_k_mean_diff

FIXTURE = Path(__file__).parents[1] / "fixtures" / "saebench_probing"
EXPECTED = json.loads((FIXTURE / "saebench.json").read_text())
TASKS = sorted(name for name in EXPECTED if name != "sae_bench_version")


@pytest.fixture(scope="module")
def tensors():
    return load_tensors(FIXTURE / "features.safetensors", "SAEBench probing fixture")


@pytest.mark.parametrize("name", TASKS)
def test_same_latents_and_accuracies_as_saebench(tensors, name):
    task = BinaryTask(name, tensors[f"{name}/train_x"], tensors[f"{name}/train_y"].long(),
                      tensors[f"{name}/test_x"], tensors[f"{name}/test_y"].long())
    for k, theirs in EXPECTED[name].items():
        ours = top_k_mean_diff(task.train_x, task.train_y, int(k))
        assert ours == theirs["features"]
        assert fit_probe(task, ours).accuracy == pytest.approx(theirs["accuracy"], abs=1e-6)
