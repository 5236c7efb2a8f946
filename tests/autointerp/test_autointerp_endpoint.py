"""A dead or broken endpoint fails fast and loudly: the probe, the mid-run stop, the all-failed run, the CLI."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import socket
import threading
import time
import urllib.error
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from autointerp_fakes import recording_backend

from saekit.autointerp.backends import (
    BackendError,
    ChatRequest,
    LocalBackend,
    OpenAICompatibleBackend,
    connection_failure,
)
from saekit.autointerp.pipeline import AutointerpConfig, score_examples
from saekit.autointerp.scorers import ScoringConfig
from saekit.cli import main
from saekit.errors import SaekitError

MESSAGES = (("system", "Answer Yes or No."), ("user", "Is the sky blue?"))
ANSWER = {"choices": [{"message": {"role": "assistant", "content": "Yes"}, "logprobs": None}],
          "usage": {"prompt_tokens": 10, "completion_tokens": 1}}


def closed_port() -> int:
    """A loopback port nothing listens on (bound, read, released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Endpoint:
    """A loopback server: GET answers ``get_status``; POST n answers ``post_status`` (200: a "Yes").

    ``close_after``: the server stops listening while handling that POST (before answering it), so
    every later connection is refused. ``stall_s``: each POST waits that long before answering.
    """

    def __init__(self, get_status: int = 200, post_status: int = 200, close_after: int | None = None,
                 stall_s: float = 0.0, port: int = 0) -> None:
        self.gets: list[dict] = []
        self.posts = 0
        self._lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                return None

            def _send(self, status: int, payload: dict) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:  # noqa: N802
                owner.gets.append({"path": self.path, **dict(self.headers)})
                self._send(get_status, {"error": {"message": "bad key"}} if get_status != 200 else {"data": []})

            def do_POST(self) -> None:  # noqa: N802
                self.rfile.read(int(self.headers["Content-Length"]))
                with owner._lock:
                    owner.posts += 1
                    number = owner.posts
                if close_after is not None and number == close_after:
                    owner.close()  # this connection stays open; new ones are refused
                time.sleep(stall_s)
                self._send(post_status, ANSWER if post_status == 200 else {"error": {"message": "down"}})

        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.port = self.httpd.server_address[1]
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self._closed = False
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.httpd.shutdown()
            self.httpd.server_close()


@pytest.fixture
def endpoint():
    servers: list[Endpoint] = []

    def make(**options) -> Endpoint:
        servers.append(Endpoint(**options))
        return servers[-1]

    yield make
    for server in servers:
        server.close()


def _backend(base_url: str, **overrides) -> tuple[OpenAICompatibleBackend, list[float]]:
    """The shared recording backend, with one retry unless told otherwise."""
    return recording_backend(base_url, **{"max_retries": 1, **overrides})

def _config(tmp_path: Path) -> AutointerpConfig:
    return AutointerpConfig(latents=None, progress=False, scoring=ScoringConfig(embedding=False),
                            cache_dir=str(tmp_path / "cache"))


def _unreachable(url: str) -> str:
    return (f"cannot reach the autointerp endpoint {url} (connection refused); check --base-url and that "
            f"the server is running")


def test_probe_of_a_closed_port_fails_at_once_naming_the_url():
    url = f"http://127.0.0.1:{closed_port()}/v1"
    backend, sleeps = _backend(url + "/")
    started = time.monotonic()
    with pytest.raises(SaekitError) as caught:
        backend.probe()
    assert time.monotonic() - started < 5 and sleeps == []  # no retries for the probe
    assert str(caught.value) == _unreachable(url)
    backend.close()
    assert not callable(getattr(LocalBackend, "probe", None))  # the local backend is never probed


def test_cli_explain_with_a_dead_base_url_exits_1_with_one_line(tiny_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    shutil.rmtree(run / "autointerp", ignore_errors=True)
    url = f"http://127.0.0.1:{closed_port()}/v1"
    started = time.monotonic()
    code = main(["explain", str(run), "--backend", "openai", "--base-url", url, "--api-key-env", "none",
                 "--latents", "2"])
    elapsed = time.monotonic() - started
    captured = capsys.readouterr()
    assert code == 1 and elapsed < 5
    assert captured.err == f"saekit: error: {_unreachable(url)}\n"
    assert "Traceback" not in captured.err + captured.out
    assert not (run / "autointerp" / "scores.json").exists()


def test_probe_401_names_the_key_variable_and_sends_nothing(endpoint, tmp_path, example_set, monkeypatch):
    monkeypatch.setenv("SAEKIT_ENDPOINT_TEST_KEY", "sk-wrong")
    server = endpoint(get_status=401)
    backend, _ = _backend(server.base_url, api_key_env="SAEKIT_ENDPOINT_TEST_KEY")
    with pytest.raises(SaekitError) as caught:
        score_examples(example_set, tmp_path / "out", _config(tmp_path), backend)
    assert str(caught.value) == (f"the autointerp endpoint {server.base_url} refused the request (HTTP 401: bad "
                                 f"key); check the API key in the environment variable SAEKIT_ENDPOINT_TEST_KEY")
    assert server.gets[0]["path"] == "/v1/models" and server.gets[0]["Authorization"] == "Bearer sk-wrong"
    assert server.posts == 0 and not (tmp_path / "out" / "scores.json").exists()
    backend.close()
    keyless, _ = _backend(endpoint(get_status=403).base_url)
    with pytest.raises(SaekitError, match=r"HTTP 403: bad key\); it needs an API key: pass --api-key-env NAME"):
        keyless.probe()
    keyless.close()


def test_any_other_http_answer_to_the_probe_is_fine_and_the_run_works(endpoint, tmp_path, example_set):
    server = endpoint(get_status=404)  # an endpoint without /models is still up
    backend, sleeps = _backend(server.base_url)
    result = score_examples(example_set, tmp_path / "out", _config(tmp_path), backend)
    backend.close()
    usage = result.manifest["usage"]
    assert len(server.gets) == 1 and usage["failures"] == 0 and usage["requests"] == server.posts > 0
    assert sleeps == [] and (tmp_path / "out" / "scores.json").is_file()


def test_endpoint_gone_mid_run_stops_after_n_refused_requests(endpoint, tmp_path, example_set):
    server = endpoint(close_after=5)
    # One request at a time, so exactly the requests after the 5th meet the closed port.
    backend, sleeps = _backend(server.base_url, concurrency=1, max_retries=2, max_connection_failures=3)
    with pytest.raises(SaekitError) as caught:
        score_examples(example_set, tmp_path / "out", _config(tmp_path), backend)
    backend.close()
    assert str(caught.value) == _unreachable(server.base_url)
    assert server.posts == 5  # the 5th was answered; then 3 requests x 3 attempts were refused
    assert sleeps == [0.5, 1.0] * 3  # each refused request still ran its full retry schedule
    assert not (tmp_path / "out" / "scores.json").exists()  # the cache keeps the 5 answers for a rerun


def test_an_http_answer_resets_the_count_and_timeouts_do_not_count(endpoint):
    port = closed_port()
    backend, _ = _backend(f"http://127.0.0.1:{port}/v1", max_retries=0, max_connection_failures=2)
    one = ChatRequest(MESSAGES, 1)
    with pytest.raises(BackendError, match="gave up after 1 attempts"):  # refused: 1 in a row
        asyncio.run(backend.complete(one))
    server = endpoint(port=port)  # the same port now answers: the count starts again
    assert asyncio.run(backend.complete(one)).text == "Yes"
    server.close()
    with pytest.raises(BackendError):  # refused: 1 in a row again, not 2
        asyncio.run(backend.complete(one))
    with pytest.raises(SaekitError, match="connection refused"):  # 2 in a row: the run stops
        asyncio.run(backend.complete(one))
    with pytest.raises(SaekitError):  # and stays stopped without trying again
        asyncio.run(backend.complete(one))
    backend.close()

    slow = endpoint(stall_s=1.0)
    backend, sleeps = _backend(slow.base_url, timeout_s=0.2, max_retries=1, max_connection_failures=1)
    for _ in range(2):  # a timeout is an ordinary failure, retried, and never "unreachable"
        with pytest.raises(BackendError, match="gave up after 2 attempts; last error TimeoutError"):
            asyncio.run(backend.complete(one))
    assert sleeps == [0.5, 0.5] and slow.posts == 4
    backend.close()


def test_every_request_failing_with_http_500_is_an_error_after_writing(endpoint, tmp_path, example_set):
    server = endpoint(post_status=500)  # the probe is answered (with a 200); every POST is a 500
    backend, sleeps = _backend(server.base_url, max_retries=2)
    with pytest.raises(SaekitError) as caught:
        score_examples(example_set, tmp_path / "out", _config(tmp_path), backend)
    backend.close()
    message = str(caught.value)
    failed = int(re.match(r"every one of the (\d+) autointerp requests failed \(last error: gave up after 3 "
                          r"attempts; last error HTTP 500: down\); their scores are recorded as missing in ",
                          message).group(1))
    # Per latent: the LLM explanation (fails, so its scorers send nothing), the baseline's 8 detection
    # and 4 fuzzing prompts, and 2 intruder trials; each request tried 3 times, never more.
    assert failed == 4 * (1 + 8 + 4 + 2) and server.posts == 3 * failed and len(sleeps) == 2 * failed
    assert "\n" not in message and message.endswith(str(tmp_path / "out" / "scores.json"))
    scores = json.loads((tmp_path / "out" / "scores.json").read_text())
    first = scores["latents"][0]
    assert "HTTP 500" in first["explanations"]["llm"]["error"]
    detection = first["scores"]["baseline"]["detection"]
    assert detection["balanced_accuracy"] is None and detection["n"] == 0 and detection["n_missing"] == 8


def test_connection_failure_tells_refusals_from_timeouts_and_resets():
    refused = urllib.error.URLError(ConnectionRefusedError(111, "Connection refused"))
    dns = urllib.error.URLError(socket.gaierror(-2, "Name or service not known"))
    assert connection_failure(refused) == "connection refused"
    assert connection_failure(dns) == "name or service not known"
    for reached in (urllib.error.URLError(TimeoutError("timed out")), ConnectionResetError(104, "reset"),
                    TimeoutError("timed out"), urllib.error.URLError("unknown url type: ftp")):
        assert connection_failure(reached) is None
