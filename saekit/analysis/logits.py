"""Logit weights: each latent's decoder direction read through the unembedding (direct logit effect).

A direction u in the residual stream raises the logits by W_U @ L(u), where L is the linear part of
the final norm: for RMSNorm the elementwise weight (1 + weight for Gemma's), for LayerNorm centring
then the weight. The positive scale 1/rms depends on the input and only rescales all logits, so it is
dropped. Only meaningful when the dictionary writes a residual-stream-width site; otherwise the
analysis is skipped with a note. Computed a block of latents at a time (never [latents, vocab]).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from saekit.dictionaries.base import Dictionary
from saekit.models.loading import LoadedModel
from saekit.models.sites import parse_site

RESIDUAL_WIDTH_KINDS = ("resid_pre", "resid_post", "attn_out", "mlp_out", "mlp_in")


@dataclass(frozen=True)
class LogitConfig:
    top: int = 10  # top positive and negative tokens per latent
    through_final_norm: bool = True
    histogram_bins: int = 24
    latent_block: int = 256
    # A cross-layer latent writes several layers: its own logit weights for this many of them, those
    # its decoder writes most strongly (every layer would cost layers x the single-site analysis).
    output_layers: int = 3


@dataclass
class LogitWeights:
    positive_ids: Tensor  # [latents, top] int64
    positive_values: Tensor
    negative_ids: Tensor  # most negative first
    negative_values: Tensor
    histogram: Tensor  # [latents, bins] counts over the vocabulary
    histogram_edges: Tensor  # [latents, bins + 1] per-latent linear bins between its min and max

    def tensors(self) -> dict[str, Tensor]:
        return dict(vars(self))


def norm_linear_part(norm: nn.Module) -> tuple[bool, Tensor | None]:
    """(centres?, elementwise scale or None) of a final-norm module, its input-independent linear part."""
    name = type(norm).__name__
    centres = isinstance(norm, nn.LayerNorm) or ("LayerNorm" in name and "RMS" not in name)
    weight = getattr(norm, "weight", None)
    if weight is None:
        return centres, None
    weight = weight.detach().float()
    return centres, (1.0 + weight) if name.startswith("Gemma") else weight


def logit_skip_reason(loaded: LoadedModel, write_site: str, d_out: int) -> str | None:
    """Why logit weights are not meaningful for this dictionary, or None when they are."""
    site = parse_site(write_site)
    if site.kind not in RESIDUAL_WIDTH_KINDS or d_out != loaded.adapter.d_model:
        return (f"logit weights skipped: the dictionary writes {write_site} (width {d_out}), not a "
                f"residual-stream-width site (d_model={loaded.adapter.d_model})")
    return None


def _through_norm(directions: Tensor, centres: bool, scale: Tensor | None) -> Tensor:
    if centres:
        directions = directions - directions.mean(dim=1, keepdim=True)
    return directions * scale if scale is not None else directions


def _histograms(logits: Tensor, bins: int) -> tuple[Tensor, Tensor]:
    low, high = logits.amin(1, keepdim=True), logits.amax(1, keepdim=True)
    span = (high - low).clamp_min(1e-12)
    fraction = torch.linspace(0, 1, bins + 1)[None, :]
    edges = low + span * fraction
    index = ((logits - low) / span * bins).long().clamp(0, bins - 1)
    counts = torch.zeros(logits.shape[0], bins, dtype=torch.long).scatter_add_(1, index, torch.ones_like(index))
    return counts, edges


@torch.no_grad()
def logit_weights(
    loaded: LoadedModel, decoder: Tensor, config: LogitConfig | None = None, progress: bool = False,
) -> LogitWeights:
    """Top positive/negative tokens and a logit histogram for each decoder row."""
    config = config or LogitConfig()
    unembedding = loaded.adapter.unembedding().weight.detach().float().cpu()  # [vocab, d_model]
    centres, scale = norm_linear_part(loaded.adapter.final_norm()) if config.through_final_norm else (False, None)
    scale = scale.cpu() if scale is not None else None
    top = min(config.top, unembedding.shape[0])
    parts: dict[str, list[Tensor]] = {}
    for start in tqdm(range(0, decoder.shape[0], config.latent_block), desc="logit weights", unit="block",
                      disable=not progress):
        block = _through_norm(decoder[start:start + config.latent_block].detach().float().cpu(), centres, scale)
        logits = block @ unembedding.T
        positive, negative = logits.topk(top, dim=1), logits.topk(top, dim=1, largest=False)
        counts, edges = _histograms(logits, config.histogram_bins)
        for name, value in (("positive_ids", positive.indices), ("positive_values", positive.values),
                            ("negative_ids", negative.indices), ("negative_values", negative.values),
                            ("histogram", counts), ("histogram_edges", edges)):
            parts.setdefault(name, []).append(value)
    return LogitWeights(**{name: torch.cat(values) for name, values in parts.items()})


def logit_note(loaded: LoadedModel, config: LogitConfig) -> dict[str, Any]:
    norm = loaded.adapter.final_norm()
    centres, scale = norm_linear_part(norm)
    parts = (["centred (LayerNorm mean removal)"] if centres else []) + (["times the norm weight"] if scale is not None
                                                                      else [])
    how = ", ".join(parts) if config.through_final_norm and parts else "not passed through the final norm"
    return {"computed": True, "final_norm": type(norm).__name__, "through_final_norm": config.through_final_norm,
            "direction": f"decoder row, {how}, times the unembedding; the input-dependent 1/rms scale is dropped"}


@torch.no_grad()
def output_layer_logits(
    loaded: LoadedModel, dictionary: Dictionary, latent_ids: Tensor, config: LogitConfig | None = None,
    progress: bool = False,
) -> dict[str, Tensor]:
    """A cross-layer dictionary's decoder norm into every output layer, and logit weights per output layer.

    ``output_norms`` [latents, layers]; ``layers`` [latents, c]: the c output layers (positions in the
    range) each latent writes most strongly, strongest first (-1 past the layers it writes); and
    ``positive_ids``/``positive_values``/``negative_ids``/``negative_values`` [latents, c, top] of its
    decoder into each of them, read as :func:`logit_weights` reads a decoder row.
    """
    config = config or LogitConfig()
    norms, chosen, directions = [], [], []
    for block in latent_ids.split(config.latent_block):
        decoders = dictionary.output_decoders(block).detach().float().cpu()  # [block, layers, d]
        block_norms = decoders.norm(dim=-1)
        count = min(config.output_layers, block_norms.shape[1])
        strongest = block_norms.topk(count, dim=1).indices
        norms.append(block_norms)
        chosen.append(torch.where(block_norms.gather(1, strongest) > 0, strongest, -1))
        directions.append(decoders.gather(1, strongest[..., None].expand(-1, -1, decoders.shape[-1])))
    layers = torch.cat(chosen)
    flat = torch.cat(directions).flatten(0, 1)
    weights = logit_weights(loaded, flat, config, progress)
    shape = (*layers.shape, -1)
    out = {"output_norms": torch.cat(norms), "layers": layers}
    for name in ("positive_ids", "positive_values", "negative_ids", "negative_values"):
        out[name] = getattr(weights, name).view(shape)
    return out
