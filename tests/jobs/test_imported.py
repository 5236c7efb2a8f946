"""Imported dictionaries as runs: a saekit run exported to SAELens and sparsify, imported back by name, evaluates
and analyses like the run itself; the same import is found again; ``hf:`` names resolve from the cache; every
bad name is one line with nothing written."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from saekit.cli import main
from saekit.dictionaries.registry import load_dictionary
from saekit.errors import SaekitError
from saekit.evaluation.evaluate import evaluate_run
from saekit.io import load_tensors
from saekit.jobs.imported import IMPORT_RECORD, ImportSettings, import_dictionary, resolve_runs
from saekit.training.config import TrainConfig
from saekit.training.run import train_run

DATA = dict(context_length=16, contexts_per_chunk=16, eval_tokens=280, eval_batch_contexts=4)


@pytest.fixture(scope="module")
def native_run(tiny_loaded, tiny_model_dir, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("import-runs")
    config = TrainConfig.from_flat(dict(DATA, name="native", model=str(tiny_model_dir), site="blocks.1.resid_post",
                                        expansion_factor=4, k=4, train_tokens=4096, batch_size=256,
                                        shuffle_buffer_tokens=512, cache_dir=str(root / "cache")))
    return train_run(config, root / "runs", loaded=tiny_loaded, progress=False)


@pytest.fixture(scope="module")
def exported(native_run, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("exports")
    for fmt in ("saelens", "sparsify"):
        assert main(["convert", str(native_run), "--to", fmt, str(root / fmt)]) == 0
    return {"saelens": root / "saelens", "sparsify": root / "sparsify" / "layers.1"}


def _base(native_run: Path) -> TrainConfig:
    """The native run's data and run settings, which an import takes from flags."""
    native = TrainConfig.from_file(native_run / "config.json")
    return TrainConfig().updated(**DATA, cache_dir=native.run.cache_dir)


@pytest.mark.parametrize("fmt", ["saelens", "sparsify"])
def test_an_export_imported_back_evaluates_as_the_run(fmt, native_run, exported, tiny_loaded, tiny_model_dir,
                                                      tmp_path):
    # sparsify's folders name no model (its run's config.json does): the flag gives it.
    model = str(tiny_model_dir) if fmt == "sparsify" else None
    settings = ImportSettings(imports_dir=tmp_path / "imports", model=model)
    [run] = import_dictionary(f"{fmt}:{exported[fmt]}", settings, _base(native_run))
    record = json.loads((run / IMPORT_RECORD).read_text())
    assert record["format"] == fmt and record["config"]["data"]["model"] == str(tiny_model_dir)  # from the file
    native_dictionary, _ = load_dictionary(native_run / "dictionary")
    imported_dictionary, source = load_dictionary(run / "dictionary")
    assert source["site"] == "blocks.1.resid_post" and source["imported"]["format"] == fmt
    x = torch.randn(64, native_dictionary.config.d_in)
    with torch.no_grad():
        torch.testing.assert_close(imported_dictionary(x).reconstruction, native_dictionary(x).reconstruction,
                                   rtol=1e-5, atol=1e-5)
    native, imported = evaluate_run(native_run, loaded=tiny_loaded), evaluate_run(run, loaded=tiny_loaded)
    for name in ("ce_clean", "ce_spliced", "ce_zero", "kl_spliced", "delta_ce_spliced"):
        assert getattr(imported.losses, name).mean == pytest.approx(getattr(native.losses, name).mean, rel=1e-4), name
    ours, theirs = imported.reconstruction["blocks.1.resid_post"], native.reconstruction["blocks.1.resid_post"]
    assert (ours.fvu, ours.l0_mean) == pytest.approx((theirs.fvu, theirs.l0_mean), rel=1e-4)
    # The mean-ablation baseline uses the import's own means (its files carry none): the mean of the first
    # training-split chunks (those the native run's cache holds), whole chunks until stats_tokens are covered.
    means = load_tensors(run / "activation_stats.safetensors")["mean.blocks.1.resid_post"]
    config = TrainConfig.from_file(run / "config.json")
    rows, total = 0, 0
    for chunk in sorted((Path(config.run.cache_dir) / config.activation_spec().key()).glob("chunk_*.safetensors")):
        values = load_tensors(chunk)["blocks.1.resid_post"].double()
        rows, total = rows + values.shape[0], total + values.sum(dim=0)
        if rows >= settings.stats_tokens:
            break
    assert rows >= settings.stats_tokens
    torch.testing.assert_close(means, (total / rows).float(), rtol=1e-5, atol=1e-6)
    assert (run / "report.md").is_file() and (run / "metrics.json").is_file()


