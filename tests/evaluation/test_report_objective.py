"""The evaluation report names what the dictionary was trained to minimise, from the run's own config."""

import json
from pathlib import Path

from saekit.evaluation.report import render_report
from saekit.evaluation.results import EvaluationResults

LEGACY = Path(__file__).parents[1] / "fixtures" / "legacy_run"


def _metrics(loss: dict | None) -> EvaluationResults:
    data = json.loads((LEGACY / "metrics.json").read_text())
    if loss is not None:
        run = {"name": "r", "site": "blocks.1.resid_post", "loss": loss}
        data["run"] = run
    return EvaluationResults.from_dict(data)


def test_an_old_run_without_a_loss_section_reads_as_mse():
    text = render_report(_metrics(None))
    assert "Training objective: mse (the reconstruction error at the site), plus the architecture's sparsity" in text
    assert "trades reconstruction" not in text


def test_a_model_loss_run_says_so_beside_its_fvu():
    text = render_report(_metrics({"objective": "e2e_ds", "kl_coefficient": 0.5,
                                   "downstream_sites": ["blocks.2.resid_pre"], "finetune_fraction": 0.1}))
    assert ("Training objective: e2e_ds (0.5 x KL(clean || spliced) + 2.5 x the mean MSE at blocks.2.resid_pre), "
            "then the last 10% of the steps on 1 x MSE + 1 x KL, plus the architecture's sparsity term.") in text
    assert "then the last 10% of the steps on 1 x MSE + 1 x KL" in text
    assert "trades reconstruction for it" in text
