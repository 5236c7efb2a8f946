"""Explanation search: free text against every explained latent's explanation, by embedding cosine with the
autointerp embedding scorer's model (all-MiniLM-L6-v2) when it is installed, else by plain word match."""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from saekit.autointerp.scorers import Embedder, load_embedder

_WORD = re.compile(r"\w+")


@dataclass(frozen=True)
class Hit:
    source: str
    index: int
    description: str
    score: float


def _words(text: str) -> set[str]:
    return set(_WORD.findall(text.lower()))


class ExplanationIndex:
    """Every (run, latent, explanation), with its embedding computed once when an embedder is present."""

    def __init__(self, entries: list[tuple[str, int, str]], use_embeddings: bool = True) -> None:
        self.entries = entries
        self.embedder: Embedder | None = None
        self.note = "embeddings off (--no-embeddings); plain text match"
        if use_embeddings:
            self.embedder, self.note = load_embedder()
        self.vectors = (self.embedder.embed([text for _, _, text in entries])
                        if self.embedder is not None and entries else None)

    @property
    def method(self) -> str:
        return "embedding" if self.embedder is not None else "text"

    def search(self, query: str, sources: set[str], limit: int) -> list[Hit]:
        """The ``limit`` best-matching explanations among runs ``sources``, best first (ties: run, latent)."""
        chosen = [i for i, (source, _, _) in enumerate(self.entries) if source in sources]
        if not chosen:
            return []
        scores = self._scores(query, chosen)
        hits = [Hit(*self.entries[i], score=float(score)) for i, score in zip(chosen, scores)]
        if self.embedder is None:
            hits = [hit for hit in hits if hit.score > 0]
        hits.sort(key=lambda hit: (-hit.score, hit.source, hit.index))
        return hits[:limit]

    def _scores(self, query: str, chosen: list[int]) -> list[float]:
        if self.embedder is not None and self.vectors is not None:
            with torch.no_grad():
                query_vector = self.embedder.embed([query])[0]
            return (self.vectors[chosen] @ query_vector).tolist()
        wanted = _words(query)
        phrase = query.strip().lower()
        scores = []
        for i in chosen:
            text = self.entries[i][2].lower()
            # the share of the query's words the explanation holds, and 1 for the whole phrase as typed
            share = len(wanted & _words(text)) / len(wanted) if wanted else 0.0
            scores.append(1.0 if phrase and phrase in text else share)
        return scores
