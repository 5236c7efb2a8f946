"""Examples from a real analysis store (tiny model): deterministic disjoint splits, windows, verified hard negatives."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from autointerp_fakes import FakeBackend

from saekit.analysis.store import AnalysisStore
from saekit.autointerp.examples import SplitConfig, StoreExamples, context_firing, window_example
from saekit.autointerp.pipeline import AutointerpConfig, run_autointerp, scores_for_dashboard
from saekit.autointerp.scorers import ScoringConfig
from saekit.errors import SaekitError

SPLIT = SplitConfig(train_top=4, train_per_quantile=1, window=12, min_train=2, min_test_activating=1,
                    min_test_nonactivating=1)


def test_store_examples_split_is_deterministic_disjoint_and_windowed(tiny_run):
    examples = StoreExamples(tiny_run / "analysis", SPLIT)
    chosen = examples.select(limit=None)
    assert chosen.examined == 16 and len(chosen.latents) + len(chosen.skipped) == 16
    assert chosen.latents, chosen.skipped
    store = AnalysisStore(tiny_run / "analysis")
    for latent in chosen.latents:
        train = {e.context for e in latent.train}
        held = [e.context for e in latent.test_activating + latent.test_nonactivating]
        assert not train & set(held) and len(held) == len(set(held))
        assert all(e.source == "quantile" for e in latent.test_activating)
        assert all(e.max_activation > 0 for e in latent.train + latent.test_activating)
        assert all(e.max_activation == 0 for e in latent.test_nonactivating)
        for example in latent.train + latent.test_activating + latent.test_nonactivating:
            assert len(example.tokens) == len(example.activations) <= 12
            # Tokens are the store's strings for that context (BOS dropped), activations the store's values.
            full = [store.token_string(i) for i in store.token_ids[example.context].tolist()]
            joined = "".join(full)
            assert example.text in joined and not example.tokens[0].startswith("<|")
        top = [e for e in store.latent_examples(latent.latent) if e.kind == "top"]
        assert max(e.max_activation for e in latent.train) == pytest.approx(top[0].max_value, rel=1e-3)
    again = StoreExamples(tiny_run / "analysis", SPLIT).select(limit=None)
    assert [(x.latent, x.train, x.test_activating, x.test_nonactivating) for x in again.latents] == \
        [(x.latent, x.train, x.test_activating, x.test_nonactivating) for x in chosen.latents]
    # Limits count explainable latents; impossible demands skip everything with the reason.
    assert len(examples.select(limit=2).latents) == 2
    strict = StoreExamples(tiny_run / "analysis", replace(SPLIT, min_test_activating=50)).select()
    assert not strict.latents and set(strict.skipped_counts()) <= {"too few examples", "dead"}


def test_window_keeps_the_peak_inside():
    import random

    tokens = [f" t{i}" for i in range(40)]
    values = [0.0] * 40
    values[37] = 2.0
    for seed in range(20):
        example = window_example(tokens, values, 10, random.Random(seed), 3, "top")
        assert len(example.tokens) == 10 and example.max_activation == 2.0
    quiet = window_example(tokens, [0.0] * 40, 10, random.Random(0), 3, "random-negative")
    assert len(quiet.tokens) == 10 and quiet.max_activation == 0


def test_context_firing_agrees_with_the_store_and_hard_negatives_are_silent(tiny_run, tiny_loaded):
    firing = context_firing(tiny_run, tiny_run / "analysis", tiny_loaded)
    store = AnalysisStore(tiny_run / "analysis")
    assert tuple(firing.shape) == (store.token_ids.shape[0], 16)
    for latent in store.latent_ids:
        for example in store.latent_examples(latent):
            assert bool(firing[example.context, latent]) == (example.kind != "random-negative")
    examples = StoreExamples(tiny_run / "analysis", replace(SPLIT, negatives="neighbours"))
    with pytest.raises(SaekitError, match="set_firing"):
        examples.select(limit=1)
    examples.set_firing(firing)
    chosen = examples.select()
    hard = [e for latent in chosen.latents for e in latent.test_nonactivating]
    assert hard and all(e.source.startswith("neighbour-") for e in hard)
    for latent in chosen.latents:
        for example in latent.test_nonactivating:
            assert not bool(firing[example.context, latent.latent])


def test_run_autointerp_on_a_run_directory(tiny_run):
    config = AutointerpConfig(latents=3, split=SPLIT, progress=False, scoring=ScoringConfig(embedding=False))
    out = run_autointerp(tiny_run, config, backend=FakeBackend())
    scores = json.loads((out / "scores.json").read_text())
    assert len(scores["latents"]) == 3
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["source"]["analysis"]["site"] == "blocks.1.resid_post"
    assert manifest["latents"]["scored"] == 3 and manifest["sampler"]["window"] == 12
    assert sorted(scores_for_dashboard(tiny_run)) == [r["latent"] for r in scores["latents"]]
    with pytest.raises(SaekitError, match="saekit analyze"):
        run_autointerp(tiny_run / "missing", config, backend=FakeBackend())
