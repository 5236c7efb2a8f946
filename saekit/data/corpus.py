"""Load a corpus by spec and split it: the ``load_corpus`` dispatcher, ``split_documents`` and ``corpus_summary``.

``load_corpus`` sends "default" to ``saekit.data.debian``, and files, directories and "hf:" specs to
``saekit.data.files``; ``Document`` (from ``saekit.data.document``) and ``default_corpus`` are re-exported here so
``from saekit.data.corpus import Document, load_corpus, split_documents`` keeps working.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path

from saekit.data.debian import default_corpus
from saekit.data.document import Document
from saekit.data.files import load_hf, load_path
from saekit.errors import SaekitError

__all__ = ["Document", "corpus_summary", "default_corpus", "load_corpus", "split_documents"]


# --- public API


def load_corpus(spec: str, text_field: str = "text") -> list[Document]:
    """Load ``spec``: "default", a .txt file, a directory of .txt files, a .jsonl file, or "hf:NAME[:SPLIT]".

    "hf:NAME:CONFIG:SPLIT" is also accepted for datasets that need a configuration name.
    """
    if not spec.strip():
        raise SaekitError("corpus spec is empty; pass 'default', a .txt/.jsonl file, a directory or hf:NAME")
    if spec == "default":
        docs = default_corpus()
    elif spec.startswith("hf:"):
        docs = load_hf(spec, text_field)
    else:
        docs = load_path(Path(spec).expanduser(), text_field)
    return _require_nonempty(docs, spec)


def split_documents(
    docs: list[Document], eval_fraction: float = 0.05, seed: int = 0
) -> tuple[list[Document], list[Document]]:
    """Split into (train, eval) by a seeded hash of each doc_id, so the assignment of a document is stable."""
    if not 0.0 < eval_fraction < 1.0:
        raise SaekitError(f"eval_fraction must be between 0 and 1 (exclusive), got {eval_fraction}")
    train: list[Document] = []
    held_out: list[Document] = []
    for doc in docs:
        (held_out if _unit_hash(f"{seed}:{doc.doc_id}") < eval_fraction else train).append(doc)
    if not held_out:
        raise SaekitError(
            f"eval split of {len(docs)} documents is empty at eval_fraction={eval_fraction}; "
            "raise eval_fraction or add documents"
        )
    if not train:
        raise SaekitError(
            f"train split of {len(docs)} documents is empty at eval_fraction={eval_fraction}; "
            "lower eval_fraction or add documents"
        )
    return train, held_out


def corpus_summary(docs: Iterable[Document]) -> dict:
    """Total and per-source counts: {"documents", "characters", "sources": {source: {...}}}."""
    sources: dict[str, dict[str, int]] = {}
    for doc in docs:
        entry = sources.setdefault(doc.source, {"documents": 0, "characters": 0})
        entry["documents"] += 1
        entry["characters"] += len(doc.text)
    return {
        "documents": sum(s["documents"] for s in sources.values()),
        "characters": sum(s["characters"] for s in sources.values()),
        "sources": sources,
    }


# --- helpers


def _unit_hash(key: str) -> float:
    """Map a string to [0, 1) with sha256 (stable across runs and platforms, unlike hash())."""
    return (int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "big") >> 11) / 2.0**53


def _require_nonempty(docs: list[Document], spec: str) -> list[Document]:
    docs = [doc for doc in docs if doc.text.strip()]
    if not docs:
        raise SaekitError(
            f"corpus {spec!r} is empty (no documents with text); point it at files that contain text"
        )
    return docs
