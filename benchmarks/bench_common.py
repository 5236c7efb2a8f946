"""Small helpers every benchmark process uses: prefixed logging, package versions, timing, failures, the CPU.

Plain standard library, so the comparison venvs' workers import it too (a script's own folder is on
``sys.path``).
"""

from __future__ import annotations

import json
import platform
import sys
import time
import traceback
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
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


# ---- arms: one measurement in its own process, driven one repeat at a time ------------------------
# Every timed configuration ("arm": a library, a model class, a dtype, a variant) runs in a fresh worker
# process of its own, started by throughput.py. The worker loads and warms up, then answers one request per
# timed repeat, so the parent can interleave the arms' repeats (A B C A B C ...) and every arm sees the same
# machine state. Messages are single JSON lines on the worker's stdout after MESSAGE_MARK; everything else
# the worker prints is relayed as log output.
MESSAGE_MARK = "@@bench-message "


def send_message(message: dict[str, Any]) -> None:
    """Hand one JSON message to the parent (throughput.py)."""
    print(MESSAGE_MARK + json.dumps(message), flush=True)


def serve_arm(prepare: Callable[[], tuple[dict[str, Any], Callable[[int], dict[str, Any]]]],
              log: Callable[[str], None]) -> int:
    """The worker's side of an arm: ``prepare()`` loads and warms up and returns (what to report, ``run``);
    then each request line ``{"repeat": r}`` on stdin is answered with ``run(r)``; ``{"quit": true}`` or the end
    of stdin ends it. A failure is answered with :func:`failure` (the worker keeps serving)."""
    try:
        info, run = prepare()
    except Exception as err:  # reported to the parent, which records it in place of the arm's figures
        send_message({"ready": False, **failure(err)})
        log(f"could not prepare: {failure(err)['error']}")
        return 0
    send_message({"ready": True, **info})
    for line in sys.stdin:
        if not line.strip():
            continue
        request = json.loads(line)
        if request.get("quit"):
            break
        try:
            send_message(run(int(request["repeat"])))
        except Exception as err:
            send_message(failure(err))
    return 0


def timed_batches(forward: Callable[[Any], Any], contexts: Any, per_batch: int) -> dict[str, float]:
    """tokens/s of ``forward`` on ``contexts`` [n, seq] split into batches of ``per_batch`` contexts."""
    seconds = timed(lambda: [forward(batch) for batch in contexts.split(per_batch)])
    return {"tokens_per_s": contexts.numel() / seconds, "seconds": seconds, "tokens": int(contexts.numel())}


def repeat_contexts(tokens: Any, repeat: int, repeats: int) -> Any:
    """Repeat ``repeat``'s share of the hand-off's timed contexts (each repeat its own)."""
    per_repeat = tokens.shape[0] // repeats
    return tokens[repeat * per_repeat:(repeat + 1) * per_repeat]


def warmup_batch(warmup_tokens: Any, per_batch: int) -> Any:
    """``per_batch`` warm-up contexts (the hand-off's warm-up contexts, tiled when more are wanted)."""
    times = -(-per_batch // warmup_tokens.shape[0])
    return warmup_tokens.repeat(times, 1)[:per_batch]


def cpu_name() -> str:
    """The CPU's model name from /proc/cpuinfo (every timing names the machine it came from)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
