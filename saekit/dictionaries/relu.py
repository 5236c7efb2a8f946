"""ReLU dictionary with an L1 penalty on latents weighted by their decoder norms."""

from __future__ import annotations

from torch import Tensor

from saekit.dictionaries.base import Dictionary
from saekit.dictionaries.losses import weighted_l1


class ReLUDictionary(Dictionary):
    """The original SAE: ReLU latents; sparsity from L1 (which also shrinks activations)."""

    def activation(self, pre: Tensor) -> Tensor:
        return pre.relu()

    def sparsity_losses(self, pre: Tensor, latents: Tensor, sparsity_scale: float) -> dict[str, Tensor]:
        # The penalty reads ReLU(pre), not the latents, so subclasses that rescale the latents after
        # the ReLU (gated_rescale) keep the penalty before their rescaling.
        l1 = weighted_l1(pre.relu(), self.decoder_norms())
        return {"l1": self.config.l1_coefficient * sparsity_scale * l1}
