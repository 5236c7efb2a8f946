"""Labelled tasks from Hugging Face datasets that are already on this machine: SAEBench's sparse-probing datasets
by name, ``hf:NAME`` for any dataset with ``text`` and ``label`` columns, or ``hf:DIRECTORY`` of data files.

Nothing is ever downloaded. A dataset is found in the hub cache (``HF_HUB_CACHE``, else ``HF_HOME/hub``: what
``hf download --repo-type dataset NAME`` fills), read from the snapshot's data files, or else in the ``datasets``
library's cache (``HF_DATASETS_CACHE``, else ``HF_HOME/datasets``: what ``datasets.load_dataset`` leaves), read from
its Arrow files. Both are plain file reads, so no setting can make them reach the network; a dataset in neither is
one line saying how to fetch it elsewhere. JSON Lines, JSON and CSV files are read with the standard library;
Parquet and Arrow need ``pyarrow`` (which ``pip install datasets`` brings).

SAEBench's datasets keep its text and label columns and its chosen classes (``sae_bench_utils/dataset_info.py``,
``dataset_utils.py``); a dataset's own train/test split is kept when its files have one (else saekit's document-hash
split), and each class is cut to the same size in each split as every saekit task is. Departures: bias_in_bios and
the Amazon categories are not balanced by gender / rating inside a class, and the texts are the first in hash order
rather than SAEBench's pandas sample, so the same dataset gives the same task but not SAEBench's very texts.
"""

from __future__ import annotations

import csv
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from saekit.data.labelled import Example, LabelledTask, balanced_task, is_test
from saekit.errors import SaekitError

HF_PREFIX = "hf:"
MAX_ROWS_PER_CLASS = 20_000  # rows kept per class and split: SAEBench needs 2000 + 500; github-code has millions
DATA_SUFFIXES = (".parquet", ".arrow", ".jsonl", ".json", ".csv")
SPLIT_WORDS = {"test": "test", "train": "train", "validation": "validation", "valid": "validation", "dev": "validation"}
SPLIT_PATTERN = re.compile(r"(?:^|[/_.-])(test|train|validation|valid|dev)(?=[/_.-]|$)")


@dataclass(frozen=True)
class DataFile:
    """A data file and its path inside the dataset (whose words name its split and config, not the folders above)."""

    path: Path
    inside: str

    @property
    def split(self) -> str:
        """The split the file holds, from its path's words (train, test, validation; none: train)."""
        found = SPLIT_PATTERN.findall(self.inside.lower())
        return SPLIT_WORDS[found[-1]] if found else "train"


@dataclass(frozen=True)
class HubDataset:
    """Where a task's texts and labels are in a dataset, and which classes it keeps (None: every label)."""

    repo: str
    text: str = "text"
    label: str = "label"
    classes: tuple[str, ...] | None = None
    train_per_class: int | None = None  # None: the smallest class's count
    test_per_class: int | None = None
    configs: dict[str, str] = field(default_factory=dict)  # class -> config folder; the text is text_column[class]
    min_chars: int = 0  # shorter texts are dropped (github-code: SAEBench keeps code longer than 534 characters)
    skip_chars: int = 0  # then this many leading characters are cut (SAEBench: a licence header's 150)
    fetch: str = ""  # what to add to `hf download` to fetch only what is needed


BIOS = dict(repo="LabHC/bias_in_bios", text="hard_text", label="profession", train_per_class=2000,
            test_per_class=500)
AMAZON = dict(repo="canrager/amazon_reviews_mcauley_1and5", text="text", train_per_class=2000, test_per_class=500)
EUROPARL_PAIRS = {"en": "en-fr", "fr": "fr-it", "de": "de-en", "es": "es-fr", "nl": "nl-pt"}  # SAEBench's pairs

# SAEBench's sparse_probing datasets (its default dataset_names), each as a task: 2000 / 500 texts per class, the
# 4000 / 1000 of a one-vs-rest task.
SAEBENCH_DATASETS: dict[str, HubDataset] = {
    "LabHC/bias_in_bios_class_set1": HubDataset(**BIOS, classes=("0", "1", "2", "6", "9")),
    "LabHC/bias_in_bios_class_set2": HubDataset(**BIOS, classes=("11", "13", "14", "18", "19")),
    "LabHC/bias_in_bios_class_set3": HubDataset(**BIOS, classes=("20", "21", "22", "25", "26")),
    "canrager/amazon_reviews_mcauley_1and5": HubDataset(**AMAZON, label="category", classes=("1", "2", "3", "5", "6")),
    "canrager/amazon_reviews_mcauley_1and5_sentiment": HubDataset(**AMAZON, label="rating", classes=("1.0", "5.0")),
    "codeparrot/github-code": HubDataset("codeparrot/github-code", text="code", label="language",
                                         classes=("C", "Python", "HTML", "Java", "PHP"), train_per_class=2000,
                                         test_per_class=500, min_chars=128 * 3 + 150, skip_chars=150,
                                         fetch=" --include 'data/train-0000*'"),
    "fancyzhx/ag_news": HubDataset("fancyzhx/ag_news", classes=("0", "1", "2", "3"), train_per_class=2000,
                                   test_per_class=500),
    "Helsinki-NLP/europarl": HubDataset("Helsinki-NLP/europarl", text="translation", label="",
                                        classes=tuple(EUROPARL_PAIRS), configs=EUROPARL_PAIRS, train_per_class=2000,
                                        test_per_class=500,
                                        fetch="".join(f" --include '{pair}/*'" for pair in EUROPARL_PAIRS.values())),
}


