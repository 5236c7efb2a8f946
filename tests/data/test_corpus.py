"""Tests for saekit.data.corpus and its readers: the default corpus (debian, rst), user files, train/eval split."""

from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path

import pytest

from saekit.data import files
from saekit.data.corpus import (
    Document,
    corpus_summary,
    load_corpus,
    split_documents,
)
from saekit.data.rst import rst_to_prose
from saekit.errors import SaekitError


@pytest.fixture(scope="module")
def default_docs() -> list[Document]:
    return load_corpus("default")


def _by_source(docs: list[Document], source: str) -> list[Document]:
    return [doc for doc in docs if doc.source == source]


# --- default corpus


def test_default_corpus_has_three_large_sources(default_docs):
    summary = corpus_summary(default_docs)
    assert list(summary["sources"]) == ["kjv-bible", "python-docs", "fortunes"]
    assert summary["sources"]["kjv-bible"]["documents"] == 1189  # chapters in the KJV
    assert summary["sources"]["python-docs"]["documents"] > 300
    assert summary["sources"]["fortunes"]["documents"] > 300
    for counts in summary["sources"].values():
        assert counts["characters"] > 1_000_000
    assert summary["documents"] == len(default_docs)
    assert summary["characters"] == sum(len(doc.text) for doc in default_docs)


def test_default_corpus_ids_unique_and_deterministic(default_docs):
    ids = [doc.doc_id for doc in default_docs]
    assert len(set(ids)) == len(ids)
    assert all(doc.doc_id.startswith(doc.source + "/") for doc in default_docs)
    assert all(doc.text.strip() for doc in default_docs)
    assert [doc.doc_id for doc in load_corpus("default")] == ids


def test_bible_is_chapters_of_prose_without_verse_references(default_docs):
    bible = _by_source(default_docs, "kjv-bible")
    assert bible[0].doc_id == "kjv-bible/Genesis 1"
    assert bible[0].text.startswith("In the beginning God created the heaven and the earth. And the earth")
    assert bible[-1].doc_id == "kjv-bible/Revelation 22"
    assert bible[-1].text.endswith("The grace of our Lord Jesus Christ be with you all. Amen.")
    psalm = next(doc for doc in bible if doc.doc_id == "kjv-bible/Psalms 23")
    assert psalm.text.startswith("The LORD is my shepherd; I shall not want.")
    verse_ref = re.compile(r"\b\d?[A-Z][A-Za-z]*\d+:\d+")
    assert not any(verse_ref.search(doc.text) for doc in bible)
    assert not any("Ge1:1" in doc.text for doc in bible)


def test_python_docs_are_prose_without_rst_leftovers(default_docs):
    docs = _by_source(default_docs, "python-docs")
    ids = {doc.doc_id for doc in docs}
    assert "python-docs/library/os.path.rst" in ids
    assert "python-docs/tutorial/introduction.rst" in ids
    assert all(len(doc.text) >= 200 for doc in docs)
    text = "\n\n".join(doc.text for doc in docs)
    assert not re.search(r"(?m)^\s*\.\. ", text)  # directive / comment lines
    assert not re.search(r"\.\. [\w:-]+::", text)
    assert not re.search(r":(func|class|mod|meth|ref|term|c:func|data|exc|attr):`", text)  # roles
    assert not re.search(r"(?m)^\s*([=\-~^*#])\1{3,}\s*$", text)  # section underlines / transitions
    assert "``" not in text
    assert not re.search(r"(?m)^\s*\+[-=+]{3,}\+", text)  # grid table borders
    os_path = next(doc for doc in docs if doc.doc_id == "python-docs/library/os.path.rst")
    assert os_path.text.startswith("os.path --- Common pathname manipulations")
    assert "see open, and for accessing the filesystem see the os module." in os_path.text
    assert ">>> os.path.commonprefix" not in os_path.text  # literal block after "::" dropped


