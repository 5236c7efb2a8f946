import pytest
import torch
from family_models import FAMILIES, tiny_model
from torch.utils.flop_counter import FlopCounterMode
from transformers import GPT2Config, LlamaConfig, LlamaForCausalLM

from saekit.models.flops import forward_flops_per_token, is_gated_mlp

# d 64, d_ff 128, 3 layers, 4 heads of 16, 2 kv heads (GQA), vocabulary 100; contexts of 32 tokens
TINY = dict(vocab_size=100, hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
            num_key_value_heads=2, head_dim=16, max_position_embeddings=64, tie_word_embeddings=False)
T = 32


def tiny_config(attn_implementation: str = "sdpa") -> LlamaConfig:
    config = LlamaConfig(**TINY)
    config._attn_implementation = attn_implementation
    return config


def test_counts_match_a_count_by_hand():
    # per layer and token, written out:
    #   q 2*64*64 = 8192, k 2*64*32 = 4096, v 4096, o 8192          -> projections 24576
    #   gate, up, down 3 * 2*64*128                                  -> mlp 49152
    #   attention, causal: 4*4*16*(t+1) at position t, mean over t=0..31 of (t+1) = 16.5 -> 256*16.5 = 4224
    #   unembedding 2*64*100 = 12800 (whole model only)
    flops = forward_flops_per_token(tiny_config(), T, through_layer=1)
    assert (flops.layers, flops.projections, flops.mlp, flops.attention, flops.unembedding) == (
        2, 49152, 98304, 8448, 0)
    assert flops.total == 155904
    whole = forward_flops_per_token(tiny_config(), T)
    assert (whole.layers, whole.unembedding, whole.total) == (3, 12800, 246656)
    suffix = forward_flops_per_token(tiny_config(), T, from_layer=2)
    assert (suffix.layers, suffix.total) == (1, 77952 + 12800)
    full = forward_flops_per_token(tiny_config(), T, through_layer=0, causal=False)
    assert full.attention == 4 * 4 * 16 * 32 == 8192


def test_plain_mlp_and_gpt2_names():
    # GPT-2: d 32, n_inner None -> 4*32 = 128, 2 heads of 16, no GQA, vocabulary 50
    config = GPT2Config(n_embd=32, n_layer=2, n_head=2, vocab_size=50)
    assert not is_gated_mlp(config)
    flops = forward_flops_per_token(config, 8, through_layer=0)
    # projections 4 * 2*32*32 = 8192; mlp 2 * 2*32*128 = 16384; attention 2*2*16*9 = 576
    assert (flops.projections, flops.mlp, flops.attention) == (8192, 16384, 576)


def test_bad_layers_are_refused():
    with pytest.raises(ValueError):
        forward_flops_per_token(tiny_config(), T, through_layer=3)
    with pytest.raises(ValueError):
        forward_flops_per_token(tiny_config(), T, from_layer=2, through_layer=1)


@pytest.mark.parametrize("attn_implementation", ["sdpa", "eager"])
def test_agrees_with_torch_flop_counter(attn_implementation):
    torch.manual_seed(0)
    model = LlamaForCausalLM(tiny_config(attn_implementation)).eval()
    assert is_gated_mlp(model)
    ids = torch.randint(0, 100, (2, T))
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(ids, use_cache=False)
    counted = counter.get_total_flops()
    flops = forward_flops_per_token(model, T, causal=False)
    tokens = ids.numel()
    if attn_implementation == "eager":
        # eager attention's two bmm's are counted over the full T x T square (the counter ignores the mask)
        assert counted == tokens * flops.total
    else:
        # SDPA on a CPU runs an op FlopCounterMode has no formula for: it counts the weight products only
        assert counted == tokens * flops.weights


@pytest.mark.parametrize("family", FAMILIES)
def test_the_architecture_table_says_which_mlps_are_gated(family):
    """The table's ``gated_mlp`` (what the FLOP count reads) against the modules each family's model has."""
    model = tiny_model(family)
    has_gate = any(name.rsplit(".", 1)[-1] in ("gate_proj", "gate_up_proj") for name, _ in model.named_modules())
    assert is_gated_mlp(model) == has_gate
    assert is_gated_mlp(model.config) == has_gate