def is_hf_task(name: str) -> bool:
    """Whether ``name`` asks for a Hugging Face dataset: one of SAEBench's by name, or ``hf:...``."""
    return name.startswith(HF_PREFIX) or name in SAEBENCH_DATASETS


def hf_task(name: str, train_per_class: int | None = None, test_per_class: int | None = None) -> LabelledTask:
    """The task ``name`` from the local cache or a local directory (never downloaded)."""
    spec = name.removeprefix(HF_PREFIX)
    if not spec:
        raise SaekitError("hf: needs a dataset: hf:OWNER/NAME (from the Hugging Face cache) or hf:DIRECTORY")
    local = Path(spec).expanduser()
    if spec.startswith(("/", ".", "~")) and not local.exists():  # meant as a folder, not a hub name
        raise SaekitError(f"{name}: no such file or directory {local}; give hf:DIRECTORY of data files or "
                          "hf:OWNER/NAME")
    dataset = SAEBENCH_DATASETS.get(spec) or HubDataset(spec)
    if local.exists() and spec not in SAEBENCH_DATASETS:
        files, source = data_files(local), f"local files {local}"
        if not files:
            raise SaekitError(f"{local} holds no {'/'.join(DATA_SUFFIXES)} data files")
    else:
        files, source = cached_files(dataset), f"Hugging Face dataset {dataset.repo} (local cache)"
    examples, test_texts = read_examples(spec, dataset, files)
    split_of = (lambda e: e.text in test_texts) if test_texts else is_test  # the dataset's own split when it has one
    return balanced_task(spec, source, examples, train_per_class or dataset.train_per_class,
                         test_per_class or dataset.test_per_class, drop_conflicts=True, split_of=split_of)


# --- finding the files


def hf_home() -> Path:
    """``HF_HOME`` as huggingface_hub reads it, but now (so a changed environment counts)."""
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "huggingface"
    return Path(os.environ.get("HF_HOME", default)).expanduser()


