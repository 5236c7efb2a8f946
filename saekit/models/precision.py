"""Which floating-point formats a device runs fast, and the mixed-precision names settings use.

bfloat16 halves memory traffic everywhere but is only faster where the hardware multiplies in it:
NVIDIA GPUs from Ampere on, and x86 CPUs with AMX-BF16 or AVX512-BF16 (on other CPUs torch emulates
it, slower than float32). ``"auto"`` settings resolve through :func:`fast_bfloat16` on the machine
that runs, so the same config is fast on a laptop and on a GPU node.
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch

AUTOCAST_CHOICES = ("auto", "bfloat16", "none")
CPU_BF16_FLAGS = ("amx_bf16", "avx512_bf16")


def autocast_name(value: str) -> str | None:
    """A rule check for the mixed-precision setting."""
    return None if value in AUTOCAST_CHOICES else f"one of {', '.join(AUTOCAST_CHOICES)}"


@functools.cache
def _cpu_flags() -> frozenset[str]:
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:  # not Linux: no flags to read, so no claim of fast bf16
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.partition(":")[2].split())
    return frozenset()


def fast_bfloat16(device: str | torch.device) -> bool:
    """Whether bfloat16 matrix products run faster than float32 on ``device``."""
    kind = torch.device(device).type
    if kind == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)
    if kind == "cpu":
        return any(flag in _cpu_flags() for flag in CPU_BF16_FLAGS)
    return False


def resolve_autocast(name: str, device: str | torch.device) -> torch.dtype | None:
    """The autocast dtype a setting means on ``device`` (None: plain float32)."""
    if name == "auto":
        return torch.bfloat16 if fast_bfloat16(device) else None
    return torch.bfloat16 if name == "bfloat16" else None
