"""LLM backends behind one async interface: any OpenAI-compatible chat endpoint, or a model run in-process.

:class:`OpenAICompatibleBackend` posts to ``BASE_URL/chat/completions`` with ``urllib`` in a thread
pool (no HTTP dependency; ``httpx`` is not installed here), under an asyncio semaphore that bounds
concurrency; it retries 429, 5xx, timeouts and connection errors with exponential backoff
(honouring ``Retry-After``), accounts tokens and cost (the provider's token counts x per-1M
prices), and refuses to start a request once the spend so far plus the estimated worst case of the
requests in flight and of this one would pass the cap (prompt tokens estimated generously from
characters, scaled up by the largest provider-count/estimate ratio seen; every answer token
allowed). The API key is read from the environment variable whose *name* is configured; the key
itself is never stored, logged or put in a cache key.

A dead endpoint must not look like a finished run: :meth:`OpenAICompatibleBackend.probe` sends one
free ``GET BASE_URL/models`` before any work (any HTTP answer proves the host is up; 401/403 is an
auth error; no answer is "unreachable"), and once ``max_connection_failures`` requests in a row have
given up without ever getting an HTTP response (refused, DNS failure, unreachable host), every
request raises :class:`~saekit.errors.SaekitError` so the run stops instead of recording n/a scores.

:class:`LocalBackend` answers with an installed transformers model (by default the embedded
SmolLM2-135M-Instruct) through :class:`~saekit.autointerp.local.ChatModel`: greedy, in one worker
thread, free.

Failures raise :class:`BackendError`; callers record them as missing scores.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import math
import os
import socket
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from saekit.errors import SaekitError

if TYPE_CHECKING:  # torch and transformers load only when the local backend is built
    from saekit.autointerp.local import Generation
    from saekit.models.loading import LoadedModel

Messages = tuple[tuple[str, str], ...]


class BackendError(Exception):
    """A provider failure (after retries): recorded as a missing score, never as a zero."""


class SpendCapReached(BackendError):
    """The configured spend cap would be exceeded; no further request is issued."""


@dataclass(frozen=True)
class ChatRequest:
    """One chat completion: messages, a token budget for the answer, and how many alternatives to report."""

    messages: Messages
    max_tokens: int
    top_logprobs: int = 0  # 0: no logprobs requested

    def key_data(self) -> dict[str, Any]:
        return {"messages": [list(m) for m in self.messages], "max_tokens": self.max_tokens,
                "top_logprobs": self.top_logprobs}


@dataclass
class Completion:
    """The answer text and, when the backend gives them, the first answer token's top alternatives."""

    text: str
    top_logprobs: list[tuple[str, float]] | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    cached: bool = False

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["top_logprobs"] = None if self.top_logprobs is None else [list(p) for p in self.top_logprobs]
        data.pop("cached")
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any], cached: bool = False) -> Completion:
        top = data.get("top_logprobs")
        return cls(text=data["text"], top_logprobs=None if top is None else [(str(t), float(v)) for t, v in top],
                   prompt_tokens=int(data.get("prompt_tokens", 0)),
                   completion_tokens=int(data.get("completion_tokens", 0)),
                   cost_usd=float(data.get("cost_usd", 0.0)), cached=cached)


@dataclass
class Usage:
    """What a backend has spent in this process (cache hits are not counted here)."""

    requests: int = 0  # completed successfully
    failures: int = 0
    retries: int = 0
    refused_over_cap: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0

    def add(self, completion: Completion) -> None:
        self.requests += 1
        self.prompt_tokens += completion.prompt_tokens
        self.completion_tokens += completion.completion_tokens
        self.cost_usd += completion.cost_usd


class Backend(Protocol):
    """What the scorers need: an id and settings (for cache keys and reports), and an async completion."""

    model_id: str
    usage: Usage

    def settings(self) -> dict[str, Any]: ...

    def description(self) -> str: ...

    async def complete(self, request: ChatRequest) -> Completion: ...

    def close(self) -> None: ...


