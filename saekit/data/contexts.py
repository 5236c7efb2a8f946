"""Turn documents into fixed-length token contexts: [BOS] + the next tokens of a seeded document stream."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from itertools import islice
from typing import Any

import torch
from tqdm.auto import tqdm

from saekit.data.document import Document
from saekit.errors import SaekitError


class ContextIterator(Iterator[torch.Tensor]):
    """Iterator of LongTensor rows of length ``context_length`` (made by :func:`iter_contexts`)."""

    def __init__(self, rows: Iterator[torch.Tensor], context_length: int) -> None:
        self._rows = rows
        self.context_length = context_length

    def __iter__(self) -> ContextIterator:
        return self

    def __next__(self) -> torch.Tensor:
        return next(self._rows)


def iter_contexts(
    docs: Sequence[Document],
    tokenizer: Any,
    context_length: int,
    bos_token_id: int,
    separator_token_id: int | None,
    seed: int = 0,
    batch_docs: int = 64,
) -> Iterator[torch.Tensor]:
    """Yield rows ``[bos] + next context_length-1 tokens`` of the token stream of ``docs``.

    The stream visits the documents in a permutation seeded by ``seed``; each document contributes its
    tokens (no special tokens added) followed by ``separator_token_id`` when that is not None. Documents are
    tokenized lazily, ``batch_docs`` at a time, so only as many as the consumed rows need are touched.
    The final partial row is dropped.
    """
    if context_length < 2:
        raise SaekitError(f"context_length must be at least 2 (BOS + 1 token), got {context_length}")
    if batch_docs < 1:
        raise SaekitError(f"batch_docs must be at least 1, got {batch_docs}")
    rows = _rows(docs, tokenizer, context_length, bos_token_id, separator_token_id, seed, batch_docs)
    return ContextIterator(rows, context_length)


def take_contexts(iterator: Iterator[torch.Tensor], n: int) -> torch.Tensor:
    """Stack the next ``n`` rows of ``iterator`` into an [n, context_length] LongTensor."""
    if n < 1:
        raise SaekitError(f"number of contexts must be at least 1, got {n}")
    rows = list(islice(iterator, n))
    if len(rows) < n:
        length = getattr(iterator, "context_length", None) or (rows[0].numel() if rows else "?")
        raise SaekitError(
            f"corpus too small: needed {n} contexts of {length} tokens, got {len(rows)}; "
            "use a larger corpus or fewer/shorter contexts"
        )
    return torch.stack(rows)


def count_tokens(docs: Sequence[Document], tokenizer: Any, batch_docs: int = 256) -> int:
    """Total number of tokens of the documents' texts (no special tokens, no separators)."""
    total = 0
    for start in range(0, len(docs), batch_docs):
        texts = [docs[i].text for i in range(start, min(start + batch_docs, len(docs)))]
        total += sum(len(ids) for ids in _tokenize(tokenizer, texts))
    return total


def document_order(n_docs: int, seed: int) -> torch.Tensor:
    """The seeded permutation of document indices that :func:`iter_contexts` follows."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randperm(n_docs, generator=generator)


def _rows(
    docs: Sequence[Document],
    tokenizer: Any,
    context_length: int,
    bos_token_id: int,
    separator_token_id: int | None,
    seed: int,
    batch_docs: int,
) -> Iterator[torch.Tensor]:
    body = context_length - 1
    buffer: list[int] = []
    for token_ids in _token_batches(docs, tokenizer, separator_token_id, seed, batch_docs):
        buffer.extend(token_ids)
        usable = len(buffer) - len(buffer) % body
        for start in range(0, usable, body):
            yield torch.tensor([bos_token_id, *buffer[start : start + body]], dtype=torch.long)
        del buffer[:usable]


def _token_batches(
    docs: Sequence[Document], tokenizer: Any, separator_token_id: int | None, seed: int, batch_docs: int
) -> Iterator[list[int]]:
    """Yield, per batch of documents in seeded order, their concatenated tokens (+ separators)."""
    order = document_order(len(docs), seed)
    separator = [] if separator_token_id is None else [separator_token_id]
    for start in range(0, len(order), batch_docs):
        texts = [docs[i].text for i in order[start : start + batch_docs].tolist()]
        stream: list[int] = []
        for ids in _tokenize_with_progress(tokenizer, texts):
            stream.extend(ids)
            stream.extend(separator)
        yield stream


PROGRESS_CHARS = 2_000_000  # a tokenizer takes seconds for this much text (~0.5 MB/s on one core): show a bar


def _tokenize_with_progress(tokenizer: Any, texts: list[str]) -> list[list[int]]:
    """``_tokenize``, with a bar over characters when there is much text (a huge .jsonl record, long documents).

    The texts go to the tokenizer in runs of about PROGRESS_CHARS so the bar moves; each document is still
    tokenized whole, so the tokens are the same. One document is one tokenizer call, so a single huge one
    (61.5 MB: ~3 minutes) moves the bar only once it is done; the bar says which it is working on.
    """
    total = sum(len(text) for text in texts)
    if total < PROGRESS_CHARS:
        return _tokenize(tokenizer, texts)
    encoded: list[list[int]] = []
    with tqdm(total=total, desc="tokenizing", unit="char", unit_scale=True, leave=False) as bar:
        for group in _runs_of_chars(texts, PROGRESS_CHARS):
            chars = sum(len(text) for text in group)
            if len(group) == 1 and chars >= PROGRESS_CHARS:
                bar.set_postfix_str(f"one document of {chars:,} characters", refresh=True)
            encoded.extend(_tokenize(tokenizer, group))
            bar.update(chars)
    return encoded


def _runs_of_chars(texts: list[str], size: int) -> Iterator[list[str]]:
    """Consecutive texts in groups of up to ``size`` characters, in order; a longer text is a group of its own."""
    group: list[str] = []
    chars = 0
    for text in texts:
        if group and chars + len(text) > size:
            yield group
            group, chars = [], 0
        group.append(text)
        chars += len(text)
    if group:
        yield group


def _tokenize(tokenizer: Any, texts: list[str]) -> list[list[int]]:
    # split_special_tokens: text that spells "<|endoftext|>" etc. stays text, never becomes a control token.
    # verbose=False: documents longer than model_max_length are expected here, so skip that warning.
    encoded = tokenizer(texts, add_special_tokens=False, split_special_tokens=True, verbose=False)
    return encoded["input_ids"]
