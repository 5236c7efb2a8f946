"""The /v1 API against saekit's own offline computations on the same tokens: activations equal the encoder's,
the clean continuation equals ``saekit generate``'s at the same seed, and steering does what each method says."""

from __future__ import annotations

import pytest
import torch
from serve.helpers import offline_latents

from saekit.evaluation.generation import side_by_side
from saekit.serve.engine import Steer, steering_hook

PROMPT = "In the beginning God created the heaven and the earth. 1, 2, 3 and def f(x):"



def test_activation_all_equals_the_offline_encoder(client, runs):
    run = runs["tiny"]
    offline = offline_latents(run, PROMPT)
    body = client.post("/v1/activation/all", json={"prompt": PROMPT, "model": run.model_id, "sourceSet": "",
                                                    "selectedSources": ["tiny"], "sortByTokenIndexes": [],
                                                    "ignoreBos": False, "numResults": 16}).json()
    ids = run.loaded.prompt_ids(PROMPT).tolist()
    assert body["tokens"] == run.loaded.tokenizer.batch_decode([[i] for i in ids])
    peaks = offline.max(0).values
    expected = sorted((i for i in range(run.width) if peaks[i] > 0), key=lambda i: (-float(peaks[i]), i))[:16]
    assert [f["index"] for f in body["activations"]] == expected
    for feature in body["activations"]:
        column = offline[:, feature["index"]]
        assert feature["values"] == pytest.approx(column.tolist(), abs=1e-5)
        assert feature["maxValue"] == pytest.approx(float(column.max()), abs=1e-5)
        assert feature["maxValueIndex"] == int(column.argmax())
        assert feature["sumValues"] == pytest.approx(float(column.sum()), abs=1e-4)
        assert feature["source"] == "tiny"


def test_activation_all_sorts_by_token_indexes_and_drops_bos_peaks(client, runs):
    run = runs["tiny"]
    offline = offline_latents(run, PROMPT)
    positions = [2, 5]
    body = client.post("/v1/activation/all", json={"prompt": PROMPT, "selected_sources": ["tiny"],
                                                    "sort_by_token_indexes": positions, "ignore_bos": True,
                                                    "num_results": 5}).json()
    keep = (offline.max(0).values > 0) & (offline.argmax(0) != 0)
    score = offline[positions].sum(0)
    expected = sorted(torch.nonzero(keep).flatten().tolist(), key=lambda i: (-float(score[i]), i))[:5]
    assert [f["index"] for f in body["activations"]] == expected


def test_topk_by_token_equals_the_offline_encoder(client, runs):
    run = runs["tiny"]
    offline = offline_latents(run, PROMPT)
    body = client.post("/v1/activation/topk-by-token", json={"prompt": PROMPT, "source": "tiny", "topK": 3,
                                                              "ignoreBos": True}).json()
    assert [r["tokenPosition"] for r in body["results"]] == list(range(1, offline.shape[0]))
    for result in body["results"]:
        values, latents = offline[result["tokenPosition"]].topk(3)
        expected = [(int(i), float(v)) for v, i in zip(values, latents) if v > 0]
        got = [(f["featureIndex"], f["activationValue"]) for f in result["topFeatures"]]
        assert [i for i, _ in got] == [i for i, _ in expected]
        assert [v for _, v in got] == pytest.approx([v for _, v in expected], abs=1e-5)
        assert result["isSpecial"] is False


def test_tokenize(client, runs):
    loaded = runs["tiny"].loaded
    with_bos = client.post("/v1/tokenize", json={"text": "Hello world", "source": "tiny"}).json()
    assert with_bos["tokens"] == loaded.prompt_ids("Hello world").tolist() and with_bos["prependBos"] is True
    bare = client.post("/v1/tokenize", json={"text": "Hello world", "prepend_bos": False}).json()
    assert bare["tokens"] == with_bos["tokens"][1:]
    assert bare["tokenStrings"] == loaded.tokenizer.batch_decode([[i] for i in bare["tokens"]])


def steer_body(**changes) -> dict:
    body = {"prompt": "The cat sat on the", "model": None, "steerMethod": "SIMPLE_ADDITIVE",
            "normalizeSteering": False, "types": ["DEFAULT", "STEERED"],
            "features": [{"source": "tiny", "index": 3, "strength": 40.0}], "nCompletionTokens": 8,
            "temperature": 0.9, "strengthMultiplier": 1.0, "freqPenalty": 0.0, "seed": 5}
    body.update(changes)
    return {key: value for key, value in body.items() if value is not None}


def test_clean_continuation_is_saekit_generates_and_steering_changes_it(client, runs):
    loaded = runs["tiny"].loaded
    outputs = {o["type"]: o["output"] for o in client.post("/v1/steer/completion", json=steer_body()).json()["outputs"]}
    expected = side_by_side(loaded, [], ["The cat sat on the"], max_new_tokens=8, temperature=0.9, seed=5)[0]
    assert outputs["DEFAULT"] == expected.clean
    assert outputs["STEERED"] != outputs["DEFAULT"]
    again = client.post("/v1/steer/completion", json=steer_body(types=["STEERED"])).json()["outputs"]
    assert again == [{"type": "STEERED", "output": outputs["STEERED"]}]  # same seed, same steered text
    # the hooks are gone afterwards: the model is clean again
    after = side_by_side(loaded, [], ["The cat sat on the"], max_new_tokens=8, temperature=0.9, seed=5)[0]
    assert after.clean == expected.clean


def test_steering_methods_do_what_the_docs_say():
    torch.manual_seed(0)
    x = torch.randn(1, 4, 6)
    d = torch.randn(6)
    unit = d / d.norm()
    additive = steering_hook([Steer(d, 2.5)], "SIMPLE_ADDITIVE")(x)
    assert torch.equal(additive[:, 0], x[:, 0])  # BOS untouched in the prompt's forward
    assert torch.allclose(additive[:, 1:], x[:, 1:] + 2.5 * d, atol=1e-6)
    orthogonal = steering_hook([Steer(d, -1.5)], "ORTHOGONAL_DECOMP")(x)
    assert torch.allclose(orthogonal[0, 1:] @ unit, torch.full((3,), -1.5), atol=1e-5)
    rest = orthogonal - (orthogonal @ unit)[..., None] * unit
    assert torch.allclose(rest[:, 1:], (x - (x @ unit)[..., None] * unit)[:, 1:], atol=1e-5)
    along = x[0, 1:] @ unit
    cap = float(along.median())
    capped = steering_hook([Steer(d, cap)], "PROJECTION_CAP")(x)
    assert torch.allclose(capped[0, 1:] @ unit, torch.clamp(along, max=cap), atol=1e-5)
    hook = steering_hook([Steer(d, 2.5)], "SIMPLE_ADDITIVE")
    hook(x)
    assert torch.allclose(hook(x[:, :1]), x[:, :1] + 2.5 * d, atol=1e-6)  # a later forward: its one new token


def test_runs_and_explanations_listing(client, runs):
    listing = client.get("/v1/runs").json()
    assert listing["runs"] == [runs["tiny"].summary()] and listing["search"] == "embedding"
    assert listing["runs"][0]["dashboard"] is True and "/" not in listing["runs"][0]["model"]
    explanations = client.get("/v1/runs/tiny/explanations").json()["explanations"]
    assert explanations["7"].endswith("<b>bold</b>") and set(explanations) == {"3", "5", "7"}


def test_openapi_schema_lists_the_routes(client):
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/v1/activation/all", "/v1/activation/topk-by-token", "/v1/tokenize", "/v1/steer/completion",
            "/v1/explanation/search"} <= set(paths)
