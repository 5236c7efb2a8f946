"""What the server computes with a run's model: per-token latent activations and steered continuations.

Both reuse saekit's own code: activations are :func:`saekit.analysis.latents.latent_batches` (the analysis's
encoder, here with no position masked), continuations are :func:`saekit.evaluation.generation.continuation`
(the sampler ``saekit generate`` uses, same seed -> same tokens), with a steering hook spliced in through
:func:`saekit.models.hooks.splice`. Callers hold the server's model lock around every function here.

Steering methods, with d the latent's decoder row (unit length when ``normalize`` is asked for, as saekit's
decoders usually are already), d^ = d/|d|, s = strength x strength multiplier, applied at the run's written
site at every position but BOS:

- ``SIMPLE_ADDITIVE``: x + s d
- ``ORTHOGONAL_DECOMP``: x's component along d^ is replaced by s: x - (x.d^) d^ + s d^
- ``PROJECTION_CAP``: x's component along d^ is capped at s: x - max(0, x.d^ - s) d^
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from saekit.analysis.latents import TokenMaskRule, latent_batches
from saekit.evaluation.generation import continuation
from saekit.models.hooks import splice
from saekit.models.loading import LoadedModel
from saekit.serve.runs import ServedRun

METHODS = ("SIMPLE_ADDITIVE", "ORTHOGONAL_DECOMP", "PROJECTION_CAP")
_UNMASKED = TokenMaskRule(exclude_bos=False, outlier_norm_factor=None)


def special_ids(loaded: LoadedModel) -> set[int]:
    return set(loaded.tokenizer.all_special_ids)


@torch.no_grad()
def latent_activations(run: ServedRun, input_ids: Tensor) -> Tensor:
    """[S, width] float32: every latent's activation at every position of ``input_ids`` (BOS included)."""
    batch = next(latent_batches(run.loaded, run.dictionary, [site.name for site in run.read_sites], input_ids[None],
                                run.width, batch_contexts=1, rule=_UNMASKED))
    return batch.activations[0]


@dataclass(frozen=True)
class Steer:
    """One latent's steering: its decoder row and the signed amount s (strength x multiplier)."""

    direction: Tensor
    amount: float


def steering_direction(run: ServedRun, latent: int, normalize: bool) -> Tensor:
    row = run.dictionary.decoder_directions()[latent].detach().float()
    return row / row.norm().clamp_min(1e-12) if normalize else row


def _steered(x: Tensor, steers: list[Steer], method: str) -> Tensor:
    out = x.float()
    for steer in steers:
        d = steer.direction.to(out.device)
        if method == "SIMPLE_ADDITIVE":
            out = out + steer.amount * d
            continue
        unit = d / d.norm().clamp_min(1e-12)
        along = out @ unit
        if method == "ORTHOGONAL_DECOMP":
            out = out + (steer.amount - along)[..., None] * unit
        else:
            out = out - (along - steer.amount).clamp_min(0)[..., None] * unit
    return out.to(x.dtype)


def steering_hook(steers: list[Steer], method: str) -> Callable[[Tensor], Tensor]:
    """The site replacement: steered at every position of every forward except the prompt's BOS."""
    seen = {"prompt": False}

    def replace(x: Tensor) -> Tensor:
        steered = _steered(x, steers, method)
        if not seen["prompt"]:
            seen["prompt"] = True
            steered[:, 0] = x[:, 0]  # the prompt's forward: BOS stays clean, as in every saekit splice
        return steered
    return replace


def generate(loaded: LoadedModel, prompt: str, new_tokens: int, temperature: float, seed: int,
             site_steers: dict | None = None, method: str = "SIMPLE_ADDITIVE") -> str:
    """The continuation after ``prompt`` (decoded as ``saekit generate`` decodes it), steered when given
    ``{site: [Steer]}``; with none it is exactly ``saekit generate``'s clean continuation at this seed."""
    replacements = {site: steering_hook(steers, method) for site, steers in (site_steers or {}).items()}
    with splice(loaded.adapter, replacements):
        ids = continuation(loaded, [], prompt, new_tokens, temperature, seed)
    return loaded.tokenizer.decode(ids, skip_special_tokens=True)
