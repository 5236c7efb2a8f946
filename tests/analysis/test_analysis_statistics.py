"""Per-latent statistics and examples of the analysis pass, checked against brute force on the same tokens."""

from __future__ import annotations

import math

import pytest
import torch

from saekit.activations.source import token_mask
from saekit.analysis.examples import KINDS, ExampleCollector, ExampleConfig, RunningSelection
from saekit.analysis.statistics import HistogramBins, StatisticsAccumulator
from saekit.analysis.store import AnalysisStore
from saekit.models.hooks import capture

SITE = "blocks.0.resid_post"


@pytest.fixture(scope="module")
def brute(tiny_loaded, tiny_dictionary, analysis_contexts):
    """All latent activations at once [contexts, seq, width], zero where not counted, and the mask."""
    site = tiny_loaded.adapter.site(SITE)
    x = capture(tiny_loaded.adapter, analysis_contexts, [site])[site].float()
    # the pass masks outliers per batch of 3 contexts, so the brute force does too
    masks = [token_mask({SITE: part}, True, 10.0) for part in x.split(3)]
    counted = torch.cat(masks)
    with torch.no_grad():
        latents = tiny_dictionary.encode(x) * counted[..., None]
    return latents, counted


@pytest.fixture(scope="module")
def store(analysis_store_dir) -> AnalysisStore:
    return AnalysisStore(analysis_store_dir)