def test_fortunes_grouped_and_cleaned(default_docs):
    docs = _by_source(default_docs, "fortunes")
    names = {doc.doc_id.split("/")[1].split("#")[0] for doc in docs}
    assert {"fortunes", "literature", "computers"} <= names
    assert not names & {"art", "ascii-art"}
    assert not any(name.endswith((".u8", ".dat")) for name in names)
    assert all(re.fullmatch(r"fortunes/[\w-]+#\d+", doc.doc_id) for doc in docs)
    assert not any(re.search(r"(?m)^%$", doc.text) for doc in docs)
    assert not any("\x08" in doc.text for doc in docs)  # overstrike sequences removed
    full = [doc for doc in docs if not _is_last_group(doc, docs)]
    assert all(len(doc.text) >= 2000 for doc in full)
    first = next(doc for doc in docs if doc.doc_id == "fortunes/fortunes#0")
    assert first.text.startswith("A day for firm decisions!!!!!  Or is it?\n\nA few hours grace")


def _is_last_group(doc: Document, docs: list[Document]) -> bool:
    name, n = doc.doc_id.rsplit("#", 1)
    return f"{name}#{int(n) + 1}" not in {d.doc_id for d in docs if d.doc_id.startswith(name + "#")}


# --- RST conversion


def test_rst_to_prose_handles_roles_directives_and_code():
    rst = """\
:mod:`json` --- JSON encoder
============================

.. module:: json
   :synopsis: Encode and decode.

See :func:`os.path.join`, :ref:`the tutorial <tut-json>` and :meth:`~dict.items`.
Use ``dumps`` with *indent* and **sort_keys**; see :pep:`8` and `PEP <https://peps.python.org>`_.

.. function:: dumps(obj)
              dumps(obj, indent)

   Serialize *obj*. For example::

      json.dumps([1, 2])

   >>> json.dumps(1)
   '1'

   .. versionchanged:: 3.6
      Accepts bytes.

.. code-block:: python

   x = 1

=====  =====
col 1  col 2
=====  =====
a      b
=====  =====

+---+---+
| x | y |
+---+---+

* first item
* second item
"""
    assert rst_to_prose(rst).split("\n\n") == [
        "json --- JSON encoder",
        "See os.path.join, the tutorial and items. Use dumps with indent and sort_keys; see PEP 8 and PEP.",
        "Serialize obj. For example:",
        "Accepts bytes.",
        "first item",
        "second item",
    ]


# --- split


def test_split_is_deterministic_disjoint_and_complete(default_docs):
    train, held_out = split_documents(default_docs, eval_fraction=0.1, seed=3)
    train2, held_out2 = split_documents(default_docs, eval_fraction=0.1, seed=3)
    assert [d.doc_id for d in train] == [d.doc_id for d in train2]
    assert [d.doc_id for d in held_out] == [d.doc_id for d in held_out2]
    train_ids, eval_ids = {d.doc_id for d in train}, {d.doc_id for d in held_out}
    assert not train_ids & eval_ids
    assert train_ids | eval_ids == {d.doc_id for d in default_docs}
    assert 0.08 < len(held_out) / len(default_docs) < 0.12
    other_train, _ = split_documents(default_docs, eval_fraction=0.1, seed=4)
    assert {d.doc_id for d in other_train} != train_ids


def test_split_is_stable_when_documents_are_added(default_docs):
    _, held_out = split_documents(default_docs[:1000], eval_fraction=0.2)
    _, held_out_more = split_documents(default_docs, eval_fraction=0.2)
    assert {d.doc_id for d in held_out} == {d.doc_id for d in held_out_more if d in default_docs[:1000]}


def test_split_errors_when_a_side_is_empty():
    docs = [Document("x", f"x/{i}", "some text") for i in range(3)]
    with pytest.raises(SaekitError, match="eval split .* empty.*raise eval_fraction"):
        split_documents(docs, eval_fraction=1e-9)
    with pytest.raises(SaekitError, match="eval_fraction"):
        split_documents(docs, eval_fraction=1.5)