@dataclass
class OpenAIConfig:
    """An OpenAI-compatible chat endpoint and how to use it."""

    base_url: str = "https://api.openai.com/v1"
    model: str = "gpt-4o-mini"
    api_key_env: str | None = "OPENAI_API_KEY"  # the NAME of the variable holding the key; None: no key
    concurrency: int = 8
    timeout_s: float = 60.0
    max_retries: int = 5
    backoff_s: float = 1.0
    backoff_max_s: float = 60.0
    temperature: float = 0.0
    input_price_per_1m: float = 0.0  # USD per million prompt tokens
    output_price_per_1m: float = 0.0  # USD per million completion tokens
    max_cost_usd: float | None = None  # stop issuing requests once this would be exceeded
    max_tokens_field: str = "max_tokens"  # some endpoints want "max_completion_tokens"
    # Stop the run once this many requests in a row gave up without any HTTP response (each after
    # its own retries, so a blip shorter than one request's backoff schedule never stops a run).
    max_connection_failures: int = 3
    probe_timeout_s: float = 10.0  # the GET /models sent before the first request

    def validate(self) -> OpenAIConfig:
        if self.concurrency < 1 or self.max_retries < 0 or self.timeout_s <= 0:
            raise SaekitError("concurrency must be >= 1, max_retries >= 0 and timeout_s > 0")
        if self.max_connection_failures < 1 or self.probe_timeout_s <= 0:
            raise SaekitError(f"max connection failures must be >= 1 and the probe timeout > 0, got "
                              f"{self.max_connection_failures} and {self.probe_timeout_s}")
        if self.max_cost_usd is not None and self.max_cost_usd < 0:
            raise SaekitError(f"max cost must be >= 0 USD, got {self.max_cost_usd}")
        if not self.base_url.startswith(("http://", "https://")):
            raise SaekitError(f"base URL must start with http:// or https://, got {self.base_url!r}")
        if self.api_key_env and not os.environ.get(self.api_key_env):
            raise SaekitError(f"environment variable {self.api_key_env} (the API key) is not set; set it, or pass "
                              f"--api-key-env none for an endpoint without a key")
        return self

    def public(self) -> dict[str, Any]:
        """Settings safe to save: the key variable's name, never its value."""
        return asdict(self)


def estimate_tokens(text: str) -> int:
    """A deliberately generous token estimate for text we have not sent yet (about 3 characters a token)."""
    return len(text) // 3 + 1


def _retry_after(headers: Any) -> float | None:
    value = headers.get("Retry-After") if headers is not None else None
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def _error_message(body: bytes) -> str:
    try:
        data = json.loads(body)
        message = data.get("error", {}).get("message") if isinstance(data.get("error"), dict) else data.get("error")
        return str(message or data)[:200]
    except (ValueError, AttributeError):
        return body.decode("utf-8", "replace")[:200]


def one_line(text: str) -> str:
    """``text`` with every run of whitespace (newlines included) made one space: messages stay one line."""
    return " ".join(str(text).split())


def connection_failure(err: BaseException) -> str | None:
    """Why no connection could be made ("connection refused", ...), or None if ``err`` is not that kind.

    ``urlopen`` wraps in ``URLError`` only what fails while connecting and sending; errors while
    waiting for the answer (a reset, a read timeout) come raw and mean the host was reached. Timeouts
    are left out even when connecting: one slow request must stay an ordinary, retried failure.
    """
    reason = err.reason if isinstance(err, urllib.error.URLError) else None
    if not isinstance(reason, OSError) or isinstance(reason, (TimeoutError, socket.timeout)):
        return None
    return one_line(reason.strerror or reason).lower() or type(reason).__name__


def unreachable_message(base_url: str, reason: str) -> str:
    return (f"cannot reach the autointerp endpoint {base_url.rstrip('/')} ({reason}); check --base-url and "
            f"that the server is running")


def _auth_message(base_url: str, status: int, detail: str, api_key_env: str | None) -> str:
    where = f"the autointerp endpoint {base_url.rstrip('/')} refused the request (HTTP {status}: {detail})"
    if api_key_env is None:
        return f"{where}; it needs an API key: pass --api-key-env NAME, the variable holding it"
    return f"{where}; check the API key in the environment variable {api_key_env}"


