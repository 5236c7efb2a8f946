"""Several dictionaries from one forward pass, sweeps, and resampling of dead latents."""

import json

import pytest
import torch

from saekit.dictionaries.base import DictionaryConfig
from saekit.dictionaries.registry import build_dictionary
from saekit.errors import SaekitError
from saekit.io import load_tensors
from saekit.jobs.sweep import run_sweep
from saekit.rundir import DENSITY_FILE
from saekit.training.config import TrainConfig
from saekit.training.run import train_many, train_run
from saekit.training.schedule import OptimConfig
from saekit.training.sweep import grid_configs, parse_grid
from saekit.training.trainer import DictionaryTrainer


def _config(tiny_model_dir, tmp_path, **overrides) -> TrainConfig:
    values = dict(name="tiny", model=str(tiny_model_dir), site="blocks.1.resid_post", context_length=16,
                  contexts_per_chunk=16, expansion_factor=4, k=4, train_tokens=2048, batch_size=256,
                  shuffle_buffer_tokens=1024, checkpoint_every=4, cache_dir=str(tmp_path / "cache"),
                  outlier_norm_factor=None, eval_tokens=140, eval_batch_contexts=5)
    values.update(overrides)
    return TrainConfig.from_flat(values)


def test_one_pass_for_several_sites_equals_separate_runs(tiny_loaded, tiny_model_dir, tmp_path):
    sites = ["blocks.0.resid_post", "blocks.1.mlp_act"]
    together = [_config(tiny_model_dir, tmp_path, name=f"many/{s}", site=s) for s in sites]
    run_dirs = train_many(together, tmp_path / "runs", loaded=tiny_loaded, progress=False)
    alone = train_run(_config(tiny_model_dir, tmp_path, name="alone", site=sites[1]), tmp_path / "runs",
                      loaded=tiny_loaded, progress=False)
    joint = load_tensors(run_dirs[1] / "dictionary" / "weights.safetensors")
    single = load_tensors(alone / "dictionary" / "weights.safetensors")
    assert joint["W_enc"].shape == (64, 256)  # mlp_act is the MLP's hidden width
    for name in single:
        torch.testing.assert_close(joint[name], single[name])


def test_mismatched_data_settings_are_refused(tiny_loaded, tiny_model_dir, tmp_path):
    configs = [_config(tiny_model_dir, tmp_path, name="a"), _config(tiny_model_dir, tmp_path, name="b", seed=3)]
    with pytest.raises(SaekitError, match=r"b differs in \['seed'\]"):
        train_many(configs, tmp_path / "runs", loaded=tiny_loaded, progress=False)


def test_grid_parsing():
    grid = parse_grid("topk:k=2,4; relu:l1_coefficient=0.5;jumprelu:l0_coefficient=1e-3")
    assert grid == [("topk", {"k": 2}), ("topk", {"k": 4}), ("relu", {"l1_coefficient": 0.5}),
                    ("jumprelu", {"l0_coefficient": 1e-3})]
    configs = grid_configs(TrainConfig.from_flat(dict(name="s")), grid, [None, 1024])
    assert len(configs) == 8 and configs[3].dictionary.l0_coefficient == 1e-3 and configs[7].dictionary.width == 1024
    assert configs[3].dictionary.extra == {}  # a typed sparsity setting, not an extra one
    assert grid_configs(TrainConfig(), [("topk", {"aux_k": 64})], [None])[0].dictionary.extra == {"aux_k": 64}
    assert configs[0].name == "s/topk-k2"
    with pytest.raises(SaekitError, match="unknown architecture"):
        parse_grid("magic:k=1")


def test_sweep_writes_table_and_pareto(tiny_loaded, tiny_model_dir, tmp_path):
    base = _config(tiny_model_dir, tmp_path, name="sweep")
    summary = run_sweep(base, "topk:k=2,4;relu:l1_coefficient=0.3", [None], tmp_path / "runs", loaded=tiny_loaded)
    assert len(summary["runs"]) == 3
    assert {r["architecture"] for r in summary["runs"]} == {"topk", "relu"}
    l0_by_run = {r["run"]: r["l0"] for r in summary["runs"]}
    assert l0_by_run["topk-k2"] <= 2 and l0_by_run["topk-k4"] <= 4
    out = tmp_path / "runs" / "sweep"
    assert (out / "pareto.png").stat().st_size > 1000 and (out / "sweep.json").exists()


def _dead_prone_data(n=4096, d=16, seed=0):
    """Few true directions in a wide dictionary: most latents die."""
    generator = torch.Generator().manual_seed(seed)
    features = torch.nn.functional.normalize(torch.randn(4, d, generator=generator), dim=-1)
    codes = torch.rand(n, 4, generator=generator) * (torch.rand(n, 4, generator=generator) < 0.5)
    return codes @ features


