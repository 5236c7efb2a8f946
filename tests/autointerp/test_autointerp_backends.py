"""Backends against real loopback HTTP servers: the model server, retries on 429, the spend cap, the API key."""

from __future__ import annotations

import asyncio
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch
from autointerp_fakes import FakeBackend, recording_backend

from saekit.autointerp.backends import (
    BackendError,
    ChatRequest,
    LocalBackend,
    OpenAIConfig,
    SpendCapReached,
)
from saekit.autointerp.cache import CachedClient, ResponseCache, cache_key
from saekit.autointerp.local import ChatModel
from saekit.autointerp.server import ChatServer
from saekit.errors import SaekitError

MESSAGES = (("system", "Answer Yes or No."), ("user", "Is the sky blue?"))


class ScriptedServer:
    """A loopback server answering each POST with the next (status, body, headers) of a script, then 200s."""

    def __init__(self, script: list[tuple[int, dict, dict]], usage: dict | None = None) -> None:
        self.script = list(script)
        self.requests: list[dict] = []
        self.headers: list[dict] = []
        self.usage = usage or {"prompt_tokens": 100, "completion_tokens": 1}
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                return None

            def do_POST(self) -> None:  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                owner.requests.append(body)
                owner.headers.append(dict(self.headers))
                status, payload, extra = owner.script.pop(0) if owner.script else (200, None, {})
                payload = payload or {"choices": [{"message": {"role": "assistant", "content": "Yes"},
                                                   "logprobs": None}], "usage": owner.usage}
                data = json.dumps(payload).encode()
                self.send_response(status)
                for key, value in extra.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def scripted():
    servers = []

    def make(script, usage=None) -> ScriptedServer:
        servers.append(ScriptedServer(script, usage))
        return servers[-1]

    yield make
    for server in servers:
        server.close()


def test_retries_429_and_5xx_with_exponential_backoff_then_succeeds(scripted):
    server = scripted([(429, {"error": {"message": "slow down"}}, {}), (503, {"error": "busy"}, {}),
                       (429, {"error": {"message": "later"}}, {"Retry-After": "0.25"})])
    backend, sleeps = recording_backend(server.base_url)
    completion = asyncio.run(backend.complete(ChatRequest(MESSAGES, 1)))
    assert completion.text == "Yes" and len(server.requests) == 4
    assert sleeps == [0.5, 1.0, 0.25]  # 0.5 * 2**attempt, then the server's Retry-After
    assert backend.usage.retries == 3 and backend.usage.requests == 1 and backend.usage.failures == 0
    backend.close()


def test_gives_up_after_retries_and_does_not_retry_client_errors(scripted):
    server = scripted([(500, {"error": "down"}, {})] * 4 + [(400, {"error": {"message": "bad model"}}, {})])
    backend, sleeps = recording_backend(server.base_url)
    with pytest.raises(BackendError, match="gave up after 4 attempts; last error HTTP 500"):
        asyncio.run(backend.complete(ChatRequest(MESSAGES, 1)))
    with pytest.raises(BackendError, match="HTTP 400: bad model"):
        asyncio.run(backend.complete(ChatRequest(MESSAGES, 1)))
    assert len(server.requests) == 5 and len(sleeps) == 3 and backend.usage.failures == 2
    backend.close()


def test_connection_refused_is_a_failure_after_retries():
    backend, sleeps = recording_backend("http://127.0.0.1:9/v1", max_retries=1)
    with pytest.raises(BackendError, match="gave up after 2 attempts"):
        asyncio.run(backend.complete(ChatRequest(MESSAGES, 1)))
    assert sleeps == [0.5]
    backend.close()


def test_spend_cap_stops_requests_and_costs_are_accounted(scripted):
    # $1 per 1M prompt tokens, 100 prompt tokens per answer: 1e-4 USD a request; cap 3.5e-4 USD.
    server = scripted([], usage={"prompt_tokens": 100, "completion_tokens": 0})
    backend, _ = recording_backend(server.base_url, input_price_per_1m=1.0, max_cost_usd=3.5e-4, concurrency=1)

    async def many() -> list:
        return await asyncio.gather(*(backend.complete(ChatRequest(MESSAGES, 1)) for _ in range(10)),
                                    return_exceptions=True)

    results = asyncio.run(many())
    done = [r for r in results if not isinstance(r, Exception)]
    refused = [r for r in results if isinstance(r, SpendCapReached)]
    assert len(done) + len(refused) == 10 and len(refused) >= 6
    assert len(server.requests) == len(done) <= 3
    assert backend.usage.cost_usd == pytest.approx(1e-4 * len(done)) and backend.usage.cost_usd <= 3.5e-4
    assert backend.usage.prompt_tokens == 100 * len(done) and backend.usage.refused_over_cap == len(refused)
    assert "spend cap" in str(refused[0])
    backend.close()