def _probe_failure(err: BaseException, timeout_s: float) -> str:
    """A short reason for a probe that got no HTTP answer."""
    if isinstance(err, (TimeoutError, socket.timeout)) or (
            isinstance(err, urllib.error.URLError) and isinstance(err.reason, (TimeoutError, socket.timeout))):
        return f"no answer within {timeout_s:g} s"
    return connection_failure(err) or one_line(getattr(err, "reason", None) or err) or type(err).__name__


def probe_endpoint(config: OpenAIConfig, headers: dict[str, str]) -> None:
    """``GET BASE_URL/models``: any HTTP answer but 401/403 passes; raises SaekitError otherwise.

    It costs nothing (no tokens) and most servers answer it; a 404 or 405 from one that does not
    serve ``/models`` still proves the host is up, which is all this checks.
    """
    url = config.base_url.rstrip("/") + "/models"
    request = urllib.request.Request(url, headers=headers, method="GET")
    try:
        with urllib.request.urlopen(request, timeout=config.probe_timeout_s) as response:
            response.read()
        return
    except urllib.error.HTTPError as err:
        if err.code not in (401, 403):
            return
        detail = _error_message(err.read())
        raise SaekitError(_auth_message(config.base_url, err.code, one_line(detail), config.api_key_env)) from None
    except (OSError, http.client.HTTPException) as err:  # URLError, timeouts, resets, bad status lines
        reason = _probe_failure(err, config.probe_timeout_s)
    raise SaekitError(unreachable_message(config.base_url, reason))


def parse_chat_response(data: dict[str, Any]) -> tuple[str, list[tuple[str, float]] | None, dict[str, int]]:
    """Answer text, first-token alternatives (or None) and usage from an OpenAI chat-completions response."""
    try:
        choice = data["choices"][0]
        text = choice["message"].get("content") or ""
    except (KeyError, IndexError, TypeError, AttributeError) as err:
        raise BackendError(f"malformed response: no choices[0].message ({str(data)[:120]})") from err
    top = None
    content = (choice.get("logprobs") or {}).get("content") if isinstance(choice.get("logprobs"), dict) else None
    if content:
        first = content[0]
        alternatives = first.get("top_logprobs") or [{"token": first.get("token"), "logprob": first.get("logprob")}]
        top = [(str(a["token"]), float(a["logprob"])) for a in alternatives if a.get("logprob") is not None]
    usage = data.get("usage") or {}
    return text, top, {k: int(usage[k]) for k in ("prompt_tokens", "completion_tokens") if usage.get(k) is not None}


