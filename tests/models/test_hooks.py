"""Site capture and splicing on tiny random models of every supported family."""

import copy

import pytest
import torch
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    GPTNeoXConfig,
    GPTNeoXForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from saekit.models.architecture import ArchitectureAdapter
from saekit.models.hooks import capture, splice, splice_module
from saekit.models.sites import SITE_KINDS, Site

VOCAB = 101


def _models():
    small = dict(vocab_size=VOCAB, bos_token_id=0, eos_token_id=0)
    return {
        "llama": LlamaForCausalLM(LlamaConfig(hidden_size=32, intermediate_size=48, num_hidden_layers=3,
                                              num_attention_heads=4, num_key_value_heads=2, **small)),
        "qwen2": Qwen2ForCausalLM(Qwen2Config(hidden_size=32, intermediate_size=48, num_hidden_layers=3,
                                              num_attention_heads=4, num_key_value_heads=2, **small)),
        "gpt2": GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=3, n_head=4, **small)),
        "gpt_neox": GPTNeoXForCausalLM(GPTNeoXConfig(hidden_size=32, intermediate_size=48, num_hidden_layers=3,
                                                     num_attention_heads=4, use_parallel_residual=False, **small)),
    }


@pytest.fixture(scope="module", params=["llama", "qwen2", "gpt2", "gpt_neox"])
def adapter(request):
    torch.manual_seed(0)
    return ArchitectureAdapter(_models()[request.param].eval())


def test_capture_every_site_with_right_widths(adapter):
    ids = torch.randint(0, VOCAB, (2, 7))
    sites = [Site(1, kind) for kind in SITE_KINDS]
    captured = capture(adapter, ids, sites)
    for site in sites:
        assert captured[site].shape == (2, 7, adapter.site_width(site))
    assert adapter.site_width(Site(1, "mlp_act")) != adapter.d_model
    # A sequential block adds the attention and MLP updates to the residual stream.
    by_kind = {s.kind: v for s, v in captured.items()}
    rebuilt = by_kind["resid_pre"] + by_kind["attn_out"] + by_kind["mlp_out"]
    torch.testing.assert_close(rebuilt, by_kind["resid_post"], atol=1e-5, rtol=1e-5)
    # resid_post of one block is resid_pre of the next.
    nxt = capture(adapter, ids, [Site(0, "resid_post"), Site(1, "resid_pre")])
    torch.testing.assert_close(nxt[Site(0, "resid_post")], nxt[Site(1, "resid_pre")])


def test_capture_stops_after_the_last_site(adapter):
    calls = []
    handle = adapter.block(2).register_forward_hook(lambda *args: calls.append(1))
    try:
        capture(adapter, torch.randint(0, VOCAB, (1, 5)), [Site(0, "mlp_out")])
    finally:
        handle.remove()
    assert calls == []


def test_splice_identity_is_exact_and_zero_changes_logits(adapter):
    ids = torch.randint(0, VOCAB, (2, 6))
    with torch.no_grad():
        clean = adapter.model(ids).logits
        for kind in SITE_KINDS:
            with splice(adapter, {Site(1, kind): lambda x: x}):
                same = adapter.model(ids).logits
            torch.testing.assert_close(same, clean)
            with splice(adapter, {Site(1, kind): torch.zeros_like}):
                ablated = adapter.model(ids).logits
            assert (ablated - clean).abs().max() > 1e-4, kind
    # Hooks are removed on exit.
    with torch.no_grad():
        torch.testing.assert_close(adapter.model(ids).logits, clean)


def test_splice_module_replaces_mlp_by_function_of_its_input(adapter):
    ids = torch.randint(0, VOCAB, (1, 6))
    mlp = copy.deepcopy(adapter.mlp(1))  # a hook-free copy: calling the hooked module would recurse
    with torch.no_grad():
        clean = adapter.model(ids).logits
        # Replacing mlp_out by the real MLP applied to mlp_in must change nothing.
        with splice_module(adapter, Site(1, "mlp_in"), Site(1, "mlp_out"), lambda read, original: mlp(read)):
            same = adapter.model(ids).logits
    torch.testing.assert_close(same, clean, atol=1e-5, rtol=1e-5)
