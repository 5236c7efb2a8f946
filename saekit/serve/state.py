"""What one server holds, kept on ``app.state.saekit`` (no module-level state): its runs, settings, explanation
index, graph transcoders (if any), and the locks that serialise model calls and searches."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from saekit.serve.graphs import GraphService
from saekit.serve.runs import ServedRun
from saekit.serve.search import ExplanationIndex
from saekit.serve.settings import ServeSettings


@dataclass
class ServerState:
    runs: dict[str, ServedRun]
    settings: ServeSettings
    index: ExplanationIndex
    lock: threading.Lock = field(default_factory=threading.Lock)  # one model call at a time: hooks are per model
    search_lock: threading.Lock = field(default_factory=threading.Lock)
    graph: GraphService | None = None  # transcoders for every MLP: attribution graphs of typed prompts

    @classmethod
    def build(cls, runs: dict[str, ServedRun], settings: ServeSettings,
              graph: GraphService | None = None) -> ServerState:
        entries = [(run.name, latent, text) for run in runs.values()
                   for latent, text in sorted(run.explanations.items())]
        return cls(runs, settings, ExplanationIndex(entries, settings.embeddings), graph=graph)