def test_statistics_match_brute_force(store, brute, tiny_dictionary):
    latents, counted = brute
    flat = latents[counted]
    stats = store.stats
    assert store.stats_summary["tokens"] == flat.shape[0]
    assert torch.equal(stats["fire_counts"], (flat > 0).sum(0))
    torch.testing.assert_close(stats["density"], ((flat > 0).sum(0) / flat.shape[0]).double())
    torch.testing.assert_close(stats["mean_activation"], flat.double().mean(0), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(stats["max_activation"], flat.amax(0), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(stats["encoder_bias"], tiny_dictionary.b_enc.detach())
    de = torch.nn.functional.cosine_similarity(tiny_dictionary.W_enc.detach().T, tiny_dictionary.W_dec.detach(), dim=1)
    torch.testing.assert_close(stats["de_cosine"], de)
    dead = (flat > 0).sum(0) == 0
    assert torch.equal(stats["dead"], dead)
    assert torch.isneginf(stats["log10_density"][dead]).all()
    assert torch.isnan(stats["mean_when_active"][dead]).all()


def test_histogram_matches_brute_force(store, brute):
    latents, counted = brute
    flat = latents[counted].double()
    edges = store.stats["histogram_edges"]
    for latent in range(flat.shape[1]):
        values = flat[:, latent][flat[:, latent] > 0]
        expected = torch.histogram(values.clamp(edges[0], edges[-1] * 0.999), bins=edges).hist.long()
        assert torch.equal(store.stats["histogram"][latent], expected), latent


def test_histogram_bins_are_fixed_log_spaced():
    bins = HistogramBins(1e-2, 1e2, 4)
    assert bins.count == 16
    torch.testing.assert_close(bins.edges()[::4], torch.tensor([1e-2, 1e-1, 1.0, 1e1, 1e2], dtype=torch.float64))
    assert bins.index(torch.tensor([1e-9, 0.011, 1.5, 1e9])).tolist() == [0, 0, 8, 15]


def test_ultra_rare_rule():
    accumulator = StatisticsAccumulator(3)
    activations = torch.zeros(20_000, 3)
    activations[0, 0] = 1.0  # 1 in 20k: log10 density -4.3 -> ultra-rare
    activations[:100, 1] = 1.0  # 1 in 200 -> ordinary; latent 2 never fires -> dead, not ultra-rare
    accumulator.update(activations)
    from saekit.analysis.statistics import FlagRule, finish_statistics
    from saekit.dictionaries.base import DictionaryConfig
    from saekit.dictionaries.registry import build_dictionary

    dictionary = build_dictionary(DictionaryConfig("topk", 4, 3, k=1))
    stats = finish_statistics(accumulator, dictionary, torch.arange(3), True, FlagRule(-4.0))
    assert stats.ultra_rare.tolist() == [True, False, False]
    assert stats.dead.tolist() == [False, False, True]
    assert "log10(density) < -4.0" in stats.rule


def test_top_examples_are_the_top_activations(store, brute):
    latents, _ = brute
    per_context_max = latents.amax(1)  # [contexts, width]
    table = store.examples
    length = store.token_ids.shape[1]
    config = store.manifest["config"]["examples"]
    for latent in range(latents.shape[2]):
        rows = [r for r in table.rows(latent) if KINDS[int(table.kind[r])] == "top"]
        firing = per_context_max[:, latent] > 0
        expected = per_context_max[firing, latent].sort(descending=True).values[:config["top"]]
        got = torch.tensor([float(table.max_value[r]) for r in rows])
        torch.testing.assert_close(got, expected)
        for r in rows:
            context = int(table.context[r])
            torch.testing.assert_close(table.activations(r, length), latents[context, :, latent], atol=2e-3, rtol=2e-3)


def test_quantile_and_negative_examples(store, brute):
    latents, _ = brute
    per_context_max = latents.amax(1)
    table = store.examples
    config = store.manifest["config"]["examples"]
    for latent in range(latents.shape[2]):
        kinds = [KINDS[int(table.kind[r])] for r in table.rows(latent)]
        assert kinds == sorted(kinds, key=KINDS.index)
        for r in table.rows(latent):
            context, kind = int(table.context[r]), KINDS[int(table.kind[r])]
            if kind == "random-negative":
                assert per_context_max[context, latent] == 0
            else:
                assert per_context_max[context, latent] > 0
        quantile = [r for r in table.rows(latent) if KINDS[int(table.kind[r])] == "quantile"]
        firing = int((per_context_max[:, latent] > 0).sum())
        assert len(quantile) <= config["quantile_groups"] * config["per_quantile"]
        if firing >= config["sample_reservoir"]:
            assert len(quantile) == config["quantile_groups"] * config["per_quantile"]
        groups = [int(table.quantile[r]) for r in quantile]
        assert groups == sorted(groups)
        maxima = {g: [float(table.max_value[r]) for r in quantile if int(table.quantile[r]) == g] for g in set(groups)}
        for low, high in zip(sorted(maxima), sorted(maxima)[1:]):
            assert max(maxima[low]) <= min(maxima[high])


def test_ragged_layout_is_consistent(store):
    table = store.examples
    assert table.offsets[0] == 0 and table.offsets[-1] == len(table.values)
    assert table.values.dtype == torch.float16
    assert table.latent_offsets[-1] == len(table.latent)
    assert torch.all(table.offsets[1:] >= table.offsets[:-1])
    assert store.token_ids.dtype == torch.int32
    for position, latent in enumerate(store.latent_ids):
        assert all(int(table.latent[r]) == latent for r in table.rows(position))


def test_running_selection_merges_batches_like_a_global_topk():
    torch.manual_seed(0)
    scores = torch.rand(50, 7)
    scores[scores < 0.3] = float("-inf")
    selection = RunningSelection(4, 7, context_length=3, keep_tokens=True)
    activations = torch.rand(50, 3, 7)
    for start in range(0, 50, 6):
        batch = slice(start, start + 6)
        selection.update(scores[batch], torch.arange(50)[batch], scores[batch].clamp_min(0), activations[batch])
    expected = scores.topk(4, dim=0)
    torch.testing.assert_close(selection.scores, expected.values)
    assert torch.equal(selection.contexts, expected.indices)
    gathered = activations.permute(0, 2, 1).gather(0, expected.indices[:, :, None].expand(-1, -1, 3))
    torch.testing.assert_close(selection.tokens.float(), gathered, atol=1e-3, rtol=1e-3)


def test_examples_are_deterministic_for_a_seed():
    torch.manual_seed(0)
    activations = torch.rand(40, 5, 6).relu_() * (torch.rand(40, 1, 6) > 0.4)
    tables = []
    for _ in range(2):
        collector = ExampleCollector(6, 5, ExampleConfig(top=3, sample_reservoir=6, quantile_groups=3, per_quantile=1,
                                                         negatives=2, seed=7))
        for start in range(0, 40, 8):
            collector.update(activations[start:start + 8], torch.arange(start, start + 8))
        tables.append(collector.table(torch.arange(6)).tensors())
    for name in tables[0]:
        assert torch.equal(tables[0][name], tables[1][name]), name


def test_manifest_records_what_was_done(store):
    manifest = store.manifest
    assert manifest["site"] == SITE and manifest["latents_analysed"] == 128
    assert manifest["contexts"] == store.token_ids.shape[0]
    assert manifest["logits"]["computed"] is True
    assert not math.isnan(store.geometry_summary["decoder"]["rank_1"]["mean"])
