"""Fixtures for the explorer's tests: one tiny trained run (with explanations and a small dashboard folder,
some of their text markup that must stay inert), the app over it, and the real uvicorn server on loopback."""

from __future__ import annotations

import json

import pytest
from serve.helpers import EVIL, served

from saekit.serve.app import create_app
from saekit.serve.runs import load_runs
from saekit.serve.settings import ServeSettings
from saekit.training.config import TrainConfig
from saekit.training.run import train_run

SITE = "blocks.1.resid_post"
EXPLANATIONS = {
    3: "digits and numbers in dates and prices",
    5: "Python function definitions and code keywords",
    7: f"the word the at the start of a sentence {EVIL}",
}


def _write_explanations(run_dir) -> None:
    (run_dir / "autointerp").mkdir()
    records = [{"latent": latent, "explanations": {"llm": {"text": text, "error": None}}}
               for latent, text in EXPLANATIONS.items()]
    (run_dir / "autointerp" / "scores.json").write_text(json.dumps({"model": "test", "latents": records}))


def _write_dashboard(run_dir) -> None:
    features = run_dir / "dashboard" / "features"
    features.mkdir(parents=True)
    (run_dir / "dashboard" / "index.html").write_text("<!DOCTYPE html><title>dashboard index</title>")
    for latent in range(128):  # the tiny run has 128 latents
        (features / f"{latent}.html").write_text(f"<!DOCTYPE html><title>latent {latent}</title><h1>{latent}</h1>")
    (run_dir / "secret.txt").write_text("outside the dashboard")


@pytest.fixture(scope="session")
def serve_run(tiny_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("serve-runs")
    config = TrainConfig.from_flat(dict(
        name="tiny", model=str(tiny_model_dir), site=SITE, context_length=16, contexts_per_chunk=16,
        expansion_factor=4, k=4, train_tokens=1024, batch_size=256, shuffle_buffer_tokens=512,
        cache_dir=str(root / "cache"), eval_tokens=64, eval_batch_contexts=4))
    run_dir = train_run(config, root / "runs", progress=False)
    _write_explanations(run_dir)
    _write_dashboard(run_dir)
    return run_dir


@pytest.fixture(scope="session")
def runs(serve_run):
    return load_runs([serve_run])


@pytest.fixture(scope="session")
def settings():
    return ServeSettings(max_prompt_tokens=40, max_latents=16, max_new_tokens=12, max_body_bytes=4096)


@pytest.fixture(scope="session")
def app(runs, settings):
    return create_app(runs, settings)


@pytest.fixture(scope="session")
def client(app):
    from fastapi.testclient import TestClient

    with TestClient(app) as test_client:
        yield test_client


@pytest.fixture(scope="session")
def live_url(app):
    """The real uvicorn server on a free loopback port, in a thread, for the session."""
    with served(app) as url:
        yield url
