"""The model's next-token loss with a dictionary spliced in, against clean and ablated baselines.

For every batch of held-out contexts we run the model several times: clean; with the site replaced
by the dictionary's reconstruction; with the site zero-ablated; with the site mean-ablated (the mean
of the training activations). The BOS position always keeps its clean activation, and predictions made
at the BOS position are left out of every average. How a dictionary is spliced (one target per site,
cross-layer dictionaries as one target per layer sharing latents) is :mod:`saekit.training.splicing`,
which LoRA training splices through too; here each target also measures its reconstruction
(:class:`~saekit.evaluation.reconstruction.ReconstructionMetrics`); a crosscoder's metrics compare with
the clean activations it encodes.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch import Tensor

from saekit.dictionaries.base import Dictionary
from saekit.evaluation.reconstruction import ReconstructionMetrics
from saekit.evaluation.results import BASELINES, CONDITIONS, LossResults, MeanSE
from saekit.models.loading import LoadedModel
from saekit.models.sites import Site
from saekit.training import splicing
from saekit.training.objectives import token_kl
from saekit.training.splicing import SpliceTarget, hooks_for, spliced_context


def next_token_nll(logits: Tensor, input_ids: Tensor) -> Tensor:
    """[batch, seq-2] negative log-likelihood of each next token, predictions at BOS dropped."""
    log_probs = logits[:, 1:-1].float().log_softmax(-1)
    return -log_probs.gather(-1, input_ids[:, 2:, None]).squeeze(-1)


def kl_divergence(clean_logits: Tensor, other_logits: Tensor) -> Tensor:
    """[batch, seq-2] KL(clean || other) of the next-token distributions, same positions as the NLL: the one KL
    saekit has, which the model-loss training objectives minimise (``saekit.training.objectives``)."""
    return token_kl(clean_logits, other_logits)


def measured_splice_targets(dictionary: Dictionary, reads: list[Site], writes: list[Site], means: list[Tensor],
                            outlier_norm_factor: float | None) -> list[SpliceTarget]:
    """The dictionary's splice targets (:func:`saekit.training.splicing.splice_targets`), each measuring its
    reconstruction as it splices (FVU without outliers by the run's training rule, ``outlier_norm_factor``)."""
    targets = splicing.splice_targets(dictionary, reads, writes, means)
    for target in targets:
        target.metrics = ReconstructionMetrics(target.latent_width(), outlier_norm_factor=outlier_norm_factor)
    return targets


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
                with hooks_for(loaded, baseline_group, condition):
                    logits = loaded.model(input_ids=input_ids, use_cache=False).logits
                shared[key][condition] = (next_token_nll(logits, input_ids), kl_divergence(clean_logits, logits))
        for group, comparison, key in zip(groups, comparisons, keys):
            with spliced_context(loaded, group, input_ids=input_ids):
                logits = loaded.model(input_ids=input_ids, use_cache=False).logits
            comparison.update("clean", clean_nll, None)
            comparison.update("spliced", next_token_nll(logits, input_ids), kl_divergence(clean_logits, logits))
            for condition, (nll, kl) in shared[key].items():
                comparison.update(condition, nll, kl)
    return [comparison.result() for comparison in comparisons]