class OpenAICompatibleBackend:
    """Async client of an OpenAI-compatible ``/chat/completions`` endpoint (see module docstring)."""

    def __init__(self, config: OpenAIConfig, sleep=asyncio.sleep) -> None:
        self.config = config.validate()
        self.model_id = config.model
        self.usage = Usage()
        self.url = config.base_url.rstrip("/") + "/chat/completions"
        self._pool = ThreadPoolExecutor(max_workers=config.concurrency, thread_name_prefix="saekit-http")
        self._semaphore: asyncio.Semaphore | None = None
        self._semaphore_loop: asyncio.AbstractEventLoop | None = None
        self._reserved = 0.0
        self._prompt_token_ratio = 1.0  # largest (provider-counted / estimated) prompt tokens seen
        self._sleep = sleep
        self._probed = False
        self._connection_failures = 0  # requests in a row that gave up without any HTTP response
        self._unreachable: str | None = None  # set once that reaches the limit: every request then stops

    def probe(self) -> None:
        """Check once, before the first request, that the endpoint answers (see :func:`probe_endpoint`)."""
        if not self._probed:
            headers = self._headers()
            headers.pop("Content-Type")
            probe_endpoint(self.config, headers)
            self._probed = True

    def settings(self) -> dict[str, Any]:
        return {"backend": "openai-compatible", "endpoint": self.config.base_url.rstrip("/"),
                "temperature": self.config.temperature}

    def description(self) -> str:
        return f"{self.config.model} via OpenAI-compatible endpoint {self.config.base_url}"

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return (prompt_tokens * self.config.input_price_per_1m
                + completion_tokens * self.config.output_price_per_1m) / 1e6

    def _payload(self, request: ChatRequest) -> bytes:
        body: dict[str, Any] = {
            "model": self.config.model, "messages": [{"role": r, "content": c} for r, c in request.messages],
            self.config.max_tokens_field: request.max_tokens, "temperature": self.config.temperature, "n": 1,
        }
        if request.top_logprobs:
            body.update(logprobs=True, top_logprobs=request.top_logprobs)
        return json.dumps(body).encode("utf-8")

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        if self.config.api_key_env:
            key = os.environ.get(self.config.api_key_env)
            if not key:
                raise BackendError(f"environment variable {self.config.api_key_env} is not set")
            headers["Authorization"] = f"Bearer {key}"
        return headers

    def _post(self, payload: bytes) -> tuple[int, bytes, Any]:
        request = urllib.request.Request(self.url, data=payload, headers=self._headers(), method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.config.timeout_s) as response:
                return response.status, response.read(), response.headers
        except urllib.error.HTTPError as err:
            return err.code, err.read(), err.headers

    def _estimated_prompt_tokens(self, request: ChatRequest) -> int:
        return sum(estimate_tokens(c) + 4 for _, c in request.messages)

    def _reserve(self, request: ChatRequest) -> float:
        # Worst case of this request: the prompt estimate, scaled up if the provider has counted more
        # tokens than estimated so far, plus every answer token allowed.
        prompt = self._estimated_prompt_tokens(request) * self._prompt_token_ratio
        estimate = self.cost(math.ceil(prompt), request.max_tokens)
        cap = self.config.max_cost_usd
        if cap is not None and self.usage.cost_usd + self._reserved + estimate > cap:
            self.usage.refused_over_cap += 1
            raise SpendCapReached(f"spend cap of ${cap:.4f} reached (spent ${self.usage.cost_usd:.4f}); "
                                  f"request not sent")
        self._reserved += estimate
        return estimate

    async def complete(self, request: ChatRequest) -> Completion:
        loop = asyncio.get_running_loop()
        if self._semaphore is None or self._semaphore_loop is not loop:  # one semaphore per event loop
            self._semaphore, self._semaphore_loop = asyncio.Semaphore(self.config.concurrency), loop
        async with self._semaphore:
            estimate = self._reserve(request)
            try:
                return await self._complete_with_retries(request)
            except BackendError:
                self.usage.failures += 1
                raise
            finally:
                self._reserved -= estimate

    def _check_reachable(self) -> None:
        if self._unreachable is not None:  # a fresh error each time: one instance raised twice grows its traceback
            raise SaekitError(self._unreachable)

    def _count_connection_failure(self, reason: str) -> None:
        """One more request in a row got no HTTP response; at the limit, stop this and every later request."""
        self._connection_failures += 1
        if self._connection_failures >= self.config.max_connection_failures:
            self._unreachable = unreachable_message(self.config.base_url, reason)
            self._check_reachable()

    async def _complete_with_retries(self, request: ChatRequest) -> Completion:
        loop = asyncio.get_running_loop()
        payload = self._payload(request)
        last, refused = "no attempt", None
        for attempt in range(self.config.max_retries + 1):
            self._check_reachable()
            wait = None
            try:
                status, body, headers = await loop.run_in_executor(self._pool, self._post, payload)
            except (OSError, http.client.HTTPException) as err:  # URLError, timeouts, resets
                last = f"{type(err).__name__}: {getattr(err, 'reason', err)}"
                reason = connection_failure(err)  # None: a timeout or reset, so not "unreachable"
                refused = reason if reason and refused is not False else False
            else:
                refused, self._connection_failures = False, 0  # any HTTP answer: the host is up
                if status == 200:
                    return self._completion(request, body)
                last = f"HTTP {status}: {_error_message(body)}"
                if status != 429 and status < 500:
                    raise BackendError(last)
                wait = _retry_after(headers)
            if attempt == self.config.max_retries:
                break
            self.usage.retries += 1
            delay = self.config.backoff_s * 2 ** attempt if wait is None else wait
            await self._sleep(min(delay, self.config.backoff_max_s))
        if refused:  # every attempt of this request failed to connect
            self._count_connection_failure(refused)
        raise BackendError(f"gave up after {self.config.max_retries + 1} attempts; last error {last}")

    def _completion(self, request: ChatRequest, body: bytes) -> Completion:
        try:
            data = json.loads(body)
        except ValueError as err:
            raise BackendError(f"response is not JSON: {body[:120]!r}") from err
        text, top, usage = parse_chat_response(data)
        estimated = self._estimated_prompt_tokens(request)
        prompt_tokens = usage.get("prompt_tokens", estimated)
        self._prompt_token_ratio = max(self._prompt_token_ratio, prompt_tokens / estimated)
        completion_tokens = usage.get("completion_tokens", estimate_tokens(text))
        completion = Completion(text, top if request.top_logprobs else None, prompt_tokens, completion_tokens,
                                self.cost(prompt_tokens, completion_tokens))
        self.usage.add(completion)
        return completion

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