# --- user files


def test_load_small_txt_is_one_document(tmp_path: Path):
    path = tmp_path / "notes.txt"
    path.write_text("Hello there.\n\nSecond paragraph.\n", encoding="utf-8")
    assert load_corpus(str(path)) == [
        Document("notes.txt", "notes.txt", "Hello there.\n\nSecond paragraph.\n")
    ]


def test_load_long_txt_is_chunked_on_paragraphs(tmp_path: Path):
    paragraphs = [f"Paragraph {i}. " + "word " * 150 for i in range(100)]  # ~76k characters
    path = tmp_path / "book.txt"
    path.write_text("\n\n".join(paragraphs), encoding="utf-8")
    docs = load_corpus(str(path))
    assert [d.doc_id for d in docs] == [f"book.txt#{n}" for n in range(len(docs))]
    assert 6 <= len(docs) <= 8
    assert all(9_000 < len(d.text) < 11_000 for d in docs[:-1])
    rebuilt = "\n\n".join(d.text for d in docs).split("\n\n")
    assert [p.strip() for p in rebuilt] == [p.strip() for p in paragraphs]


def test_load_directory_recursively_sorted(tmp_path: Path):
    (tmp_path / "corpus" / "sub").mkdir(parents=True)
    (tmp_path / "corpus" / "b.txt").write_text("bee", encoding="utf-8")
    (tmp_path / "corpus" / "sub" / "a.txt").write_text("ay", encoding="utf-8")
    (tmp_path / "corpus" / "a.txt").write_text("a", encoding="utf-8")
    (tmp_path / "corpus" / "skip.md").write_text("not loaded", encoding="utf-8")
    docs = load_corpus(str(tmp_path / "corpus"))
    assert [(d.source, d.doc_id, d.text) for d in docs] == [
        ("corpus", "corpus/a.txt", "a"),
        ("corpus", "corpus/b.txt", "bee"),
        ("corpus", "corpus/sub/a.txt", "ay"),
    ]


def test_load_jsonl_with_custom_field(tmp_path: Path):
    path = tmp_path / "data.jsonl"
    lines = [json.dumps({"body": "first"}), "", json.dumps({"body": "second", "x": 1})]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    docs = load_corpus(str(path), text_field="body")
    assert [(d.doc_id, d.text) for d in docs] == [("data.jsonl#1", "first"), ("data.jsonl#3", "second")]


@pytest.mark.parametrize(
    ("bad_line", "message"),
    [("{not json", "line 2 is not valid JSON"), (json.dumps({"other": "x"}), "line 2 has no 'text' field")],
)
def test_load_jsonl_bad_line_names_line_number(tmp_path: Path, bad_line: str, message: str):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"text": "ok"}) + "\n" + bad_line + "\n", encoding="utf-8")
    with pytest.raises(SaekitError, match=message):
        load_corpus(str(path))


