"""One writer per run directory (and per activation cache entry): an exclusive lock, stale when its holder is gone.

The lock is an ``flock`` on ``DIR/.saekit.lock``, so the kernel releases it when the holder exits,
however it exits (SIGKILL included): a lock left by a dead process never blocks anyone, and no PID
guessing is needed. The file also records who holds it (pid, host, command, start time) so a second
writer is told whom it is waiting for. Locks are re-entrant within one process (a job that trains,
then evaluates, then analyses one run holds it once), which is the one piece of module state here.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from saekit.errors import SaekitError

LOCK_FILE = ".saekit.lock"

# Directories this process holds, with their nesting depth. flock locks belong to open file
# descriptions, so a second flock by the same process on a fresh descriptor would refuse itself.
_held: dict[Path, int] = {}


def _holder_text(fd: int) -> str:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        holder = json.loads(os.read(fd, 4096).decode() or "{}")
    except (OSError, ValueError):
        holder = {}
    if not holder:
        return "another process"
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder.get("started", 0)))
    return (f"pid {holder.get('pid')} on {holder.get('host')} ({holder.get('command', '?')}, "
            f"started {started})")


@contextmanager
def _outermost(key: Path) -> Iterator[bool]:
    """Count this process's holds of ``key``; yields whether this is the outermost (the one that locks)."""
    outer = key not in _held
    _held[key] = _held.get(key, 0) + 1
    try:
        yield outer
    finally:
        _held[key] -= 1
        if not _held[key]:
            del _held[key]


def _flock(fd: int, refusal: Callable[[int], str]) -> int:
    """Take the exclusive lock on ``fd`` without waiting, or close it and fail with ``refusal(fd)``."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        message = refusal(fd)
        os.close(fd)
        raise SaekitError(message) from None
    return fd


@contextmanager
def exclusive(directory: str | Path, what: str = "run directory") -> Iterator[None]:
    """Hold the lock of ``directory`` (created if needed) for the block, or fail with one line naming the holder."""
    directory = Path(directory).resolve()
    with _outermost(directory) as outer:
        if not outer:
            yield
            return
        directory.mkdir(parents=True, exist_ok=True)
        fd = _flock(os.open(directory / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o666),
                    lambda fd: f"{what} {directory} is in use by {_holder_text(fd)}; wait for it to finish, "
                               "or stop it and rerun (with --resume for training)")
        try:
            record = {"pid": os.getpid(), "host": socket.gethostname(), "command": " ".join(sys.argv[:3]),
                      "started": time.time()}
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(record).encode(), 0)
            yield
        finally:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)


@contextmanager
def exclusive_output(path: str | Path, what: str = "output directory") -> Iterator[None]:
    """Hold an output directory that is replaced whole (made empty if missing) for the block.

    The lock is an ``flock`` on the directory itself, not a file inside (that file would be swapped out
    with the directory) nor beside it (litter in the user's folder). A directory made here and still
    empty when the block fails is removed again, so a refused write leaves nothing behind.
    """
    path = Path(path).resolve()
    with _outermost(path) as outer:
        if not outer:
            yield
            return
        made = not path.exists()
        path.mkdir(parents=True, exist_ok=True)
        fd = _flock(os.open(path, os.O_RDONLY | os.O_DIRECTORY),
                    lambda fd: f"{what} {path} is being written by another process; wait for it to finish")
        try:
            yield
        except BaseException:
            if made and path.is_dir() and not any(path.iterdir()):
                path.rmdir()
            raise
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
