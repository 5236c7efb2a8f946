"""How much memory a job may plan for, before it starts: what is free on a device now (the host's available
memory, or a container's room where that is tighter; a GPU's free memory), the budget a ``--max-memory-gb``
flag or a share of that free memory gives, and the search for the largest setting that fits it.

Below every stage, since analysis, dashboards and attribution graphs all check their estimates against it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

GB = 1e9
# A budget left unset is this share of the memory free when the check runs: the rest is room for what
# the estimates leave out (allocator slack, Python objects, the small temporaries of every step).
DEFAULT_MEMORY_SHARE = 0.9
MEMINFO = Path("/proc/meminfo")
CGROUP = Path("/sys/fs/cgroup")  # a container's memory limit (cgroup v2), tighter than the host's


def gigabytes(n_bytes: float) -> str:
    return f"{n_bytes / GB:.3g} GB"


def _meminfo_available() -> int | None:
    try:
        for line in MEMINFO.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _cgroup_room() -> int | None:
    """The container's limit minus what it uses, page cache it can drop (inactive files) not counted as used."""
    try:
        limit = (CGROUP / "memory.max").read_text().strip()
        if limit == "max":
            return None
        used = int((CGROUP / "memory.current").read_text())
        stat = dict(line.split() for line in (CGROUP / "memory.stat").read_text().splitlines() if " " in line)
        return int(limit) - used + int(stat.get("inactive_file", 0))
    except (OSError, ValueError):
        return None


def available_memory(device: str | torch.device = "cpu") -> int | None:
    """Bytes free for new tensors on ``device`` now (host memory for the CPU and MPS); None if unknown."""
    device = torch.device(device)
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    known = [room for room in (_meminfo_available(), _cgroup_room()) if room is not None]
    return min(known) if known else None


def memory_budget(max_memory_gb: float | None, device: str | torch.device = "cpu") -> int | None:
    """The bytes a job may plan for on ``device``: ``--max-memory-gb``, else a share of what is free now
    (None where the platform does not say: no check)."""
    if max_memory_gb is not None:
        return round(max_memory_gb * GB)
    free = available_memory(device)
    return None if free is None else int(DEFAULT_MEMORY_SHARE * free)


def largest_fitting(high: int, fits: Callable[[int], bool]) -> int:
    """The largest n in 1..``high`` for which ``fits(n)`` (which only turns false as n grows); 0 if none."""
    low = 0
    while low < high:
        middle = (low + high + 1) // 2
        low, high = (middle, high) if fits(middle) else (low, middle - 1)
    return low
