"""Analysing cross-layer runs on the tiny model: latents from every layer's clean activations, decoder
norms and logit weights per output layer, and the dashboard page that shows them."""

from __future__ import annotations

import pytest
import torch
from run_helpers import crosslayer_configs

from saekit.analysis.analyze import AnalysisConfig, analyze_run
from saekit.analysis.examples import ExampleConfig
from saekit.analysis.logits import norm_linear_part
from saekit.analysis.store import open_run_store
from saekit.dictionaries.registry import load_dictionary
from saekit.jobs.dashboard import build_run_dashboard
from saekit.models.hooks import capture
from saekit.training.run import train_run

CONFIG = AnalysisConfig(tokens=600, batch_contexts=4, progress=False, examples=ExampleConfig(top=4))


@pytest.fixture(scope="module")
def analysed(tiny_loaded, tiny_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("crosslayer-analysis")
    runs = {name: train_run(config, root / "runs", loaded=tiny_loaded, progress=False)
            for name, config in crosslayer_configs(tiny_model_dir, root / "cache").items()}
    for run in runs.values():
        analyze_run(run, tiny_loaded, CONFIG)
    return runs


def _logits(loaded, direction):
    """Independently: the direction through the final RMSNorm's weight, then the unembedding."""
    _, scale = norm_linear_part(loaded.adapter.final_norm())
    return loaded.adapter.unembedding().weight.detach().float() @ (direction * scale)


def test_clt_latents_are_encoded_from_every_layer_of_the_clean_model(analysed, tiny_loaded):
    run = analysed["clt"]
    store = open_run_store(run)
    dictionary, _ = load_dictionary(run / "dictionary")
    assert store.manifest["sites"] == ["blocks.0.mlp_in", "blocks.1.mlp_in"]
    assert store.written_sites == ["blocks.0.mlp_out", "blocks.1.mlp_out"]
    # The strongest example of a layer-1 latent: recompute its activation from the clean model.
    latent = next(i for i in range(dictionary.latents_per_layer, dictionary.config.width)
                  if store.stat("fire_counts", i) > 0)
    example = store.latent_examples(latent)[0]
    tokens = torch.tensor([example.token_ids])
    adapter = tiny_loaded.adapter
    sites = [adapter.site(name) for name in store.manifest["sites"]]
    captured = capture(adapter, tokens, sites)
    with torch.no_grad():
        latents = dictionary.encode(torch.cat([captured[site] for site in sites], -1))
    assert example.max_value == pytest.approx(float(latents[0, example.max_index, latent]), rel=1e-4)
    assert store.stat("max_activation", latent) == pytest.approx(example.max_value, rel=1e-6)


def test_clt_decoder_norms_and_logit_weights_per_output_layer(analysed, tiny_loaded):
    run = analysed["clt"]
    store = open_run_store(run)
    dictionary, _ = load_dictionary(run / "dictionary")
    m = dictionary.latents_per_layer
    for latent in (0, m + 3):  # a layer-0 latent writes both MLP outputs, a layer-1 latent only its own
        row = store.layer_row(latent)
        decoders = dictionary.output_decoders(torch.tensor([latent]))[0].detach()
        assert row["output_norms"] == pytest.approx(decoders.norm(dim=-1).tolist(), rel=1e-5)
        expected_layers = decoders.norm(dim=-1).argsort(descending=True).tolist()
        if latent >= m:
            assert row["output_norms"][0] == 0 and row["layers"] == [1, -1]
        else:
            assert row["layers"] == expected_layers
        position = row["layers"][0]
        top = _logits(tiny_loaded, decoders[position]).topk(5).indices.tolist()
        assert row["positive_ids"][0][:5] == top
        # The headline logit weights read the total write: the decoders into every layer added up.
        total = _logits(tiny_loaded, decoders.sum(0)).topk(5).indices.tolist()
        assert store.logit_row(latent)["positive_ids"][:5] == total
    note = store.manifest["logits"]["output_layers"]
    assert note["sites"] == store.written_sites and "total direct write" in note["total"]


def test_crosscoder_geometry_reads_the_concatenated_decoders(analysed):
    run = analysed["cc"]
    store = open_run_store(run)
    dictionary, _ = load_dictionary(run / "dictionary")
    decoder = torch.nn.functional.normalize(dictionary.W_dec.detach(), dim=1)  # [width, 2 d]
    cosines = decoder @ decoder.T
    cosines.fill_diagonal_(-2)
    ids, values = store.geometry_row(0)
    assert ids[0] == int(cosines[0].argmax()) and values[0] == pytest.approx(float(cosines[0].max()), abs=1e-5)
    assert store.manifest["decoder_direction_dim"] == dictionary.config.d_in
    assert store.layer_row(0)["output_norms"] == pytest.approx(
        dictionary.W_dec.detach().view(dictionary.config.width, 2, -1)[0].norm(dim=-1).tolist(), rel=1e-5)


def test_clt_dashboard_page_shows_each_output_layer(analysed):
    run = analysed["clt"]
    site = build_run_dashboard(run, max_latents=8)
    page = (site / "features" / "0.html").read_text()
    assert "Output layers" in page and "blocks.1.mlp_out" in page and "total direct write" in page
    assert page.count("<rect") > 2  # the per-layer bars beside the histograms
