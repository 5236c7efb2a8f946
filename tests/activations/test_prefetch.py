"""The prefetch thread: same items in the same order, the producer's error at its place, a clean stop."""

import threading
import time

import pytest

from saekit.activations.prefetch import prefetched


def test_items_come_in_order_and_ahead_of_use():
    produced: list[int] = []

    def items():
        for i in range(6):
            produced.append(i)
            yield i

    stream = prefetched(items(), depth=2)
    assert next(stream) == 0
    time.sleep(0.2)
    assert len(produced) >= 3  # made ahead while the consumer held item 0
    assert list(stream) == [1, 2, 3, 4, 5]


def test_the_producers_error_is_raised_where_it_happened():
    def items():
        yield 1
        raise ValueError("chunk 2 is bad")

    stream = prefetched(items())
    assert next(stream) == 1
    with pytest.raises(ValueError, match="chunk 2 is bad"):
        next(stream)


def test_closing_stops_the_producer():
    def endless():
        i = 0
        while True:
            yield i
            i += 1

    before = threading.active_count()
    stream = prefetched(endless())
    assert next(stream) == 0
    stream.close()
    time.sleep(0.3)
    assert threading.active_count() == before