def test_the_same_import_is_found_again_and_another_is_refused(native_run, exported, tmp_path):
    settings = ImportSettings(imports_dir=tmp_path / "imports")
    name = f"saelens:{exported['saelens']}"
    [first] = import_dictionary(name, settings, _base(native_run))
    written = (first / "config.json").stat().st_mtime_ns
    assert resolve_runs([name], settings) != [first]  # other data settings (the defaults): another import
    assert import_dictionary(name, settings, _base(native_run)) == [first]
    assert (first / "config.json").stat().st_mtime_ns == written  # found, not rewritten
    named = ImportSettings(imports_dir=tmp_path / "imports", name=first.name)
    with pytest.raises(SaekitError, match="holds something else than this import"):
        import_dictionary(name, named)  # same directory name, other settings


def _refused(tmp_path: Path, *args: str, env: dict | None = None) -> str:
    result = subprocess.run([sys.executable, "-m", "saekit", *args, "--imports-dir", str(tmp_path / "imports")],
                            capture_output=True, text=True, env=env)
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("saekit: error: "), lines
    assert not (tmp_path / "imports").exists() or not [p for p in (tmp_path / "imports").iterdir()
                                                          if p.name != ".locks"]
    return lines[0]


def test_bad_names_are_one_line_and_write_nothing(exported, tiny_model_dir, tmp_path):
    saelens = str(exported["saelens"])
    assert "width 32" in _refused(tmp_path, "evaluate", saelens, "--import-model", "default") \
        and "576 wide" in _refused(tmp_path, "evaluate", saelens, "--import-model", "default")
    assert "has 2 layers" in _refused(tmp_path, "analyze", saelens, "--import-site", "blocks.7.resid_post")
    assert "not in the local Hugging Face cache" in _refused(
        tmp_path, "dashboard", "hf:nobody/nothing:layer_1",
        env={**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "hub")})
    assert "holds no dictionary saekit knows" in _refused(tmp_path, "evaluate", str(tmp_path))
    assert "unknown format 'saelen'" in _refused(tmp_path, "evaluate", f"saelen:{saelens}")  # a misspelt prefix
    cfg = json.loads((exported["saelens"] / "cfg.json").read_text())
    (tmp_path / "nosite").mkdir()
    for name in ("sae_weights.safetensors",):
        (tmp_path / "nosite" / name).write_bytes((exported["saelens"] / name).read_bytes())
    (tmp_path / "nosite" / "cfg.json").write_text(json.dumps({**cfg, "model_name": None}))
    assert "names no model; pass --import-model" in _refused(tmp_path, "evaluate", str(tmp_path / "nosite"))


def test_hub_names_resolve_from_the_cache_offline(exported, native_run, tmp_path):
    """``hf:OWNER/REPO:PATH`` through huggingface_hub's own cache layout, with the network off."""
    cache = tmp_path / "hub"
    revision = "0123456789abcdef0123456789abcdef01234567"
    repo = cache / "models--someone--tiny-saes"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(revision)
    target = repo / "snapshots" / revision / "layer_1" / "topk"
    target.mkdir(parents=True)
    for item in exported["saelens"].iterdir():
        (target / item.name).write_bytes(item.read_bytes())
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache)}
    result = subprocess.run([sys.executable, "-m", "saekit", "import", "hf:someone/tiny-saes:layer_1/topk",
                             "--runs-dir", str(tmp_path / "imports"), "--context-length", "16",
                             "--contexts-per-chunk", "16", "--stats-tokens", "512"],
                            capture_output=True, text=True, env=env, check=True)
    run = Path(result.stdout.strip().removeprefix("imported: "))
    record = json.loads((run / IMPORT_RECORD).read_text())
    assert record["source"] == "hf:someone/tiny-saes:layer_1/topk" and record["format"] == "saelens"
    assert Path(record["path"]) == target.resolve()
    assert run.name.startswith("tiny-saes-layer_1-topk-")


def test_widths_are_checked_against_a_gpt2_config(tmp_path):
    """GPT-2's config has no intermediate_size (its MLP is n_inner or 4 x d_model): an mlp_act dictionary of
    the right width fits, one of another width is refused in one line, from the config file alone."""
    from transformers import GPT2Config

    from saekit.dictionaries.base import DictionaryConfig
    from saekit.dictionaries.registry import build_dictionary
    from saekit.jobs.imported import check_fits

    GPT2Config(n_layer=2, n_embd=32, n_head=4, n_positions=64, vocab_size=100).save_pretrained(tmp_path / "gpt2")
    config = TrainConfig().updated(model=str(tmp_path / "gpt2"), site="blocks.1.mlp_act")
    check_fits(build_dictionary(DictionaryConfig("topk", 128, 256, k=4)), config, "fits")
    with pytest.raises(SaekitError, match=r"has input width 64, but blocks.1.mlp_act of .* is 128 wide"):
        check_fits(build_dictionary(DictionaryConfig("topk", 64, 256, k=4)), config, "too narrow")
