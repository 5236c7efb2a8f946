"""The explain-and-score pipeline with a deterministic fake LLM: outputs, baseline, failures, cache, kill + rerun."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

from autointerp_fakes import FakeBackend, synthetic_latent

from saekit.autointerp.cache import ResponseCache
from saekit.autointerp.examples import ExampleSet
from saekit.autointerp.explain import ExplainConfig, baseline_explanation, render
from saekit.autointerp.pipeline import AutointerpConfig, MeanOver, score_examples, scores_for_dashboard
from saekit.autointerp.prompts import load_prompts
from saekit.autointerp.scorers import ScoringConfig


def _config(tmp_path: Path, **scoring) -> AutointerpConfig:
    return AutointerpConfig(latents=None, progress=False, scoring=ScoringConfig(embedding=False, **scoring),
                            explain=ExplainConfig(show_activations=True), cache_dir=str(tmp_path / "cache"))


def test_perfect_scorer_gets_perfect_scores_and_outputs_are_written(tmp_path, example_set):
    backend = FakeBackend()
    result = score_examples(example_set, tmp_path / "out", _config(tmp_path), backend, {"run_dir": "synthetic"})
    records = {r.latent: r for r in result.latents}
    assert set(records) == {0, 1, 2, 3}
    first = records[0]
    assert first.explanations["llm"].text == 'The word "cat".'
    assert first.explanations["baseline"].text == 'fires on: " cat"'
    for explainer in ("llm", "baseline"):
        for scorer in ("detection", "fuzzing"):
            score = first.scores[explainer][scorer]
            assert score.balanced_accuracy == 1.0 and score.f1 == 1.0 and score.auroc == 1.0
            assert score.n_missing == 0
        assert first.scores[explainer]["detection"].n == 8  # 4 activating + 4 non-activating held out
        assert first.scores[explainer]["fuzzing"].n == 4  # half true marks, half random marks
    assert first.intruder.accuracy == 1.0 and first.intruder.chance == 0.2
    # Files: scores, manifest, report.
    out = tmp_path / "out"
    scores = json.loads((out / "scores.json").read_text())
    assert scores["model"] == "fake-llm (test double)" and scores["summary"]["latents"] == 4
    # scores.json holds the records and the summary in the layout it always had
    assert list(scores) == ["format_version", "model", "summary", "latents"]
    assert list(scores["summary"]) == ["latents", "explainers", "chance", "intruder"]
    assert scores["summary"]["chance"] == {"balanced_accuracy": 0.5, "auroc": 0.5, "intruder_accuracy": 0.2}
    assert scores["summary"]["intruder"] == {"accuracy": {"mean": 1.0, "latents": 4}, "k": 4, "chance": 0.2}
    assert list(scores["summary"]["explainers"]["llm"]) == ["explained", "scorers"]
    assert scores["summary"]["explainers"]["llm"]["scorers"]["detection"] == {
        "balanced_accuracy": {"mean": 1.0, "latents": 4}, "f1": {"mean": 1.0, "latents": 4},
        "auroc": {"mean": 1.0, "latents": 4}, "unanswered_latents": 0}
    latent = scores["latents"][0]
    assert list(latent) == ["latent", "examples", "explanations", "scores", "intruder"]
    assert list(latent["examples"]) == ["train", "test_activating", "test_nonactivating"]
    assert latent["explanations"]["llm"] == {"text": 'The word "cat".', "error": None}
    assert list(latent["scores"]["llm"]["detection"]) == [
        "balanced_accuracy", "f1", "auroc", "accuracy", "chance", "n", "n_positive", "n_negative", "n_missing",
        "errors", "note"]
    assert latent == first.to_json()
    manifest = json.loads((out / "manifest.json").read_text())
    prompts = load_prompts()
    assert manifest["prompts"]["detect"]["sha256"] == prompts["detect"].sha256
    assert manifest["latents"]["skipped"] == {"dead": 1} and manifest["latents"]["examined"] == 5
    assert manifest["seeds"] == {"split": 0, "scoring": 0} and manifest["backend"]["model_id"] == "fake-llm"
    assert manifest["usage"]["requests"] == len(backend.calls) and manifest["usage"]["cache_hits"] == 0
    report = (out / "report.md").read_text()
    assert "fake-llm (test double)" in report and "| detection | balanced accuracy | 0.5 | 1.000 (n=4)" in report
    assert "chance 0.200" in report
    dashboard = scores_for_dashboard(tmp_path / "nowhere")
    assert dashboard == {}


def test_rerun_is_answered_from_the_cache(tmp_path, example_set):
    config = _config(tmp_path)
    first = FakeBackend()
    score_examples(example_set, tmp_path / "out", config, first)
    second = FakeBackend()
    result = score_examples(example_set, tmp_path / "out", config, second)
    assert len(first.calls) > 0 and second.calls == []
    assert result.manifest["usage"]["cache_hits"] == len(first.calls)
    # Entries hold the request and response, keyed by sha256; nothing secret.
    entries = list(ResponseCache(tmp_path / "cache").directory.rglob("*.json"))
    assert len(entries) == len(first.calls)
    entry = json.loads(entries[0].read_text())
    assert entry["model"] == "fake-llm" and len(entry["key"]) == 64 and "response" in entry


def test_failures_are_missing_scores_with_errors_never_zero(tmp_path, example_set):
    # Every detection prompt fails; the explainer of latent 1 fails.
    backend = FakeBackend(fail={"Is this feature active": "HTTP 503: overloaded",
                                'activations (0-10): " river"': "HTTP 500: boom"})
    result = score_examples(example_set, tmp_path / "out", _config(tmp_path), backend)
    records = {r.latent: r for r in result.latents}
    detection = records[0].scores["llm"]["detection"]
    assert detection.balanced_accuracy is None and detection.auroc is None and detection.f1 is None
    assert detection.n == 0 and detection.n_missing == 8 and detection.errors == ["HTTP 503: overloaded"]
    assert records[0].scores["llm"]["fuzzing"].balanced_accuracy == 1.0  # other scorers unaffected
    failed = records[1].explanations["llm"]
    assert failed.text is None and "HTTP 500" in failed.error
    assert records[1].scores["llm"]["fuzzing"].balanced_accuracy is None
    assert "no explanation" in records[1].scores["llm"]["fuzzing"].errors[0]
    assert "HTTP 500" in records[1].errors()[0]  # the explanation's error first
    summary = result.summary.explainers["llm"].scorers["detection"].balanced_accuracy
    assert summary == MeanOver(mean=None, latents=0)
    written = json.loads((tmp_path / "out" / "scores.json").read_text())["summary"]
    assert written["explainers"]["llm"]["scorers"]["detection"]["balanced_accuracy"] == {"mean": None, "latents": 0}
    # Failures are not cached: a rerun with a healthy backend asks exactly the failed prompts again.
    healthy = FakeBackend()
    rerun = score_examples(example_set, tmp_path / "out", _config(tmp_path), healthy)
    assert healthy.calls and all("Is this feature active" in c or "river" in c for c in healthy.calls)
    assert rerun.summary.explainers["llm"].scorers["detection"].balanced_accuracy.mean == 1.0
    dashboard = scores_for_dashboard(tmp_path / "out" / "..")  # run_dir/autointerp layout is not this one
    assert dashboard == {}


def test_scores_for_dashboard(tmp_path, example_set):
    run_dir = tmp_path / "run"
    score_examples(example_set, run_dir / "autointerp", _config(tmp_path), FakeBackend())
    view = scores_for_dashboard(run_dir)
    assert sorted(view) == [0, 1, 2, 3]
    assert view[2]["explanation"] == 'The word "seven".' and view[2]["baseline"] == 'fires on: " seven"'
    assert view[2]["scores"]["llm"]["detection"] == {"balanced_accuracy": 1.0, "f1": 1.0, "auroc": 1.0, "n": 8}
    assert view[2]["intruder"]["accuracy"] == 1.0 and view[2]["model"] == "fake-llm (test double)"


def test_without_logprobs_there_is_no_auroc(tmp_path, example_set):
    result = score_examples(example_set, tmp_path / "out", _config(tmp_path, top_logprobs=0), FakeBackend())
    score = result.latents[0].scores["llm"]["detection"]
    assert score.auroc is None and score.balanced_accuracy == 1.0


def test_baseline_and_rendering():
    example = synthetic_latent(0)
    assert baseline_explanation(example, ExplainConfig()).text == 'fires on: " cat"'
    assert render([" the", " big", " cat", " sat", "\n"], [1, 2]) == "the <<big cat>> sat\\n"
    assert render(["a", " b"], [0]) == "<<a>> b"


KILL_SCRIPT = """
import sys
sys.path.insert(0, {helpers!r})
from autointerp_fakes import FakeBackend, synthetic_latent
from saekit.autointerp.examples import ExampleSet
from saekit.autointerp.pipeline import AutointerpConfig, score_examples
from saekit.autointerp.explain import ExplainConfig
from saekit.autointerp.scorers import ScoringConfig
config = AutointerpConfig(latents=None, progress=False, scoring=ScoringConfig(embedding=False),
                          explain=ExplainConfig(show_activations=True), cache_dir={cache!r}, latents_in_flight=1)
