"""The ``Document`` record shared by every corpus reader: one text with its source name and a stable unique id.

It lives in its own module so that the dispatcher (``saekit.data.corpus``) and the readers it dispatches to
(``saekit.data.files``, ``saekit.data.debian``) can all import it without importing each other in a cycle.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Document:
    """One document of a corpus: where it came from, a stable unique id, and its text."""

    source: str
    doc_id: str
    text: str
