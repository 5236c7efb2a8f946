import torch
import torch.nn.functional as F

from saekit.dictionaries.base import DictionaryConfig
from saekit.dictionaries.registry import build_dictionary
from saekit.evaluation.splice import compare_losses, kl_divergence, measured_splice_targets, next_token_nll
from saekit.training.splicing import SpliceTarget


def test_nll_and_kl_match_torch():
    logits = torch.randn(2, 6, 11)
    ids = torch.randint(0, 11, (2, 6))
    expected = F.cross_entropy(logits[:, 1:-1].reshape(-1, 11), ids[:, 2:].reshape(-1), reduction="none")
    torch.testing.assert_close(next_token_nll(logits, ids).reshape(-1), expected)
    other = torch.randn(2, 6, 11)
    expected_kl = F.kl_div(other[:, 1:-1].log_softmax(-1), logits[:, 1:-1].log_softmax(-1), log_target=True,
                           reduction="none").sum(-1)
    torch.testing.assert_close(kl_divergence(logits, other), expected_kl)
    assert kl_divergence(logits, logits).abs().max() < 1e-6


def test_compare_losses_orders_conditions(tiny_loaded):
    adapter = tiny_loaded.adapter
    site = adapter.site("blocks.0.resid_post")
    dictionary = build_dictionary(DictionaryConfig("topk", 32, 256, k=32)).eval()
    (target,) = measured_splice_targets(dictionary, [site], [site], [torch.zeros(32)], outlier_norm_factor=10.0)
    ids = torch.randint(3, 1000, (4, 12))
    ids[:, 0] = tiny_loaded.bos_token_id
    result = compare_losses(tiny_loaded, [target], iter(ids.split(2)))
    assert result.contexts == 4
    assert result.kl_spliced.mean > 0
    assert abs(result.delta_ce_spliced.mean - (result.ce_spliced.mean - result.ce_clean.mean)) < 1e-6
    # The reconstruction metrics saw every non-BOS token exactly once.
    assert target.metrics.result().tokens == 4 * 11
    zero_only = result.loss_recovered_vs_zero_ablation
    assert zero_only == 1 - result.delta_ce_spliced.mean / result.delta_ce_zero.mean or abs(
        zero_only - (1 - result.delta_ce_spliced.mean / result.delta_ce_zero.mean)) < 1e-6


def _hook_count(model) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_a_splice_that_fails_on_entry_leaves_no_hooks(tiny_loaded):
    import pytest

    from saekit.models.sites import Site
    from saekit.training.splicing import spliced_context

    adapter = tiny_loaded.adapter
    good = SpliceTarget(build_dictionary(DictionaryConfig("topk", 32, 64, k=4)).eval(),
                        adapter.site("blocks.0.resid_post"), adapter.site("blocks.0.resid_post"), torch.zeros(32))
    # A transcoder whose write site does not exist (layer 9 of a 2-layer model): its hooks fail to
    # register after the SAE's (and its own read hook) were already registered.
    bad = SpliceTarget(build_dictionary(DictionaryConfig("topk", 32, 64, d_out=32, k=4)).eval(),
                       adapter.site("blocks.1.mlp_in"), Site(9, "mlp_out"), torch.zeros(32))
    before = _hook_count(tiny_loaded.model)
    with pytest.raises(IndexError):
        with spliced_context(tiny_loaded, [good, bad]):
            pass
    assert _hook_count(tiny_loaded.model) == before


@torch.no_grad()
def test_a_forward_starting_mid_sequence_splices_every_position_it_computes(tiny_loaded):
    """A prompt then its rest on the KV cache, ``start`` set to the cached length, equals one whole spliced forward."""
    import inspect

    from saekit.training.splicing import spliced_context

    torch.manual_seed(0)
    adapter = tiny_loaded.adapter
    sae_site = adapter.site("blocks.0.resid_post")
    targets = [SpliceTarget(build_dictionary(DictionaryConfig("topk", 32, 64, k=4)).eval(), sae_site, sae_site,
                            torch.zeros(32)),
               SpliceTarget(build_dictionary(DictionaryConfig("topk", 32, 64, d_out=32, k=4)).eval(),
                            adapter.site("blocks.1.mlp_in"), adapter.site("blocks.1.mlp_out"), torch.zeros(32))]
    ids = torch.randint(3, 1000, (2, 10))
    ids[:, 0] = tiny_loaded.bos_token_id
    with spliced_context(tiny_loaded, targets):
        whole = tiny_loaded.model(input_ids=ids, use_cache=False).logits
    cache_name = "cache" if "cache" in inspect.signature(tiny_loaded.model.forward).parameters else "past_key_values"
    cached = {"start": 0}
    with spliced_context(tiny_loaded, targets, start=lambda: cached["start"]):
        prompt = tiny_loaded.model(input_ids=ids[:, :6], use_cache=True)
        cached["start"] = 6
        rest = tiny_loaded.model(input_ids=ids[:, 6:], use_cache=True, **{cache_name: getattr(prompt, cache_name)})
    torch.testing.assert_close(torch.cat([prompt.logits, rest.logits], dim=1), whole, atol=1e-4, rtol=1e-4)
