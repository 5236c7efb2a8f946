"""A forward resumed at a block (the blocks before it replaying a recorded output) equals the whole forward."""

from __future__ import annotations

import pytest
import torch
from family_models import FAMILIES, tiny_model

from saekit.models.architecture import ArchitectureAdapter
from saekit.models.hooks import Prefix, recording_prefix, resumed_at, run_with_hooks


def write_width(adapter: ArchitectureAdapter) -> int:
    return adapter.site_width("blocks.1.mlp_out")


def _ids() -> torch.Tensor:
    return torch.randint(3, 250, (2, 9), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("family", FAMILIES)
def test_a_forward_resumed_at_the_changed_block_equals_the_whole_forward(family):
    model = tiny_model(family)
    adapter = ArchitectureAdapter(model)
    ids = _ids()
    write = adapter.site("blocks.1.mlp_out")
    with recording_prefix(adapter, 1) as prefix:
        clean, _ = run_with_hooks(adapter, ids)
    runs_of_block_0 = []
    handle = adapter.block(0).register_forward_hook(lambda *args: runs_of_block_0.append(1))
    blocks_before = list(adapter.blocks)
    try:
        shift = torch.full((1,), 0.5, requires_grad=True)
        direction = torch.linspace(-1, 1, write_width(adapter))  # not constant: a LayerNorm removes a constant
        whole, _ = run_with_hooks(adapter, ids, replace={write: lambda x: x + shift * direction})
        (whole_grad,) = torch.autograd.grad(whole.square().sum(), shift)
        with resumed_at(adapter, prefix):
            resumed, _ = run_with_hooks(adapter, ids, replace={write: lambda x: x + shift * direction})
        (resumed_grad,) = torch.autograd.grad(resumed.square().sum(), shift)
    finally:
        handle.remove()
    assert runs_of_block_0 == [1]  # the whole forward ran block 0; the resumed one did not
    assert list(adapter.blocks) == blocks_before  # every block is back
    torch.testing.assert_close(resumed, whole, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(resumed_grad, whole_grad, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(whole, clean, atol=1e-3)  # the write changed the logits


def test_resuming_without_a_recorded_output_is_refused():
    adapter = ArchitectureAdapter(tiny_model("llama"))
    with pytest.raises(ValueError, match="no output of block 0 was recorded"), resumed_at(adapter, Prefix(1)):
        pass


def test_a_prefix_at_layer_0_skips_nothing():
    adapter = ArchitectureAdapter(tiny_model("llama"))
    ids = _ids()
    whole, _ = run_with_hooks(adapter, ids)
    with recording_prefix(adapter, 0) as prefix, resumed_at(adapter, prefix):
        resumed, _ = run_with_hooks(adapter, ids)
    assert prefix.output is None
    torch.testing.assert_close(resumed, whole, rtol=0, atol=0)
