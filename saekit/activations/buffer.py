"""Shuffle buffer: mixes tokens from many contexts into training batches, deterministically from a seed."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch
from torch import Tensor

Batch = dict[str, Tensor]


def _concat(parts: list[Batch]) -> Batch:
    return {key: torch.cat([part[key] for part in parts]) for key in parts[0]}


def _index(batch: Batch, index: Tensor | slice) -> Batch:
    return {key: value[index] for key, value in batch.items()}


def _size(batch: Batch) -> int:
    return next(iter(batch.values())).shape[0]


def shuffled_batches(chunks: Iterable[Batch], batch_size: int, buffer_tokens: int, seed: int) -> Iterator[Batch]:
    """Yield batches of ``batch_size`` rows mixed across chunks (rows aligned across keys).

    The buffer fills to ``buffer_tokens``, is permuted, and its first half is emitted; the second
    half stays to mix with what comes next. The sequence depends only on the chunks and the seed,
    which is what makes training resumable to the exact batch.
    """
    generator = torch.Generator().manual_seed(seed)
    pending: list[Batch] = []
    pending_size = 0
    for chunk in chunks:
        pending.append(chunk)
        pending_size += _size(chunk)
        if pending_size < buffer_tokens:
            continue
        buffer = _concat(pending)
        buffer = _index(buffer, torch.randperm(pending_size, generator=generator))
        emit = (pending_size // 2 // batch_size) * batch_size
        for start in range(0, emit, batch_size):
            yield _index(buffer, slice(start, start + batch_size))
        pending = [_index(buffer, slice(emit, None))]
        pending_size -= emit
    if pending_size >= batch_size:
        buffer = _index(_concat(pending), torch.randperm(pending_size, generator=generator))
        for start in range(0, pending_size - batch_size + 1, batch_size):
            yield _index(buffer, slice(start, start + batch_size))
