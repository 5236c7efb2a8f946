"""What the memory-budget tests share: the peak of CPU tensor bytes allocated while a function runs, from the
torch profiler's allocator counts, and the bytes tensors hold.

Imported by name: ``pythonpath = ["tests"]`` in pyproject.toml puts ``tests/`` on ``sys.path``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile


def allocated_peak(fn: Callable[[], Any], trace_path: Path) -> tuple[int, Any]:
    """(the most bytes of CPU tensors allocated at once while ``fn`` runs, its result), from the
    profiler's allocator counts (each allocation event carries the running total)."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        result = fn()
    prof.export_chrome_trace(str(trace_path))
    events = [e["args"] for e in json.loads(trace_path.read_text())["traceEvents"]
              if e.get("name") == "[memory]" and e["args"].get("Device Type") == 0]
    events.sort(key=lambda args: args["Ev Idx"])
    before = events[0]["Total Allocated"] - events[0]["Bytes"]  # the total counts earlier profiles' leftovers
    return max(args["Total Allocated"] for args in events) - before, result


def nbytes(tensors: Iterable[torch.Tensor | None]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if t is not None)
