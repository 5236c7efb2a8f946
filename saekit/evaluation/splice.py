"""The model's next-token loss with a dictionary spliced in, against clean and ablated baselines.

For every batch of held-out contexts we run the model several times: clean; with the site replaced
by the dictionary's reconstruction; with the site zero-ablated; with the site mean-ablated (the mean
of the training activations). The BOS position always keeps its clean activation (dictionaries are
not trained on it), and predictions made at the BOS position are left out of every average. The hooks
take where each forward starts in the sequence (:data:`Start`, the positions already in a KV cache), so
a generation step that computes only new positions splices all of them: it holds no BOS.

A cross-layer dictionary is spliced as one :class:`SpliceTarget` per layer, jointly, sharing its
latents between them: a cross-layer transcoder's layer-j target (:class:`LayerSpliceTarget`) encodes
the spliced model's own MLP input at layer j and writes b_dec_j + sum over i <= j of layer i's
decoders into layer j from latents kept by the earlier layers' targets in the same forward. A
crosscoder is acausal (its latents read every layer), so its targets (:class:`AcausalSpliceTarget`)
encode the clean activations of all its layers in one capture before the spliced forward
(:meth:`SpliceTarget.prepare`) and write each layer's part of that reconstruction; their
reconstruction metrics compare with those clean activations.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import Tensor

from saekit.dictionaries.base import Dictionary, Span
from saekit.evaluation.reconstruction import ReconstructionMetrics
from saekit.evaluation.results import BASELINES, CONDITIONS, LossResults, MeanSE
from saekit.models.hooks import capture, splice, splice_module
from saekit.models.loading import LoadedModel
from saekit.models.sites import Site
from saekit.training.objectives import token_kl

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


def next_token_nll(logits: Tensor, input_ids: Tensor) -> Tensor:
    """[batch, seq-2] negative log-likelihood of each next token, predictions at BOS dropped."""
    log_probs = logits[:, 1:-1].float().log_softmax(-1)
    return -log_probs.gather(-1, input_ids[:, 2:, None]).squeeze(-1)


def kl_divergence(clean_logits: Tensor, other_logits: Tensor) -> Tensor:
    """[batch, seq-2] KL(clean || other) of the next-token distributions, same positions as the NLL: the one KL
    saekit has, which the model-loss training objectives minimise (``saekit.training.objectives``)."""
    return token_kl(clean_logits, other_logits)


@dataclass
class SpliceTarget:
    """One dictionary and where it goes: reads ``read_site``, writes ``write_site`` (equal for an SAE)."""

    dictionary: Dictionary
    read_site: Site
    write_site: Site
    mean_activation: Tensor  # training mean at write_site, for mean-ablation
    outlier_norm_factor: float | None = 10.0  # the run's training rule, for FVU without outliers
    metrics: ReconstructionMetrics = field(init=False)

    causal: ClassVar[bool] = True  # computable inside one forward (generation can use it)

    def __post_init__(self) -> None:
        self.metrics = ReconstructionMetrics(self.latent_width(), outlier_norm_factor=self.outlier_norm_factor)

    @classmethod
    def for_layers(cls, dictionary: Dictionary, reads: list[Site], writes: list[Site], means: list[Tensor],
                   outlier_norm_factor: float | None) -> list[SpliceTarget]:
        """The targets that splice ``dictionary`` (reading ``reads``, writing ``writes``, one per layer)."""
        return [cls(dictionary, reads[0], writes[0], means[0], outlier_norm_factor)]

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
        self.metrics.update(original, reconstruction, latents)
        return reconstruction


@dataclass
class LayerSpliceTarget(SpliceTarget):
    """Layer ``layer`` (position in the range) of a cross-layer transcoder spliced in at every layer at once."""

    layer: int = 0
    latents: dict[int, Tensor] = field(default_factory=dict)  # shared by the layers' targets: this forward's

    @classmethod
    def for_layers(cls, dictionary: Dictionary, reads: list[Site], writes: list[Site], means: list[Tensor],
                   outlier_norm_factor: float | None) -> list[SpliceTarget]:
        shared: dict[int, Tensor] = {}
        return [cls(dictionary, read, write, mean, outlier_norm_factor, layer=layer, latents=shared)
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
    def for_layers(cls, dictionary: Dictionary, reads: list[Site], writes: list[Site], means: list[Tensor],
                   outlier_norm_factor: float | None) -> list[SpliceTarget]:
        shared: dict[str, Tensor] = {}
        return [cls(dictionary, read, write, mean, outlier_norm_factor, layer=layer, read_sites=tuple(reads),
                    shared=shared) for layer, (read, write, mean) in enumerate(zip(reads, writes, means))]

    def prepare(self, loaded: LoadedModel, input_ids: Tensor) -> None:
        if self.shared.get("input_ids") is not input_ids:
            captured = capture(loaded.adapter, input_ids, self.read_sites)
            output = self.dictionary(torch.cat([captured[site][:, 1:].float() for site in self.read_sites], -1))
            self.shared.update(input_ids=input_ids, reconstruction=output.reconstruction, latents=output.latents,
                               clean=torch.stack([captured[site][:, 1:] for site in self.read_sites]))
            self.shared["recorded"] = torch.zeros(len(self.read_sites), dtype=torch.bool)
        if not self.shared["recorded"][self.layer]:
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


def splice_targets(dictionary: Dictionary, reads: list[Site], writes: list[Site], means: list[Tensor],
                   outlier_norm_factor: float | None) -> list[SpliceTarget]:
    """How ``dictionary`` is spliced, by what it reads and writes: one target, or one per layer sharing latents."""
    return SPLICE_TARGETS[dictionary.SPAN].for_layers(dictionary, reads, writes, means, outlier_norm_factor)


def _context(loaded: LoadedModel, targets: Sequence[SpliceTarget], mode: str,
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


def spliced_context(loaded: LoadedModel, targets: Sequence[SpliceTarget],
                    start: Start = from_zero) -> AbstractContextManager:
    """Hooks that splice every target's dictionary in (for generation and other callers).

    ``start()`` is read at each forward: the positions already in the KV cache, so a forward that starts
    there splices every position it computes; one that starts at 0 keeps BOS clean (the default, always).
    """
    return _context(loaded, targets, "spliced", start)


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


class LossComparison:
    """Per-context mean NLL and KL for each condition, for means and standard errors."""

    def __init__(self) -> None:
        self.nll: dict[str, list[Tensor]] = {c: [] for c in CONDITIONS}
        self.kl: dict[str, list[Tensor]] = {c: [] for c in CONDITIONS if c != "clean"}
        self.token_nll: dict[str, list[Tensor]] = {"clean": [], "spliced": []}

    def update(self, condition: str, nll: Tensor, kl: Tensor | None) -> None:
        self.nll[condition].append(nll.mean(-1).double().cpu())
        if condition in self.token_nll:
            self.token_nll[condition].append(nll.float().cpu())
        if kl is not None:
            self.kl[condition].append(kl.mean(-1).double().cpu())

    def token_delta(self) -> Tensor:
        """[contexts, seq-2] increase in NLL at each predicted token when the dictionary is spliced in."""
        return torch.cat(self.token_nll["spliced"]) - torch.cat(self.token_nll["clean"])

    def result(self) -> LossResults:
        per_context = {c: torch.cat(v) for c, v in self.nll.items()}
        clean = per_context["clean"]
        ce = {condition: _mean_se(values) for condition, values in per_context.items()}
        others = [c for c in CONDITIONS if c != "clean"]
        delta_ce = {c: _mean_se(per_context[c] - clean) for c in others}  # paired by context
        kl = {c: _mean_se(torch.cat(self.kl[c])) for c in others}
        spliced, ce_clean = ce["spliced"].mean, ce["clean"].mean
        recovered = {b: 1 - (spliced - ce_clean) / (ce[b].mean - ce_clean) for b in BASELINES}
        return LossResults.build(clean.numel(), ce, delta_ce, kl, recovered)


def _mean_se(values: Tensor) -> MeanSE:
    n = values.numel()
    se = values.std().item() / math.sqrt(n) if n > 1 else float("nan")
    return MeanSE(values.mean().item(), se)


@torch.no_grad()
def compare_losses(loaded: LoadedModel, targets: list[SpliceTarget], batches: Iterator[Tensor],
                   comparison: LossComparison | None = None) -> LossResults:
    """Run every condition on every batch; returns losses, KLs and loss recovered per baseline."""
    comparison = comparison if comparison is not None else LossComparison()
    return compare_losses_many(loaded, [targets], batches, [comparison])[0]


@torch.no_grad()
def compare_losses_many(loaded: LoadedModel, groups: list[list[SpliceTarget]], batches: Iterator[Tensor],
                        comparisons: list[LossComparison] | None = None) -> list[LossResults]:
    """Like :func:`compare_losses` for several splices of the same contexts (a sweep; a joint splice and its parts).

    The clean pass is shared by all, and the zero- and mean-ablated passes by every group that splices
    the same sites: each batch costs 1 + 2 x (distinct site sets) + len(groups) forwards. The
    mean-ablation baseline of a site set uses the training means of the first group splicing it.
    """
    keys = [tuple(sorted(str(t.write_site) for t in group)) for group in groups]
    baseline_groups = {key: group for key, group in reversed(list(zip(keys, groups)))}  # the first of each
    comparisons = comparisons if comparisons is not None else [LossComparison() for _ in groups]
    for input_ids in batches:
        input_ids = input_ids.to(loaded.device)
        clean_logits = loaded.model(input_ids=input_ids, use_cache=False).logits
        clean_nll = next_token_nll(clean_logits, input_ids)
        shared: dict[tuple[str, ...], dict[str, tuple[Tensor, Tensor]]] = {}
        for key, baseline_group in baseline_groups.items():
            shared[key] = {}
            for condition in ("zero", "mean"):
                with _context(loaded, baseline_group, condition):
                    logits = loaded.model(input_ids=input_ids, use_cache=False).logits
                shared[key][condition] = (next_token_nll(logits, input_ids), kl_divergence(clean_logits, logits))
        for group, comparison, key in zip(groups, comparisons, keys):
            for target in group:
                target.prepare(loaded, input_ids)
            with _context(loaded, group, "spliced"):
                logits = loaded.model(input_ids=input_ids, use_cache=False).logits
            comparison.update("clean", clean_nll, None)
            comparison.update("spliced", next_token_nll(logits, input_ids), kl_divergence(clean_logits, logits))
            for condition, (nll, kl) in shared[key].items():
                comparison.update(condition, nll, kl)
    return [comparison.result() for comparison in comparisons]
