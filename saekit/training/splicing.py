"""Splicing dictionaries into the model: which hooks stand a dictionary in for the activations it replaces.

A :class:`SpliceTarget` is one dictionary and where it goes: it reads ``read_site`` and writes
``write_site`` (equal for an SAE; a transcoder reads an MLP's input and writes its output). The BOS
position always keeps its clean activation (dictionaries are not trained on it). The hooks take where
each forward starts in the sequence (:data:`Start`, the positions already in a KV cache), so a
generation step that computes only new positions splices all of them: it holds no BOS.

A cross-layer dictionary is spliced as one target per layer, jointly, sharing its latents between
them: a cross-layer transcoder's layer-j target (:class:`LayerSpliceTarget`) encodes the spliced
model's own MLP input at layer j and writes b_dec_j + sum over i <= j of layer i's decoders into
layer j from latents kept by the earlier layers' targets in the same forward. A crosscoder is acausal
(its latents read every layer), so its targets (:class:`AcausalSpliceTarget`) encode the clean
activations of all its layers in one capture before the spliced forward (:meth:`SpliceTarget.prepare`)
and write each layer's part of that reconstruction.

Training (the LoRA adapters around a frozen dictionary) and evaluation (spliced losses, generation)
splice through this one module; evaluation attaches a ``metrics`` recorder to each target to measure
the reconstruction at the same time, and uses the zero and mean ablations (:func:`hooks_for`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import ClassVar, Protocol

import torch
from torch import Tensor

from saekit.dictionaries.base import Dictionary, Span
from saekit.models.hooks import capture, splice, splice_module
from saekit.models.loading import LoadedModel
from saekit.models.sites import Site


class Recorder(Protocol):
    """What sees each splice's activations: the original, the reconstruction and the latents."""

    def update(self, original: Tensor, reconstruction: Tensor, latents: Tensor) -> None: ...


Replacement = Callable[[Tensor], Tensor]
Start = Callable[[], int]  # read at each forward: where it starts, the positions already cached (0: none)


def from_zero() -> int:
    """The :data:`Start` of forwards over whole sequences (no KV cache): position 0, BOS."""
    return 0


def _clean_positions(start: Start) -> int:
    """How many leading positions of this forward keep their clean activation: 1 (BOS) if it starts at 0."""
    return 1 if start() == 0 else 0


def keep_bos(fn: Replacement, start: Start = from_zero) -> Replacement:
    """Apply ``fn`` to the positions a forward computes, leaving position 0 (BOS) untouched where it holds it."""
    def replaced(x: Tensor) -> Tensor:
        clean = _clean_positions(start)
        return torch.cat([x[:, :clean], fn(x[:, clean:]).to(x.dtype)], dim=1)
    return replaced


