"""Explain and score a run's latents: analyse first if needed, then autointerp, then refresh the dashboard.

A missing analysis store is made first; a store made from another dictionary is refused with one line
(before any explanation is written) asking for ``saekit analyze``, as the dashboard job does.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from saekit.analysis.analyze import analyze_run
from saekit.analysis.store import ANALYSIS_DIR, open_run_store, store_exists
from saekit.autointerp.backends import OpenAICompatibleBackend
from saekit.autointerp.pipeline import AutointerpConfig, run_autointerp
from saekit.jobs.dashboard import rebuild_existing_dashboard, run_lock


@dataclass
class ExplainResult:
    """Where the explanations went, whether an analysis had to be run, and the refreshed dashboard."""

    autointerp_dir: Path
    analysed: bool
    dashboard: Path | None


def explain_run(run_dir: Path, config: AutointerpConfig) -> ExplainResult:
    """Explain and score ``run_dir``'s analysed latents, holding the run's lock throughout."""
    run_dir = Path(run_dir)
    if config.backend.kind == "openai":  # a dead endpoint fails now, not after a long analysis
        OpenAICompatibleBackend(config.backend.openai).probe()
    with run_lock(run_dir):
        analysed = not store_exists(run_dir / ANALYSIS_DIR)
        if analysed:
            analyze_run(run_dir)
        else:
            open_run_store(run_dir)  # refuses a store of another dictionary before autointerp writes anything
        out = run_autointerp(run_dir, config)
        return ExplainResult(out, analysed, rebuild_existing_dashboard(run_dir))
