"""What keeps the server safe to leave running: the request-body limit, the bearer token, and the rule that
no request field names a file (runs are addressed by name).

Errors are :class:`ApiError`, a :class:`SaekitError` with the HTTP status it answers with.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from saekit.errors import SaekitError

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
TOKEN_COOKIE = "saekit_token"


class ApiError(SaekitError):
    """A bad request: its status (400, 401, 404, 413, 422) and a one-line message naming what to change."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def looks_like_path(value: str) -> bool:
    """A name that points into the file system: absolute, home-relative, with a parent step or a backslash."""
    parts = value.replace("\\", "/").split("/")
    return value.startswith(("/", "~")) or "\\" in value or ".." in parts or ":" in parts[0][1:2]


def check_name(field: str, value: str, slash_allowed: bool = False) -> None:
    """Refuse a file path in a field that names a run or a model (``slash_allowed``: hub ids ``org/name``)."""
    if looks_like_path(value) or (not slash_allowed and "/" in value):
        raise ApiError(400, f"{field} {value!r} looks like a file path; runs and models are addressed by name "
                            "(GET /v1/runs lists them)")


def token_matches(expected: str, authorization: str | None, cookie: str | None) -> bool:
    """The header ``Authorization: Bearer TOKEN`` or the page's cookie carries the token (constant-time)."""
    given = []
    if authorization and authorization.lower().startswith("bearer "):
        given.append(authorization[7:].strip())
    if cookie:
        given.append(cookie)
    return any(hmac.compare_digest(candidate.encode(), expected.encode()) for candidate in given)


async def _error(send: Send, status: int, message: str) -> None:
    body = json.dumps({"error": message}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


class BodyLimit:
    """ASGI middleware: a request body over ``limit`` bytes is answered 413 before the app sees any of it.

    The body is read whole (at most ``limit`` + one chunk) and replayed to the app, so a body without a
    Content-Length is bounded too."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    def _too_large(self) -> str:
        return f"request body is over {self.limit} bytes; send a shorter prompt (the server's --max-body-bytes)"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            return await _error(send, 413, self._too_large())
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            more = message.get("more_body", False)
            if size > self.limit:
                return await _error(send, 413, self._too_large())
        body, replayed = b"".join(chunks), False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await self.app(scope, replay, send)
