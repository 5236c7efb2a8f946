"""The analysis store's provenance: fingerprints, refusing another run's store, whole-store swaps, the run lock."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from provenance_helpers import make_run, snapshot, temporaries, write_word_corpus

from saekit.analysis.analyze import AnalysisConfig, analyze_run
from saekit.analysis.store import MANIFEST, AnalysisStore, open_run_store
from saekit.cli import main
from saekit.dictionaries.base import DictionaryConfig
from saekit.dictionaries.registry import build_dictionary, dictionary_fingerprint, save_dictionary
from saekit.errors import SaekitError
from saekit.io import TEMP_MARK
from saekit.provenance import fingerprint_json
from saekit.settings import to_dict
from saekit.training.config import TrainConfig

REPO = Path(__file__).resolve().parents[2]
SMALL = AnalysisConfig(tokens=60, latents=8, progress=False)
CLI_ARGS = ["--tokens", "60", "--latents", "8"]  # the same analysis through the command line


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return write_word_corpus(tmp_path_factory.mktemp("provenance-corpus"), stride=1)


@pytest.fixture
def run(tmp_path, tiny_model_dir, corpus, tiny_loaded) -> Path:
    """A fresh run with a complete analysis store."""
    run = make_run(tmp_path, "tiny", tiny_model_dir, corpus, seed=2)
    analyze_run(run, tiny_loaded, SMALL)
    return run


def test_manifest_records_fingerprints(run):
    manifest = json.loads((run / "analysis" / MANIFEST).read_text())
    config = TrainConfig.from_dict(json.loads((run / "config.json").read_text()))
    assert manifest["dictionary_fingerprint"] == dictionary_fingerprint(run / "dictionary")
    assert manifest["data_fingerprint"] == fingerprint_json(to_dict(config.data))
    assert len(manifest["dictionary_fingerprint"]) == 16 and manifest["run"] == "tiny"
    assert open_run_store(run).latent_ids == list(range(8))


def test_store_without_a_run_records_unknown_fingerprints(analysis_store_dir):
    manifest = AnalysisStore(analysis_store_dir).manifest
    assert manifest["dictionary_fingerprint"] is None and manifest["data_fingerprint"] is None


def test_store_of_another_run_is_refused(tmp_path, run, tiny_model_dir, corpus):
    other = make_run(tmp_path, "other", tiny_model_dir, corpus, seed=5)
    shutil.copytree(run / "analysis", other / "analysis")
    with pytest.raises(SaekitError) as err:
        open_run_store(other)
    assert str(err.value) == (
        f"analysis store {other / 'analysis'} was made from other inputs (fingerprint "
        f"{dictionary_fingerprint(run / 'dictionary')}, these are {dictionary_fingerprint(other / 'dictionary')}); "
        f"rerun `saekit analyze {other}`")


def test_retrained_dictionary_makes_the_store_stale(run):
    torch.manual_seed(9)  # the same shape, new weights: only the fingerprint can tell
    save_dictionary(run / "dictionary", build_dictionary(DictionaryConfig("topk", 32, 64, k=4)),
                    json.loads((run / "dictionary" / "config.json").read_text())["source"])
    with pytest.raises(SaekitError, match="was made from other inputs"):
        open_run_store(run)


def test_store_without_fingerprints_is_accepted(run):
    path = run / "analysis" / MANIFEST
    manifest = json.loads(path.read_text())
    del manifest["dictionary_fingerprint"], manifest["data_fingerprint"]  # as older saekit wrote it
    path.write_text(json.dumps(manifest))
    store = open_run_store(run)
    assert store.dictionary_fingerprint is None and len(store.latent_ids) == 8


def test_old_store_of_another_shape_is_refused(tmp_path, run, tiny_model_dir, corpus):
    narrow = make_run(tmp_path, "narrow", tiny_model_dir, corpus, seed=6, width=48)
    shutil.copytree(run / "analysis", narrow / "analysis")
    path = narrow / "analysis" / MANIFEST
    manifest = json.loads(path.read_text())
    del manifest["dictionary_fingerprint"]  # an older store: only its shape can give it away
    path.write_text(json.dumps(manifest))
    with pytest.raises(SaekitError) as err:
        open_run_store(narrow)
    assert str(err.value) == (
        f"analysis store {narrow / 'analysis'} does not fit the dictionary in {narrow / 'dictionary'} (the store "
        f"has 64 latents of dimension 32, that decoder 48 of dimension 32); rerun `saekit analyze {narrow}`")


def test_failed_analysis_keeps_the_previous_store(run, tiny_loaded, monkeypatch):
    before = snapshot(run / "analysis")
    seen = {}

    def fail(*args, **kwargs):
        # The new store is being written beside the live one, which nothing has touched yet.
        (building,) = [p for p in run.iterdir() if TEMP_MARK in p.name]
        seen["written"] = sorted(p.name for p in building.iterdir() if p.is_file())
        seen["live"] = snapshot(run / "analysis") == before
        raise RuntimeError("geometry failed")

    monkeypatch.setattr("saekit.analysis.analyze.decoder_geometry", fail)
    with pytest.raises(RuntimeError, match="geometry failed"):
        analyze_run(run, tiny_loaded, SMALL)
    assert "stats.safetensors" in seen["written"] and "examples.safetensors" in seen["written"] and seen["live"]
    assert snapshot(run / "analysis") == before and temporaries(run) == []
    monkeypatch.undo()
    analyze_run(run, tiny_loaded, SMALL)
    assert temporaries(run) == [] and snapshot(run / "analysis") != before
    assert open_run_store(run).latent_ids == list(range(8))


KILL_DURING_GEOMETRY = """
import os, signal, sys
import saekit.analysis.analyze as analyze
analyze.decoder_geometry = lambda *args, **kwargs: os.kill(os.getpid(), signal.SIGKILL)
from saekit.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_killed_analysis_keeps_the_previous_store(run, capsys):
    before = snapshot(run / "analysis")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1"}
    killed = subprocess.run([sys.executable, "-c", KILL_DURING_GEOMETRY, "analyze", str(run), *CLI_ARGS],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert snapshot(run / "analysis") == before
    (leftover,) = temporaries(run)
    assert leftover.startswith(".analysis.saekit-tmp.")
    assert main(["analyze", str(run), *CLI_ARGS]) == 0  # the kernel dropped the dead writer's lock
    assert temporaries(run) == [] and snapshot(run / "analysis") != before
    assert f"analysis written to {run / 'analysis'}" in capsys.readouterr().out


HOLD_LOCK = """
import sys, time
from saekit.locks import exclusive
with exclusive(sys.argv[1]):
    print("locked", flush=True)
    time.sleep(120)
"""


def test_second_writer_is_refused_naming_the_first(run, capsys):
    before = snapshot(run / "analysis")
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(run)], cwd=REPO, stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert main(["analyze", str(run), *CLI_ARGS]) == 1
        err = capsys.readouterr().err
        assert err.startswith(f"saekit: error: run directory {run.resolve()} is in use by pid {holder.pid} on ")
        assert err.count("\n") == 1 and "wait for it to finish" in err
    finally:
        holder.kill()
        holder.wait()
    assert snapshot(run / "analysis") == before
