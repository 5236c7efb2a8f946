"""Which dtypes a device runs fast, what the mixed-precision setting resolves to, and the quickstart's choice."""

import pytest
import torch

from saekit.errors import SaekitError
from saekit.jobs.quickstart import quickstart_config
from saekit.models import precision
from saekit.training.config import TrainConfig


def test_cpu_bf16_follows_the_cpu_flags(monkeypatch):
    monkeypatch.setattr(precision, "_cpu_flags", lambda: frozenset({"avx2", "amx_bf16"}))
    assert precision.fast_bfloat16("cpu") and precision.resolve_autocast("auto", "cpu") == torch.bfloat16
    monkeypatch.setattr(precision, "_cpu_flags", lambda: frozenset({"avx2"}))
    assert not precision.fast_bfloat16("cpu") and precision.resolve_autocast("auto", "cpu") is None
    # An explicit choice is kept whatever the machine has.
    assert precision.resolve_autocast("bfloat16", "cpu") == torch.bfloat16
    assert precision.resolve_autocast("none", "cpu") is None


def test_this_machine_reads_its_real_flags():
    flags = precision._cpu_flags()
    assert precision.fast_bfloat16("cpu") == bool(flags & set(precision.CPU_BF16_FLAGS))


def test_quickstart_runs_the_model_in_bf16_only_where_it_is_fast(monkeypatch):
    assert quickstart_config().data.model_dtype == ("bfloat16" if precision.fast_bfloat16("cpu") else "float32")
    monkeypatch.setattr(precision, "_cpu_flags", lambda: frozenset())
    monkeypatch.setattr("saekit.jobs.quickstart.fast_bfloat16", precision.fast_bfloat16)
    assert quickstart_config().data.model_dtype == "float32"
    assert quickstart_config().optim.train_tokens >= 2.5 * 200_000


def test_autocast_setting_is_checked():
    with pytest.raises(SaekitError, match="autocast must be one of auto, bfloat16, none"):
        TrainConfig.from_flat({"autocast": "float16"})
