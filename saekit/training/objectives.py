"""The loss terms of the objectives that put the model in the loop: next-token KL and downstream error.

This module's one job is the arithmetic of those objectives, on tensors, and their settings
(:class:`ObjectiveConfig`); it runs no model and hooks nothing. The trainer owns the data path.

Objectives (``ObjectiveConfig.objective``):

- ``mse``: today's reconstruction loss at the site (+ the architecture's sparsity term); no model in
  the loop.
- ``kl``: ``kl_coefficient`` x :func:`next_token_kl` (KL(clean || spliced) of the next-token
  distributions) + the sparsity term. The trainer splices the dictionary in as the evaluation does
  (BOS keeps its clean activation) and scores the same predictions the evaluation scores: positions
  1 .. seq-2 (predictions made at BOS dropped, and the last position, which has no next token).
- ``e2e_ds``: ``kl`` + ``downstream_coefficient`` x :func:`downstream_mse` (the mean over
  ``downstream_sites`` of the spliced-vs-clean mean squared error there), as e2e_sae's "e2e+ds".
- a fine-tune tail (``finetune_fraction``): the last fraction of the training tokens switch to
  ``finetune_mse_coefficient`` x site MSE + ``finetune_kl_coefficient`` x KL (Karvonen 2025).

How the trainer uses them, per batch of whole contexts ``input_ids`` [batch, seq]::

    weights = objective.weights_at(tokens_seen, total_tokens)      # which phase, which coefficients
    if weights.needs_model:
        with torch.no_grad():                                     # once per batch
            clean_logits, clean_acts = <clean forward, capturing the site and downstream_sites>
        spliced_logits, spliced_acts = <forward with the dictionary spliced in at the site>
        kl = next_token_kl(clean_logits, spliced_logits)           # chunked: bounded memory
        down = downstream_mse(spliced_acts, clean_acts)            # only when weights.downstream
    loss = weights.mse * site_mse + weights.kl * kl + weights.downstream * down.mean + sparsity

The KL here is the one the evaluation reports (``saekit.evaluation.splice.kl_divergence``: same
direction, positions and per-position arithmetic); :func:`token_kl` is that per-position KL, so the
evaluation can take it from here (training may not import evaluation, evaluation may import training).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import Tensor

from saekit.errors import SaekitError
from saekit.models.sites import parse_site
from saekit.settings import check_rules, setting
from saekit.site_kinds import SITE_KINDS

OBJECTIVES = ("mse", "kl", "e2e_ds")
KL_OBJECTIVES = ("kl", "e2e_ds")  # the objectives that run the model in the loop
# Tokens (batch x positions) per piece of the KL: a piece's float32 temporaries are a few x tokens x
# vocab x 4 bytes, about 0.4 GB each at the default model's 49,152-token vocabulary.
DEFAULT_KL_CHUNK_TOKENS = 2048


# ---- the next-token KL ---------------------------------------------------------------------------
def _kl_rows(clean_logits: Tensor, other_logits: Tensor) -> Tensor:
    """KL(clean || other) over the last (vocabulary) axis, in float32: sum p (log p - log q)."""
    clean = clean_logits.float().log_softmax(-1)
    other = other_logits.float().log_softmax(-1)
    return (clean.exp() * (clean - other)).sum(-1)


def token_kl(clean_logits: Tensor, other_logits: Tensor) -> Tensor:
    """[batch, seq-2] KL(clean || other) at each scored prediction: positions 1 .. seq-2 of [batch, seq, vocab].

    Predictions made at BOS (position 0, kept clean by the splice) and at the last position (no next
    token) are dropped, as in the evaluation's loss comparison. Unchunked; for training use
    :func:`next_token_kl`.
    """
    return _kl_rows(clean_logits[:, 1:-1], other_logits[:, 1:-1])


def _windows(batch: int, positions: int, chunk: int) -> list[tuple[int, int]]:
    """[start, end) ranges of scored-prediction indices (0 .. positions-1) holding about ``chunk`` tokens each."""
    width = max(1, chunk // max(batch, 1))
    return [(start, min(start + width, positions)) for start in range(0, positions, width)]


class _ChunkedKL(torch.autograd.Function):
    """The masked mean of :func:`token_kl`, computed a window of positions at a time, with its gradient.

    Autograd through the plain formula would keep two [batch, seq, vocab] float32 tensors per step for
    the backward. Here each window's softmaxes are made once, in the forward, which also writes that
    window's gradient, d KL(p || softmax(z)) / dz = softmax(z) - p (times the window's weights), into one
    logits-shaped tensor; the backward only scales it. Recomputing the softmaxes in the backward instead
    (the earlier form) cost two more softmax passes over batch x seq x vocab; the gradient tensor is the one
    the backward would have allocated anyway. The clean logits are a constant target.
    """

    @staticmethod
    def forward(ctx: Any, clean_logits: Tensor, spliced_logits: Tensor, weights: Tensor, chunk: int) -> Tensor:
        clean, spliced = clean_logits[:, 1:-1], spliced_logits[:, 1:-1]
        wanted = ctx.needs_input_grad[1]
        grad = torch.zeros_like(spliced_logits) if wanted else None
        total = clean_logits.new_zeros((), dtype=torch.float32)
        for a, b in _windows(clean.shape[0], clean.shape[1], chunk):
            log_p = clean[:, a:b].float().log_softmax(-1)
            log_q = spliced[:, a:b].float().log_softmax(-1)
            p = log_p.exp()
            total = total + ((p * (log_p - log_q)).sum(-1) * weights[:, a:b]).sum()
            if grad is not None:
                grad[:, 1:-1][:, a:b] = ((log_q.exp_() - p) * weights[:, a:b, None]).to(grad.dtype)
        ctx.save_for_backward(grad if grad is not None else weights)
        return total

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> tuple[None, Tensor | None, None, None]:
        if not ctx.needs_input_grad[1]:
            return None, None, None, None
        (grad,) = ctx.saved_tensors
        return None, grad * grad_output.to(grad.dtype), None, None


def next_token_kl(clean_logits: Tensor, spliced_logits: Tensor, mask: Tensor | None = None,
                  chunk: int = DEFAULT_KL_CHUNK_TOKENS) -> Tensor:
    """KL(clean || spliced) of the next-token distributions, the mean over the scored predictions.

    ``clean_logits`` and ``spliced_logits`` are [batch, seq, vocab] (any float dtype; the arithmetic is
    float32). The scored predictions are those of :func:`token_kl` (positions
    1 .. seq-2); ``mask`` ([batch, seq-2] bool, as :func:`token_kl`'s output) scores only some of them
    (None: all). With every prediction scored this equals the KL the evaluation reports: the mean over
    contexts of each context's mean, the same thing since every context scores seq-2 predictions.

    Computed ``chunk`` tokens (batch x positions) at a time, forward and backward, so memory stays a few
    chunk x vocab float32 tensors beyond the logits and their gradient; the result does not depend on
    ``chunk``. Differentiable with respect to ``spliced_logits`` only: the clean logits are the target.
    The function is vocabulary-agnostic.
    """
    if clean_logits.shape != spliced_logits.shape or clean_logits.dim() != 3:
        raise SaekitError(f"next_token_kl needs clean and spliced logits of one shape [batch, seq, vocab], got "
                          f"{tuple(clean_logits.shape)} and {tuple(spliced_logits.shape)}")
    batch, seq, _ = clean_logits.shape
    if seq < 3:
        raise SaekitError(f"next_token_kl needs contexts of at least 3 tokens (BOS, a scored prediction, its "
                          f"target), got {seq}")
    if chunk < 1:
        raise SaekitError(f"next_token_kl: chunk must be >= 1 tokens, got {chunk}")
    if mask is None:
        mask = torch.ones(batch, seq - 2, dtype=torch.bool, device=clean_logits.device)
    if tuple(mask.shape) != (batch, seq - 2):
        raise SaekitError(f"next_token_kl: mask must be [batch, seq-2] = {(batch, seq - 2)} (the scored "
                          f"predictions), got {tuple(mask.shape)}")
    count = int(mask.sum())
    if count == 0:
        raise SaekitError("next_token_kl: the mask scores no prediction")
    weights = mask.float() / count
    return _ChunkedKL.apply(clean_logits.detach(), spliced_logits, weights, chunk)


# ---- the downstream reconstruction error ---------------------------------------------------------
class DownstreamError(NamedTuple):
    """The e2e+ds term: ``mean`` over the downstream sites (what the coefficient multiplies), and ``per_site``."""

    mean: Tensor
    per_site: dict[str, Tensor]


def downstream_mse(spliced: Mapping[str, Tensor], clean: Mapping[str, Tensor],
                   skip_bos: bool = True) -> DownstreamError:
    """Mean squared error between the spliced and the clean model's activations at each downstream site.

    Normalised as e2e_sae's ``in_to_orig`` loss: per site the mean over every element (contexts,
    positions and the d_model features, ``F.mse_loss``), and its ``total_coeff`` split equally between
    the sites, i.e. the coefficient multiplies the mean over sites returned here. ``spliced`` and
    ``clean`` map site names to [batch, seq, d] activations; the arithmetic is float32. With
    ``skip_bos`` position 0 is left out: BOS keeps its clean activation in the splice, so its error is
    zero by construction and would only dilute the mean. Differentiable with respect to ``spliced``.
    """
    if not spliced or set(spliced) != set(clean):
        raise SaekitError(f"downstream_mse needs the same downstream sites from both runs, got "
                          f"{sorted(spliced)} and {sorted(clean)}")
    first = 1 if skip_bos else 0
    per_site = {}
    for site, activation in spliced.items():
        target = clean[site].detach()
        if activation.shape != target.shape:
            raise SaekitError(f"downstream_mse: {site} has shape {tuple(activation.shape)} spliced but "
                              f"{tuple(target.shape)} clean")
        per_site[site] = torch.nn.functional.mse_loss(activation[:, first:].float(), target[:, first:].float())
    return DownstreamError(torch.stack(list(per_site.values())).mean(), per_site)


# ---- settings ------------------------------------------------------------------------------------
def _objective_name(value: str) -> str | None:
    return None if value in OBJECTIVES else f"one of {', '.join(OBJECTIVES)}"


def _site_order(name: str) -> tuple[int, int] | None:
    """(layer, position of the kind in a sequential block's execution order) of ``blocks.L.kind``, or None."""
    try:
        site = parse_site(name)
    except SaekitError:
        return None
    return site.layer, SITE_KINDS.index(site.kind)


def _downstream_site(value: str) -> str | None:
    return None if _site_order(value) is not None else \
        f"a site blocks.<layer>.<kind> with kind one of {', '.join(SITE_KINDS)}"


class ObjectiveWeights(NamedTuple):
    """The coefficients of one phase: site reconstruction MSE, next-token KL, downstream MSE."""

    mse: float
    kl: float
    downstream: float

    @property
    def needs_model(self) -> bool:
        """Whether this phase runs the model in the loop (a clean and a spliced forward per batch)."""
        return self.kl > 0 or self.downstream > 0


@dataclass
class ObjectiveConfig:
    """What the dictionary is trained to minimise (beside its architecture's sparsity term); see the module doc."""

    objective: str = setting(
        "mse", "training objective: mse (reconstruction at the site), kl (KL(clean || spliced) of the next-token "
        "distributions at the evaluation's positions; e2e_sae's 'e2e'), e2e_ds (kl + the reconstruction error at "
        "downstream_sites; e2e_sae's 'e2e+ds')", check=_objective_name, invalid=("ce", "KL", ""))
    kl_coefficient: float = setting(
        1.0, "the KL term's coefficient under kl and e2e_ds (e2e_sae's published configs: 1.0 for e2e, 0.5 for "
        "e2e+ds)", above=0)
    downstream_coefficient: float = setting(
        2.5, "e2e_ds: the coefficient of the mean over downstream_sites of each site's MSE (e2e_sae's total_coeff, "
        "split equally between sites: 2.5 over blocks 7-11 resid_pre for an SAE at GPT-2's blocks.6.resid_pre, "
        "with KL 0.5)", minimum=0)
    downstream_sites: tuple[str, ...] = setting(
        (), "e2e_ds: the sites after the training site where the spliced model's activations are pulled toward the "
        "clean model's (e.g. blocks.15.resid_pre,blocks.16.resid_pre)", check=_downstream_site,
        invalid=("blocks.x.resid_pre", "mlp_out"))
    finetune_fraction: float | None = setting(
        None, "a KL fine-tune tail: the last fraction of the training tokens, in (0, 1], train on "
        "finetune_mse_coefficient x MSE + finetune_kl_coefficient x KL whatever the objective (Karvonen 2025: "
        "the last few percent close 20-50% of the CE gap); none: no tail", above=0, maximum=1)
    finetune_kl_coefficient: float = setting(1.0, "the fine-tune tail's KL coefficient", minimum=0)
    finetune_mse_coefficient: float = setting(1.0, "the fine-tune tail's coefficient of the MSE at the site",
                                              minimum=0)

    def __post_init__(self) -> None:
        self.downstream_sites = tuple(self.downstream_sites)

    def validate(self) -> ObjectiveConfig:
        """Every rule, then what spans fields; a one-line SaekitError naming the setting."""
        check_rules(self, "objective")
        if self.objective == "e2e_ds" and not self.downstream_sites:
            raise SaekitError("objective e2e_ds needs downstream_sites (the sites after the training site whose "
                              "reconstruction error it adds), e.g. downstream_sites=blocks.15.resid_pre")
        if self.objective != "e2e_ds" and self.downstream_sites:
            raise SaekitError(f"downstream_sites are used only by objective e2e_ds, not {self.objective}; drop "
                              "them or choose e2e_ds")
        if self.finetune_fraction is not None and self.finetune_kl_coefficient == 0 \
                and self.finetune_mse_coefficient == 0:
            raise SaekitError("finetune_kl_coefficient and finetune_mse_coefficient are both 0: the fine-tune "
                              "tail would train on nothing")
        return self

    def check_sites(self, training_sites: Sequence[str]) -> None:
        """Every downstream site strictly after every training site (in a sequential block's order), else one line."""
        last = max((order for site in training_sites if (order := _site_order(site)) is not None), default=None)
        for site in self.downstream_sites:
            order = _site_order(site)
            if last is not None and order is not None and order <= last:
                raise SaekitError(f"downstream_sites: {site} is not after the training site "
                                  f"{max(training_sites, key=lambda s: _site_order(s) or (-1, -1))}; the "
                                  "downstream error is measured at later sites only")

    @property
    def needs_model(self) -> bool:
        """Whether any phase runs the model in the loop (so batches must be whole contexts, not cached activations)."""
        return self.objective in KL_OBJECTIVES or self.finetune_fraction is not None

    @property
    def recipe(self) -> str:
        """A short name for plots and tables: the objective, ``+ft`` with a fine-tune tail (``mse+ft``)."""
        return self.objective + ("+ft" if self.finetune_fraction is not None else "")

    def describe(self) -> str:
        """One sentence naming what the dictionary was trained to minimise (for reports)."""
        text = {"mse": "mse (the reconstruction error at the site)",
                "kl": f"kl ({self.kl_coefficient:g} x KL(clean || spliced) of the next-token distributions)",
                "e2e_ds": f"e2e_ds ({self.kl_coefficient:g} x KL(clean || spliced) + {self.downstream_coefficient:g} "
                          f"x the mean MSE at {', '.join(self.downstream_sites)})"}[self.objective]
        if self.finetune_fraction is not None:
            text += (f", then the last {self.finetune_fraction:.0%} of the steps on {self.finetune_mse_coefficient:g} "
                     f"x MSE + {self.finetune_kl_coefficient:g} x KL")
        return text + ", plus the architecture's sparsity term"

    def model_phase_start(self, total_steps: int) -> int:
        """The first step that runs the model in the loop: 0 for kl and e2e_ds, the fine-tune tail's first step,
        or ``total_steps`` (never) for plain mse."""
        if self.objective in KL_OBJECTIVES:
            return 0
        start = self.finetune_start(total_steps)
        return total_steps if start is None else start

    def finetune_start(self, total_tokens: int) -> int | None:
        """The training token at which the fine-tune tail begins (None: no tail)."""
        if self.finetune_fraction is None:
            return None
        return total_tokens - round(self.finetune_fraction * total_tokens)

    def weights_at(self, tokens_seen: int, total_tokens: int) -> ObjectiveWeights:
        """The coefficients for the batch that starts at training token ``tokens_seen`` of ``total_tokens``."""
        start = self.finetune_start(total_tokens)
        if start is not None and tokens_seen >= start:
            return ObjectiveWeights(self.finetune_mse_coefficient, self.finetune_kl_coefficient, 0.0)
        if self.objective == "mse":
            return ObjectiveWeights(1.0, 0.0, 0.0)
        if self.objective == "kl":
            return ObjectiveWeights(0.0, self.kl_coefficient, 0.0)
        return ObjectiveWeights(0.0, self.kl_coefficient, self.downstream_coefficient)
