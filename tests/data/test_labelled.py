"""Labelled tasks from the machine's Debian files and from the user's CSV/JSONL: balance, split, bad input."""

from __future__ import annotations

import json
import re

import pytest

from saekit.data.labelled import (
    Example,
    balanced_task,
    builtin_task,
    is_test,
    load_labelled_file,
    load_task,
)
from saekit.errors import SaekitError


def _split_is_by_document(task) -> None:
    train_docs = {e.document for e in task.train}
    assert not train_docs & {e.document for e in task.test}
    assert not {e.text for e in task.train} & {e.text for e in task.test}
    assert all(not is_test(e) for e in task.train) and all(is_test(e) for e in task.test)


def test_fortune_topic_at_its_stated_size_is_balanced_deterministic_and_split_by_document():
    task = builtin_task("fortune-topic")
    assert task.classes == ("computers", "men-women", "politics", "science", "songs-poems", "work")
    for split, size in ((task.train, 400), (task.test, 100)):
        assert {c: sum(e.label == c for e in split) for c in task.classes} == dict.fromkeys(task.classes, size)
    _split_is_by_document(task)
    assert builtin_task("fortune-topic") == task


def test_bible_passages_never_share_a_chapter_across_splits():
    task = builtin_task("bible-testament", 100, 25)
    assert task.classes == ("new", "old") and (len(task.train), len(task.test)) == (200, 50)
    _split_is_by_document(task)
    new_chapters = {e.document.removeprefix("kjv-bible/").rsplit(" ", 1)[0] for e in task.train if e.label == "new"}
    assert new_chapters <= {"Matthew", "Mark", "Luke", "John", "Acts", "Romans", "1 Corinthians", "2 Corinthians",
                            "Galatians", "Ephesians", "Philippians", "Colossians", "1 Thessalonians",
                            "2 Thessalonians", "1 Timothy", "2 Timothy", "Titus", "Philemon", "Hebrews", "James",
                            "1 Peter", "2 Peter", "1 John", "2 John", "3 John", "Jude", "Revelation"}


def test_language_labels_match_the_script():
    task = builtin_task("language", 60, 15)
    assert task.classes == ("de", "en", "es", "it", "ru")
    cyrillic = re.compile("[\u0400-\u04ff]")
    for example in task.train + task.test:
        if example.label == "ru":
            assert cyrillic.search(example.text), example.text
        elif example.label == "en":
            assert not cyrillic.search(example.text), example.text


def test_balanced_task_takes_the_same_examples_in_hash_order_and_cuts_to_the_smallest_class():
    examples = [Example(f"{label} text number {i}", label, f"{label}-{i}") for label, n in (("a", 60), ("b", 30))
                for i in range(n)]
    task = balanced_task("t", "test", examples)
    assert task.train_per_class == min(sum(not is_test(e) for e in examples if e.label == c) for c in "ab")
    assert balanced_task("t", "test", list(reversed(examples))) == task  # input order does not matter
    with pytest.raises(SaekitError, match="class 'b' has .* train examples, need 1000"):
        balanced_task("t", "test", examples, 1000, 1)


def test_user_csv_and_jsonl_give_the_same_task(tmp_path):
    rows = [{"text": f"sample {i} of {label}", "label": label} for label in ("x", "y") for i in range(50)]
    jsonl = tmp_path / "mine.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows))
    csv_path = tmp_path / "mine.csv"
    csv_path.write_text("label,text\n" + "".join(f"{r['label']},{r['text']}\n" for r in rows))
    from_jsonl, from_csv = load_labelled_file(jsonl), load_task(str(csv_path))
    assert from_jsonl.train == from_csv.train and from_jsonl.test == from_csv.test
    assert from_jsonl.classes == ("x", "y") and from_jsonl.train_per_class >= 30


@pytest.mark.parametrize("content, suffix, message", [
    ('{"text": "a", "label": "x"}\n{"text": "b", "label": "x"}\n', ".jsonl", "has only the class 'x'"),
    ('{"text": "a"}\n', ".jsonl", "row 1 has no 'label' column"),
    ("text\nhello\n", ".csv", "row 1 has no 'label' column"),
    ('{"text": "a", "label": "x"}\n{"text": "a", "label": "y"}\n', ".jsonl", "has two labels"),
    ("not json\n", ".jsonl", "line 1 is not JSON"),
])
def test_bad_labelled_files_are_one_line(tmp_path, content, suffix, message):
    path = tmp_path / f"bad{suffix}"
    path.write_text(content)
    with pytest.raises(SaekitError, match=message):
        load_task(str(path))


def test_unknown_task_names_the_choices():
    with pytest.raises(SaekitError, match="unknown task 'nope'; choose one of language, code, fortune-topic"):
        load_task("nope")


def test_the_scr_mix_has_four_equal_quadrants_split_by_document():
    from saekit.data.labelled import quadrant_task, spurious_task

    task = spurious_task("topic-language", 50, 10)
    assert (task.target_classes, task.spurious_classes) == (("computing", "other"), ("en", "foreign"))
    assert {q: len(texts) for q, texts in task.train.items()} == dict.fromkeys(task.train, 50)
    assert {q: len(texts) for q, texts in task.test.items()} == dict.fromkeys(task.test, 10)
    train = {t for texts in task.train.values() for t in texts}
    assert not train & {t for texts in task.test.values() for t in texts}
    with pytest.raises(SaekitError, match="an SCR task needs exactly"):
        quadrant_task(builtin_task("bible-testament", 5, 2), ("a", "b"), ("c", "d"))
