"""Evaluating cross-layer runs on the tiny model: the CLT in place of every MLP at once, and the crosscoder."""

import json
import math
import shutil

import pytest
import torch

from saekit.dictionaries.registry import load_dictionary, save_dictionary
from saekit.evaluation.evaluate import evaluate_run
from saekit.evaluation.results import EvaluationResults
from saekit.io import load_tensors
from saekit.training.config import TrainConfig
from saekit.training.run import train_run

BASE = dict(context_length=16, contexts_per_chunk=16, expansion_factor=4, k=4, batch_size=256, lr=3e-3,
            shuffle_buffer_tokens=512, eval_tokens=280, eval_batch_contexts=4)


@pytest.fixture(scope="module")
def runs(tiny_loaded, tiny_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("crosslayer-runs")
    common = dict(BASE, model=str(tiny_model_dir), cache_dir=str(root / "cache"))
    clt = TrainConfig.from_flat(dict(common, name="clt", architecture="clt_topk", layers="0-1", train_tokens=256 * 64,
                                     site="blocks.0.mlp_in", target_site="blocks.0.mlp_out"))
    crosscoder = TrainConfig.from_flat(dict(common, name="cc", architecture="crosscoder", layers="0-1",
                                            site="blocks.0.resid_post", l1_coefficient=0.05, train_tokens=256 * 24))
    return {config.name: train_run(config, root / "runs", loaded=tiny_loaded, progress=False)
            for config in (clt, crosscoder)}


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
    assert metrics.losses.kl_spliced.mean > 0
    assert "The crosscoder is acausal" in (runs["cc"] / "report.md").read_text()


def test_generate_splices_a_clt_and_refuses_a_crosscoder(runs, tiny_model_dir, capsys):
    from saekit.cli import main

    assert main(["generate", str(runs["clt"]), "--prompt", "alpha beta", "--max-new-tokens", "3"]) == 0
    assert "alpha beta" in capsys.readouterr().out
    assert main(["generate", str(runs["cc"]), "--prompt", "alpha beta", "--max-new-tokens", "3"]) == 1
    assert "cannot be spliced into token-by-token generation" in capsys.readouterr().err
