"""Small helpers every benchmark process uses: prefixed logging, package versions, timing, failures.

Plain standard library, so the comparison venvs' workers import it too (a script's own folder is on
``sys.path``).
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from typing import Any


def prefixed_log(prefix: str) -> Callable[[str], None]:
    """A ``log(message)`` that prints ``[prefix] message`` at once (the parent relays worker output)."""
    def log(message: str) -> None:
        print(f"[{prefix}] {message}", flush=True)
    return log


def package_version(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def failure(err: BaseException) -> dict[str, str]:
    """What to record when a part cannot run: the exception and its last frames."""
    return {"error": f"{type(err).__name__}: {err}".strip()[:2000],
            "traceback": "".join(traceback.format_exception(err)[-3:])[-3000:]}


def step_rates(run: Callable[[int, int], None], warmup: int, steps: int, repeats: int, tokens_per_step: int,
               log: Callable[[str], None], indent: str = "") -> list[float]:
    """tokens/s of each timed repeat of a training loop, after an untimed warm-up.

    ``run(count, first)`` takes ``count`` steps on batches ``first, first + 1, ...``; every repeat gets
    batches the warm-up and earlier repeats did not use.
    """
    run(warmup, 0)
    rates = []
    for r in range(repeats):
        elapsed = timed(lambda r=r: run(steps, warmup + r * steps))
        rates.append(steps * tokens_per_step / elapsed)
        log(f"{indent}training repeat {r + 1}/{repeats}: {rates[-1]:,.0f} tokens/s")
    return rates
