"""SAEBench's MDL and meta-structure evaluations of a run's dictionary.

**MDL** (``sae_bench/evals/mdl``): each latent's values on held-out tokens are described by an on/off bit and, when
on, the bin its value falls in (``num_bins`` equal bins from 0 to the latent's largest value). Description length
per token = Σ_i [H(p_i) + p_i · H(bins_i)], with p_i the latent's firing rate and H(bins_i) the entropy of its
active values' bin counts, in bits. Every bin count is tried (SAEBench: 4, 6, 8, 12, 16, 32); a bin count is
*viable* when the reconstruction from bin-midpoint latents reaches sqrt(MSE) / d_in < 0.01 against the input; the
reported length is the smallest viable one (SAEBench's ``pick_minimum_viable``; the smallest overall, flagged, when
none is viable). Two departures from SAEBench's code, which are bugs there: an inactive latent stays 0 when
quantised (SAEBench moves it to the first bin's midpoint), and the bin entropy counts active values only (SAEBench
counts the zeros into the first bin); SAEBench's running maximum also starts at 100, so its bins span at least
[0, 100] whatever the latent's scale, while these span the observed range.

**Meta-structure** (``sae_bench/evals/meta_structure``): a BatchTopK meta-dictionary (width ⌈width/4⌉, k 4) trained
on the decoder rows (1500 steps of 1024 rows drawn with replacement, Adam lr 5e-4, constant), with saekit's own
BatchTopK dictionary and ``fit_dictionary``; reported: its fraction of the rows' variance explained
(1 - Σ||row - recon||² / Σ||row - mean row||²) at inference (saekit's learned threshold) and the MSE.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from saekit.dictionaries.base import Dictionary, DictionaryConfig
from saekit.dictionaries.registry import build_dictionary, seeded
from saekit.errors import SaekitError
from saekit.evaluation.evaluate import eval_contexts
from saekit.models.hooks import capture
from saekit.models.loading import LoadedModel
from saekit.probing.sparse_probing import ProbeInputs, load_probe_inputs
from saekit.settings import SEED, check_rules, setting
from saekit.training.config import load_run_config
from saekit.training.schedule import OptimConfig
from saekit.training.trainer import fit_dictionary


@dataclass
class StructureSettings:
    """MDL's and meta-structure's settings (SAEBench's defaults where it has one)."""

    mdl_tokens: int = setting(8192, "held-out tokens whose latents MDL describes (kept dense in memory)", minimum=1)
    num_bins: tuple[int, ...] = setting((4, 6, 8, 12, 16, 32), "bin counts MDL tries, comma-separated "
                                        "(SAEBench: 4,6,8,12,16,32)", minimum=1, invalid=((0,),))
    mse_threshold: float = setting(0.01, "MDL: a bin count is viable when sqrt(MSE) / d_in of the quantised "
                                   "reconstruction is below this (SAEBench: 0.01)", above=0)
    meta_width_ratio: float = setting(0.25, "meta-dictionary width as a share of the dictionary's (SAEBench: 0.25)",
                                      above=0, maximum=1)
    meta_k: int = setting(4, "meta-dictionary BatchTopK k (SAEBench: 4)", minimum=1)
    meta_steps: int = setting(1500, "meta-dictionary training steps (SAEBench: 1500)", minimum=1)
    meta_batch_size: int = setting(1024, "decoder rows per meta-dictionary step (SAEBench: 1024)", minimum=1)
    meta_lr: float = setting(5e-4, "meta-dictionary Adam learning rate, constant (SAEBench: 5e-4)", above=0)
    batch_size: int = setting(16, "contexts per forward pass (MDL)", minimum=1)
    seed: int = setting(42, "seed of the meta-dictionary's initialisation and row draws (SAEBench: 42)", **SEED)

    def __post_init__(self) -> None:
        self.num_bins = tuple(self.num_bins)

    def validate(self) -> StructureSettings:
        check_rules(self, "structure settings")
        if not self.num_bins or len(set(self.num_bins)) != len(self.num_bins):
            raise SaekitError("--num-bins must be distinct whole numbers >= 1, e.g. 4,8,16")
        return self


@dataclass
class StructureResults:
    """MDL (one entry per bin count, and the chosen one) and the meta-dictionary's fit."""

    run: str
    model: str
    site: str
    architecture: str
    width: int
    settings: dict[str, Any]
    mdl: list[dict[str, Any]] = field(default_factory=list)
    mdl_chosen: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --- MDL


def bin_edges(maxima: Tensor, num_bins: int) -> Tensor:
    """[width, num_bins + 1] equal bins from 0 to each latent's largest value."""
    steps = torch.linspace(0.0, 1.0, num_bins + 1)
    return maxima.float().clamp(min=0)[:, None] * steps[None, :]


def bin_indices(latents: Tensor, edges: Tensor) -> Tensor:
    """[n, width] index (0 .. num_bins - 1) of each value's bin; the top edge belongs to the last bin."""
    num_bins = edges.shape[1] - 1
    inner = edges[:, 1:-1]  # [width, num_bins - 1]
    return (latents.float()[:, :, None] > inner[None]).sum(-1).clamp(max=num_bins - 1)


def quantise(latents: Tensor, edges: Tensor) -> Tensor:
    """Active values moved to their bin's midpoint; zeros stay zero."""
    mids = 0.5 * (edges[:, :-1] + edges[:, 1:])  # [width, num_bins]
    index = bin_indices(latents, edges)
    values = torch.gather(mids.expand(latents.shape[0], -1, -1), 2, index[:, :, None]).squeeze(-1)
    return torch.where(latents > 0, values, torch.zeros_like(values))


def entropy_bits(probabilities: Tensor) -> Tensor:
    """Shannon entropy in bits along the last axis (0 · log 0 = 0)."""
    p = probabilities.clamp(min=0)
    return -(torch.where(p > 0, p * torch.log2(p), torch.zeros_like(p))).sum(-1)


def description_lengths(latents: Tensor, edges: Tensor, chunk: int = 256) -> Tensor:
    """[width] bits per token of each latent: H(on) + P(on) · H(bin | on)."""
    num_bins = edges.shape[1] - 1
    counts = torch.zeros(latents.shape[1], num_bins)
    for part in latents.split(chunk):
        active = (part > 0).float()
        counts.scatter_add_(1, bin_indices(part, edges).T, active.T)
    rate = counts.sum(1) / len(latents)
    on_off = entropy_bits(torch.stack([rate, 1 - rate], -1))
    totals = counts.sum(1, keepdim=True)
    value_bits = entropy_bits(counts / totals.clamp(min=1))
    return on_off + rate * value_bits


def quantised_error(x: Tensor, latents: Tensor, edges: Tensor, dictionary: Dictionary, chunk: int = 256) -> float:
    """SAEBench's MDL criterion: sqrt(mean squared error of the quantised reconstruction) / d_in."""
    squared = 0.0
    for x_part, f_part in zip(x.split(chunk), latents.split(chunk), strict=True):
        recon = dictionary.reconstruct(x_part, quantise(f_part, edges).to(x_part.dtype))
        squared += float(((recon.float() - x_part.float()) ** 2).sum())
    return math.sqrt(squared / x.numel()) / dictionary.config.d_in


def mdl_table(x: Tensor, latents: Tensor, dictionary: Dictionary, settings: StructureSettings,
              ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Every bin count's description length and error, and the chosen entry (smallest viable)."""
    maxima = latents.float().max(0).values
    rows = []
    for num_bins in settings.num_bins:
        edges = bin_edges(maxima, num_bins)
        per_latent = description_lengths(latents, edges)
        error = quantised_error(x, latents, edges, dictionary)
        rows.append({"num_bins": num_bins, "description_length": float(per_latent.sum()),
                     "mean_bits_per_latent": float(per_latent.mean()), "mse_loss": error,
                     "within_threshold": error < settings.mse_threshold})
    viable = [row for row in rows if row["within_threshold"]] or rows
    return rows, min(viable, key=lambda row: row["description_length"])


@torch.no_grad()
def token_latents(inputs: ProbeInputs, contexts: Tensor, batch_size: int) -> tuple[Tensor, Tensor]:
    """The site's activations [n, d] and the dictionary's latents [n, width] on every non-BOS token (float32)."""
    site = inputs.loaded.adapter.site(inputs.site)
    xs, fs = [], []
    for start in tqdm(range(0, len(contexts), batch_size), desc="MDL latents", unit="batch"):
        ids = contexts[start:start + batch_size].to(inputs.loaded.device)
        acts = capture(inputs.loaded.adapter, ids, [site])[site][:, 1:].reshape(-1, inputs.dictionary.config.d_in)
        xs.append(acts.float().cpu())
        fs.append(inputs.dictionary.encode(acts.float()).float().cpu())
    return torch.cat(xs), torch.cat(fs)


# --- meta-structure


def _row_batches(rows: Tensor, batch_size: int, generator: torch.Generator) -> Iterator[Tensor]:
    while True:
        yield rows[torch.randint(0, len(rows), (batch_size,), generator=generator)]


def meta_dictionary(rows: Tensor, settings: StructureSettings) -> Dictionary:
    """A BatchTopK dictionary trained on ``rows`` with saekit's trainer (seeded), in eval mode."""
    width = max(math.ceil(len(rows) * settings.meta_width_ratio), settings.meta_k)
    config = DictionaryConfig("batchtopk", d_in=rows.shape[1], width=width, k=settings.meta_k)
    meta = seeded(settings.seed, build_dictionary, config)
    optim = OptimConfig(lr=settings.meta_lr, warmup_steps=0, decay_fraction=0.0, seed=settings.seed,
                        batch_size=settings.meta_batch_size)
    batches = _row_batches(rows.float(), settings.meta_batch_size, torch.Generator().manual_seed(settings.seed))
    fit_dictionary(meta, batches, settings.meta_steps, optim)
    return meta.eval().requires_grad_(False)


@torch.no_grad()
def variance_explained(meta: Dictionary, rows: Tensor) -> tuple[float, float]:
    """(FVE, MSE) of ``meta``'s reconstruction of ``rows``, as SAEBench computes them."""
    recon = meta(rows.float()).reconstruction
    residual = float(((rows - recon) ** 2).sum())
    total = float(((rows - rows.mean(0, keepdim=True)) ** 2).sum())
    return (1 - residual / total if total > 0 else 0.0), residual / rows.numel()


def meta_structure(rows: Tensor, settings: StructureSettings) -> dict[str, Any]:
    """Train the meta-dictionary on decoder ``rows`` [width, d] and report its fit."""
    start = time.perf_counter()
    meta = meta_dictionary(rows, settings)
    seconds = time.perf_counter() - start
    fve, mse = variance_explained(meta, rows)
    l0 = float((meta.encode(rows.float()) > 0).float().sum(-1).mean())
    return {"decoder_fraction_variance_explained": fve, "final_reconstruction_mse": mse,
            "meta_width": meta.config.width, "k": settings.meta_k, "inference_l0": l0,
            "seconds": seconds}


def structure_run(run_dir: str | Path, settings: StructureSettings | None = None,
                  loaded: LoadedModel | None = None) -> StructureResults:
    """MDL on the run's held-out tokens and the meta-structure of its decoder (nothing written)."""
    settings = (settings or StructureSettings()).validate()
    config = load_run_config(Path(run_dir))
    inputs = load_probe_inputs(Path(run_dir), loaded)
    if inputs.dictionary.config.is_transcoder:
        raise SaekitError(f"{run_dir} is a transcoder; MDL's quantised reconstruction compares with the input, so "
                          "structure needs an SAE")
    contexts = eval_contexts(inputs.loaded, config, settings.mdl_tokens)
    x, latents = token_latents(inputs, contexts, settings.batch_size)
    dictionary = inputs.dictionary.cpu().float()
    table, chosen = mdl_table(x, latents, dictionary, settings)
    meta = meta_structure(dictionary.W_dec.detach().float(), settings)
    dconfig = inputs.dictionary.config
    return StructureResults(str(run_dir), inputs.loaded.name, inputs.site, dconfig.architecture, dconfig.width,
                            asdict(settings), table, chosen, meta)
