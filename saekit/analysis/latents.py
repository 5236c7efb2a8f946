"""Stream a dictionary's latent activations over token contexts, one batch of contexts at a time.

Each batch yields ``[batch, seq, latents]`` activations with the positions that do not count (BOS,
outlier-norm tokens, as in training) set to zero, the mask of counted positions, and the batch's
row numbers in the context table. Memory is bounded by the batch, never by the number of tokens.
The analysis contexts come from the held-out (eval) split with their own seed; if it runs out the
rest comes from the training split under yet another seed, and the split counts are reported.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from itertools import islice

import torch
from torch import Tensor

from saekit.activations.source import contexts_for, load_split, token_mask
from saekit.activations.spec import DataConfig
from saekit.dictionaries.base import Dictionary
from saekit.errors import SaekitError
from saekit.models.hooks import capture
from saekit.models.loading import LoadedModel

ANALYSIS_SEED_OFFSET = 2_000_003  # distinct from training (offset 0) and evaluation (1_000_003) orders


@dataclass(frozen=True)
class TokenMaskRule:
    """Which positions count, mirroring how the dictionary was trained."""

    exclude_bos: bool = True
    outlier_norm_factor: float | None = 10.0


@dataclass
class LatentBatch:
    activations: Tensor  # [batch, seq, latents], zero where not counted
    counted: Tensor  # [batch, seq] bool
    context_ids: Tensor  # [batch] rows of the context table


def batch_bytes(tokens: int, width: int, n_latents: int) -> int:
    """Making one batch of ``tokens`` positions: the encoder's float32 outputs over the whole width (the
    pre-activations and the activations, two at once), and the masked copy of the analysed latents."""
    return 4 * tokens * (2 * width + n_latents)


def analysis_contexts(loaded: LoadedModel, data: DataConfig, tokens: int) -> tuple[Tensor, dict[str, int]]:
    """Enough contexts to cover ``tokens`` counted (non-BOS) positions: eval split first, then training."""
    n_contexts = max(1, math.ceil(tokens / (data.context_length - 1)))
    split = load_split(data)
    rows = list(islice(contexts_for(loaded, split.eval, data, data.seed + ANALYSIS_SEED_OFFSET), n_contexts))
    from_eval = len(rows)
    if len(rows) < n_contexts:
        more = contexts_for(loaded, split.train, data, data.seed + 2 * ANALYSIS_SEED_OFFSET)
        rows.extend(islice(more, n_contexts - len(rows)))
    if not rows:
        raise SaekitError(f"corpus {data.corpus!r} yields no context of {data.context_length} tokens to analyse")
    return torch.stack(rows), {"eval": from_eval, "train": len(rows) - from_eval}


@torch.no_grad()
def latent_batches(
    loaded: LoadedModel, dictionary: Dictionary, sites: str | Sequence[str], contexts: Tensor, n_latents: int,
    batch_contexts: int = 8, rule: TokenMaskRule | None = None,
) -> Iterator[LatentBatch]:
    """Latent activations (the first ``n_latents`` latents) of ``contexts``, batch by batch.

    ``sites``: the site the dictionary reads, or a cross-layer dictionary's sites in layer order (their
    clean activations concatenated, as in training; a token counts only where it counts at every site).
    """
    rule = rule or TokenMaskRule()
    adapter = loaded.adapter
    names = [sites] if isinstance(sites, str) else list(sites)
    read_sites = [adapter.site(name) for name in names]
    width = sum(adapter.site_width(site) for site in read_sites)
    if width != dictionary.config.d_in:
        raise SaekitError(f"the dictionary reads width {dictionary.config.d_in} but {', '.join(names)} of "
                          f"{loaded.name} have {width}; analyse it with the model it was trained on")
    device = loaded.device
    for start in range(0, contexts.shape[0], batch_contexts):
        batch = contexts[start:start + batch_contexts]
        captured = capture(adapter, batch.to(device), read_sites)
        activations = {name: captured[site].float() for name, site in zip(names, read_sites)}
        counted = token_mask(activations, rule.exclude_bos, rule.outlier_norm_factor)
        x = torch.cat(list(activations.values()), dim=-1)
        latents = dictionary.encode(x.to(dictionary.W_enc.device))[..., :n_latents].float().cpu()
        counted = counted.cpu()
        latents = latents * counted[..., None]
        yield LatentBatch(latents, counted, torch.arange(start, start + batch.shape[0]))
