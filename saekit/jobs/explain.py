"""Explain and score a run's latents: analyse first if needed, then autointerp, then refresh the dashboard."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from saekit.analysis.analyze import analyze_run
from saekit.analysis.store import ANALYSIS_DIR, store_exists
from saekit.autointerp.pipeline import AutointerpConfig, run_autointerp
from saekit.jobs.dashboard import rebuild_existing_dashboard


@dataclass
class ExplainResult:
    """Where the explanations went, whether an analysis had to be run, and the refreshed dashboard."""

    autointerp_dir: Path
    analysed: bool
    dashboard: Path | None


def explain_run(run_dir: Path, config: AutointerpConfig) -> ExplainResult:
    analysed = not store_exists(run_dir / ANALYSIS_DIR)
    if analysed:
        analyze_run(run_dir)
    out = run_autointerp(run_dir, config)
    return ExplainResult(out, analysed, rebuild_existing_dashboard(run_dir))
