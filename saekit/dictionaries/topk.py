"""TopK dictionary: keep the k largest pre-activations per token (after ReLU), zero the rest."""

from __future__ import annotations

import torch
from torch import Tensor

from saekit.dictionaries.base import Dictionary


class TopKDictionary(Dictionary):
    """L0 is fixed at k, so there is no sparsity penalty and no shrinkage."""

    def activation(self, pre: Tensor) -> Tensor:
        values, indices = torch.topk(pre, self.config.k, dim=-1, sorted=False)
        return torch.zeros_like(pre).scatter_(-1, indices, values.relu())
