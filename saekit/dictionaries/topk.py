"""TopK dictionary: keep the k largest pre-activations per token (after ReLU), zero the rest.

Optional auxiliary-K loss (option ``aux_k`` > 0, :class:`TopKOptions`) revives dead latents: the main reconstruction's
error e = target - reconstruction, with its gradient stopped, is reconstructed from the k_aux largest
pre-activations among the latents the trainer reports dead (``dead_mask``), decoded WITHOUT the
decoder bias (the bias belongs to the main reconstruction; e already has it subtracted). The input
centring inside those pre-activations also uses the decoder bias with its gradient stopped, so the
auxiliary term reaches only dead latents' encoder columns, encoder biases and decoder rows. It is
weighted by ``aux_k_coefficient`` (1/32 by default) and reduced like the main loss (sum over the
feature dimension, mean over tokens); it is exactly zero while no latent is dead.

The forward is sparse (:mod:`saekit.dictionaries.sparse`): the pre-activations are computed densely
without autograd to choose the top k, then only the chosen entries carry a gradient and are decoded
(``embedding_bag``), so neither the forward nor the backward builds a [tokens, width] tensor beyond
the pre-activations. ``DictionaryOutput.latents`` is built from the entries only when read.
``encode`` still returns dense latents. Above ``SPARSE_MAX_ACTIVE_SHARE`` of the latents active per
token the dense forward is the cheaper one and is used instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from saekit.dictionaries.base import Dictionary, DictionaryOptions, DictionaryOutput
from saekit.dictionaries.losses import squared_error
from saekit.dictionaries.sparse import SparseLatents, selected_preactivations, top_k_per_token
from saekit.settings import setting


@dataclass(frozen=True)
class TopKOptions(DictionaryOptions):
    """The TopK family's options: the auxiliary-K loss that revives dead latents."""

    aux_k: int = setting(0, "auxiliary-K loss: per token, reconstruct the residual error from this many dead latents "
                         "(0 = off; Gao et al. use about d_in / 2)", minimum=0)
    aux_k_coefficient: float = setting(1 / 32, "weight of the auxiliary-K loss", minimum=0)


def scatter_top(values: Tensor, k: int, dim: int = -1) -> Tensor:
    """Zeros except the k largest entries of ``values`` along ``dim`` (after ReLU)."""
    top, indices = torch.topk(values, k, dim=dim, sorted=False)
    return torch.zeros_like(values).scatter_(dim, indices, top.relu())


class TopKDictionary(Dictionary):
    """L0 is fixed at k, so there is no sparsity penalty and no shrinkage."""

    SPARSITY_SETTING = "k"
    OPTIONS = TopKOptions
    options: TopKOptions

    # The sparse forward pays below this share of active latents per token (measured crossover of the
    # encoder gradient's cost, see saekit.dictionaries.sparse).
    SPARSE_MAX_ACTIVE_SHARE: ClassVar[float] = 0.25

    def activation(self, pre: Tensor) -> Tensor:
        return scatter_top(pre, self.config.k)

    def uses_sparse_forward(self) -> bool:
        """Whether ``forward`` keeps the active latents sparse (k at most the share above of the width)."""
        return self.config.k <= self.SPARSE_MAX_ACTIVE_SHARE * self.config.width

    def forward(
        self, x: Tensor, target: Tensor | None = None, *, sparsity_scale: float = 1.0,
        dead_mask: Tensor | None = None,
    ) -> DictionaryOutput:
        """As :meth:`Dictionary.forward`, with the latents kept sparse (see the module docstring)."""
        if not self.uses_sparse_forward():
            return super().forward(x, target, sparsity_scale=sparsity_scale, dead_mask=dead_mask)
        with torch.no_grad():  # only the selected entries get a gradient, through the function below
            pre = self.pre_activations(x)
        tokens_x = x.reshape(-1, x.shape[-1])
        selected, rows, columns, offsets = self.select_active(pre.reshape(-1, pre.shape[-1]))
        values = selected_preactivations(selected, tokens_x, self.b_pre, self.W_enc, self.b_enc, rows, columns,
                                         offsets).relu()
        sparse = SparseLatents(values, rows, columns, offsets, pre.shape)
        return self.assemble_output(x, target, pre, sparse, self.reconstruct(x, sparse),
                                    sparsity_scale=sparsity_scale, dead_mask=dead_mask)

    def select_active(self, pre: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """The entries to keep of ``pre`` [tokens, width] (no gradient): (selected, rows, columns, offsets)."""
        return top_k_per_token(pre, self.config.k)

    def auxiliary_losses(
        self, x: Tensor, target: Tensor, pre: Tensor, latents: Tensor | None, reconstruction: Tensor,
        dead_mask: Tensor | None,
    ) -> dict[str, Tensor]:
        if self.options.aux_k <= 0:
            return {}
        loss = self.aux_k_loss(x, target, reconstruction, dead_mask)
        return {"aux_k": self.options.aux_k_coefficient * loss}

    def aux_k_loss(self, x: Tensor, target: Tensor, reconstruction: Tensor, dead_mask: Tensor | None) -> Tensor:
        """Unweighted auxiliary-K loss (see the module docstring); zero without dead latents."""
        dead = None if dead_mask is None else dead_mask.to(x.device).nonzero().squeeze(-1)
        if dead is None or dead.numel() == 0:
            return reconstruction.new_zeros(())
        residual = (target - reconstruction).detach()
        # Only the dead columns are computed: cheaper, and no graph edge to live latents.
        dead_pre = (x - self.b_pre.detach()) @ self.W_enc[:, dead] + self.b_enc[dead]
        dead_latents = scatter_top(dead_pre, min(self.options.aux_k, dead.numel()))
        return squared_error(dead_latents @ self.W_dec[dead], residual)
