"""Read user corpora into ``Document``s: a .txt file, a directory of .txt files, a .jsonl file, or "hf:" specs.

Long .txt files are split into chunks on blank-line paragraph boundaries (``group_pieces`` does the grouping and
is shared with the fortune reader in ``saekit.data.debian``); .jsonl files give one document per line; "hf:NAME"
specs load a Hugging Face dataset through the optional ``datasets`` library.
"""

from __future__ import annotations

import importlib
import json
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

from tqdm.auto import tqdm

from saekit.data.document import Document
from saekit.errors import SaekitError

LONG_TEXT_CHARS = 20_000  # a .txt file longer than this is split into chunks ...
CHUNK_CHARS = 10_000  # ... of about this many characters, on blank-line paragraph boundaries
READ_PROGRESS_CHARS = 100_000_000  # a .jsonl file this long takes seconds to parse: show a bar over its lines


def load_path(path: Path, text_field: str) -> list[Document]:
    """Read a .txt file, a directory of .txt files (recursively) or a .jsonl file (``text_field`` per line)."""
    if not path.exists():
        raise SaekitError(f"corpus path not found: {path}; give an existing .txt/.jsonl file or directory")
    if path.is_dir():
        return _load_dir(path)
    if path.suffix == ".jsonl":
        return _load_jsonl(path, text_field)
    if path.suffix == ".txt":
        return _text_documents(path.name, path.name, _read_text(path))
    raise SaekitError(
        f"unsupported corpus file {path} (want .txt or .jsonl, a directory, 'default' or 'hf:NAME[:SPLIT]')"
    )


def _load_dir(root: Path) -> list[Document]:
    docs: list[Document] = []
    files = sorted(
        (p for p in root.rglob("*.txt") if p.is_file()), key=lambda p: p.relative_to(root).as_posix()
    )
    for path in files:
        rel = f"{root.name}/{path.relative_to(root).as_posix()}"
        docs.extend(_text_documents(root.name, rel, _read_text(path)))
    return docs


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise SaekitError(f"{path} is not UTF-8 text ({err}); convert it, e.g. with iconv -t UTF-8") from err


def _text_documents(source: str, doc_id: str, text: str) -> list[Document]:
    """One document per file, or ~CHUNK_CHARS chunks with ids ``doc_id#n`` when the file is long."""
    if len(text) <= LONG_TEXT_CHARS:
        return [Document(source, doc_id, text)]
    return [
        Document(source, f"{doc_id}#{n}", chunk) for n, chunk in enumerate(_chunk_text(text, CHUNK_CHARS))
    ]


def _chunk_text(text: str, size: int) -> list[str]:
    """Group blank-line paragraphs into chunks of about ``size`` characters (oversized paragraphs are cut)."""
    return group_pieces(_paragraph_pieces(text, size), size)


def group_pieces(pieces: Iterable[str], size: int) -> list[str]:
    """Join consecutive pieces with blank lines into groups of >= ``size`` characters (last may be short)."""
    groups: list[str] = []
    current: list[str] = []
    length = 0
    for piece in pieces:
        length += len(piece) + (2 if current else 0)
        current.append(piece)
        if length >= size:
            groups.append("\n\n".join(current))
            current, length = [], 0
    if current:
        groups.append("\n\n".join(current))
    return groups


LEADING_WHITESPACE = re.compile(r"\s*")  # what str.lstrip() removes (both use Unicode whitespace)


def _paragraph_pieces(text: str, size: int) -> Iterator[str]:
    for para in re.split(r"\n[ \t]*\n", text):
        para = para.strip("\n")
        if not para.strip():
            continue
        yield from _cut_long(para, size)


def _cut_long(para: str, size: int) -> Iterator[str]:
    """A paragraph longer than ``2 * size`` (no blank lines for a long stretch) cut at whitespace near ``size``.

    It walks an offset instead of re-slicing the rest after each cut: the copy of the rest made every cut
    was quadratic (a 61.5 MB one-line file took minutes before its first document).
    """
    start = 0
    while len(para) - start > 2 * size:
        found = max(para.rfind("\n", start, start + size), para.rfind(" ", start, start + size)) - start
        cut = found if found > size // 2 else size
        yield para[start:start + cut]
        start = LEADING_WHITESPACE.match(para, start + cut).end()
    yield para[start:]


def _load_jsonl(path: Path, text_field: str) -> list[Document]:
    docs: list[Document] = []
    text = _read_text(path)
    # Lines end at "\n" alone: str.splitlines() also splits at U+2028, U+2029 and U+0085, which valid JSON
    # strings may hold raw, and would cut such a record in two.
    lines = text.split("\n")
    bar = tqdm(lines, desc=f"reading {path.name}", unit="line", leave=False, disable=len(text) < READ_PROGRESS_CHARS)
    for line_no, line in enumerate(bar, start=1):
        line = line.removesuffix("\r")
        if line.strip():
            docs.append(
                Document(path.name, f"{path.name}#{line_no}", _jsonl_text(path, line_no, line, text_field))
            )
    return docs


def _jsonl_text(path: Path, line_no: int, line: str, text_field: str) -> str:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as err:
        raise SaekitError(
            f"{path} line {line_no} is not valid JSON ({err.msg}); fix or remove that line"
        ) from err
    if not isinstance(record, dict) or text_field not in record:
        raise SaekitError(
            f"{path} line {line_no} has no {text_field!r} field; add it or pass the right text_field name"
        )
    if not isinstance(record[text_field], str):
        raise SaekitError(
            f"{path} line {line_no}: field {text_field!r} is not a string; store the text as a string"
        )
    return record[text_field]


def load_hf(spec: str, text_field: str) -> list[Document]:
    """Load "hf:NAME[:SPLIT]" or "hf:NAME:CONFIG:SPLIT" with the datasets library, one document per row."""
    parts = spec[3:].split(":")
    if not parts[0] or len(parts) > 3 or not all(parts):
        raise SaekitError(f"bad corpus spec {spec!r}; use hf:NAME, hf:NAME:SPLIT or hf:NAME:CONFIG:SPLIT")
    name, config, split = (
        parts[0],
        (parts[1] if len(parts) == 3 else None),
        (parts[-1] if len(parts) > 1 else "train"),
    )
    try:
        datasets = importlib.import_module("datasets")
    except ImportError as err:
        raise SaekitError(
            "hf: corpora need the datasets library; install it with `pip install saekit[hf]`"
        ) from err
    try:
        dataset = datasets.load_dataset(name, config, split=split)
    except Exception as err:  # datasets raises many types (network, missing split, missing config)
        raise SaekitError(f"could not load Hugging Face dataset {spec!r}: {err}".splitlines()[0]) from err
    if text_field not in dataset.column_names:
        raise SaekitError(
            f"dataset {spec!r} has no {text_field!r} column (has {dataset.column_names}); pass text_field"
        )
    texts = dataset[text_field]
    return [
        Document(name, f"{name}/{split}#{i}", text) for i, text in enumerate(texts) if isinstance(text, str)
    ]