examples = ExampleSet([synthetic_latent(i) for i in range(4)])
score_examples(examples, {out!r}, config, FakeBackend(stall=0.05, log_path={log!r}))
"""


def test_kill_midway_then_rerun_repeats_no_finished_request(tmp_path):
    examples = ExampleSet([synthetic_latent(i) for i in range(4)])
    config = replace(_config(tmp_path / "reference"), latents_in_flight=1)
    reference = FakeBackend()
    score_examples(examples, tmp_path / "reference" / "out", config, reference)
    total = len(reference.calls)

    log = tmp_path / "calls.log"
    script = KILL_SCRIPT.format(helpers=str(Path(__file__).parent), cache=str(tmp_path / "cache"),
                                out=str(tmp_path / "out"), log=str(log))
    process = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline and process.poll() is None:
        if log.exists() and len(log.read_text().splitlines()) >= total // 3:
            break
        time.sleep(0.02)
    assert process.poll() is None, process.stderr.read().decode()[-2000:]
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    done_before_kill = len(log.read_text().splitlines())
    assert 0 < done_before_kill < total and not (tmp_path / "out" / "scores.json").exists()

    rerun = FakeBackend()
    result = score_examples(examples, tmp_path / "out", replace(config, cache_dir=str(tmp_path / "cache")), rerun)
    cached = result.manifest["usage"]["cache_hits"]
    # Only a request in flight at the kill (logged but not yet cached) may be sent twice.
    assert len(rerun.calls) + cached == total
    assert done_before_kill - 1 <= cached <= done_before_kill
    assert result.summary.explainers["llm"].scorers["detection"].balanced_accuracy.mean == 1.0