def hub_cache() -> Path:
    return Path(os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE") or hf_home() / "hub")


def datasets_cache() -> Path:
    return Path(os.environ.get("HF_DATASETS_CACHE") or hf_home() / "datasets")


def data_files(root: Path) -> list[DataFile]:
    """Data files under ``root`` (or ``root`` itself), in path order; links whose blob is missing (a download cut
    short) and the datasets library's own JSON records are left out."""
    if root.is_file():
        return [DataFile(root, root.name)] if root.suffix.lower() in DATA_SUFFIXES else []
    paths = sorted(p for p in root.rglob("*") if p.suffix.lower() in DATA_SUFFIXES and p.is_file()
                   and not p.name.startswith(("dataset_info", "state", "dataset_dict")))
    return [DataFile(p, p.relative_to(root).as_posix()) for p in paths]


def cached_files(dataset: HubDataset) -> list[DataFile]:
    """The dataset's data files in the hub cache, else its Arrow files in the datasets cache, else one line."""
    snapshot = _hub_snapshot(dataset.repo)
    files = data_files(snapshot) if snapshot is not None else []
    if not files:
        files = data_files(datasets_cache() / dataset.repo.replace("/", "___"))
    if not files:
        raise SaekitError(
            f"dataset {dataset.repo} is not in the local Hugging Face cache (looked in {hub_cache()} and "
            f"{datasets_cache()}); saekit never downloads it: on a machine with internet run `hf download "
            f"--repo-type dataset {dataset.repo}{dataset.fetch}` and copy that cache (HF_HOME) here, or point "
            "HF_HOME / HF_HUB_CACHE at a copy")
    return files


def _hub_snapshot(repo: str) -> Path | None:
    """The cached snapshot of the dataset repo's main revision, found without the network (None: not cached)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(repo, repo_type="dataset", cache_dir=hub_cache(), local_files_only=True))
    except (LocalEntryNotFoundError, OSError, ValueError):  # not cached, or a name the hub would refuse
        return None


# --- reading the rows


def read_examples(name: str, dataset: HubDataset, files: list[DataFile]) -> tuple[list[Example], set[str]]:
    """The examples of the kept classes (each text its own document), and the texts of the dataset's own test
    split (empty when its files have none: then the document-hash split decides)."""
    counts: dict[tuple[str, str], int] = {}
    examples, test_texts, seen = [], set(), set()
    for file in files:
        split = file.split
        if split == "validation":
            continue
        for text, label in _labelled_rows(name, dataset, file):
            if (dataset.classes is not None and label not in dataset.classes) or text in seen:
                continue  # another class, or a text seen already (the datasets cache may hold two versions)
            if counts.get((split, label), 0) >= MAX_ROWS_PER_CLASS:
                if dataset.classes and all(counts.get((split, c), 0) >= MAX_ROWS_PER_CLASS for c in dataset.classes):
                    break  # every class of this split is full: the rest of a large file is not read
                continue
            counts[split, label] = counts.get((split, label), 0) + 1
            seen.add(text)
            examples.append(Example(text, label, text))
            if split == "test":
                test_texts.add(text)
    missing = [c for c in dataset.classes or () if not any(label == c for _, label in counts)]
    if missing or not examples:
        found = sorted({label for _, label in counts})
        raise SaekitError(f"{name}: no texts of class {', '.join(missing) or 'any'} in its files (found "
                          f"{', '.join(found) or 'no labelled rows'}); is the whole dataset in the cache?")
    return examples, test_texts


def _labelled_rows(name: str, dataset: HubDataset, file: DataFile) -> Iterator[tuple[str, str]]:
    """(text, label) of every usable row of one file: a configs dataset (europarl) labels each file's texts by
    the config folder it sits in and reads the text column's entry for that class."""
    path = file.path
    classes = [c for c, config in dataset.configs.items() if config in file.inside.split("/")[:-1]]
    if dataset.configs and not classes:
        return
    columns = [dataset.text] if dataset.configs else [dataset.text, dataset.label]
    for number, row in enumerate(_rows(path, columns), start=1):
        for column in columns:
            if column not in row:
                raise SaekitError(f"{name}: {path.name} row {number} has no {column!r} column (columns: "
                                  f"{', '.join(map(str, row)) or 'none'}); hf:NAME reads text and label columns")
        for label in classes or [_label(row[dataset.label])]:
            text = (row[dataset.text] or {}).get(label) if dataset.configs else row[dataset.text]
            if isinstance(text, str) and len(text.strip()) > dataset.min_chars:
                yield re.sub(r"[ \t]+", " ", text[dataset.skip_chars:]).strip(), label


def _label(value: Any) -> str:
    """A label as SAEBench names its classes: str() of the stored value (0 -> "0", 1.0 -> "1.0")."""
    return str(value)


def _rows(path: Path, columns: list[str]) -> Iterator[dict[str, Any]]:
    """The rows of one data file as dicts (only ``columns`` from the columnar formats)."""
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json"):
        yield from _json_rows(path)
    elif suffix == ".csv":
        with path.open(newline="", encoding="utf-8") as handle:
            yield from csv.DictReader(handle)
    else:
        yield from _arrow_rows(path, columns)


def _json_rows(path: Path) -> Iterator[dict[str, Any]]:
    text = path.read_text(encoding="utf-8")
    try:  # a .json file may hold one list of rows; JSON Lines holds one row per line
        whole = json.loads(text)
        rows = whole if isinstance(whole, list) else [whole]
    except json.JSONDecodeError:
        rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    for row in rows:
        if not isinstance(row, dict):
            raise SaekitError(f"{path}: a row is not a JSON object with text and label")
        yield row


def _arrow_rows(path: Path, columns: list[str]) -> Iterator[dict[str, Any]]:
    try:
        import pyarrow.ipc as ipc
        import pyarrow.parquet as pq
    except ImportError:
        raise SaekitError(f"{path.name} is a {path.suffix} file; reading it needs pyarrow (`pip install datasets` "
                          "brings it)") from None
    if path.suffix.lower() == ".parquet":
        batches = pq.ParquetFile(path).iter_batches(columns=columns)
    else:  # the datasets cache writes Arrow streams; a plain Arrow file is read too
        try:
            batches = iter(ipc.open_stream(path))
        except Exception:  # pyarrow raises ArrowInvalid for the other layout
            batches = iter(ipc.open_file(path).read_all().to_batches())
    for batch in batches:
        yield from batch.select([c for c in columns if c in batch.schema.names]).to_pylist()
