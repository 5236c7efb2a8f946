"""A dictionary trained for the default model, written in SAELens's format, named on the command line like a run:
``saekit evaluate``, ``analyze``, ``dashboard`` and ``explain`` take ``saelens:DIR`` and give what the native run
gives; ``convert --to neuronpedia`` then makes an upload set of it."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
import torch

import saekit.activations.spec as activation_spec
import saekit.models.loading as model_loading
from saekit.analysis.analyze import AnalysisConfig, analyze_run
from saekit.analysis.store import AnalysisStore
from saekit.cli import main
from saekit.evaluation.evaluate import evaluate_run
from saekit.jobs.imported import IMPORT_RECORD
from saekit.training.config import TrainConfig
from saekit.training.run import train_run

pytestmark = pytest.mark.integration

SITE = "blocks.3.resid_post"  # an early layer: the forward stops there for training and analysis
EVAL_TOKENS, ANALYSIS_TOKENS, ANALYSED_LATENTS = 2000, 2048, 64
# Every command names the dictionary with the same import settings, so all of them find one import.
IMPORT_FLAGS = ["--import-stats-tokens", "4096"]


@pytest.fixture(scope="module")
def workspace(default_loaded, tmp_path_factory):
    """A native run, its SAELens export, and a working directory where every command runs.

    Each command would load the default model again (~30 s each); a memo of the real loader hands the
    commands the model this session loaded, and loads anything else (another dtype or model) for real."""
    root = tmp_path_factory.mktemp("imported-default")
    real_load = model_loading.load_model

    def load_once(spec, device="cpu", dtype=torch.float32, **kwargs):
        if spec == "default" and device == "cpu" and dtype == torch.float32 and not kwargs.get("randomize_weights"):
            return default_loaded
        return real_load(spec, device=device, dtype=dtype, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)  # the imports' activation cache and runs go to their default places, under root
        patch.setattr(activation_spec, "load_model", load_once)
        patch.setattr(model_loading, "load_model", load_once)  # the local explainer's loader
        config = TrainConfig.from_flat(dict(name="native", site=SITE, train_tokens=8192, batch_size=1024,
                                            contexts_per_chunk=64, shuffle_buffer_tokens=8192,
                                            eval_tokens=EVAL_TOKENS, eval_batch_contexts=8))
        native = train_run(config, root / "runs", loaded=default_loaded, progress=False)
        assert main(["convert", str(native), "--to", "saelens", str(root / "saelens")]) == 0
        yield root, native, f"saelens:{root / 'saelens'}"


def _imported_run(root: Path) -> Path:
    [run] = [path.parent for path in (root / "runs" / "imported").glob(f"*/{IMPORT_RECORD}")]
    return run


def test_evaluate_by_name_gives_the_native_numbers(workspace, default_loaded):
    root, native, name = workspace
    # No sample generations anywhere here (--generations 0): only the losses and reconstruction are compared.
    assert main(["evaluate", name, "--eval-tokens", str(EVAL_TOKENS), "--generations", "0", *IMPORT_FLAGS]) == 0
    imported = _imported_run(root)
    record = json.loads((imported / IMPORT_RECORD).read_text())
    assert record["format"] == "saelens" and record["config"]["data"]["model"] == "default"
    ours = evaluate_run(imported, loaded=default_loaded, eval_tokens=EVAL_TOKENS, generations=0)
    theirs = evaluate_run(native, loaded=default_loaded, eval_tokens=EVAL_TOKENS, generations=0)
    for metric in ("ce_clean", "ce_spliced", "ce_zero", "kl_spliced", "delta_ce_spliced"):
        assert getattr(ours.losses, metric).mean == pytest.approx(getattr(theirs.losses, metric).mean, rel=1e-4), metric
    assert ours.losses.loss_recovered_vs_zero_ablation == pytest.approx(
        theirs.losses.loss_recovered_vs_zero_ablation, rel=1e-4)
    assert 0 < ours.losses.loss_recovered_vs_zero_ablation < 1
    mine, native_reconstruction = ours.reconstruction[SITE], theirs.reconstruction[SITE]
    assert mine.fvu == pytest.approx(native_reconstruction.fvu, rel=1e-4) and 0 < mine.fvu < 1
    assert mine.l0_mean == pytest.approx(32)
    # The means come from the import's own 4096 training-split tokens, not the run's: a mean-ablation
    # baseline between clean and zero-ablated either way.
    assert ours.losses.ce_clean.mean < ours.losses.ce_mean.mean < ours.losses.ce_zero.mean


def test_analyze_dashboard_explain_and_upload_by_name(workspace, default_loaded):
    root, native, name = workspace
    flags = ["--tokens", str(ANALYSIS_TOKENS), "--latents", str(ANALYSED_LATENTS), *IMPORT_FLAGS]
    assert main(["analyze", name, *flags]) == 0
    imported = _imported_run(root)  # the same import as evaluate's: found again by its fingerprint
    analyze_run(native, default_loaded, AnalysisConfig(tokens=ANALYSIS_TOKENS, latents=ANALYSED_LATENTS,
                                                       progress=False))
    ours, theirs = AnalysisStore(imported / "analysis"), AnalysisStore(native / "analysis")
    assert torch.equal(ours.token_ids, theirs.token_ids)  # the same held-out contexts
    assert ours.latent_ids == theirs.latent_ids == list(range(ANALYSED_LATENTS))
    for stat, values in theirs.stats.items():
        torch.testing.assert_close(ours.stats[stat], values, rtol=1e-4, atol=1e-5, equal_nan=True, msg=stat)
    firing = [latent for latent in ours.latent_ids if ours.stat("fire_counts", latent) > 0]
    assert firing, "no analysed latent fired on the held-out tokens"
    top = firing[0]
    assert [(e.context, e.max_index) for e in ours.latent_examples(top)] == \
           [(e.context, e.max_index) for e in theirs.latent_examples(top)]

    assert main(["dashboard", name, "--max-latents", "8", *IMPORT_FLAGS]) == 0
    pages = sorted(p.name for p in (imported / "dashboard" / "features").glob("*.html"))
    assert len(pages) == 8 and (imported / "dashboard" / "index.html").is_file()

    assert main(["explain", name, "--latents", "2", *IMPORT_FLAGS]) == 0
    scores = json.loads((imported / "autointerp" / "scores.json").read_text())
    assert len(scores["latents"]) == 2
    for record in scores["latents"]:
        assert record["explanations"]["llm"]["text"]
        for explainer in ("llm", "baseline"):
            for scorer in ("detection", "fuzzing"):
                assert 0.0 <= record["scores"][explainer][scorer]["balanced_accuracy"] <= 1.0
    # explain refreshed the dashboard: its index now carries the explanations.
    assert record["explanations"]["llm"]["text"][:20] in (imported / "dashboard" / "index.html").read_text()

    # convert reads files, so the upload set is made from the imported run's directory, where the analysis is.
    out = root / "upload"
    assert main(["convert", str(imported), "--to", "neuronpedia", str(out)]) == 0
    assert list(out.rglob("activations/*.jsonl.gz")) and list(out.rglob("explanations/*.jsonl.gz"))
    [features] = list(out.rglob("features/*.jsonl.gz"))
    rows = [json.loads(line) for line in gzip.open(features, "rt")]
    assert sorted(int(row["index"]) for row in rows) == list(range(ANALYSED_LATENTS))
