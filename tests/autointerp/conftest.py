"""Fixtures for the autointerp tests: synthetic latents, a tiny real model that answers Yes/No, a tiny run."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from saekit.autointerp.examples import ExampleSet
from saekit.models.loading import LoadedModel, load_model

sys.path.insert(0, str(Path(__file__).parent))  # the shared test helpers (also used by a subprocess)

from autointerp_fakes import synthetic_latent  # noqa: E402

WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho sigma tau".split()


@pytest.fixture
def example_set() -> ExampleSet:
    return ExampleSet([synthetic_latent(i) for i in range(4)], skipped={9: "dead (never fired)"}, examined=5)


@pytest.fixture(scope="session")
def yes_no_loaded(tiny_model_dir) -> LoadedModel:
    """The tiny random Llama, rewired so its next token is always 'Yes' or 'No' (which one depends on the input).

    Residual dimension 0 is held at a large constant (embedding column 0 set, no layer writes to it);
    only the Yes/No rows of the unembedding read that dimension, so they top every distribution, and
    their other (random, unit-scale) weights make the choice between them depend on the context.
    """
    loaded = load_model(str(tiny_model_dir))
    model = loaded.model
    assert not model.config.tie_word_embeddings
    tokenizer = loaded.tokenizer
    answer_ids = [tokenizer.convert_tokens_to_ids(t) for t in ("Yes", "No")]
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        model.model.embed_tokens.weight[:, 0] = 50.0
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight[0, :] = 0.0
            layer.mlp.down_proj.weight[0, :] = 0.0
        head = model.lm_head.weight
        head[:, 0] = 0.0
        for token_id in answer_ids:
            head[token_id] = torch.randn(head.shape[1], generator=generator)
            head[token_id, 0] = 4.0
    return loaded


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, tiny_model_dir, tiny_loaded) -> Path:
    """A run directory (config + random TopK dictionary) on the tiny model with its analysis store."""
    from saekit.analysis.analyze import AnalysisConfig, analyze_run
    from saekit.analysis.examples import ExampleConfig
    from saekit.dictionaries.base import DictionaryConfig
    from saekit.dictionaries.registry import build_dictionary, save_dictionary
    from saekit.io import write_json
    from saekit.training.config import TrainConfig

    root = tmp_path_factory.mktemp("autointerp-run")
    corpus = root / "corpus"
    corpus.mkdir()
    for i in range(12):
        (corpus / f"doc{i:02d}.txt").write_text(" ".join(WORDS[(i * 7 + j * j) % len(WORDS)] for j in range(150)))
    config = TrainConfig.from_flat(dict(
        name="tiny", model=str(tiny_model_dir), site="blocks.1.resid_post", corpus=str(corpus),
                         eval_fraction=0.3, context_length=24, width=48, k=6, cache_dir=None))
    run = root / "runs" / "tiny"
    write_json(run / "config.json", config.to_dict())
    torch.manual_seed(4)
    dictionary = build_dictionary(DictionaryConfig("topk", 32, 48, k=6))
    save_dictionary(run / "dictionary", dictionary,
                    {"model": config.data.model, "site": config.site, "target_site": None})
    examples = ExampleConfig(top=6, sample_reservoir=12, quantile_groups=2, per_quantile=3, negatives=4, seed=0)
    analyze_run(run, tiny_loaded, AnalysisConfig(tokens=600, latents=16, progress=False, examples=examples))
    return run