def test_empty_corpus_errors(tmp_path: Path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(SaekitError, match="corpus .* is empty"):
        load_corpus(str(tmp_path / "empty"))
    blank = tmp_path / "blank.txt"
    blank.write_text("  \n\n ", encoding="utf-8")
    with pytest.raises(SaekitError, match="corpus .* is empty"):
        load_corpus(str(blank))


def test_missing_path_bad_file_type_and_blank_spec_error(tmp_path: Path):
    with pytest.raises(SaekitError, match="corpus spec is empty"):
        load_corpus("  ")
    with pytest.raises(SaekitError, match="not found"):
        load_corpus(str(tmp_path / "nope.txt"))
    other = tmp_path / "table.csv"
    other.write_text("a,b\n", encoding="utf-8")
    with pytest.raises(SaekitError, match="unsupported corpus file"):
        load_corpus(str(other))


def test_hf_without_datasets_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` raise ImportError
    with pytest.raises(SaekitError, match=re.escape("pip install saekit[hf]")):
        load_corpus("hf:roneneldan/TinyStories:validation")
    with pytest.raises(SaekitError, match="bad corpus spec"):
        load_corpus("hf:")


@pytest.mark.parametrize("separator", ["\u2028", "\u2029", "\x85"])
def test_load_jsonl_keeps_unicode_line_separators_inside_strings(tmp_path: Path, separator: str):
    # Valid JSON may hold these raw in a string; only "\n" (with an optional "\r" before it) ends a JSONL line.
    path = tmp_path / "data.jsonl"
    texts = [f"one{separator}two", "three"]
    path.write_text("\r\n".join(json.dumps({"text": t}, ensure_ascii=False) for t in texts) + "\r\n", encoding="utf-8")
    docs = load_corpus(str(path))
    assert [(d.doc_id, d.text) for d in docs] == [("data.jsonl#1", f"one{separator}two"), ("data.jsonl#2", "three")]


def test_a_long_one_line_txt_is_cut_in_linear_time(tmp_path: Path):
    """40 M characters on one line. Each cut used to copy the rest of the line twice: quadratic, and past 32 MB
    every copy is a fresh mmap, so this took 125 s (a 61.5 MB line 330 s) before its first document; now ~0.5 s."""
    sentence = " ".join(f"w{i}" for i in range(997))
    text = " ".join([sentence] * (40_000_000 // len(sentence)))
    path = tmp_path / "one-line.txt"
    path.write_text(text, encoding="utf-8")
    started = time.perf_counter()
    docs = load_corpus(str(path))
    elapsed = time.perf_counter() - started
    assert elapsed < 5.0, f"reading {len(text):,} characters took {elapsed:.1f} s"
    # Cut at spaces into pieces of under CHUNK_CHARS (the last up to twice that), grouped by two: nothing lost.
    pieces = [piece for d in docs for piece in d.text.split("\n\n")]
    assert " ".join(pieces) == text
    assert all(9_990 <= len(piece) < 10_000 for piece in pieces[:-1]), sorted(map(len, pieces[:-1]))[::500]
    assert [d.doc_id for d in docs[:2]] == ["one-line.txt#0", "one-line.txt#1"]


def test_a_long_jsonl_is_read_under_a_progress_bar(tmp_path: Path, monkeypatch, capsys):
    path = tmp_path / "data.jsonl"
    path.write_text("".join(json.dumps({"text": f"doc {i}"}) + "\n" for i in range(3)), encoding="utf-8")
    assert [d.text for d in load_corpus(str(path))] == ["doc 0", "doc 1", "doc 2"]
    assert capsys.readouterr().err == ""  # a short file shows no bar
    monkeypatch.setattr(files, "READ_PROGRESS_CHARS", 10)
    assert [d.text for d in load_corpus(str(path))] == ["doc 0", "doc 1", "doc 2"]
    err = capsys.readouterr().err
    assert "reading data.jsonl" in err and "0/4" in err, err  # 3 lines and the empty one after the last "\n"


def test_fortune_files_skip_links_into_language_subdirectories(tmp_path):
    """fortunes-it links its Italian files into the top level (formiche -> it/formiche); the default corpus stays
    the top level's own English files, whichever fortune packages are installed."""
    from saekit.data.debian import _fortune_files

    (tmp_path / "cookie").write_text("A cookie.\n%\nAnother.\n")
    (tmp_path / "cookie.u8").symlink_to("cookie")
    (tmp_path / "it").mkdir()
    (tmp_path / "it" / "formiche").write_text("Una formica.\n")
    (tmp_path / "formiche").symlink_to("it/formiche")
    assert _fortune_files(tmp_path) == [("cookie", tmp_path / "cookie")]


def test_the_default_corpus_has_no_italian_fortunes(default_docs):
    fortune_ids = {doc.doc_id.split("#")[0] for doc in default_docs if doc.source == "fortunes"}
    assert "fortunes/formiche" not in fortune_ids and "fortunes/definizioni" not in fortune_ids
    assert "fortunes/cookie" in fortune_ids
