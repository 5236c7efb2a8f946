"""Reading and replacing activations at named sites with forward hooks.

``capture`` runs one forward pass and returns every requested site's activations, stopping the
forward as soon as the last of them is seen (the layers above are never computed). ``splice``
replaces a site's activation by a function of itself for the duration of a ``with`` block.
Both go through :func:`_hook_point`, the single table of where each site kind is read.

A forward can also start part-way: :func:`recording_prefix` keeps what block ``layer - 1`` returned in one
forward, and within :func:`resumed_at` a later forward of the same inputs skips blocks ``0 .. layer - 1``
(each hands on the recorded output), so a pass that changes the model only from block ``layer`` on costs
only the blocks it changes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from saekit.models.architecture import ArchitectureAdapter
from saekit.models.sites import Site


@dataclass(frozen=True)
class HookPoint:
    """A module and whether the site is its first input (pre-hook) or its (first) output."""

    module: nn.Module
    reads_input: bool


def _hook_point(adapter: ArchitectureAdapter, site: Site) -> HookPoint:
    layer = site.layer
    table = {
        "resid_pre": (adapter.block(layer), True),
        "resid_post": (adapter.block(layer), False),
        "attn_out": (adapter.attention(layer), False),
        "mlp_in": (adapter.mlp(layer), True),
        "mlp_act": (adapter.down_projection(layer), True),
        "mlp_out": (adapter.mlp(layer), False),
    }
    module, reads_input = table[site.kind]
    return HookPoint(module, reads_input)


def _first_input(args: tuple, kwargs: dict) -> Tensor:
    return args[0] if args else kwargs["hidden_states"]


def _with_first_input(args: tuple, kwargs: dict, value: Tensor) -> tuple[tuple, dict]:
    if args:
        return (value, *args[1:]), kwargs
    return args, {**kwargs, "hidden_states": value}


def _first_output(output: Tensor | tuple) -> Tensor:
    return output if isinstance(output, Tensor) else output[0]


def _with_first_output(output: Tensor | tuple, value: Tensor) -> Tensor | tuple:
    return value if isinstance(output, Tensor) else (value, *output[1:])


class _StopForward(Exception):
    """Raised inside a hook once every requested site has been captured."""


Hook = tuple[Site, Callable[[Tensor], Tensor | None]]  # a site and what sees (or replaces) its tensor


@contextmanager
def _hooked(hooks: list[Hook], adapter: ArchitectureAdapter) -> Iterator[None]:
    """Register every (site, function) hook for the block; all are removed afterwards, also when one
    fails to register (a bad site), so a failed splice never leaves hooks behind on the model."""
    handles = []
    try:
        for site, on_value in hooks:
            handles.append(_register(_hook_point(adapter, site), on_value))
        yield
    finally:
        for handle in handles:
            handle.remove()


def _register(point: HookPoint, on_value: Callable[[Tensor], Tensor | None]) -> object:
    """Hook ``point`` so ``on_value`` sees the site's tensor; a returned tensor replaces it."""
    if point.reads_input:
        def pre_hook(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
            replacement = on_value(_first_input(args, kwargs))
            return None if replacement is None else _with_first_input(args, kwargs, replacement)
        return point.module.register_forward_pre_hook(pre_hook, with_kwargs=True)

    def hook(module: nn.Module, args: tuple, output: Tensor | tuple) -> Tensor | tuple | None:
        replacement = on_value(_first_output(output))
        return None if replacement is None else _with_first_output(output, replacement)
    return point.module.register_forward_hook(hook)


@torch.no_grad()
def capture(
    adapter: ArchitectureAdapter, input_ids: Tensor, sites: Sequence[Site], attention_mask: Tensor | None = None,
) -> dict[Site, Tensor]:
    """One forward pass returning ``{site: activations [batch, seq, width]}``; stops at the last site."""
    captured: dict[Site, Tensor] = {}
    wanted = set(sites)

    def recorder(site: Site) -> Callable[[Tensor], None]:
        def record(value: Tensor) -> None:
            captured[site] = value.detach()
            if wanted <= captured.keys():
                raise _StopForward
        return record

    with _hooked([(site, recorder(site)) for site in wanted], adapter):
        try:
            adapter.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        except _StopForward:
            pass
    return captured


def run_with_hooks(
    adapter: ArchitectureAdapter, input_ids: Tensor, replace: dict[Site, Callable[[Tensor], Tensor]] | None = None,
    observe: Sequence[Site] = (),
) -> tuple[Tensor, dict[Site, Tensor]]:
    """One whole forward: its logits, each ``replace`` site's activation x replaced by ``replace[site](x)``, and
    the activations at the ``observe`` sites (with their autograd graph when gradients are on)."""
    observed: dict[Site, Tensor] = {}

    def recorder(site: Site) -> Callable[[Tensor], None]:
        def record(value: Tensor) -> None:
            observed[site] = value
        return record

    hooks = [*(replace or {}).items(), *((site, recorder(site)) for site in observe)]
    with _hooked(hooks, adapter):
        logits = adapter.model(input_ids=input_ids, use_cache=False).logits
    return logits, observed


@dataclass
class Prefix:
    """What block ``layer - 1`` returned in a recorded forward (``None`` for ``layer`` 0: nothing is skipped)."""

    layer: int
    output: Tensor | tuple | None = None


@contextmanager
def recording_prefix(adapter: ArchitectureAdapter, layer: int) -> Iterator[Prefix]:
    """Within the block, a forward records block ``layer - 1``'s output (as the block returned it, detached)."""
    prefix = Prefix(layer)
    if layer == 0:
        yield prefix
        return

    def record(module: nn.Module, args: tuple, output: Tensor | tuple) -> None:
        prefix.output = output.detach() if isinstance(output, Tensor) else output
    handle = adapter.block(layer - 1).register_forward_hook(record)
    try:
        yield prefix
    finally:
        handle.remove()


class _Replay(nn.Module):
    """Stands in for a skipped block: returns the recorded output; other attributes read from the real block
    (some models' layer loops ask a block for its attention type)."""

    def __init__(self, block: nn.Module, output: Tensor | tuple) -> None:
        super().__init__()
        object.__setattr__(self, "_block", block)  # not registered: its parameters stay out of this module
        object.__setattr__(self, "_output", output)

    def forward(self, *args: object, **kwargs: object) -> Tensor | tuple:
        return self._output

    def __getattr__(self, name: str) -> object:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.__dict__["_block"], name)


