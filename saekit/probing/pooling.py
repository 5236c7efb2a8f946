"""Mean-pooled activations of labelled texts at one site: the model's raw activations and dictionary latents.

Each text becomes ``[BOS] + its first context_length - 1 tokens`` (as saekit's contexts begin), is run to the
site (the forward stops there), and every encoder's output is averaged over the text's non-BOS tokens, as
SAEBench's sparse probing averages over the non-BOS, non-pad positions (``create_meaned_model_activations``,
``get_sae_meaned_activations``). Right padding never changes a real token's activation (causal attention).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor
from tqdm.auto import tqdm

from saekit.errors import SaekitError
from saekit.models.hooks import capture
from saekit.models.loading import LoadedModel

Encoder = Callable[[Tensor], Tensor]  # [tokens, d] activations -> [tokens, features]


def tokenize(loaded: LoadedModel, texts: Sequence[str], context_length: int) -> list[Tensor]:
    """Each text as ``[BOS] + tokens[:context_length - 1]``; a text with no tokens is one line."""
    if context_length < 2:
        raise SaekitError(f"context length must be at least 2 (BOS + 1 token), got {context_length}")
    encoded = loaded.tokenizer(list(texts), add_special_tokens=False).input_ids
    rows = []
    for text, ids in zip(texts, encoded, strict=True):
        if not ids:
            raise SaekitError(f"the text {text[:40]!r} has no tokens; remove empty texts from the task")
        rows.append(torch.tensor([loaded.bos_token_id, *ids[:context_length - 1]], dtype=torch.long))
    return rows


def _padded(rows: Sequence[Tensor], pad_id: int) -> tuple[Tensor, Tensor]:
    length = max(len(row) for row in rows)
    ids = torch.full((len(rows), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), length), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, :len(row)] = row
        mask[i, :len(row)] = 1
    return ids, mask


def mean_pool(values: Tensor, keep: Tensor) -> Tensor:
    """[batch, seq, f] averaged over the positions ``keep`` [batch, seq] marks."""
    weights = keep.to(values.dtype)
    return (values * weights[..., None]).sum(1) / weights.sum(1, keepdim=True)


@torch.no_grad()
def pooled_activations(loaded: LoadedModel, site_name: str, rows: Sequence[Tensor], encoders: dict[str, Encoder],
                       batch_size: int = 32, desc: str = "pooling") -> dict[str, Tensor]:
    """``{"raw": [n, d], name: [n, features] for each encoder}``: mean over each row's non-BOS tokens (float32)."""
    site = loaded.adapter.site(site_name)
    pad_id = loaded.tokenizer.pad_token_id
    pad_id = int(pad_id if pad_id is not None else loaded.bos_token_id)
    pooled: dict[str, list[Tensor]] = {"raw": [], **{name: [] for name in encoders}}
    for start in tqdm(range(0, len(rows), batch_size), desc=desc, unit="batch"):
        ids, mask = _padded(rows[start:start + batch_size], pad_id)
        ids, mask = ids.to(loaded.device), mask.to(loaded.device)
        acts = capture(loaded.adapter, ids, [site], attention_mask=mask)[site].float()
        keep = mask.bool()
        keep[:, 0] = False  # BOS
        pooled["raw"].append(mean_pool(acts, keep).cpu())
        flat = acts[keep]  # only the kept tokens are encoded
        counts = keep.sum(1).tolist()
        for name, encode in encoders.items():
            latents = encode(flat).float()
            pooled[name].append(torch.stack([chunk.mean(0) for chunk in latents.split(counts)]).cpu())
    return {name: torch.cat(parts) for name, parts in pooled.items()}
