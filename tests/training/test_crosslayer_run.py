"""Cross-layer runs on the tiny model: the CLI trains a CLT over both layers, exact resume, bad layer settings."""

import json
import subprocess

import pytest
import torch
from run_helpers import assert_resume_after_kill_matches, train_command
from training.test_run import _config

from saekit.cli import main
from saekit.dictionaries.registry import build_dictionary, load_dictionary
from saekit.io import load_tensors
from saekit.rundir import CHECKPOINT_FILE, LOG_FILE
from saekit.training.checkpoint import load_checkpoint
from saekit.training.run import train_run

CLT = dict(architecture="clt_topk", layers="0-1", site="blocks.0.mlp_in", target_site="blocks.0.mlp_out", lr=3e-3)


def _raw_chunk(config, loaded):
    from saekit.activations.source import ActivationSource

    return ActivationSource(config.activation_spec(), config.run.cache_dir, lambda: loaded).chunk(0)


def test_cli_trains_a_clt_over_two_layers(tiny_loaded, tiny_model_dir, tmp_path):
    config = _config(tiny_model_dir, tmp_path, name="clt", train_tokens=256 * 48, **CLT)
    result = subprocess.run(train_command(config, tmp_path / "runs"), capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    run_dir = tmp_path / "runs" / "clt"
    log = [json.loads(line) for line in (run_dir / LOG_FILE).read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(1, 49))
    assert log[-1]["l0_layer_0"] == log[-1]["l0_layer_1"] == 4  # k per layer
    assert log[-1]["fvu_layer_1"] < log[0]["fvu_layer_1"]
    dictionary, source = load_dictionary(run_dir / "dictionary")
    assert dictionary.config.layers == 2 and dictionary.config.width == 2 * 4 * 32
    assert source["sites"] == ["blocks.0.mlp_in", "blocks.1.mlp_in"]
    assert source["target_sites"] == ["blocks.0.mlp_out", "blocks.1.mlp_out"]
    stats = load_tensors(run_dir / "activation_stats.safetensors")
    assert {f"mean.blocks.{layer}.{kind}" for layer in (0, 1) for kind in ("mlp_in", "mlp_out")} == set(stats)
    # The folded dictionary on raw activations is the trained (checkpointed) one on per-layer scaled ones.
    tensors, meta = load_checkpoint(run_dir / CHECKPOINT_FILE)
    trained = build_dictionary(dictionary.config)
    prefix = "dictionary."
    trained.load_state_dict({k.removeprefix(prefix): v for k, v in tensors.items() if k.startswith(prefix)})
    chunk = _raw_chunk(config, tiny_loaded)
    scales = meta["scaling"]
    x = torch.cat([chunk[f"blocks.{layer}.mlp_in"] for layer in (0, 1)], -1)
    x_scaled = torch.cat([chunk[f"blocks.{layer}.mlp_in"] * scales["input_scale"][layer] for layer in (0, 1)], -1)
    out_scale = torch.tensor(scales["output_scale"]).repeat_interleave(32)
    with torch.no_grad():
        torch.testing.assert_close(dictionary.eval()(x).reconstruction,
                                   trained.eval()(x_scaled).reconstruction / out_scale, rtol=1e-4, atol=1e-5)


def test_crosscoder_run_over_two_residual_streams(tiny_loaded, tiny_model_dir, tmp_path):
    config = _config(tiny_model_dir, tmp_path, name="cc", architecture="crosscoder", layers="0-1",
                     site="blocks.0.resid_post", l1_coefficient=0.05, lr=3e-3, train_tokens=256 * 24)
    run_dir = train_run(config, tmp_path / "runs", loaded=tiny_loaded, progress=False)
    log = [json.loads(line) for line in (run_dir / LOG_FILE).read_text().splitlines()]
    assert log[-1]["fvu_layer_0"] < log[0]["fvu_layer_0"] and "l0_layer_0" not in log[-1]  # shared latents
    dictionary, source = load_dictionary(run_dir / "dictionary")
    assert dictionary.config.d_in == 64 and source["target_sites"] == []


def test_clt_resume_after_kill_matches_uninterrupted_run(tiny_model_dir, tmp_path):
    overrides = dict(CLT, train_tokens=256 * 120, expansion_factor=16, checkpoint_every=3)
    reference = _config(tiny_model_dir, tmp_path, name="reference", **overrides)
    killed = _config(tiny_model_dir, tmp_path, name="killed", **overrides)
    assert_resume_after_kill_matches(reference, killed, tmp_path / "runs")


@pytest.mark.parametrize("flags, message", [
    (["--architecture", "clt_topk", "--layers", "0-7"], "layer 2 in site 'blocks.2.mlp_in' is out of range: the model "
                                                        "has layers 0..1"),
    (["--architecture", "clt_topk", "--layers", "1-0"], "layers must be a layer range FIRST-LAST with FIRST <= LAST"),
    (["--architecture", "clt_topk"], "needs a layer range"),
    (["--architecture", "topk", "--layers", "0-1"], "only for the cross-layer architectures"),
    (["--architecture", "clt_topk", "--layers", "1-1"], r"starts at layer 1, but blocks.0.mlp_in is in layer 0"),
    (["--architecture", "crosscoder", "--layers", "0-1"], "reconstructs its input: leave target_site unset"),
    (["--architecture", "clt_topk", "--layers", "0-1", "--width", "129"], "use a multiple of the 2 layers"),
])
def test_bad_layer_settings_are_one_line_before_the_model_loads(flags, message, tiny_model_dir, tmp_path, capsys):
    argv = ["train", "--runs-dir", str(tmp_path / "runs"), "--cache-dir", str(tmp_path / "cache"),
            "--model", str(tiny_model_dir), "--site", "blocks.0.mlp_in", "--target-site", "blocks.0.mlp_out", *flags]
    if flags[1] == "crosscoder":
        argv[argv.index("--site") + 1] = "blocks.0.resid_post"
    capsys.readouterr()
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 1 and len(err.splitlines()) == 1 and message in err, err
    assert not (tmp_path / "runs").exists() and not (tmp_path / "cache").exists()
