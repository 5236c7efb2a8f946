"""Score a dictionary against a synthetic world's ground truth: directions, which feature set, magnitudes.

Works on anything with a decoder ``W_dec`` [width, d] (unit rows) and an ``encode(x)`` -- every saekit
dictionary, and the fixed-decoder :class:`ProjectionDictionary` used for reference points. Metrics:

* direction recovery: mean over true features of the max cosine to any decoder row ("recovery"), mean
  over decoder rows of the max cosine to any true feature ("precision"), and the fraction of true
  features whose max cosine clears a threshold;
* set alignment (animals world): which set -- animal, attribute, unrelated -- each latent's decoder row
  points at, by the highest per-set max cosine, or "mixture" when no set clears the threshold;
* magnitude match: for each true feature the latent with the most similar decoder row, and the Pearson
  correlation over samples between that latent's activation and the feature's true magnitude; plus
  the scale-sensitive R^2 of activation vs magnitude (correlation alone is fooled by split codes).

Baselines: :func:`random_dictionary_like` (same architecture and shape, random unit rows, untrained)
and :func:`reference_dictionaries`, which encode the animals world with a decoder fixed to the true
animal (or attribute) directions plus the unrelated ones, to show no choice gets both sets right.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Protocol

import torch
from torch import Tensor

from saekit.dictionaries.base import Dictionary
from saekit.dictionaries.registry import build_dictionary
from saekit.errors import SaekitError
from saekit.toy.worlds import AnimalsSample, AnimalsWorld

MIXTURE = "mixture"
ANIMAL_SETS: tuple[str, ...] = ("animal", "attribute", "unrelated")


class Encoder(Protocol):
    """What the metrics need from a dictionary."""

    W_dec: Tensor

    def encode(self, x: Tensor) -> Tensor: ...

    def decode(self, latents: Tensor) -> Tensor: ...


def _unit_rows(matrix: Tensor) -> Tensor:
    return matrix / matrix.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def cosine_matrix(true_directions: Tensor, decoder: Tensor) -> Tensor:
    """Signed cosines [n_true, width] between true directions and decoder rows."""
    if true_directions.shape[-1] != decoder.shape[-1]:
        raise SaekitError(f"true directions have dimension {true_directions.shape[-1]} but the decoder "
                          f"{decoder.shape[-1]}; was the dictionary trained on this world?")
    return _unit_rows(true_directions.float()) @ _unit_rows(decoder.detach().float()).T


# ---- directions ----------------------------------------------------------------------------------


@dataclass
class DirectionRecovery:
    recovery: float  # mean over true features of the max cosine to a decoder row
    precision: float  # mean over decoder rows of the max cosine to a true feature
    fraction_recovered: float  # true features with max cosine >= threshold
    threshold: float


def direction_recovery(true_directions: Tensor, decoder: Tensor, threshold: float = 0.9) -> DirectionRecovery:
    cosines = cosine_matrix(true_directions, decoder)
    best_per_true = cosines.max(dim=1).values
    return DirectionRecovery(
        recovery=best_per_true.mean().item(),
        precision=cosines.max(dim=0).values.mean().item(),
        fraction_recovered=(best_per_true >= threshold).float().mean().item(),
        threshold=threshold,
    )


@dataclass
class SetAlignment:
    labels: list[str]  # per latent: a set name or MIXTURE
    counts: dict[str, int]  # per set name and MIXTURE
    threshold: float


def set_alignment(decoder: Tensor, sets: dict[str, Tensor], threshold: float = 0.9) -> SetAlignment:
    """Label each decoder row with the set holding its most similar direction, if that cosine >= threshold."""
    names = list(sets)
    best = torch.stack([cosine_matrix(sets[name], decoder).max(dim=0).values for name in names])  # [sets, w]
    value, index = best.max(dim=0)
    labels = [names[i] if v >= threshold else MIXTURE for v, i in zip(value.tolist(), index.tolist(), strict=True)]
    counts = {name: labels.count(name) for name in [*names, MIXTURE]}
    return SetAlignment(labels=labels, counts=counts, threshold=threshold)


# ---- magnitudes ----------------------------------------------------------------------------------


def pearson_columns(a: Tensor, b: Tensor) -> Tensor:
    """Pearson correlation of matching columns of a and b [N, n]; 0 where either column is constant."""
    a = a.double() - a.double().mean(0)
    b = b.double() - b.double().mean(0)
    denominator = a.norm(dim=0) * b.norm(dim=0)
    correlation = (a * b).sum(0) / denominator.clamp_min(1e-30)
    return torch.where(denominator > 1e-12, correlation, torch.zeros_like(correlation)).float()


def r2_columns(prediction: Tensor, truth: Tensor) -> Tensor:
    """1 - SSE / SST per column, no refitted scale or offset, clipped below at 0 (0 for constant truth)."""
    prediction, truth = prediction.double(), truth.double()
    sse = (prediction - truth).pow(2).sum(0)
    sst = (truth - truth.mean(0)).pow(2).sum(0)
    r2 = 1 - sse / sst.clamp_min(1e-30)
    return torch.where(sst > 1e-12, r2.clamp_min(0), torch.zeros_like(r2)).float()


@dataclass
class MagnitudeMatch:
    matched_latent: list[int]  # per true feature: the latent whose decoder row is most similar
    correlation: list[float]  # per true feature: Pearson(latent activation, true magnitude)
    mean_correlation: float
    r2: list[float]  # per true feature: how well the activation *equals* the magnitude (scale counts)
    mean_r2: float
    n_scored: int  # features that vary over the samples; the means are over these (others score 0)


def magnitude_match(true_directions: Tensor, true_magnitudes: Tensor, decoder: Tensor,
                    latents: Tensor) -> MagnitudeMatch:
    """Match each true feature to its closest decoder row; compare that latent with the true magnitude.

    Pearson correlation ignores scale: a code that splits each magnitude between two sets (half to an
    animal latent, half to its attribute latents) correlates perfectly with both. The R^2 (activation vs
    magnitude, both in the same units because directions and decoder rows are unit-norm) does not.
    """
    matched = cosine_matrix(true_directions, decoder).argmax(dim=1)
    activations = latents[:, matched].detach()
    correlation = pearson_columns(activations, true_magnitudes)
    r2 = r2_columns(activations, true_magnitudes)
    scored = true_magnitudes.std(dim=0) > 0
    n_scored = int(scored.sum())
    mean = (lambda values: values[scored].mean().item() if n_scored else 0.0)
    return MagnitudeMatch(matched_latent=matched.tolist(), correlation=correlation.tolist(),
                          mean_correlation=mean(correlation), r2=r2.tolist(), mean_r2=mean(r2), n_scored=n_scored)


# ---- dictionaries used as baselines and references -----------------------------------------------


@torch.no_grad()
def encode(dictionary: Encoder, x: Tensor, batch_size: int = 8192) -> Tensor:
    """Inference latents for x in chunks: no gradients, a module temporarily in eval mode."""
    was_training = isinstance(dictionary, torch.nn.Module) and dictionary.training
    if was_training:
        dictionary.eval()
    try:
        return torch.cat([dictionary.encode(chunk) for chunk in x.split(batch_size)])
    finally:
        if was_training:
            dictionary.train()


@torch.no_grad()
def fvu(dictionary: Encoder, x: Tensor, latents: Tensor) -> float:
    """Fraction of variance unexplained by decode(latents)."""
    residual = (dictionary.decode(latents) - x).pow(2).sum()
    return (residual / (x - x.mean(0)).pow(2).sum().clamp_min(1e-30)).item()


def random_dictionary_like(dictionary: Dictionary, seed: int = 0) -> Dictionary:
    """Same architecture, config and shape; fresh random unit decoder rows and tied encoder; untrained."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build_dictionary(dictionary.config)


