"""A small OpenAI-compatible HTTP server for an installed transformers model (loopback by default).

Serves ``POST /v1/chat/completions`` (greedy decoding; ``max_tokens``/``max_completion_tokens``,
``logprobs`` and ``top_logprobs`` up to 20; ``usage`` token counts) and ``GET /v1/models`` from
one model in this process, with the standard library's ThreadingHTTPServer (requests to the model
are serialised). It lets the HTTP backend be exercised, offline, against a real model, and lets
other tools use the default model as an endpoint::

    python -m saekit.autointerp.server --model default --port 8000

Temperature and sampling settings are accepted and ignored (always greedy); ``n`` must be 1.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from saekit.autointerp.local import ChatModel, Generation
from saekit.errors import SaekitError
from saekit.models.loading import LoadedModel

MAX_TOP_LOGPROBS = 20
MAX_BODY_BYTES = 4 << 20


class RequestError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _messages(body: dict[str, Any]) -> tuple[tuple[str, str], ...]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise RequestError(400, "'messages' must be a non-empty list")
    out = []
    for message in messages:
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise RequestError(400, "each message needs a 'role' and a 'content'")
        content = message.get("content")
        if isinstance(content, list):  # content parts: keep the text ones
            content = "".join(part.get("text", "") for part in content if isinstance(part, dict))
        if not isinstance(content, str):
            raise RequestError(400, "message content must be a string or a list of text parts")
        out.append((message["role"], content))
    return tuple(out)


def _int_field(body: dict[str, Any], names: tuple[str, ...], default: int, low: int, high: int) -> int:
    for name in names:
        if body.get(name) is not None:
            value = body[name]
            if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
                raise RequestError(400, f"'{name}' must be an integer from {low} to {high}")
            return value
    return default


def completion_response(generation: Generation, model: str, logprobs: bool) -> dict[str, Any]:
    choice: dict[str, Any] = {"index": 0, "message": {"role": "assistant", "content": generation.text},
                              "finish_reason": generation.finish_reason, "logprobs": None}
    if logprobs:
        choice["logprobs"] = {"content": [
            {"token": p.token, "logprob": p.logprob, "bytes": list(p.token.encode("utf-8")),
             "top_logprobs": [{"token": t, "logprob": v, "bytes": list(t.encode("utf-8"))} for t, v in p.top]}
            for p in generation.positions]}
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "object": "chat.completion", "created": int(time.time()),
        "model": model, "choices": [choice],
        "usage": {"prompt_tokens": generation.prompt_tokens, "completion_tokens": generation.completion_tokens,
                  "total_tokens": generation.prompt_tokens + generation.completion_tokens},
    }


class ChatServer:
    """``with ChatServer(chat) as server: server.base_url`` -- a background server on a free loopback port."""

    def __init__(self, chat: ChatModel, model_name: str | None = None, host: str = "127.0.0.1", port: int = 0,
                 default_max_tokens: int = 64, max_tokens_limit: int = 512, api_key: str | None = None) -> None:
        self.chat = chat
        self.api_key = api_key  # when set, requests must carry "Authorization: Bearer <key>"
        self.model_name = model_name or chat.name
        self.default_max_tokens = default_max_tokens
        self.max_tokens_limit = max_tokens_limit
        self.requests = 0
        self._count_lock = threading.Lock()
        self.httpd = ThreadingHTTPServer((host, port), self._handler_class())
        self.httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}/v1"

    def answer(self, body: dict[str, Any]) -> dict[str, Any]:
        if body.get("n", 1) != 1:
            raise RequestError(400, "only n=1 is supported")
        messages = _messages(body)
        max_tokens = _int_field(body, ("max_completion_tokens", "max_tokens"), self.default_max_tokens, 1,
                                self.max_tokens_limit)
        logprobs = bool(body.get("logprobs", False))
        top = _int_field(body, ("top_logprobs",), 0, 0, MAX_TOP_LOGPROBS) if logprobs else 0
        with self._count_lock:
            self.requests += 1
        try:
            generation = self.chat.generate(messages, max_tokens, top)
        except SaekitError as err:
            raise RequestError(400, str(err)) from err
        return completion_response(generation, self.model_name, logprobs)

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # quiet: no per-request lines
                return None

            def _send(self, status: int, payload: dict[str, Any]) -> None:
                data = json.dumps(payload).encode("utf-8")
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _error(self, status: int, message: str) -> None:
                kind = "invalid_request_error" if status < 500 else "server_error"
                self._send(status, {"error": {"message": message, "type": kind}})

            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                if self.path.rstrip("/") in ("/v1/models", "/models"):
                    self._send(200, {"object": "list", "data": [
                        {"id": server.model_name, "object": "model", "owned_by": "saekit"}]})
                else:
                    self._error(404, f"no route {self.path}")

            def do_POST(self) -> None:  # noqa: N802
                if self.path.rstrip("/") not in ("/v1/chat/completions", "/chat/completions"):
                    self._error(404, f"no route {self.path}")
                    return
                try:
                    length = int(self.headers.get("Content-Length") or 0)
                    if length > MAX_BODY_BYTES:
                        raise RequestError(413, "request body too large")
                    raw = self.rfile.read(length)
                    if server.api_key is not None and self.headers.get("Authorization") != f"Bearer {server.api_key}":
                        raise RequestError(401, "missing or wrong API key")
                    body = json.loads(raw or b"{}")
                    if not isinstance(body, dict):
                        raise RequestError(400, "the request body must be a JSON object")
                    self._send(200, server.answer(body))
                except RequestError as err:
                    self._error(err.status, str(err))
                except (ValueError, UnicodeDecodeError) as err:
                    self._error(400, f"invalid JSON: {err}")
                except Exception as err:  # a model failure is the server's error, reported, not a crash
                    self._error(500, f"{type(err).__name__}: {err}")

        return Handler

    def start(self) -> ChatServer:
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="saekit-chat-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> ChatServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def serve(loaded: LoadedModel, host: str = "127.0.0.1", port: int = 8000, model_name: str | None = None) -> None:
    """Serve until interrupted (the command-line entry point)."""
    server = ChatServer(ChatModel(loaded), model_name, host, port)
    print(f"serving {server.model_name} at {server.base_url} (Ctrl-C stops)", flush=True)
    try:
        server.httpd.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.httpd.server_close()


def main(argv: list[str] | None = None) -> int:
    from saekit.models.loading import load_model

    parser = argparse.ArgumentParser(prog="python -m saekit.autointerp.server", description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="default", help="model spec as for load_model (default: the embedded "
                                                           "SmolLM2-135M-Instruct)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--name", default=None, help="model name reported to clients (default: the model's)")
    args = parser.parse_args(argv)
    serve(load_model(args.model), args.host, args.port, args.name or args.model)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
