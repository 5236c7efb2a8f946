"""Run an iterator ahead on a background thread, so producing the next items overlaps using this one.

The model forward that makes activation chunks and the dictionary steps that consume them use
different parts of the machine only partly on a CPU, but fully on a GPU (the forward can run while the
host queues the steps). torch releases the GIL inside its kernels, so a thread is enough.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from typing import TypeVar

T = TypeVar("T")
_DONE = object()


class _Failure:
    def __init__(self, error: BaseException) -> None:
        self.error = error


def prefetched(items: Iterator[T], depth: int = 1) -> Iterator[T]:
    """Yield ``items`` in order while a thread produces up to ``depth`` of them ahead.

    An exception in the producer is raised here, at the item where it happened. Closing this
    generator (or dropping it) stops the producer at its next item.
    """
    ready: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: object) -> bool:
        while not stop.is_set():
            try:
                ready.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put(item):
                    return
        except BaseException as error:  # handed to the consumer, which re-raises it
            put(_Failure(error))
            return
        put(_DONE)

    worker = threading.Thread(target=produce, name="saekit-prefetch", daemon=True)
    worker.start()
    try:
        while True:
            item = ready.get()
            if item is _DONE:
                return
            if isinstance(item, _Failure):
                raise item.error
            yield item
    finally:
        stop.set()
        worker.join(timeout=5)
