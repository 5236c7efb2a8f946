"""The dashboard's provenance: refusing another run's store, the manifest it records, whole-site swaps."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from provenance_helpers import make_run, snapshot, temporaries, write_word_corpus

from saekit.analysis.analyze import AnalysisConfig, analyze_run
from saekit.analysis.store import MANIFEST as STORE_MANIFEST
from saekit.analysis.store import AnalysisStore
from saekit.autointerp.pipeline import AutointerpConfig
from saekit.dashboard.build import MANIFEST, build_dashboard
from saekit.dictionaries.registry import dictionary_fingerprint
from saekit.errors import SaekitError
from saekit.jobs.dashboard import build_run_dashboard, rebuild_existing_dashboard
from saekit.jobs.explain import explain_run
from saekit.provenance import fingerprint_files

SMALL = AnalysisConfig(tokens=60, latents=8, progress=False)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return write_word_corpus(tmp_path_factory.mktemp("dashboard-provenance-corpus"), stride=5)


@pytest.fixture
def run(tmp_path, tiny_model_dir, corpus, tiny_loaded) -> Path:
    """A fresh run with its analysis and a 4-page dashboard."""
    run = make_run(tmp_path, "b", tiny_model_dir, corpus, seed=2)
    analyze_run(run, tiny_loaded, SMALL)
    build_run_dashboard(run, max_latents=4)
    return run


def test_manifest_records_what_the_site_shows(run):
    manifest = json.loads((run / "dashboard" / MANIFEST).read_text())
    assert manifest["analysis_fingerprint"] == fingerprint_files(run / "analysis" / STORE_MANIFEST)
    assert manifest["dictionary_fingerprint"] == dictionary_fingerprint(run / "dictionary")
    assert manifest["data_fingerprint"] == json.loads((run / "analysis" / STORE_MANIFEST).read_text())[
        "data_fingerprint"]
    assert (manifest["pages"], manifest["latents_indexed"], manifest["max_latents"]) == (4, 8, 4)
    assert manifest["neuronpedia"] is True and manifest["analysis"] == str(run / "analysis")


def test_store_copied_from_another_run_is_refused_and_nothing_changes(tmp_path, run, tiny_model_dir, corpus,
                                                                      tiny_loaded):
    other = make_run(tmp_path, "a", tiny_model_dir, corpus, seed=7)
    analyze_run(other, tiny_loaded, SMALL)
    shutil.rmtree(run / "analysis")
    shutil.copytree(other / "analysis", run / "analysis")
    site = snapshot(run / "dashboard")
    theirs, ours = dictionary_fingerprint(other / "dictionary"), dictionary_fingerprint(run / "dictionary")
    expected = (f"analysis store {run / 'analysis'} was made from other inputs (fingerprint {theirs}, these are "
                f"{ours}); rerun `saekit analyze {run}`")
    for attempt in (lambda: build_run_dashboard(run, max_latents=4), lambda: rebuild_existing_dashboard(run),
                    lambda: explain_run(run, AutointerpConfig(progress=False))):
        with pytest.raises(SaekitError) as err:
            attempt()
        assert str(err.value) == expected
    assert snapshot(run / "dashboard") == site
    assert not (run / "autointerp").exists() and temporaries(run) == []


def test_store_without_fingerprints_still_builds(run):
    path = run / "analysis" / STORE_MANIFEST
    manifest = json.loads(path.read_text())
    del manifest["dictionary_fingerprint"], manifest["data_fingerprint"]  # as older saekit wrote it
    path.write_text(json.dumps(manifest))
    site = build_run_dashboard(run, max_latents=2)
    recorded = json.loads((site / MANIFEST).read_text())
    assert recorded["dictionary_fingerprint"] == dictionary_fingerprint(run / "dictionary")  # from the job
    assert recorded["data_fingerprint"] is None
    assert sorted(p.name for p in (site / "features").iterdir()) == ["0.html", "1.html"]


def test_failed_rebuild_keeps_the_previous_site(run, monkeypatch):
    site = snapshot(run / "dashboard")

    def fail(*args, **kwargs):
        raise RuntimeError("index failed")

    monkeypatch.setattr("saekit.dashboard.build.index_page", fail)  # the last page written
    with pytest.raises(RuntimeError, match="index failed"):
        build_run_dashboard(run, max_latents=8)
    assert snapshot(run / "dashboard") == site and temporaries(run) == []


def test_rebuild_repeats_the_recorded_settings(run):
    build_run_dashboard(run, max_latents=3, neuronpedia=False)
    assert rebuild_existing_dashboard(run) == run / "dashboard"
    assert sorted(p.name for p in (run / "dashboard" / "features").iterdir()) == ["0.html", "1.html", "2.html"]
    assert not (run / "dashboard" / "neuronpedia").exists()  # the whole site was replaced, not patched
    assert json.loads((run / "dashboard" / MANIFEST).read_text())["neuronpedia"] is False


def test_output_holding_other_files_is_refused(run, tmp_path):
    out = tmp_path / "site"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(SaekitError) as err:
        build_run_dashboard(run, out, max_latents=2)
    assert str(err.value) == (f"--out {out} holds notes.txt, which saekit's dashboard did not write; writing it "
                              "replaces those, so choose a new or empty directory, or pass --force to replace it")
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
    build_run_dashboard(run, out, max_latents=2, force=True)  # deliberately: the user's file goes
    assert not (out / "notes.txt").exists() and (out / "index.html").is_file()


def test_decoder_of_another_shape_is_refused(run, tmp_path):
    store = AnalysisStore(run / "analysis")
    with pytest.raises(SaekitError, match="does not fit the decoder given .* 48 of dimension 32"):
        build_dashboard(store, tmp_path / "site", decoder=torch.zeros(48, 32), progress=False)
    with pytest.raises(SaekitError, match="was made from other inputs"):
        build_dashboard(store, tmp_path / "site", dictionary_fingerprint="0" * 16, progress=False)
    assert not (tmp_path / "site").exists()
