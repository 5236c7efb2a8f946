"""Per-latent activation statistics, accumulated batch by batch in memory independent of the token count.

Per latent: how often it fires (density, log10), mean activation (over all tokens and over firing
tokens), max activation, a histogram of its non-zero activations over fixed log-spaced bins, its
encoder bias and D/E projection (cosine between its encoder column and decoder row), and the
dead / ultra-rare flags with the rule that set them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from saekit.dictionaries.base import Dictionary


@dataclass(frozen=True)
class HistogramBins:
    """Fixed log-spaced bins for non-zero activations; values outside [low, high) go to the end bins."""

    low: float = 1e-6
    high: float = 1e6
    per_decade: int = 8

    @property
    def count(self) -> int:
        return round(math.log10(self.high / self.low) * self.per_decade)

    def edges(self) -> Tensor:
        return torch.logspace(math.log10(self.low), math.log10(self.high), self.count + 1, dtype=torch.float64)

    def index(self, values: Tensor) -> Tensor:
        """Bin index of each positive value (clamped into the first/last bin)."""
        inner = self.edges()[1:-1].to(values.dtype)
        return torch.bucketize(values, inner, right=True)


@dataclass(frozen=True)
class FlagRule:
    """Which latents count as dead or ultra-rare."""

    ultra_rare_log10_density: float = -4.0

    def describe(self) -> str:
        return (f"dead: never fired on the analysed tokens; ultra-rare: fired at least once and "
                f"log10(density) < {self.ultra_rare_log10_density}")


class StatisticsAccumulator:
    """Running sums over batches of latent activations ``[tokens, width]`` (only tokens that count)."""

    def __init__(self, width: int, bins: HistogramBins | None = None) -> None:
        self.bins = bins or HistogramBins()
        self.tokens = 0
        self.fire_counts = torch.zeros(width, dtype=torch.long)
        self.sums = torch.zeros(width, dtype=torch.float64)
        self.maxima = torch.zeros(width)
        self.histogram = torch.zeros(width, self.bins.count, dtype=torch.long)

    def update(self, activations: Tensor) -> None:
        activations = activations.detach().float()
        self.tokens += activations.shape[0]
        firing = activations > 0
        self.fire_counts += firing.sum(0)
        self.sums += activations.sum(0, dtype=torch.float64)
        if activations.shape[0]:
            self.maxima = torch.maximum(self.maxima, activations.amax(0))
        token_index, latent_index = firing.nonzero(as_tuple=True)
        bins = self.bins.index(activations[token_index, latent_index])
        flat = latent_index * self.bins.count + bins
        self.histogram.view(-1).index_add_(0, flat, torch.ones_like(flat))


def accumulator_bytes(width: int, bins: HistogramBins) -> int:
    """What a :class:`StatisticsAccumulator` holds: int64 fire counts, float64 sums, float32 maxima and a
    row of int64 histogram counts per latent."""
    return width * (8 + 8 + 4 + 8 * bins.count)


def update_bytes(tokens: int, width: int, firing: int) -> int:
    """The temporaries of one :meth:`StatisticsAccumulator.update`: the counted rows (float32), the firing
    mask, their float64 sums, and per firing (token, latent) pair its indices, value, bin and flat index
    (not all alive at once: 24 bytes measured at the peak)."""
    return tokens * width * (4 + 1 + 8) + 24 * firing


@dataclass
class FeatureStatistics:
    """The finished per-latent arrays (index i describes latent ``latent_ids[i]``)."""

    latent_ids: Tensor
    tokens: int
    fire_counts: Tensor
    density: Tensor
    log10_density: Tensor  # -inf for dead latents
    mean_activation: Tensor  # over all analysed tokens
    mean_when_active: Tensor  # NaN for dead latents
    max_activation: Tensor
    histogram: Tensor  # [latents, bins] counts of non-zero activations
    histogram_edges: Tensor
    encoder_bias: Tensor
    de_cosine: Tensor  # NaN when encoder and decoder live in different spaces (transcoders)
    dead: Tensor
    ultra_rare: Tensor
    rule: str

    def tensors(self) -> dict[str, Tensor]:
        names = ("latent_ids", "fire_counts", "density", "log10_density", "mean_activation", "mean_when_active",
                 "max_activation", "histogram", "histogram_edges", "encoder_bias", "de_cosine", "dead", "ultra_rare")
        return {name: getattr(self, name) for name in names}


def de_cosine(dictionary: Dictionary, latent_ids: Tensor, same_space: bool) -> Tensor:
    """Cosine between each latent's encoder column and decoder row; NaN if they live in different spaces."""
    if not same_space or dictionary.W_enc.shape[0] != dictionary.W_dec.shape[1]:
        return torch.full((len(latent_ids),), float("nan"))
    encoder = dictionary.W_enc.detach().float().cpu()[:, latent_ids].T
    decoder = dictionary.W_dec.detach().float().cpu()[latent_ids]
    return torch.nn.functional.cosine_similarity(encoder, decoder, dim=1)


def finish_statistics(
    accumulator: StatisticsAccumulator, dictionary: Dictionary, latent_ids: Tensor, same_space: bool,
    rule: FlagRule | None = None,
) -> FeatureStatistics:
    rule = rule or FlagRule()
    tokens = max(accumulator.tokens, 1)
    counts = accumulator.fire_counts
    density = counts.double() / tokens
    log10_density = density.log10()
    dead = counts == 0
    mean_active = torch.where(dead, torch.full_like(density, float("nan")), accumulator.sums / counts.clamp_min(1))
    return FeatureStatistics(
        latent_ids=latent_ids, tokens=accumulator.tokens, fire_counts=counts, density=density,
        log10_density=log10_density, mean_activation=accumulator.sums / tokens, mean_when_active=mean_active,
        max_activation=accumulator.maxima, histogram=accumulator.histogram,
        histogram_edges=accumulator.bins.edges(), encoder_bias=dictionary.b_enc.detach().float().cpu()[latent_ids],
        de_cosine=de_cosine(dictionary, latent_ids, same_space), dead=dead,
        ultra_rare=~dead & (log10_density < rule.ultra_rare_log10_density), rule=rule.describe(),
    )


def density_summary(stats: FeatureStatistics, rule: FlagRule) -> dict:
    """Counts and fractions of dead/ultra-rare latents, and the log10-density histogram of the live ones."""
    n = len(stats.latent_ids)
    alive = stats.log10_density[~stats.dead]
    edges = torch.arange(-10.0, 0.25, 0.25, dtype=torch.float64)
    hist = torch.histogram(alive.clamp(-10.0, 0.0), bins=edges).hist.long().tolist() if len(alive) else []
    return {
        "latents": n, "tokens": stats.tokens, "rule": stats.rule,
        "ultra_rare_log10_density": rule.ultra_rare_log10_density,
        "min_measurable_log10_density": -math.log10(max(stats.tokens, 1)),
        "dead": int(stats.dead.sum()), "dead_fraction": float(stats.dead.float().mean()) if n else 0.0,
        "ultra_rare": int(stats.ultra_rare.sum()),
        "ultra_rare_fraction": float(stats.ultra_rare.float().mean()) if n else 0.0,
        "log10_density_histogram": {"edges": edges.tolist(), "counts": hist},
        "activation_histogram_bins": {"low": float(stats.histogram_edges[0]), "high": float(stats.histogram_edges[-1]),
                                      "count": int(stats.histogram.shape[1]), "spacing": "log10"},
    }
