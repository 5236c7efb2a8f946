"""SAEBench's datasets and hf:NAME from the Hugging Face cache only: a hub-cache snapshot laid out as
``hf download`` leaves it (refs/main naming a snapshot folder), read offline with the dataset's own split and
SAEBench's classes and columns; an absent dataset is one line that says how to fetch it, and nothing is written.

``datasets`` and ``pyarrow`` are not installed in saekit's test environment, so the snapshots hold JSON Lines files
(read with the standard library); Parquet and Arrow files go through pyarrow, whose absence is one line too."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from saekit.cli import main
from saekit.data.hf_tasks import SAEBENCH_DATASETS, hf_task
from saekit.data.labelled import load_task
from saekit.errors import SaekitError

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture()
def hf_home(tmp_path, monkeypatch) -> Path:
    """An empty Hugging Face home for this test alone (no other cache variable points elsewhere)."""
    home = tmp_path / "hf-home"
    monkeypatch.setenv("HF_HOME", str(home))
    for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_DATASETS_CACHE"):
        monkeypatch.delenv(name, raising=False)
    return home


def cache_snapshot(home: Path, repo: str, files: dict[str, list[dict]]) -> Path:
    """``repo``'s dataset snapshot in the hub cache at ``home``: refs/main -> snapshots/COMMIT/<files>."""
    root = home / "hub" / f"datasets--{repo.replace('/', '--')}"
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text(COMMIT)
    snapshot = root / "snapshots" / COMMIT
    for name, rows in files.items():
        (snapshot / name).parent.mkdir(parents=True, exist_ok=True)
        (snapshot / name).write_text("".join(json.dumps(row) + "\n" for row in rows))
    return snapshot


def bios_rows(split: str, per_profession: int) -> list[dict]:
    return [{"hard_text": f"{split} bio {i} of a person in profession {p}", "profession": p, "gender": i % 2}
            for p in range(10) for i in range(per_profession)]


def test_saebench_dataset_loads_offline_with_its_classes_columns_and_split(hf_home):
    cache_snapshot(hf_home, "LabHC/bias_in_bios", {"data/train-00000-of-00001.jsonl": bios_rows("train", 6),
                                                   "data/test-00000-of-00001.jsonl": bios_rows("test", 3)})
    task = load_task("LabHC/bias_in_bios_class_set1", 4, 2)
    assert task.name == "LabHC/bias_in_bios_class_set1"
    assert task.classes == ("0", "1", "2", "6", "9")  # SAEBench's chosen professions of class set 1
    assert task.source == "Hugging Face dataset LabHC/bias_in_bios (local cache)"
    assert (task.train_per_class, task.test_per_class) == (4, 2)
    assert all(e.text.startswith("train bio") for e in task.train)  # the dataset's own split, kept
    assert all(e.text.startswith("test bio") for e in task.test)
    assert {e.label for e in task.test} == set(task.classes)
    with pytest.raises(SaekitError, match="class '0' has 6 train examples, need 7"):
        load_task("hf:LabHC/bias_in_bios_class_set1", 7, 2)  # the hf: prefix names the same dataset


def test_europarl_reads_each_language_from_its_pair_folder(hf_home):
    pairs = SAEBENCH_DATASETS["Helsinki-NLP/europarl"].configs
    files = {f"{pair}/train-00000-of-00001.jsonl": [{"translation": {a: f"{a} sentence {i} from {pair}" for a in
                                                                     pair.split("-")}} for i in range(20)]
             for pair in pairs.values()}
    cache_snapshot(hf_home, "Helsinki-NLP/europarl", files)
    task = hf_task("Helsinki-NLP/europarl", 5, 1)
    assert task.classes == ("de", "en", "es", "fr", "nl")
    # each language's texts come from SAEBench's pair for it (en from en-fr, not de-en), split by hash
    assert all(e.text.startswith(f"{e.label} sentence") and pairs[e.label] in e.text for e in task.train + task.test)


def test_absent_dataset_is_one_line_naming_it_and_nothing_is_written(hf_home, probe_run_dir, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["probe", str(probe_run_dir), "--task", "fancyzhx/ag_news", "--out", str(out)]) == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("saekit: error:")]
    assert len(errors) == 1
    assert "dataset fancyzhx/ag_news is not in the local Hugging Face cache" in errors[0]
    assert "saekit never downloads it" in errors[0] and "hf download --repo-type dataset fancyzhx/ag_news" in errors[0]
    assert str(hf_home / "hub") in errors[0]
    assert not out.exists() and not (hf_home / "hub").exists()  # nothing fetched, nothing made


def test_hf_name_needs_text_and_label_columns(hf_home):
    cache_snapshot(hf_home, "someone/reviews", {"train.jsonl": [{"review": "fine", "stars": 5}]})
    with pytest.raises(SaekitError, match="someone/reviews: train.jsonl row 1 has no 'text' column"):
        hf_task("hf:someone/reviews")


@pytest.mark.skipif(importlib.util.find_spec("pyarrow") is not None, reason="pyarrow is installed: it would read it")
def test_parquet_without_pyarrow_is_one_line(hf_home):
    snapshot = cache_snapshot(hf_home, "fancyzhx/ag_news", {})
    (snapshot / "data").mkdir(parents=True)
    (snapshot / "data" / "train-00000-of-00001.parquet").write_bytes(b"PAR1")
    with pytest.raises(SaekitError, match="train-00000-of-00001.parquet is a .parquet file; reading it needs pyarrow"):
        load_task("fancyzhx/ag_news")