class ProjectionDictionary:
    """A fixed decoder (given unit directions) with a least-squares encoder.

    ``method="nnls"``: accelerated projected gradient (FISTA) on 0.5 ||x - z D||^2 + l1 * sum z, z >= 0;
    the small L1 breaks ties towards sparse codes when the directions are overcomplete.
    ``method="min_norm"``: z = x D^+ (signed, dense): with linearly dependent directions it splits each
    component across them, which is how a code can correlate with two incompatible sets at once.
    """

    def __init__(self, directions: Tensor, method: str = "nnls", l1: float = 1e-2, iterations: int = 300) -> None:
        if method not in ("nnls", "min_norm"):
            raise SaekitError(f"unknown projection method {method!r}; use 'nnls' or 'min_norm'")
        self.W_dec = _unit_rows(directions.float())
        self.method = method
        self.l1 = l1
        self.iterations = iterations

    def decode(self, latents: Tensor) -> Tensor:
        return latents @ self.W_dec

    @torch.no_grad()
    def encode(self, x: Tensor) -> Tensor:
        if self.method == "min_norm":
            return x @ torch.linalg.pinv(self.W_dec)
        gram = self.W_dec @ self.W_dec.T
        step = 1.0 / torch.linalg.eigvalsh(gram).max().item()
        correlation = x @ self.W_dec.T
        z = torch.zeros_like(correlation)
        momentum_point, t = z, 1.0
        for _ in range(self.iterations):
            gradient = momentum_point @ gram - correlation + self.l1
            z_next = (momentum_point - step * gradient).clamp_min(0)
            t_next = (1 + (1 + 4 * t * t) ** 0.5) / 2
            momentum_point = z_next + ((t - 1) / t_next) * (z_next - z)
            z, t = z_next, t_next
        return z


