"""Run the saekit CLI and SIGKILL it at a chosen point: the Nth call of a chosen function.

Usage: ``python kill_at.py MODULE:ATTRIBUTE N [MATCH] -- SAEKIT ARGS...``. The wrapper replaces
``MODULE.ATTRIBUTE`` by a function that kills the process (kill -9: no cleanup, no finally blocks)
on its Nth call whose arguments mention MATCH (any call if MATCH is empty), and otherwise calls the
original. Killing *at* a call, rather than after a sleep, makes every fault test deterministic.
"""

from __future__ import annotations

import functools
import importlib
import os
import signal
import sys


def arm(target: str, nth: int, match: str) -> None:
    module_name, attribute = target.split(":")
    module = importlib.import_module(module_name)
    owner = module
    *path, leaf = attribute.split(".")
    for part in path:
        owner = getattr(owner, part)
    original = getattr(owner, leaf)
    calls = 0

    @functools.wraps(original)
    def killing(*args, **kwargs):
        nonlocal calls
        if not match or any(match in str(a) for a in (*args, *kwargs.values())):
            calls += 1
            if calls == nth:
                os.kill(os.getpid(), signal.SIGKILL)
        return original(*args, **kwargs)

    setattr(owner, leaf, killing)


if __name__ == "__main__":
    separator = sys.argv.index("--")
    target, nth, *rest = sys.argv[1:separator]
    arm(target, int(nth), rest[0] if rest else "")
    from saekit.cli import main

    sys.exit(main(sys.argv[separator + 1:]))
