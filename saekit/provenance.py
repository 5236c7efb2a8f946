"""Fingerprints of what an output was made from, and the one check that refuses a mismatch.

A checkpoint, an analysis store, an activation cache entry or a dashboard records the fingerprint of
the inputs it was made from (the dictionary's weights, the run's config, the activation spec). A
reader compares the recorded fingerprint with the one it is about to combine it with and refuses a
mismatch with one line, instead of silently pairing a store with another run's decoder.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from saekit.errors import SaekitError

FINGERPRINT_CHARS = 16
_READ_BLOCK = 1 << 20


def fingerprint_json(value: Any) -> str:
    """A short stable hash of a JSON-able value (keys sorted, so dict order does not matter)."""
    payload = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:FINGERPRINT_CHARS]


def fingerprint_files(*paths: str | Path) -> str:
    """A short hash of the bytes of ``paths`` (in order): equal exactly when every file is the same."""
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as handle:
            while block := handle.read(_READ_BLOCK):
                digest.update(block)
        digest.update(b"\0")  # file boundary: (ab, c) and (a, bc) differ
    return digest.hexdigest()[:FINGERPRINT_CHARS]


def require_same(what: str, recorded: str | None, current: str, fix: str) -> None:
    """Refuse to combine ``what`` (made from ``recorded``) with inputs whose fingerprint is ``current``.

    ``recorded`` is None for files written before fingerprints existed; they are accepted as they are.
    """
    if recorded is not None and recorded != current:
        raise SaekitError(f"{what} was made from other inputs (fingerprint {recorded}, these are {current}); {fix}")