def _train(resample_every, holdout=0.0, steps=60):
    torch.manual_seed(0)
    data = _dead_prone_data()
    dictionary = build_dictionary(DictionaryConfig("relu", 16, 128, l1_coefficient=0.3))
    config = OptimConfig(lr=3e-3, dead_window_tokens=1024, resample_every=resample_every,
                         resample_holdout_fraction=holdout, warmup_steps=1)
    trainer = DictionaryTrainer(dictionary, config, total_steps=steps)
    snapshots, records = [], []
    for step in range(steps):
        records.append(trainer.train_step(data[(step % 16) * 256:(step % 16 + 1) * 256]))
        if (step + 1) % 10 == 0:
            snapshots.append(trainer.density_snapshot())
    return trainer, records, snapshots


def test_resampling_revives_dead_latents_and_holdout_is_left_alone():
    without, records, _ = _train(resample_every=0)
    assert records[-1]["dead_fraction"] > 0.2  # the case: dead latents occur
    trainer, records, snapshots = _train(resample_every=15, holdout=0.25)
    assert sum(r.get("resampled", 0) for r in records) > 0
    assert trainer.holdout_mask.sum() > 0
    held = trainer.holdout_mask.nonzero().flatten().tolist()
    # Held-out latents are tracked at every snapshot after they were chosen, with their densities.
    tracked = [s["holdout"] for s in snapshots if "holdout" in s]
    assert tracked and all(t["latents"] == held for t in tracked)
    assert all(len(t["density"]) == len(held) for t in tracked)
    # The resampled (non-held-out) candidates fire again: fewer dead latents than without resampling.
    final_dead = trainer.dead_mask() & ~trainer.holdout_mask
    assert final_dead.float().mean() < without.dead_mask().float().mean()


def test_density_snapshots_are_written_per_checkpoint(tiny_loaded, tiny_model_dir, tmp_path):
    config = _config(tiny_model_dir, tmp_path, resample_every=3, resample_holdout_fraction=0.5,
                     dead_window_tokens=256, architecture="relu", l1_coefficient=3.0)
    run_dir = train_run(config, tmp_path / "runs", loaded=tiny_loaded, progress=False)
    snapshots = [json.loads(line) for line in (run_dir / DENSITY_FILE).read_text().splitlines()]
    assert [s["step"] for s in snapshots] == [4, 8]
    assert sum(snapshots[-1]["log10_density_histogram"]["counts"]) == 128


def test_resampling_resets_architecture_parameters_and_their_adam_moments():
    torch.manual_seed(0)
    data = _dead_prone_data()
    dictionary = build_dictionary(DictionaryConfig("jumprelu", 16, 128))
    trainer = DictionaryTrainer(dictionary, OptimConfig(lr=3e-3, warmup_steps=1), total_steps=20)
    for step in range(5):
        trainer.train_step(data[step * 256:(step + 1) * 256])
    moments = trainer.optimizer.state[dictionary.log_threshold]
    assert moments["exp_avg"].abs().sum() > 0  # the thresholds have been learning
    chosen = torch.zeros(128, dtype=torch.bool)
    chosen[:10] = True
    dictionary.log_threshold.data[:10] = 5.0  # far off: a reset must bring them back among the others
    with torch.no_grad():
        trainer._reinitialise(chosen, data[:10], data[10:20])
    others = dictionary.log_threshold[10:].detach()
    assert torch.allclose(dictionary.log_threshold[:10].detach(), others.median().expand(10))
    for moment in ("exp_avg", "exp_avg_sq"):
        assert moments[moment][:10].abs().sum() == 0 and moments[moment][10:].abs().sum() > 0


def test_cli_sites_wildcard_expands_over_the_model_layers(tiny_model_dir, tmp_path, capsys):
    from saekit.cli import expand_sites, main

    assert expand_sites("blocks.*.resid_post,blocks.0.mlp_out", str(tiny_model_dir)) == [
        "blocks.0.resid_post", "blocks.1.resid_post", "blocks.0.mlp_out"]
    # The handler expands against the configured model, then checks each site before any training.
    code = main(["train", "--model", str(tiny_model_dir), "--sites", "blocks.*.bogus", "--runs-dir", str(tmp_path)])
    assert code == 1 and "site must be blocks.<layer>.<kind>" in capsys.readouterr().err


def test_cli_sites_name_a_transcoder_per_layer(tiny_model_dir):
    from saekit.cli import expand_sites, site_configs

    base = TrainConfig.from_flat({"model": str(tiny_model_dir), "name": "tc"})
    pairs = expand_sites("blocks.*.mlp_in->blocks.*.mlp_out", str(tiny_model_dir))
    assert pairs == ["blocks.0.mlp_in->blocks.0.mlp_out", "blocks.1.mlp_in->blocks.1.mlp_out"]
    explicit = site_configs(base, pairs)
    # With --target-site, a plain entry keeps the target's kind at its own layer.
    implied = site_configs(base.updated(target_site="blocks.0.mlp_out"),
                           expand_sites("blocks.*.mlp_in", str(tiny_model_dir)))
    for configs in (explicit, implied):
        assert [(c.name, c.site, c.target_site) for c in configs] == [
            ("tc/blocks.0.mlp_in", "blocks.0.mlp_in", "blocks.0.mlp_out"),
            ("tc/blocks.1.mlp_in", "blocks.1.mlp_in", "blocks.1.mlp_out")]
    assert site_configs(base, ["blocks.1.resid_post"])[0].target_site is None
