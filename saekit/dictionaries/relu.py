"""ReLU dictionary with an L1 penalty on latents weighted by their decoder norms."""

from __future__ import annotations

from torch import Tensor

from saekit.dictionaries.base import Dictionary


class ReLUDictionary(Dictionary):
    """The original SAE: ReLU latents; sparsity from L1 (which also shrinks activations)."""

    def activation(self, pre: Tensor) -> Tensor:
        return pre.relu()

    def sparsity_losses(self, pre: Tensor, latents: Tensor, sparsity_scale: float) -> dict[str, Tensor]:
        # Weighting by decoder norm keeps the penalty honest if rows are ever not unit-norm.
        l1 = (latents * self.decoder_norms()).sum(-1).mean()
        return {"l1": self.config.l1_coefficient * sparsity_scale * l1}
