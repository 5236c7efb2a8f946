"""The loss terms of the model-in-the-loop objectives: the next-token KL, the downstream error, their settings.

The KL is checked against the anchors' own code through tests/fixtures/kl_anchors/, which
scripts/interop/compare_kl.py wrote by running e2e_sae 2.1.1 and sparsify 1.3.3 in their venvs.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from saekit.errors import SaekitError
from saekit.evaluation.splice import kl_divergence
from saekit.settings import from_flat
from saekit.training.objectives import (
    ObjectiveConfig,
    ObjectiveWeights,
    downstream_mse,
    next_token_kl,
    token_kl,
)

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "kl_anchors"


def _logits(batch: int = 3, seq: int = 7, vocab: int = 11, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    clean = 2.0 * torch.randn(batch, seq, vocab, generator=generator)
    return clean, clean + torch.randn(batch, seq, vocab, generator=generator)


# ---- the anchors ---------------------------------------------------------------------------------
def test_the_kl_equals_e2e_sae_and_sparsify_on_the_logits_they_scored():
    record = json.loads((FIXTURE / "anchors.json").read_text())
    tensors = load_file(str(FIXTURE / "logits.safetensors"))
    clean, spliced, mask = tensors["clean"], tensors["spliced"], tensors["mask"].bool()
    assert clean.dtype == torch.float32 and clean.shape == (2, 6, 512) and not mask.all()
    assert record["versions"]["e2e_sae"]["e2e-sae"] == "2.1.1"
    assert record["versions"]["sparsify"]["eai-sparsify"] == "1.3.3"
    ours = next_token_kl(clean, spliced, mask).item()
    e2e, sparsify = record["anchors"]["e2e_sae"]["fixture"], record["anchors"]["sparsify"]["fixture"]
    assert ours == pytest.approx(e2e["kl"], abs=1e-6)
    # sparsify's "kl" is the cross-entropy -sum p_clean log p_spliced: KL plus the clean entropy.
    assert ours == pytest.approx(sparsify["cross_entropy"] - sparsify["clean_entropy"], abs=1e-6)
    rows = clean[:, 1:-1][mask].log_softmax(-1)
    entropy = -(rows.exp() * rows).sum(-1).mean().item()
    assert entropy == pytest.approx(sparsify["clean_entropy"], abs=1e-6)
    assert ours + entropy == pytest.approx(sparsify["cross_entropy"], abs=1e-6)


def test_the_kl_is_the_one_the_evaluation_reports():
    clean, spliced = _logits()
    # torch's own KL on the scored positions (predictions at BOS and after the last token dropped)
    expected = torch.nn.functional.kl_div(spliced[:, 1:-1].log_softmax(-1), clean[:, 1:-1].log_softmax(-1),
                                          log_target=True, reduction="none").sum(-1)
    torch.testing.assert_close(kl_divergence(clean, spliced), expected)
    assert kl_divergence is not token_kl and torch.equal(token_kl(clean, spliced), kl_divergence(clean, spliced))
    reported = kl_divergence(clean, spliced).mean(-1).double().mean().item()  # per-context means, then contexts
    assert next_token_kl(clean, spliced).item() == pytest.approx(reported, abs=1e-6)


# ---- the KL's values -----------------------------------------------------------------------------
def test_the_kl_by_hand_on_two_scored_tokens_of_a_three_token_vocabulary():
    # [1 context, 4 positions, vocab 3]: the predictions at positions 1 and 2 are scored; BOS's (0) and the
    # last (3) are not.
    clean = torch.log(torch.tensor([[[0.9, 0.05, 0.05], [0.5, 0.25, 0.25], [1 / 3, 1 / 3, 1 / 3], [0.2, 0.3, 0.5]]]))
    spliced = torch.log(torch.tensor([[[0.05, 0.05, 0.9], [0.25, 0.5, 0.25], [0.5, 0.25, 0.25], [0.9, 0.05, 0.05]]]))
    first = 0.5 * math.log(2) + 0.25 * math.log(0.5)  # sum p log(p / q) at position 1
    second = -math.log(3) + (math.log(2) + 2 * math.log(4)) / 3  # at position 2
    assert next_token_kl(clean, spliced).item() == pytest.approx((first + second) / 2, abs=1e-6)
    only_second = torch.tensor([[False, True]])
    assert next_token_kl(clean, spliced, only_second).item() == pytest.approx(second, abs=1e-6)


def test_the_kl_is_zero_for_identical_logits_and_positive_otherwise():
    clean, spliced = _logits()
    assert next_token_kl(clean, clean.clone()).item() == 0.0
    assert next_token_kl(clean, spliced).item() > 0
    shifted = clean + 5.0  # the same distributions
    assert next_token_kl(clean, shifted).item() == pytest.approx(0.0, abs=1e-6)


def test_chunked_equals_unchunked_in_value_and_gradient():
    clean, spliced = _logits(batch=3, seq=9, vocab=13, seed=1)
    mask = torch.rand(3, 7, generator=torch.Generator().manual_seed(2)) > 0.3
    results = []
    for chunk in (1, 2, 5, 7, 10_000):
        leaf = spliced.clone().requires_grad_(True)
        value = next_token_kl(clean, leaf, mask, chunk=chunk)
        value.backward()
        results.append((value.detach(), leaf.grad))
    for value, grad in results[1:]:
        assert value.item() == pytest.approx(results[0][0].item(), abs=1e-7)
        assert torch.allclose(grad, results[0][1], atol=1e-8)


def test_the_gradient_reaches_the_spliced_logits_only_and_matches_autograd():
    clean, spliced = _logits(batch=2, seq=6, vocab=9, seed=3)
    mask = torch.tensor([[True, False, True, True], [True, True, True, False]])
    clean.requires_grad_(True)
    leaf = spliced.clone().requires_grad_(True)
    next_token_kl(clean, leaf, mask, chunk=2).backward()
    assert clean.grad is None and leaf.grad is not None
    reference_leaf = spliced.clone().requires_grad_(True)
    per_token = token_kl(clean.detach(), reference_leaf)
    (per_token[mask].sum() / mask.sum()).backward()
    assert torch.allclose(leaf.grad, reference_leaf.grad, atol=1e-7)
    assert leaf.grad[:, 0].abs().max() == 0 and leaf.grad[:, -1].abs().max() == 0  # unscored positions
    assert leaf.grad[0, 2].abs().max() == 0  # a masked-out prediction (position 2 = mask[0, 1])


def test_the_kl_is_float32_arithmetic_for_half_precision_logits():
    clean, spliced = _logits(seed=4)
    value = next_token_kl(clean.bfloat16(), spliced.bfloat16())
    assert value.dtype == torch.float32
    assert value.item() == pytest.approx(token_kl(clean.bfloat16(), spliced.bfloat16()).mean().item(), abs=1e-6)
    leaf = spliced.bfloat16().requires_grad_(True)
    next_token_kl(clean.bfloat16(), leaf).backward()
    assert leaf.grad.dtype == torch.bfloat16


def test_bad_kl_inputs_are_one_line_errors():
    clean, spliced = _logits()
    for call, words in [(lambda: next_token_kl(clean, spliced[:, :-1]), "one shape"),
                        (lambda: next_token_kl(clean[:, :2], spliced[:, :2]), "at least 3 tokens"),
                        (lambda: next_token_kl(clean, spliced, torch.ones(3, 7, dtype=torch.bool)), "mask must be"),
                        (lambda: next_token_kl(clean, spliced, torch.zeros(3, 5, dtype=torch.bool)), "no prediction"),
                        (lambda: next_token_kl(clean, spliced, chunk=0), "chunk")]:
        with pytest.raises(SaekitError, match=words) as raised:
            call()
        assert "\n" not in str(raised.value)


# ---- the downstream error ------------------------------------------------------------------------
def test_downstream_mse_is_e2e_sae_s_in_to_orig_normalisation():
    generator = torch.Generator().manual_seed(5)
    clean = {f"blocks.{i}.resid_pre": torch.randn(2, 5, 4, generator=generator) for i in (3, 4)}
    spliced = {site: (x + 0.5 * torch.randn(x.shape, generator=generator)).requires_grad_(True)
               for site, x in clean.items()}
    for site in clean:
        spliced[site].data[:, 0] = clean[site][:, 0]  # BOS keeps its clean activation in the splice
    error = downstream_mse(spliced, clean)
    by_hand = {site: ((spliced[site][:, 1:] - clean[site][:, 1:]) ** 2).mean() for site in clean}
    for site in clean:
        assert error.per_site[site].item() == pytest.approx(by_hand[site].item(), rel=1e-6)
    # e2e_sae splits total_coeff equally between the sites: total x mean over sites = sum of (total / n) x site MSE.
    total = 2.5
    assert (total * error.mean).item() == pytest.approx(sum(total / 2 * v.item() for v in by_hand.values()), rel=1e-6)
    with_bos = downstream_mse(spliced, clean, skip_bos=False)  # the BOS rows add zeros: the mean is diluted
    assert with_bos.mean.item() == pytest.approx(error.mean.item() * 4 / 5, rel=1e-6)
    error.mean.backward()
    assert all(spliced[site].grad is not None for site in clean)


def test_downstream_mse_refuses_mismatched_sites():
    x = torch.zeros(1, 3, 2)
    with pytest.raises(SaekitError, match="same downstream sites"):
        downstream_mse({"blocks.3.resid_pre": x}, {"blocks.4.resid_pre": x})
    with pytest.raises(SaekitError, match="shape"):
        downstream_mse({"blocks.3.resid_pre": x}, {"blocks.3.resid_pre": torch.zeros(1, 3, 3)})


# ---- the settings --------------------------------------------------------------------------------
@pytest.mark.parametrize("flat, named", [
    ({"finetune_fraction": 0.0}, "finetune_fraction"),
    ({"finetune_fraction": 1.5}, "finetune_fraction"),
    ({"objective": "ce"}, "objective"),
    ({"kl_coefficient": 0.0}, "kl_coefficient"),
    ({"downstream_sites": ["blocks.x.resid_pre"]}, "downstream_sites"),
])
def test_bad_settings_are_one_line_errors_naming_the_setting(flat, named):
    with pytest.raises(SaekitError) as from_file:
        from_flat(ObjectiveConfig, flat, "objective settings")
    with pytest.raises(SaekitError) as built:
        ObjectiveConfig(**flat).validate()
    for raised in (from_file, built):
        assert named in str(raised.value) and "\n" not in str(raised.value)


def test_objectives_that_span_settings_are_checked():
    with pytest.raises(SaekitError, match="e2e_ds needs downstream_sites"):
        ObjectiveConfig(objective="e2e_ds").validate()
    with pytest.raises(SaekitError, match="only by objective e2e_ds"):
        ObjectiveConfig(objective="kl", downstream_sites=("blocks.20.resid_pre",)).validate()
    with pytest.raises(SaekitError, match="both 0"):
        ObjectiveConfig(finetune_fraction=0.1, finetune_kl_coefficient=0.0, finetune_mse_coefficient=0.0).validate()
    config = ObjectiveConfig(objective="e2e_ds", downstream_sites=("blocks.14.mlp_out", "blocks.16.resid_pre"))
    assert config.validate() is config
    config.check_sites(["blocks.14.mlp_in"])
    for training_site in ("blocks.14.resid_post", "blocks.14.mlp_out", "blocks.20.resid_pre"):
        with pytest.raises(SaekitError, match="downstream_sites: blocks.14.mlp_out is not after"):
            config.check_sites([training_site])
    ObjectiveConfig(finetune_fraction=1.0).validate()


def test_the_weights_of_each_phase():
    assert ObjectiveConfig().weights_at(0, 100) == ObjectiveWeights(1.0, 0.0, 0.0)
    assert not ObjectiveConfig().needs_model and not ObjectiveConfig().weights_at(0, 100).needs_model
    kl = ObjectiveConfig(objective="kl", kl_coefficient=0.5)
    assert kl.weights_at(99, 100) == ObjectiveWeights(0.0, 0.5, 0.0) and kl.needs_model
    e2e_ds = ObjectiveConfig(objective="e2e_ds", downstream_sites=("blocks.15.resid_pre",), kl_coefficient=0.5)
    assert e2e_ds.weights_at(0, 100) == ObjectiveWeights(0.0, 0.5, 2.5)
    tail = ObjectiveConfig(finetune_fraction=0.2, finetune_kl_coefficient=2.0, finetune_mse_coefficient=0.5)
    assert tail.needs_model and tail.finetune_start(1000) == 800
    assert tail.weights_at(799, 1000) == ObjectiveWeights(1.0, 0.0, 0.0)
    assert tail.weights_at(800, 1000) == ObjectiveWeights(0.5, 2.0, 0.0) and tail.weights_at(800, 1000).needs_model
    assert ObjectiveConfig(finetune_fraction=1.0).weights_at(0, 10) == ObjectiveWeights(1.0, 1.0, 0.0)
