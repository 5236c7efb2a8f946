"""The gated ablation: a ReLU SAE with a learned per-latent rescaling in place of the Heaviside gate.

    latents = exp(r_scale) * ReLU(pre)        L1 on ReLU(pre) * ||d_i||, before the rescaling

The L1 penalty shrinks ReLU(pre) towards zero; the unpenalised rescaling exp(r_scale) lets each
latent scale its output back up, undoing the shrinkage without a separate gate. It tests whether the
Gated SAE's gain comes from de-shrinking alone. exp() keeps the scale positive and starts it at 1.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from saekit.dictionaries.base import DictionaryConfig
from saekit.dictionaries.relu import ReLUDictionary


class GatedRescaleDictionary(ReLUDictionary):
    """ReLU + decoder-weighted L1, with a learned positive output scale per latent."""

    def __init__(self, config: DictionaryConfig) -> None:
        super().__init__(config)
        self.r_scale = nn.Parameter(torch.zeros(config.width))

    def activation(self, pre: Tensor) -> Tensor:
        return pre.relu() * self.r_scale.exp()

    @torch.no_grad()
    def reset_latent_parameters(self, chosen: Tensor) -> list[tuple[nn.Parameter, tuple[Any, ...]]]:
        self.r_scale[chosen] = 0.0
        return [(self.r_scale, (chosen,))]
