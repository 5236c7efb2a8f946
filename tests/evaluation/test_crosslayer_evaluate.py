"""Evaluating cross-layer runs on the tiny model: the CLT in place of every MLP at once, and the crosscoder."""

import json
import math
import shutil

import pytest
import torch
from run_helpers import crosslayer_configs

from saekit.dictionaries.registry import load_dictionary, save_dictionary
from saekit.evaluation.evaluate import evaluate_run
from saekit.evaluation.generation import ACAUSAL
from saekit.evaluation.results import EvaluationResults
from saekit.io import load_tensors
from saekit.training.run import train_run


@pytest.fixture(scope="module")
def runs(tiny_loaded, tiny_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("crosslayer-runs")
    return {name: train_run(config, root / "runs", loaded=tiny_loaded, progress=False)
            for name, config in crosslayer_configs(tiny_model_dir, root / "cache").items()}


def test_clt_is_spliced_into_every_mlp_at_once(runs, tiny_loaded):
    metrics = evaluate_run(runs["clt"], loaded=tiny_loaded, generations=1)
    assert metrics.sites == ["blocks.0.mlp_in->blocks.0.mlp_out", "blocks.1.mlp_in->blocks.1.mlp_out"]
    assert set(metrics.reconstruction) == {"blocks.0.mlp_out", "blocks.1.mlp_out"}
    for rec in metrics.reconstruction.values():  # per-layer FVU of the MLP outputs, in the spliced model
        assert math.isfinite(rec.fvu) and rec.fvu < 1 and rec.l0_mean == 4 and rec.width == 128
    assert metrics.losses.kl_spliced.mean > 0 and metrics.losses.ce_spliced.mean != metrics.losses.ce_clean.mean
    assert len(metrics.generations) == 1
    saved = json.loads((runs["clt"] / "metrics.json").read_text())
    assert EvaluationResults.from_dict(saved) == metrics
    report = (runs["clt"] / "report.md").read_text()
    for phrase in ("blocks.0.mlp_out", "blocks.1.mlp_out", "Effective compute", "ΔCE", "zero-ablation",
                   "replaces the output of every MLP in layers"):
        assert phrase in report


@pytest.mark.parametrize("baseline", ["zero", "mean"])
def test_a_clt_that_writes_only_its_bias_is_that_ablation_of_every_mlp(baseline, runs, tiny_loaded, tmp_path):
    # With no decoders, every MLP output in the range is replaced by b_dec: zero -> zero-ablation of
    # both MLPs, the training means -> mean-ablation. Exact only if every layer is spliced, jointly.
    run = tmp_path / "run"
    shutil.copytree(runs["clt"], run)
    dictionary, source = load_dictionary(run / "dictionary")
    stats = load_tensors(run / "activation_stats.safetensors")
    with torch.no_grad():
        dictionary.W_dec.zero_()
        means = torch.cat([stats[f"mean.blocks.{layer}.mlp_out"] for layer in (0, 1)])
        dictionary.b_dec.copy_(means if baseline == "mean" else torch.zeros_like(means))
    save_dictionary(run / "dictionary", dictionary, source)
    losses = evaluate_run(run, loaded=tiny_loaded, generations=0).losses
    assert losses.ce_spliced.mean == pytest.approx(losses.ce(baseline).mean, abs=1e-6)
    assert losses.kl_spliced.mean == pytest.approx(losses.kl(baseline).mean, abs=1e-6)


def test_crosscoder_splices_each_layer_from_the_clean_activations(runs, tiny_loaded):
    metrics = evaluate_run(runs["cc"], loaded=tiny_loaded, generations=2)
    assert metrics.sites == ["blocks.0.resid_post", "blocks.1.resid_post"]
    fvus = [rec.fvu for rec in metrics.reconstruction.values()]
    assert all(math.isfinite(f) and 0 < f < 1 for f in fvus)
    # One latent space: both layers report the same latents.
    l0 = [rec.l0_mean for rec in metrics.reconstruction.values()]
    assert l0[0] == l0[1] > 0
    assert metrics.generations == []  # acausal: no generation through it
    assert metrics.generations_skipped == ACAUSAL
    assert metrics.losses.kl_spliced.mean > 0
    report = (runs["cc"] / "report.md").read_text()
    assert "The crosscoder is acausal" in report
    assert "None sampled: a crosscoder reads every layer before writing any, so it cannot be spliced" in report


def test_generate_splices_a_clt_and_refuses_a_crosscoder(runs, tiny_model_dir, capsys):
    from saekit.cli import main

    assert main(["generate", str(runs["clt"]), "--prompt", "alpha beta", "--max-new-tokens", "3"]) == 0
    assert "alpha beta" in capsys.readouterr().out
    assert main(["generate", str(runs["cc"]), "--prompt", "alpha beta", "--max-new-tokens", "3"]) == 1
    assert "cannot be spliced into token-by-token generation" in capsys.readouterr().err


def test_a_sweep_of_clts_trains_evaluates_and_compares_each_point(tiny_loaded, tiny_model_dir, tmp_path):
    from saekit.jobs.sweep import run_sweep

    base = crosslayer_configs(tiny_model_dir, tmp_path / "cache")["clt"].updated(name="clt-sweep",
                                                                                    train_tokens=256 * 16)
    summary = run_sweep(base, "clt_topk:k=2,4", [None], tmp_path / "runs", loaded=tiny_loaded)
    by_run = {row["run"]: row for row in summary["runs"]}
    assert set(by_run) == {"clt_topk-k2", "clt_topk-k4"}
    for name, k in (("clt_topk-k2", 2), ("clt_topk-k4", 4)):
        metrics = json.loads((tmp_path / "runs" / "clt-sweep" / name / "metrics.json").read_text())
        assert len(metrics["sites"]) == 2  # each point spliced in for both MLPs
        assert by_run[name]["l0"] <= 2 * k  # the summary's L0 counts both layers' latents
        assert math.isfinite(by_run[name]["delta_ce"])