@dataclass
class SpliceTarget:
    """One dictionary and where it goes: reads ``read_site``, writes ``write_site`` (equal for an SAE)."""

    dictionary: Dictionary
    read_site: Site
    write_site: Site
    mean_activation: Tensor | None = None  # training mean at write_site, for mean-ablation
    metrics: Recorder | None = None  # sees every splice's activations (evaluation's reconstruction metrics)

    causal: ClassVar[bool] = True  # computable inside one forward (generation can use it)

    @classmethod
    def for_layers(cls, dictionary: Dictionary, reads: list[Site], writes: list[Site],
                   means: list[Tensor | None]) -> list[SpliceTarget]:
        """The targets that splice ``dictionary`` (reading ``reads``, writing ``writes``, one per layer)."""
        return [cls(dictionary, reads[0], writes[0], means[0])]

    def latent_width(self) -> int:
        """The width of the latents :meth:`reconstruct` returns (the metrics' latent count)."""
        return self.dictionary.config.width

    def prepare(self, loaded: LoadedModel, input_ids: Tensor) -> None:
        """Work before a spliced forward of ``input_ids`` (nothing, except for acausal dictionaries)."""

    def reconstruct(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(reconstruction, latents) of these activations."""
        output = self.dictionary(x.float())
        return output.reconstruction, output.latents

    def replace(self, x: Tensor, original: Tensor) -> Tensor:
        """The spliced activation from ``x`` (what the dictionary reads), recording its error against ``original``."""
        reconstruction, latents = self.reconstruct(x)
        if self.metrics is not None:
            self.metrics.update(original, reconstruction, latents)
        return reconstruction


@dataclass
class LayerSpliceTarget(SpliceTarget):
    """Layer ``layer`` (position in the range) of a cross-layer transcoder spliced in at every layer at once."""

    layer: int = 0
    latents: dict[int, Tensor] = field(default_factory=dict)  # shared by the layers' targets: this forward's

    @classmethod
    def for_layers(cls, dictionary: Dictionary, reads: list[Site], writes: list[Site],
                   means: list[Tensor | None]) -> list[SpliceTarget]:
        shared: dict[int, Tensor] = {}
        return [cls(dictionary, read, write, mean, layer=layer, latents=shared)
                for layer, (read, write, mean) in enumerate(zip(reads, writes, means))]

    def latent_width(self) -> int:
        return self.dictionary.latents_per_layer

    def reconstruct(self, x: Tensor) -> tuple[Tensor, Tensor]:
        # The forward reaches layer j after every earlier layer: their entries are this forward's.
        x = x.float()
        self.latents[self.layer] = self.dictionary.encode_layer(self.layer, x)
        upstream = [self.latents[layer] for layer in self.dictionary.writers(self.layer)]
        return self.dictionary.decode_layer(self.layer, upstream, x), self.latents[self.layer]


@dataclass
class AcausalSpliceTarget(SpliceTarget):
    """Layer ``layer`` of a crosscoder over ``read_sites``: its part of the reconstruction of the clean activations."""

    causal: ClassVar[bool] = False
    layer: int = 0
    read_sites: tuple[Site, ...] = ()
    shared: dict[str, Tensor] = field(default_factory=dict)  # shared by the layers' targets

    @classmethod
    def for_layers(cls, dictionary: Dictionary, reads: list[Site], writes: list[Site],
                   means: list[Tensor | None]) -> list[SpliceTarget]:
        shared: dict[str, Tensor] = {}
        return [cls(dictionary, read, write, mean, layer=layer, read_sites=tuple(reads),
                    shared=shared) for layer, (read, write, mean) in enumerate(zip(reads, writes, means))]

    def prepare(self, loaded: LoadedModel, input_ids: Tensor) -> None:
        if self.shared.get("input_ids") is not input_ids:
            captured = capture(loaded.adapter, input_ids, self.read_sites)
            output = self.dictionary(torch.cat([captured[site][:, 1:].float() for site in self.read_sites], -1))
            self.shared.update(input_ids=input_ids, reconstruction=output.reconstruction, latents=output.latents,
                               clean=torch.stack([captured[site][:, 1:] for site in self.read_sites]))
            self.shared["recorded"] = torch.zeros(len(self.read_sites), dtype=torch.bool)
        if self.metrics is not None and not self.shared["recorded"][self.layer]:
            clean = self.shared["clean"][self.layer]
            self.metrics.update(clean, *self.reconstruct(clean))
            self.shared["recorded"][self.layer] = True

    def reconstruct(self, x: Tensor) -> tuple[Tensor, Tensor]:
        width = self.shared["reconstruction"].shape[-1] // len(self.read_sites)
        part = self.shared["reconstruction"][..., self.layer * width:(self.layer + 1) * width]
        return part, self.shared["latents"]

    def replace(self, x: Tensor, original: Tensor) -> Tensor:
        return self.reconstruct(x)[0]


SPLICE_TARGETS: dict[Span, type[SpliceTarget]] = {
    Span.SINGLE: SpliceTarget, Span.CAUSAL: LayerSpliceTarget, Span.ACAUSAL: AcausalSpliceTarget}


def splice_targets(dictionary: Dictionary, reads: list[Site], writes: list[Site],
                   means: list[Tensor | None] | None = None) -> list[SpliceTarget]:
    """How ``dictionary`` is spliced, by what it reads and writes: one target, or one per layer sharing latents
    (``means``: the training means at the written sites, which mean-ablation needs)."""
    return SPLICE_TARGETS[dictionary.SPAN].for_layers(dictionary, reads, writes, means or [None] * len(writes))


def hooks_for(loaded: LoadedModel, targets: Sequence[SpliceTarget], mode: str,
              start: Start = from_zero) -> AbstractContextManager:
    """The hooks for one condition: 'spliced', 'zero' or 'mean' at every target jointly.

    SAEs are hooked before transcoders, so a transcoder reading a site an SAE writes reads the SAE's
    reconstruction there.
    """
    adapter = loaded.adapter
    replacements = {t.write_site: keep_bos(_replacement(t, mode), start)
                    for t in targets if not _is_transcoding(t, mode)}
    transcoders = [t for t in targets if _is_transcoding(t, mode)]
    return _stacked([splice(adapter, replacements)] + [
        splice_module(adapter, t.read_site, t.write_site, _transcoder_replacement(t, start)) for t in transcoders
    ])


def spliced_context(loaded: LoadedModel, targets: Sequence[SpliceTarget], start: Start = from_zero,
                    input_ids: Tensor | None = None) -> AbstractContextManager:
    """Hooks that splice every target's dictionary in (for training, evaluation and generation).

    ``start()`` is read at each forward: the positions already in the KV cache, so a forward that starts
    there splices every position it computes; one that starts at 0 keeps BOS clean (the default, always).
    With ``input_ids``, each target first does its work before a forward of them (an acausal dictionary
    encodes their clean activations); without, the caller has (:meth:`SpliceTarget.prepare`).
    """
    if input_ids is not None:
        for target in targets:
            target.prepare(loaded, input_ids)
    return hooks_for(loaded, targets, "spliced", start)


def _is_transcoding(target: SpliceTarget, mode: str) -> bool:
    return mode == "spliced" and target.read_site != target.write_site


def _transcoder_replacement(target: SpliceTarget, start: Start) -> Callable[[Tensor, Tensor], Tensor]:
    def replaced(read: Tensor, original: Tensor) -> Tensor:
        clean = _clean_positions(start)
        reconstruction = target.replace(read[:, clean:], original[:, clean:])
        return torch.cat([original[:, :clean], reconstruction.to(original.dtype)], dim=1)
    return replaced


def _replacement(target: SpliceTarget, mode: str) -> Replacement:
    if mode == "zero":
        return torch.zeros_like
    if mode == "mean":
        if target.mean_activation is None:
            raise ValueError(f"no training mean at {target.write_site} for mean-ablation: pass means to splice_targets")
        return lambda x: target.mean_activation.to(x.device, x.dtype).expand_as(x)

    def spliced(x: Tensor) -> Tensor:
        return target.replace(x, x)
    return spliced


@contextmanager
def _stacked(managers: list[AbstractContextManager]) -> Iterator[None]:
    """Enter every hook context; if one fails on entry, the ones already entered are exited (removed)."""
    with ExitStack() as stack:
        for manager in managers:
            stack.enter_context(manager)
        yield