def reference_dictionaries(world: AnimalsWorld) -> dict[str, ProjectionDictionary]:
    """The trade-off's corners (animals + unrelated; attributes + unrelated) and both sets together."""
    animals, attributes, unrelated = world.animal_directions, world.attribute_directions, world.unrelated_directions
    both = torch.cat([animals, attributes, unrelated])
    return {
        "reference: true animals + unrelated": ProjectionDictionary(torch.cat([animals, unrelated])),
        "reference: true attributes + unrelated": ProjectionDictionary(torch.cat([attributes, unrelated])),
        "reference: animals + attributes + unrelated": ProjectionDictionary(both),
        "reference: all three, split code (min-norm)": ProjectionDictionary(both, method="min_norm"),
    }


# ---- reports -------------------------------------------------------------------------------------


def sparse_world_report(dictionary: Encoder, directions: Tensor, activations: Tensor,
                        magnitudes: Tensor, threshold: float = 0.9) -> dict:
    """Direction recovery, magnitude match and L0 on a sparse feature world's held-out samples."""
    latents = encode(dictionary, activations)
    match = magnitude_match(directions, magnitudes, dictionary.W_dec, latents)
    return {
        "directions": asdict(direction_recovery(directions, dictionary.W_dec, threshold)),
        "magnitude_correlation": match.mean_correlation,
        "magnitude_r2": match.mean_r2,
        "l0": (latents > 0).sum(-1).float().mean().item(),
        "fvu": fvu(dictionary, activations, latents),
    }


def animals_report(dictionary: Encoder, world: AnimalsWorld, sample: AnimalsSample,
                   threshold: float = 0.9) -> dict:
    """Per set (animal, attribute, unrelated): direction recovery and magnitude match; plus set alignment."""
    latents = encode(dictionary, sample.activations)
    sets = {
        "animal": (world.animal_directions, sample.animal_magnitudes),
        "attribute": (world.attribute_directions, sample.attribute_magnitudes),
        "unrelated": (world.unrelated_directions, sample.unrelated_magnitudes),
    }
    report: dict = {"l0": (latents > 0).sum(-1).float().mean().item(),
                    "fvu": fvu(dictionary, sample.activations, latents)}
    for name, (directions, magnitudes) in sets.items():
        if directions.shape[0] == 0:
            continue
        match = magnitude_match(directions, magnitudes, dictionary.W_dec, latents)
        report[name] = {
            "directions": asdict(direction_recovery(directions, dictionary.W_dec, threshold)),
            "magnitude_correlation": match.mean_correlation,
            "magnitude_r2": match.mean_r2,
        }
    alignment = set_alignment(dictionary.W_dec, {name: d for name, (d, _) in sets.items() if d.shape[0]},
                              threshold)
    report["alignment_counts"] = alignment.counts
    return report
