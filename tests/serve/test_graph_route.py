"""``saekit serve --graph-transcoders``: POST /v1/graph/generate gives the graph ``saekit attribute`` writes for the
same prompt and settings, its page is served under /graphs/KEY, bad requests are one-line 4xx after which the
server keeps serving, and a transcoder set that misses an MLP is refused at startup in one line."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from browser_helpers import CHROMEDRIVER, CHROMIUM, headless_chrome
from fastapi.testclient import TestClient
from run_helpers import train_tiny_transcoders
from serve.helpers import served

from saekit.circuits.graph import FEATURE_TYPE
from saekit.cli import main
from saekit.serve import graphs
from saekit.serve.app import INLINE_SCRIPT, app_for_runs, create_app
from saekit.serve.settings import ServeSettings

PROMPT = "The cat sat on the mat because"
SETTINGS = dict(batch_size=16, max_n_logits=5, desired_logit_prob=0.9, node_threshold=0.99, edge_threshold=0.99)
SERVED = "blocks.0.mlp_in"  # one of the transcoder runs, served as a run too (it shares the graph's model)


@pytest.fixture(scope="module")
def transcoders(tiny_model_dir, tmp_path_factory) -> Path:
    return train_tiny_transcoders(tiny_model_dir, tmp_path_factory.mktemp("graph-runs"), 1024, 64)


@pytest.fixture(scope="module")
def graph_app(transcoders):
    settings = ServeSettings(max_graph_prompt_tokens=12, max_latents=8, embeddings=False)
    return app_for_runs([transcoders / SERVED], settings, transcoders)


@pytest.fixture(scope="module")
def graph_client(graph_app):
    with TestClient(graph_app) as client:
        yield client


def _generate(client: TestClient, **body) -> httpx.Response:
    return client.post("/v1/graph/generate", json={"prompt": PROMPT, **SETTINGS, **body})


def _cli_graph(transcoders: Path, out: Path) -> dict:
    assert main(["attribute", str(transcoders), "--prompt", PROMPT, "--out", str(out), "--check-ablations", "0",
                 "--batch-size", "16", "--max-logits", "5", "--logit-probability", "0.9", "--node-threshold", "0.99",
                 "--edge-threshold", "0.99"]) == 0
    return json.loads(next(p for p in out.glob("*.json") if p.name != "graph-metadata.json").read_text())


def test_graph_equals_saekit_attribute_and_its_page_is_served(graph_client, transcoders, tmp_path):
    expected = _cli_graph(transcoders, tmp_path / "cli")
    response = _generate(graph_client)
    assert response.status_code == 200, response.text
    body = response.json()
    got = body["graph"]
    # circuit-tracer's ids can coincide (error 0_L_P, latent 0_L_P of layer 0): a node is its id and its kind
    nodes = {(n["node_id"], n["feature_type"]): n for n in got["nodes"]}
    assert len(nodes) == len(got["nodes"]) == len(expected["nodes"])
    assert set(nodes) == {(n["node_id"], n["feature_type"]) for n in expected["nodes"]}
    assert any(kind == FEATURE_TYPE for _, kind in nodes)  # latents, not only errors and tokens
    for node in expected["nodes"]:
        for field in ("activation", "influence", "token_prob"):
            assert nodes[node["node_id"], node["feature_type"]][field] == pytest.approx(node[field], abs=1e-6)
    assert len(got["links"]) == len(expected["links"]) > 0  # in the writer's order (ids alone may coincide)
    for link, want in zip(got["links"], expected["links"]):
        assert (link["source"], link["target"]) == (want["source"], want["target"])
        assert link["weight"] == pytest.approx(want["weight"], abs=1e-6)
    # No server path reaches the client: the transcoders and the model go by their directories' names.
    assert got["metadata"]["scan"] == "tc" and str(transcoders.parent) not in response.text
    assert got["metadata"]["info"]["model"] == Path(expected["metadata"]["info"]["model"]).name
    page = graph_client.get(body["url"])
    assert page.status_code == 200 and "Attribution graph" in page.text
    policy = page.headers["content-security-policy"]
    assert "default-src 'none'" in policy and policy.count("'sha256-") == len(INLINE_SCRIPT.findall(page.text)) > 0
    again = _generate(graph_client)  # the same request: the graph already built, same key
    assert again.json()["key"] == body["key"] and again.json()["graph"] == got
    runs = graph_client.get("/v1/runs").json()
    assert runs["graph"] == {"transcoders": "tc", "model": got["metadata"]["info"]["model"], "layers": [0, 1],
                             "maxPromptTokens": 12}
    schema = graph_client.get("/openapi.json").json()
    assert "/v1/graph/generate" in schema["paths"] and "GraphGenerateResponse" in schema["components"]["schemas"]


BAD = [
    ({"prompt": " ".join(["word"] * 13)}, 413, "graph prompt length in tokens is 13, over this server's limit of 12"),
    ({"prompt": ""}, 400, "prompt is empty"),
    ({"prompt": "  "}, 400, "prompt is empty"),
    ({"max_n_logits": 9}, 413, "max_n_logits is 9, over this server's limit of 8"),
    ({"modelId": "other-model"}, 404, "is not the graph transcoders' model"),
    ({"model_id": "/etc/passwd"}, 400, "looks like a file path"),
    ({"node_threshold": 0}, 422, "node_threshold: Input should be greater than 0"),
    ({"desired_logit_prob": 1.5}, 422, "desired_logit_prob: Input should be less than or equal to 1"),
    ({"signed_url": "https://example.com/put"}, 400, "signed_url is not supported"),
    ({"slug_identifier": "../../etc/x"}, 200, ""),  # a slug is only ever a name: lower-cased to etc-x
]


def _assert_serving(client: TestClient) -> None:
    response = client.post("/v1/activation/all", json={"prompt": "Hello there", "numResults": 2})
    assert response.status_code == 200 and response.json()["tokens"]
    assert _generate(client).status_code == 200


@pytest.mark.parametrize("body,status,message", BAD, ids=[str(b)[:30] for b, *_ in BAD])
def test_bad_graph_request_is_one_line_4xx(graph_client, body, status, message):
    response = _generate(graph_client, **body)
    assert response.status_code == status, response.text
    if status == 200:
        assert response.json()["slug"] == "etc-x"
    else:
        error = response.json()["error"]
        assert message in error and "\n" not in error
    _assert_serving(graph_client)


def test_graph_over_the_memory_budget_and_servers_without_transcoders(graph_app):
    state = graph_app.state.saekit
    tight = create_app(state.runs, ServeSettings(graph_max_memory_gb=1e-6, embeddings=False), state.graph)
    with TestClient(tight) as client:
        response = _generate(client, prompt="A different prompt")
        error = response.json()["error"]
        assert response.status_code == 413 and error.startswith("attribution would need at least"), error
        assert "the server's --graph-max-memory-gb" in error and "\n" not in error
        assert client.get("/graphs/" + "0" * 32).status_code == 404
        assert client.get("/graphs/..%2F..%2Fetc%2Fpasswd").status_code == 404
    with TestClient(create_app(state.runs, ServeSettings(embeddings=False))) as client:
        response = _generate(client)
        assert response.status_code == 404 and "--graph-transcoders" in response.json()["error"]
        assert client.get("/v1/runs").json()["graph"] is None


def test_only_the_newest_graphs_are_kept(graph_app, graph_client, monkeypatch):
    monkeypatch.setattr(graphs, "KEPT_GRAPHS", 1)
    root = Path(graph_app.state.saekit.graph.root.name)
    first = _generate(graph_client, prompt="One two three").json()
    assert graph_client.get(first["url"]).status_code == 200
    second = _generate(graph_client, prompt="Four five six").json()
    assert graph_client.get(second["url"]).status_code == 200
    assert graph_client.get(first["url"]).status_code == 404 and not (root / first["key"]).exists()
    assert [p.name for p in root.iterdir()] == [second["key"]]


def test_transcoders_missing_an_mlp_are_refused_at_startup(transcoders, capsys):
    one_layer = str(transcoders / SERVED)
    assert main(["serve", one_layer, "--graph-transcoders", one_layer]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in err if line.startswith("saekit: error:")]
    assert len(errors) == 1 and errors[0] == err[-1]
    assert "replaces the MLPs of layers 0 but not of layers 1 of the model's 2" in errors[0]


@pytest.mark.skipif(CHROMEDRIVER is None or CHROMIUM is None, reason="chromium and chromium-driver are not installed")
def test_page_graph_button_opens_the_graph(graph_app):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    with served(graph_app) as url, headless_chrome() as driver:
        wait = WebDriverWait(driver, 60)
        driver.get(url + "/")
        wait.until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "1")
        driver.find_element(By.ID, "prompt").send_keys("The <b>cat</b> sat")
        driver.find_element(By.ID, "graph").click()
        wait.until(lambda d: d.find_element(By.ID, "graph-link").is_displayed()
                   or d.find_element(By.ID, "act-error").text)
        assert driver.find_element(By.ID, "act-error").text == ""
        assert len(driver.window_handles) == 2, driver.get_log("browser")
        driver.switch_to.window(driver.window_handles[-1])
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#graph svg"))  # its script ran under the CSP
        assert driver.find_element(By.CSS_SELECTOR, "p.prompt").text == "The <b>cat</b> sat"
        assert not driver.find_elements(By.CSS_SELECTOR, "header b")
