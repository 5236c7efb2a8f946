"""The on-disk response cache: one small JSON file per prompt, keyed by sha256(model id, settings, request).

Entries are written atomically as soon as a response arrives, so an interrupted run loses only
the requests in flight and a rerun re-sends nothing that finished. Failures are never cached.
Keys and entries hold the model id, the backend settings (no API key) and the full request.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from saekit.autointerp.backends import Backend, ChatRequest, Completion
from saekit.io import write_json


def cache_key(model_id: str, settings: dict[str, Any], request: ChatRequest) -> str:
    blob = json.dumps({"model": model_id, "settings": settings, "request": request.key_data()}, sort_keys=True,
                      ensure_ascii=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


class ResponseCache:
    """Directory of ``<key[:2]>/<key>.json`` entries."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)

    def path(self, key: str) -> Path:
        return self.directory / key[:2] / f"{key}.json"

    def get(self, key: str) -> Completion | None:
        path = self.path(key)
        if not path.is_file():
            return None
        try:
            entry = json.loads(path.read_text(encoding="utf-8"))
            return Completion.from_dict(entry["response"], cached=True)
        except (ValueError, KeyError, TypeError):
            return None  # a damaged entry is simply asked again (and overwritten)

    def put(self, key: str, model_id: str, settings: dict[str, Any], request: ChatRequest,
            completion: Completion) -> None:
        write_json(self.path(key), {"key": key, "model": model_id, "settings": settings,
                                    "request": request.key_data(), "response": completion.to_dict()})


@dataclass
class ClientStats:
    calls: int = 0  # requests that reached the backend
    cache_hits: int = 0
    errors: int = 0


class CachedClient:
    """A backend behind the cache: answers from disk when it can, stores every fresh success."""

    def __init__(self, backend: Backend, cache: ResponseCache | None) -> None:
        self.backend = backend
        self.cache = cache
        self.settings = backend.settings()
        self.stats = ClientStats()

    async def complete(self, request: ChatRequest) -> Completion:
        key = cache_key(self.backend.model_id, self.settings, request)
        if self.cache is not None:
            hit = self.cache.get(key)
            if hit is not None:
                self.stats.cache_hits += 1
                return hit
        self.stats.calls += 1
        try:
            completion = await self.backend.complete(request)
        except Exception:
            self.stats.errors += 1
            raise
        if self.cache is not None:
            self.cache.put(key, self.backend.model_id, self.settings, request, completion)
        return completion
