"""The analyze/dashboard subcommands and the quickstart hook on a run directory of the tiny model."""

from __future__ import annotations

import argparse
import json

import pytest
import torch

from saekit.analysis.analyze import AnalysisConfig, analyze_run
from saekit.analysis.store import AnalysisStore
from saekit.cli.analysis import add_analysis_parsers
from saekit.dictionaries.base import DictionaryConfig
from saekit.dictionaries.registry import build_dictionary, save_dictionary
from saekit.io import write_json
from saekit.jobs.dashboard import build_quick_dashboard
from saekit.training.config import TrainConfig

WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho sigma tau".split()


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tiny_model_dir):
    root = tmp_path_factory.mktemp("runs")
    corpus = root / "corpus"
    corpus.mkdir()
    for i in range(12):
        (corpus / f"doc{i:02d}.txt").write_text(" ".join(WORDS[(i + j) % len(WORDS)] for j in range(120)))
    config = TrainConfig.from_flat(dict(
        name="tiny", model=str(tiny_model_dir), site="blocks.1.resid_post", corpus=str(corpus),
                         eval_fraction=0.3, context_length=16, width=64, k=4, cache_dir=None))
    run = root / "tiny"
    write_json(run / "config.json", config.to_dict())
    torch.manual_seed(2)
    dictionary = build_dictionary(DictionaryConfig("topk", 32, 64, k=4))
    save_dictionary(run / "dictionary", dictionary,
                    {"model": config.data.model, "site": config.site, "target_site": None})
    return run


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="saekit")
    add_analysis_parsers(parser.add_subparsers(dest="command", required=True))
    return parser


def test_parsers():
    from saekit.cli.analysis import analysis_config
    from saekit.jobs.dashboard import DashboardSettings
    from saekit.settings import from_args

    args = _parser().parse_args(["analyze", "runs/x", "--tokens", "100", "--latents", "all"])
    config = analysis_config(args)
    assert config.tokens == 100 and config.latents is None and callable(args.handler)
    args = _parser().parse_args(["dashboard", "runs/x", "--out", "site", "--max-latents", "5"])
    settings = from_args(DashboardSettings, args)
    assert str(args.out) == "site" and settings.max_latents == 5 and settings.neuronpedia
    assert not from_args(DashboardSettings, _parser().parse_args(["dashboard", "r", "--no-neuronpedia"])).neuronpedia
    assert analysis_config(_parser().parse_args(["analyze", "r", "--latents", "7"])).latents == 7
    with pytest.raises(SystemExit):
        _parser().parse_args(["analyze", "r", "--latents", "some"])


def test_analyze_run_uses_held_out_contexts(run_dir, tiny_loaded):
    out = analyze_run(run_dir, tiny_loaded, AnalysisConfig(tokens=200, latents=20, progress=False))
    store = AnalysisStore(out)
    assert store.manifest["latents_analysed"] == 20 and len(store.latent_ids) == 20
    assert store.manifest["context_source"]["contexts_per_split"]["eval"] > 0
    assert store.token_ids.shape == (14, 16)  # ceil(200 / 15) contexts of 16 tokens
    assert store.stats_summary["tokens"] <= 14 * 15


def test_cli_handlers_write_analysis_and_dashboard(run_dir, tmp_path):
    args = _parser().parse_args(["analyze", str(run_dir), "--tokens", "60", "--latents", "8"])
    assert args.handler(args) == 0
    args = _parser().parse_args(["dashboard", str(run_dir), "--out", str(tmp_path / "site"), "--max-latents", "3"])
    assert args.handler(args) == 0
    assert (tmp_path / "site" / "index.html").is_file()
    assert sorted(p.name for p in (tmp_path / "site" / "features").iterdir()) == ["0.html", "1.html", "2.html"]
    args = _parser().parse_args(["dashboard", str(run_dir), "--out", str(tmp_path / "site"), "--max-latents", "2",
                                 "--no-neuronpedia"])
    assert args.handler(args) == 0  # a smaller rebuild leaves no stale pages behind
    assert sorted(p.name for p in (tmp_path / "site" / "features").iterdir()) == ["0.html", "1.html"]
    assert [p.name for p in (tmp_path / "site" / "neuronpedia").glob("*.json")] == []


def test_quick_dashboard(run_dir, tiny_loaded):
    site = build_quick_dashboard(run_dir, tiny_loaded, tokens=120, max_latents=4)
    assert site == run_dir / "dashboard"
    assert (site / "overview.html").is_file() and (site / "figures" / "geometry.png").is_file()
    feature = json.loads((site / "neuronpedia" / "0.json").read_text())
    assert feature["index"] == "0" and len(feature["neuron_alignment_indices"]) == 3