def test_api_key_comes_from_the_named_variable_and_is_never_stored(scripted, monkeypatch, tmp_path):
    monkeypatch.delenv("SAEKIT_TEST_KEY", raising=False)
    with pytest.raises(SaekitError, match="SAEKIT_TEST_KEY"):
        OpenAIConfig(base_url="http://127.0.0.1:1/v1", api_key_env="SAEKIT_TEST_KEY").validate()
    monkeypatch.setenv("SAEKIT_TEST_KEY", "sk-secret-123")
    server = scripted([])
    backend, _ = recording_backend(server.base_url, api_key_env="SAEKIT_TEST_KEY")
    client = CachedClient(backend, ResponseCache(tmp_path / "cache"))
    asyncio.run(client.complete(ChatRequest(MESSAGES, 1)))
    assert server.headers[0]["Authorization"] == "Bearer sk-secret-123"
    assert server.requests[0]["model"] == "m" and server.requests[0]["max_tokens"] == 1
    stored = "".join(p.read_text() for p in (tmp_path / "cache").rglob("*.json"))
    assert "sk-secret" not in stored and "sk-secret" not in json.dumps(backend.config.public())
    assert "sk-secret" not in json.dumps(backend.settings())
    backend.close()


def test_cache_key_depends_on_model_settings_and_prompt():
    request = ChatRequest(MESSAGES, 1, 20)
    base = cache_key("m", {"t": 0}, request)
    assert base == cache_key("m", {"t": 0}, ChatRequest(MESSAGES, 1, 20))
    assert len({base, cache_key("m2", {"t": 0}, request), cache_key("m", {"t": 1}, request),
                cache_key("m", {"t": 0}, ChatRequest(MESSAGES, 2, 20)),
                cache_key("m", {"t": 0}, ChatRequest((("user", "other"),), 1, 20))}) == 5


def test_cached_client_counts_calls(tmp_path):
    fake = FakeBackend()
    client = CachedClient(fake, ResponseCache(tmp_path))
    request = ChatRequest((("system", "Write ONE short sentence"), ("user", "Example 1: <<cat>>")), 8)
    first = asyncio.run(client.complete(request))
    again = asyncio.run(client.complete(request))
    assert len(fake.calls) == 1 and client.stats.calls == 1 and client.stats.cache_hits == 1
    assert again.text == first.text and again.cached and not first.cached


def test_model_server_logprobs_match_the_model(yes_no_loaded):
    chat = ChatModel(yes_no_loaded)
    with ChatServer(chat, "tiny") as server:
        backend, _ = recording_backend(server.base_url)
        completion = asyncio.run(backend.complete(ChatRequest(MESSAGES, 3, top_logprobs=5)))
        backend.close()
    # The same prompt straight through the model: identical greedy answer and first-token logprobs.
    ids = torch.tensor([chat.prompt_ids(MESSAGES)])
    with torch.no_grad():
        logprobs = yes_no_loaded.model(ids).logits[0, -1].log_softmax(-1)
    top = logprobs.topk(5)
    expected = [(yes_no_loaded.tokenizer.decode([i]), v) for v, i in zip(top.values.tolist(), top.indices.tolist())]
    assert [t for t, _ in completion.top_logprobs] == [t for t, _ in expected]
    assert [v for _, v in completion.top_logprobs] == pytest.approx([v for _, v in expected], abs=1e-4)
    assert {t for t, _ in completion.top_logprobs[:2]} == {"Yes", "No"}  # the rewired tiny model
    assert completion.text.startswith(("Yes", "No")) and completion.prompt_tokens == ids.shape[1]
    assert completion.completion_tokens == 3


def test_model_server_rejects_bad_requests_and_wrong_keys(yes_no_loaded):
    import urllib.error
    import urllib.request

    with ChatServer(ChatModel(yes_no_loaded), "tiny", api_key="k") as server:
        def post(body: dict, key: str = "k") -> tuple[int, dict]:
            request = urllib.request.Request(server.base_url + "/chat/completions", json.dumps(body).encode(),
                                             {"Content-Type": "application/json", "Authorization": f"Bearer {key}"})
            try:
                with urllib.request.urlopen(request, timeout=30) as response:
                    return response.status, json.loads(response.read())
            except urllib.error.HTTPError as err:
                return err.code, json.loads(err.read())

        assert post({"messages": []})[0] == 400
        assert post({"messages": [{"role": "user", "content": "hi"}], "top_logprobs": 50, "logprobs": True})[0] == 400
        assert post({"messages": [{"role": "user", "content": "hi"}]}, key="wrong")[0] == 401
        status, ok = post({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
        assert status == 200 and ok["choices"][0]["logprobs"] is None and ok["usage"]["completion_tokens"] <= 2
        with urllib.request.urlopen(server.base_url + "/models", timeout=30) as response:
            assert json.loads(response.read())["data"][0]["id"] == "tiny"


def test_local_backend_matches_the_server(yes_no_loaded):
    local = LocalBackend(yes_no_loaded)
    request = ChatRequest(MESSAGES, 2, top_logprobs=4)
    answer = asyncio.run(local.complete(request))
    with ChatServer(ChatModel(yes_no_loaded), "tiny") as server:
        backend, _ = recording_backend(server.base_url)
        remote = asyncio.run(backend.complete(request))
        backend.close()
    assert answer.text == remote.text and answer.prompt_tokens == remote.prompt_tokens
    assert [t for t, _ in answer.top_logprobs] == [t for t, _ in remote.top_logprobs]
    assert local.usage.requests == 1 and local.settings()["decoding"] == "greedy"
    too_long = ChatRequest((("user", "word " * 5000),), 1)
    with pytest.raises(BackendError, match="exceeds the model's context"):
        asyncio.run(local.complete(too_long))
    local.close()
