"""Logit weights: decoder directions through the final norm's linear part and the unembedding."""

from __future__ import annotations

import torch
from torch import nn

from saekit.analysis.logits import LogitConfig, logit_skip_reason, logit_weights, norm_linear_part
from saekit.analysis.store import AnalysisStore


def test_logit_weights_match_brute_force(tiny_loaded, tiny_dictionary):
    decoder = tiny_dictionary.W_dec.detach()
    weights = logit_weights(tiny_loaded, decoder, LogitConfig(top=7, latent_block=50))
    gamma = tiny_loaded.adapter.final_norm().weight.detach()
    unembedding = tiny_loaded.adapter.unembedding().weight.detach()
    logits = (decoder * gamma) @ unembedding.T
    expected_pos, expected_neg = logits.topk(7, dim=1), logits.topk(7, dim=1, largest=False)
    torch.testing.assert_close(weights.positive_values, expected_pos.values)
    torch.testing.assert_close(weights.negative_values, expected_neg.values)
    assert torch.equal(weights.positive_ids[:, 0], expected_pos.indices[:, 0])
    assert torch.equal(weights.histogram.sum(1), torch.full((128,), logits.shape[1]))
    torch.testing.assert_close(weights.histogram_edges[:, 0], logits.amin(1))


def test_without_final_norm(tiny_loaded, tiny_dictionary):
    decoder = tiny_dictionary.W_dec.detach()[:5]
    weights = logit_weights(tiny_loaded, decoder, LogitConfig(top=3, through_final_norm=False))
    logits = decoder @ tiny_loaded.adapter.unembedding().weight.detach().T
    torch.testing.assert_close(weights.positive_values, logits.topk(3, dim=1).values)


def test_norm_linear_parts():
    layer_norm = nn.LayerNorm(4)
    centres, scale = norm_linear_part(layer_norm)
    assert centres and torch.equal(scale, layer_norm.weight.detach())

    class GemmaRMSNorm(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.weight = nn.Parameter(torch.full((4,), 0.5))

    centres, scale = norm_linear_part(GemmaRMSNorm())
    assert not centres and torch.allclose(scale, torch.full((4,), 1.5))


def test_skipped_for_mlp_hidden_sites(tiny_loaded):
    assert logit_skip_reason(tiny_loaded, "blocks.0.mlp_act", 64) is not None
    assert logit_skip_reason(tiny_loaded, "blocks.0.mlp_out", 32) is None


def test_store_holds_logits_and_their_token_strings(analysis_store_dir):
    store = AnalysisStore(analysis_store_dir)
    row = store.logit_row(0)
    assert len(row["positive_ids"]) == 10
    assert all(t in store.strings for t in row["positive_ids"] + row["negative_ids"])
