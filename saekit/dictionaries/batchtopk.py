"""BatchTopK dictionary: keep the k * n_tokens largest activations across a whole training batch.

Training (train mode): the budget of k active latents per token is shared by the batch, so easy
tokens use fewer latents and hard ones more, with mean L0 exactly k. Because that makes a token's
latents depend on the rest of its batch, inference uses a fixed threshold instead, JumpReLU-style:

    latents = pre * 1[pre > threshold]         (eval mode; the same for a token alone or in a batch)

``threshold`` is a buffer (saved with the weights) holding an exponential moving average, over
training steps, of the smallest activation the batch top-k kept; the option ``threshold_momentum``
(:class:`BatchTopKOptions`) sets the average's decay (the first training step sets it directly). It is updated inside
``forward`` during training (see ``Dictionary.learning``), so the trainer needs no extra call.
Before any training step it is negative (unset) and eval falls back to per-token TopK.

Inherits the optional auxiliary-K loss of :class:`TopKDictionary` and its sparse forward: in training
the kept entries are flat (token, latent, value) triples, a varying number per token; the eval
threshold path stays dense.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from saekit.dictionaries.base import Dictionary, DictionaryConfig, DictionaryOutput
from saekit.dictionaries.sparse import top_k_over_batch, top_k_over_batch_bounded
from saekit.dictionaries.topk import TopKDictionary, TopKOptions, scatter_top
from saekit.settings import setting

UNSET = -1.0


@dataclass(frozen=True)
class BatchTopKOptions(TopKOptions):
    """TopK's options and the decay of the inference threshold's moving average."""

    # The kept minimum drifts as training moves the pre-activations, so the average must forget early steps:
    # on the default model (blocks.14.resid_post, 97 steps of 2048 tokens, k=32) 0.99 left the threshold at
    # early values (inference L0 117, FVU 1.08), while 0.9 gave L0 32.4 and FVU 0.566, as batch top-k's 0.568.
    # 1 would never move it from the first step's value.
    threshold_momentum: float = setting(
        0.9, "decay per training step of the moving average of the smallest kept activation, which is the "
        "inference threshold", minimum=0, below=1)


class BatchTopKDictionary(TopKDictionary):
    """TopK over the batch in training, a learned global threshold at inference."""

    OPTIONS = BatchTopKOptions
    options: BatchTopKOptions
    threshold: Tensor

    def __init__(self, config: DictionaryConfig) -> None:
        super().__init__(config)
        self.register_buffer("threshold", torch.tensor(UNSET))
        # Candidates per token for the CPU's two-stage batch top-k; doubled whenever a token needed more.
        self.candidates_per_token = 4 * config.k

    @property
    def threshold_is_set(self) -> bool:
        return bool(self.threshold >= 0)

    def forward(
        self, x: Tensor, target: Tensor | None = None, *, sparsity_scale: float = 1.0,
        dead_mask: Tensor | None = None,
    ) -> DictionaryOutput:
        """Sparse in training (and in eval before the threshold is set); the threshold path is dense."""
        if not self.training and self.threshold_is_set:
            return Dictionary.forward(self, x, target, sparsity_scale=sparsity_scale, dead_mask=dead_mask)
        return super().forward(x, target, sparsity_scale=sparsity_scale, dead_mask=dead_mask)

    def select_active(self, pre: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        if not self.training:  # eval before any training step: per-token TopK, as ``activation``
            return super().select_active(pre)
        selected, rows, columns, offsets = self._batch_top(pre, min(self.config.k * pre.shape[0], pre.numel()))
        if self.learning:
            self._update_threshold(selected.relu())
        return selected, rows, columns, offsets

    def _batch_top(self, pre: Tensor, count: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """The batch's top ``count`` entries: in two stages on the CPU while that is cheaper, else one flat top-k.

        On other devices the flat top-k is one kernel and the two-stage check would wait for the device.
        """
        while pre.device.type == "cpu" and 4 * self.candidates_per_token <= pre.shape[-1]:
            found = top_k_over_batch_bounded(pre, count, self.candidates_per_token)
            if found is not None:
                return found
            self.candidates_per_token *= 2
        return top_k_over_batch(pre, count)

    def activation(self, pre: Tensor) -> Tensor:
        if not self.training:
            if not self.threshold_is_set:
                return super().activation(pre)
            return pre * (pre > self.threshold).to(pre.dtype)
        tokens = pre.numel() // pre.shape[-1]
        flat = scatter_top(pre.reshape(-1), min(self.config.k * tokens, pre.numel()))
        latents = flat.view_as(pre)
        if self.learning:
            self._update_threshold(latents.detach())
        return latents

    @torch.no_grad()
    def _update_threshold(self, kept: Tensor) -> None:
        """Move the threshold towards the smallest positive entry of ``kept`` (dense latents or the kept values).

        Written with ``where`` rather than branches on tensor values so a training step never waits for
        the device; nothing positive kept means no information, and the threshold stays.
        """
        if kept.numel() == 0:
            return
        positive = kept > 0
        smallest = torch.where(positive, kept, torch.inf).min().to(self.threshold.dtype)
        momentum = self.options.threshold_momentum
        moved = torch.where(self.threshold >= 0, self.threshold * momentum + (1 - momentum) * smallest, smallest)
        self.threshold.copy_(torch.where(positive.any(), moved, self.threshold))

    def fold_thresholds(self, output_scale: float) -> None:
        if self.threshold_is_set:
            self.threshold.div_(output_scale)
