"""Explanations and scores reach the dashboard: feature pages, the sortable index, the Neuronpedia JSON."""

from __future__ import annotations

import html
import json
import re
import shutil

from autointerp_fakes import FakeBackend

from saekit.autointerp.examples import SplitConfig
from saekit.autointerp.pipeline import AutointerpConfig, run_autointerp, scores_for_dashboard
from saekit.autointerp.scorers import ScoringConfig
from saekit.jobs.dashboard import build_run_dashboard

SPLIT = SplitConfig(train_top=4, train_per_quantile=1, window=12, min_train=2, min_test_activating=1,
                    min_test_nonactivating=1)
DATA_BLOCK = re.compile(r'<script type="application/json" id="latent-data">(.*?)</script>', re.S)


def test_dashboard_shows_explanations_and_scores(tiny_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    config = AutointerpConfig(latents=3, split=SPLIT, progress=False, scoring=ScoringConfig(embedding=False))
    run_autointerp(run, config, backend=FakeBackend())
    view = scores_for_dashboard(run)
    assert len(view) == 3
    site = build_run_dashboard(run, max_latents=16)

    data = json.loads(DATA_BLOCK.search((site / "index.html").read_text()).group(1))
    keys = [c["key"] for c in data["columns"]]
    assert {"explanation", "detection", "fuzzing", "baseline_detection"} <= set(keys)
    rows = {row["id"]: row for row in data["latents"]}
    for latent, interpretation in view.items():
        row = rows[latent]
        assert row["explanation"] == interpretation["explanation"]
        assert row["detection"] == interpretation["scores"]["llm"]["detection"]["balanced_accuracy"]
        assert 0.0 <= row["detection"] <= 1.0
        page = (site / "features" / f"{latent}.html").read_text()
        assert "<h2>Explanation</h2>" in page and html.escape(interpretation["explanation"]) in page
        assert "fake-llm (test double)" in page
        feature = json.loads((site / "neuronpedia" / f"{latent}.json").read_text())
        types = [e["typeName"] for e in feature["explanations"]]
        assert types == ["saekit-llm", "saekit-baseline"]
        assert feature["explanations"][0]["description"] == interpretation["explanation"]
    unexplained = next(latent for latent in rows if latent not in view)
    assert "explanation" not in rows[unexplained]  # shown as a dash, not as an empty or zero score
    assert "<h2>Explanation</h2>" not in (site / "features" / f"{unexplained}.html").read_text()