@contextmanager
def resumed_at(adapter: ArchitectureAdapter, prefix: Prefix) -> Iterator[None]:
    """Within the block, forwards skip blocks ``0 .. prefix.layer - 1``: each returns the recorded output.

    Only for forwards of the inputs the prefix was recorded on, with nothing hooked before block
    ``prefix.layer`` (a hook there would never run)."""
    if prefix.layer > 0 and prefix.output is None:
        raise ValueError(f"no output of block {prefix.layer - 1} was recorded: run the forward inside "
                         "recording_prefix first")
    skipped = list(adapter.blocks[:prefix.layer])
    try:
        for index, block in enumerate(skipped):
            adapter.blocks[index] = _Replay(block, prefix.output)
        yield
    finally:
        for index, block in enumerate(skipped):
            adapter.blocks[index] = block


@contextmanager
def splice(adapter: ArchitectureAdapter, replacements: dict[Site, Callable[[Tensor], Tensor]]) -> Iterator[None]:
    """Within the block, each site's activation x is replaced by ``replacements[site](x)``."""
    with _hooked(list(replacements.items()), adapter):
        yield


@contextmanager
def splice_module(
    adapter: ArchitectureAdapter, read_site: Site, write_site: Site, fn: Callable[[Tensor, Tensor], Tensor],
) -> Iterator[None]:
    """Replace ``write_site`` by ``fn(activation at read_site, original activation at write_site)``.

    This is how a transcoder stands in for an MLP: it reads the MLP input and writes its output.

    ``read_site`` must be computed before ``write_site`` in the same forward pass.
    """
    last_read: dict[str, Tensor] = {}

    def remember(value: Tensor) -> None:
        last_read["value"] = value

    with _hooked([(read_site, remember), (write_site, lambda original: fn(last_read["value"], original))], adapter):
        yield
