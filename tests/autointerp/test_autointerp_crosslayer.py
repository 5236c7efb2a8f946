"""Explaining a cross-layer transcoder's latents: examples from every layer's encoder, verified hard
negatives recomputed from all the layers it reads, and scores on the dashboard."""

from __future__ import annotations

import json

from autointerp_fakes import FakeBackend
from run_helpers import crosslayer_configs

from saekit.analysis.analyze import AnalysisConfig, analyze_run
from saekit.autointerp.examples import SplitConfig, context_firing
from saekit.autointerp.pipeline import AutointerpConfig, run_autointerp, scores_for_dashboard
from saekit.autointerp.scorers import ScoringConfig
from saekit.jobs.dashboard import build_run_dashboard
from saekit.training.run import train_run

SPLIT = SplitConfig(train_top=4, train_per_quantile=1, window=12, min_train=2, min_test_activating=1,
                    min_test_nonactivating=1)


def test_clt_latents_are_explained_scored_and_shown(tiny_loaded, tiny_model_dir, tmp_path):
    config = crosslayer_configs(tiny_model_dir, tmp_path / "cache")["clt"]
    run = train_run(config, tmp_path / "runs", loaded=tiny_loaded, progress=False)
    analyze_run(run, tiny_loaded, AnalysisConfig(tokens=600, batch_contexts=4, progress=False))
    firing = context_firing(run, run / "analysis", tiny_loaded)
    assert firing.shape[1] == 256 and firing[:, 128:].any()  # layer-1 latents (the second half) fire too
    run_autointerp(run, AutointerpConfig(latents=4, split=SPLIT, progress=False,
                                         scoring=ScoringConfig(embedding=False)), backend=FakeBackend())
    view = scores_for_dashboard(run)
    assert len(view) == 4
    for interpretation in view.values():
        assert 0.0 <= interpretation["scores"]["llm"]["detection"]["balanced_accuracy"] <= 1.0
    site = build_run_dashboard(run, max_latents=8)
    latent = next(iter(view))
    page = (site / "features" / f"{latent}.html").read_text()
    assert "Explanation" in page and "Output layers" in page
    assert json.loads((run / "autointerp" / "manifest.json").read_text())