@dataclass
class LocalConfig:
    """An installed transformers model answering in-process (greedy decoding)."""

    model: str = "default"
    device: str = "cpu"
    max_context: int | None = None

    def public(self) -> dict[str, Any]:
        return asdict(self)


def generation_completion(generation: Generation, top_logprobs: int) -> Completion:
    top = generation.positions[0].top if (top_logprobs and generation.positions) else None
    return Completion(generation.text, top, generation.prompt_tokens, generation.completion_tokens, 0.0)


class LocalBackend:
    """A transformers model in this process; requests run one at a time in a worker thread."""

    def __init__(self, loaded: LoadedModel | None = None, config: LocalConfig | None = None) -> None:
        from saekit.autointerp.local import ChatModel
        from saekit.models.loading import load_model

        self.config = config or LocalConfig()
        loaded = loaded or load_model(self.config.model, device=self.config.device)
        self.chat = ChatModel(loaded, self.config.max_context)
        self.model_id = loaded.name
        self.usage = Usage()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="saekit-local")

    def settings(self) -> dict[str, Any]:
        return {"backend": "local", "decoding": "greedy", "chat_template": self.chat.has_chat_template,
                "dtype": str(next(self.chat.model.parameters()).dtype)}

    def description(self) -> str:
        return f"{self.model_id}, run in-process with transformers (greedy)"

    async def complete(self, request: ChatRequest) -> Completion:
        loop = asyncio.get_running_loop()
        try:
            generation = await loop.run_in_executor(
                self._pool, self.chat.generate, request.messages, request.max_tokens, request.top_logprobs)
        except (SaekitError, RuntimeError, ValueError) as err:
            self.usage.failures += 1
            raise BackendError(f"local model failed: {str(err).splitlines()[0][:200]}") from err
        completion = generation_completion(generation, request.top_logprobs)
        self.usage.add(completion)
        return completion

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


@dataclass
class BackendChoice:
    """Which backend a run uses (what the CLI flags set)."""

    kind: str = "local"  # "local" or "openai"
    local: LocalConfig = field(default_factory=LocalConfig)
    openai: OpenAIConfig = field(default_factory=OpenAIConfig)

    def public(self) -> dict[str, Any]:
        return {"kind": self.kind, **({"local": self.local.public()} if self.kind == "local"
                                      else {"openai": self.openai.public()})}


def make_backend(choice: BackendChoice, loaded: LoadedModel | None = None) -> Backend:
    if choice.kind == "local":
        return LocalBackend(loaded, choice.local)
    if choice.kind == "openai":
        return OpenAICompatibleBackend(choice.openai)
    raise SaekitError(f"unknown backend {choice.kind!r}; use 'local' or 'openai'")
