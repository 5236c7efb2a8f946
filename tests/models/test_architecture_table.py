"""The architecture table's rows against tiny random models of each family: every fact a row states holds."""

from __future__ import annotations

import pytest
import torch
from family_models import FAMILIES, tiny_model
from torch import nn

from saekit.errors import SaekitError
from saekit.models.architecture import LAYOUTS, ArchitectureAdapter, replacement_families, replacement_layout


@pytest.fixture(scope="module", params=FAMILIES)
def adapter(request) -> ArchitectureAdapter:
    return ArchitectureAdapter(tiny_model(request.param))


def test_every_family_in_the_table_has_a_tiny_model():
    assert {tiny_model(family).config.model_type for family in FAMILIES} == set(LAYOUTS)


def test_the_row_paths_resolve(adapter):
    layout = adapter.layout
    assert adapter.n_layers == 2 and adapter.d_model == 32 and adapter.query_heads == 4
    assert adapter.unembedding() is adapter.model.get_output_embeddings()
    for layer in range(adapter.n_layers):
        attention = adapter.attention(layer)
        assert all(hasattr(attention, name) for name in (layout.attention_layout.values,
                                                          layout.attention_layout.output,
                                                          layout.attention_layout.head_dim))
        assert adapter.down_projection(layer) in list(adapter.mlp(layer).modules())


def _is_norm(module: nn.Module) -> bool:
    return isinstance(module, nn.LayerNorm) or "Norm" in type(module).__name__


def test_the_block_norms_are_every_norm_on_the_residual_path(adapter):
    """Each norm in a block outside its attention (q/k norms only shape the pattern) is in the row."""
    for layer in range(adapter.n_layers):
        inside_attention = {id(m) for m in adapter.attention(layer).modules()}
        found = [m for m in adapter.block(layer).modules() if _is_norm(m) and id(m) not in inside_attention]
        assert {id(m) for m in found} == {id(m) for m in adapter.block_norms(layer)}


def test_the_norm_facts_reproduce_each_norm(adapter):
    """kind (rms or layer), scale (weight + offset), bias and epsilon as the row says give the module's output."""
    norms = adapter.layout.norms
    x = torch.randn(3, 5, adapter.d_model) * 3 + 1
    for norm in [*adapter.block_norms(0), adapter.final_norm()]:
        eps = norms.fixed_eps if norms.fixed_eps is not None else getattr(norm, "variance_epsilon", None) or norm.eps
        centred = x - x.mean(-1, keepdim=True) if norms.kind == "layer" else x
        expected = centred * torch.rsqrt(centred.pow(2).mean(-1, keepdim=True) + eps)
        if getattr(norm, "weight", None) is not None:
            expected = expected * (norm.weight + norms.weight_offset)
        if getattr(norm, "bias", None) is not None:
            expected = expected + norm.bias
        torch.testing.assert_close(norm(x), expected, atol=1e-5, rtol=1e-5)


def test_the_value_layout_finds_the_values(adapter):
    """The values sliced as the row says, mixed by the attention's own pattern, give its output."""
    from saekit.circuits.replacement import _attention_values

    model, layout = adapter.model, adapter.layout.attention_layout
    captured = {}
    handle = adapter.attention(0).register_forward_hook(
        lambda module, args, kwargs, out: captured.update(x=args[0] if args else kwargs["hidden_states"], out=out),
        with_kwargs=True)
    previous = model.config._attn_implementation
    try:
        model.set_attn_implementation("eager")
        with torch.no_grad():
            model(input_ids=torch.tensor([[1, 5, 9, 13, 200, 7]]), use_cache=False)
    finally:
        model.set_attn_implementation(previous)
        handle.remove()
    output, pattern = captured["out"][:2]
    with torch.no_grad():
        torch.testing.assert_close(_attention_values(adapter.attention(0), captured["x"], pattern, layout), output)


def test_family_flags():
    by_family = {family: ArchitectureAdapter(tiny_model(family)) for family in ("gpt_neox", "gpt_neox_sequential",
                                                                                 "llama", "gpt2", "gemma2")}
    assert by_family["gpt_neox"].parallel_residual and not by_family["gpt_neox_sequential"].parallel_residual
    assert not by_family["llama"].parallel_residual
    gpt2 = by_family["gpt2"]
    assert gpt2.layout.conv1d and gpt2.d_mlp == 128  # Conv1D weight [in, out]; n_inner None: 4 x d_model
    for family, adapter in by_family.items():
        rotary = any("Rotary" in type(m).__name__ for m in adapter.model.modules())
        assert rotary == (adapter.layout.positions == "rotary"), family
    gemma2 = by_family["gemma2"]
    assert gemma2.model.config.final_logit_softcapping == getattr(gemma2.model.config, gemma2.layout.logit_softcap)
    assert getattr(gemma2.model.config, gemma2.layout.attention_softcap) is not None


def test_unsupported_families_are_refused_in_one_line():
    with pytest.raises(SaekitError, match=r"^architecture 'opt' is not supported yet; supported: .*gpt_neox"):
        ArchitectureAdapter(tiny_model("opt"))
    for model_type in ("opt", "phi", None):
        with pytest.raises(SaekitError, match=r"^attribution graphs do not support the .* architecture yet; "
                                              r"supported: gemma, gemma2, gpt2, gpt_neox, llama"):
            replacement_layout(model_type)
    assert replacement_families() == sorted(LAYOUTS)  # every row is handled by the replacement model today
