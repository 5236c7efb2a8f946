"""Bad requests get a 4xx and a one-line message naming what was wrong, and the server keeps serving; the
token, the loopback default, and the dashboard route that only resolves names inside the run's dashboard."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from saekit.errors import SaekitError
from saekit.serve.app import create_app
from saekit.serve.settings import ServeSettings

GOOD = {"prompt": "Hello there", "selectedSources": ["tiny"], "numResults": 2}
STEER = {"prompt": "Hi", "features": [{"source": "tiny", "index": 1, "strength": 1.0}], "nCompletionTokens": 2}
BAD = [
    ("/v1/activation/all", {**GOOD, "prompt": " ".join(["word"] * 60)}, 413, "prompt length in tokens is 60, over this "
                                                                 "server's limit of 40"),
    ("/v1/activation/all", {**GOOD, "selectedSources": ["nope"]}, 404, "unknown run 'nope' in selectedSources"),
    ("/v1/activation/all", {**GOOD, "selectedSources": ["../tiny"]}, 400, "looks like a file path"),
    ("/v1/activation/all", {**GOOD, "model": "/etc/passwd"}, 400, "model '/etc/passwd' looks like a file path"),
    ("/v1/activation/all", {**GOOD, "model": "other-model"}, 404, "is not run 'tiny''s model"),
    ("/v1/activation/all", {**GOOD, "numResults": 17}, 413, "numResults is 17, over this server's limit of 16"),
    ("/v1/activation/all", {**GOOD, "prompt": ""}, 400, "prompt is empty"),
    ("/v1/activation/all", {**GOOD, "sortByTokenIndexes": [99]}, 400, "sortByTokenIndexes has position 99"),
    ("/v1/activation/all", {"selectedSources": ["tiny"]}, 422, "prompt: Field required"),
    ("/v1/activation/topk-by-token", {"prompt": "Hi", "source": "C:\\runs\\tiny"}, 400, "looks like a file path"),
    ("/v1/steer/completion", {**STEER, "features": [{"source": "tiny", "index": 9999, "strength": 1}]}, 404,
     "latent 9999 is out of range: run 'tiny' has 128 latents (0-127)"),
    ("/v1/steer/completion", {**STEER, "nCompletionTokens": 13}, 413, "nCompletionTokens is 13"),
    ("/v1/steer/completion", {**STEER, "steerMethod": "MAGIC"}, 422, "steerMethod: Input should be"),
    ("/v1/steer/completion", {**STEER, "freqPenalty": 0.5}, 400, "freqPenalty is not supported"),
    ("/v1/steer/completion", {**STEER, "seed": 1.5}, 422, "seed 1.5 is not a whole number"),
    ("/v1/steer/completion", {**STEER, "strengthMultiplier": 1e308,
                              "features": [{"source": "tiny", "index": 1, "strength": 1e308}]}, 422, "not a finite"),
    ("/v1/explanation/search", {"query": "x", "selectedSources": ["ghost"]}, 404, "unknown run 'ghost'"),
    ("/v1/explanation/search", {"query": ""}, 422, "query: String should have at least 1 character"),
]


def _assert_serving(client: TestClient) -> None:
    response = client.post("/v1/activation/all", json=GOOD)
    assert response.status_code == 200 and len(response.json()["activations"]) == 2


@pytest.mark.parametrize("path,body,status,message", BAD, ids=[m[:30] for *_, m in BAD])
def test_bad_request_is_one_line_4xx(client, path, body, status, message):
    response = client.post(path, json=body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert message in error and "\n" not in error
    _assert_serving(client)


@pytest.mark.parametrize("raw,status,message", [
    ('{"prompt": "Hi", "features": [{"source": "tiny", "index": 1, "strength": NaN}]}', 422,
     "features.0.strength: Input should be a finite number"),
    ('{"prompt": "Hi", ', 422, "request body is not valid JSON"),
    ('{"prompt": "' + "x" * 5000 + '"}', 413, "request body is over 4096 bytes"),
])
def test_raw_bodies(client, raw, status, message):
    response = client.post("/v1/steer/completion", content=raw, headers={"content-type": "application/json"})
    assert response.status_code == status and message in response.json()["error"]
    _assert_serving(client)


def test_dashboard_route_serves_only_inside_the_dashboard(client):
    page = client.get("/runs/tiny/dashboard/features/3.html")
    assert page.status_code == 200 and "<title>latent 3</title>" in page.text
    assert "dashboard index" in client.get("/runs/tiny/dashboard/").text
    for sneaky in ["../secret.txt", "..%2Fsecret.txt", "features/../../secret.txt", "%2Fetc%2Fpasswd"]:
        response = client.get(f"/runs/tiny/dashboard/{sneaky}")
        assert response.status_code == 404 and "outside" not in response.text, sneaky
    assert client.get("/runs/ghost/dashboard/index.html").status_code == 404


def test_unknown_route_and_page_headers(client):
    assert client.get("/v1/nothing").json() == {"error": "Not Found: GET /v1/nothing"}
    page = client.get("/")
    assert "script-src 'self'" in page.headers["content-security-policy"] and 'id="prompt"' in page.text


def test_token_is_required_when_set(runs):
    app = create_app(runs, ServeSettings(token="s3cret", embeddings=False))
    with TestClient(app) as client:
        denied = client.get("/v1/runs")
        assert denied.status_code == 401 and "Authorization: Bearer" in denied.json()["error"]
        assert client.get("/v1/runs", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert client.get("/v1/runs", headers={"Authorization": "Bearer s3cret"}).json()["search"] == "text"
        assert client.get("/openapi.json").status_code == 401
        opened = client.get("/?token=s3cret")  # the page: sets the cookie, then everything works from it
        assert opened.status_code == 200 and 'id="prompt"' in opened.text
        assert client.get("/v1/runs").status_code == 200


def test_binding_beyond_loopback_needs_a_token():
    assert ServeSettings().host == "127.0.0.1"
    with pytest.raises(SaekitError, match="--host 0.0.0.0 is reachable from other machines; give --token"):
        ServeSettings(host="0.0.0.0").validate()
    assert ServeSettings(host="0.0.0.0", token="t").validate().token == "t"
    assert ServeSettings(host="::1").validate().host == "::1"
