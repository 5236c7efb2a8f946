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

* feature recovery as in synthetic benchmarks such as SynthSAEBench (:func:`feature_recovery`): MCC
  (one-to-one Hungarian matching of decoder rows to true features), per-feature firing precision,
  recall and F1, uniqueness and shrinkage;
* feature absorption on a hierarchical world (:func:`absorption`): parents whose latent goes silent
  when a child is active while a child's latent carries the parent's direction.

Baselines: :func:`random_dictionary_like` (same architecture and shape, random unit rows, untrained)
and :func:`reference_dictionaries`, which encode the animals world with a decoder fixed to the true
animal (or attribute) directions plus the unrelated ones, to show no choice gets both sets right.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Protocol

import numpy as np
import torch
from torch import Tensor

from saekit.dictionaries.base import Dictionary
from saekit.dictionaries.registry import build_dictionary, seeded
from saekit.errors import SaekitError
from saekit.toy.worlds import AnimalsSample, AnimalsWorld, HierarchicalWorld

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
    return seeded(seed, build_dictionary, dictionary.config)


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


# ---- feature recovery (MCC, firing F1, uniqueness, shrinkage) -----------------------------------


def hungarian_matching(scores: Tensor) -> tuple[list[int], list[int]]:
    """The one-to-one matching of rows to columns with the largest total score: (rows, columns).

    min(n_rows, n_columns) pairs. Shortest augmenting paths with row/column potentials (the O(n^2 m)
    Hungarian method), one row added at a time; the inner scans are vectorised over the columns.
    """
    transposed = scores.shape[0] > scores.shape[1]
    cost = -(scores.T if transposed else scores).double().cpu().numpy()  # maximise score = minimise cost
    n, m = cost.shape
    u, v = np.zeros(n + 1), np.zeros(m + 1)  # potentials; index 0 is the virtual start
    owner = np.zeros(m + 1, dtype=np.int64)  # owner[j]: the row (1-based) assigned to column j, 0 = free
    for row in range(1, n + 1):
        owner[0], column = row, 0
        slack = np.full(m + 1, np.inf)
        previous = np.zeros(m + 1, dtype=np.int64)
        visited = np.zeros(m + 1, dtype=bool)
        while owner[column] != 0:
            visited[column] = True
            current = owner[column]
            reduced = cost[current - 1] - u[current] - v[1:]
            better = ~visited[1:] & (reduced < slack[1:])
            slack[1:][better] = reduced[better]
            previous[1:][better] = column
            free = np.where(visited[1:], np.inf, slack[1:])
            nearest = int(free.argmin()) + 1
            delta = free[nearest - 1]
            u[owner[visited]] += delta
            v[visited] -= delta
            slack[1:][~visited[1:]] -= delta
            column = nearest
        while column != 0:  # flip the augmenting path back to the start
            back = previous[column]
            owner[column] = owner[back]
            column = back
    columns = [j - 1 for j in range(1, m + 1) if owner[j] != 0]
    rows = [int(owner[j + 1]) - 1 for j in columns]
    if transposed:
        rows, columns = columns, rows
    order = sorted(range(len(rows)), key=rows.__getitem__)
    return [rows[i] for i in order], [columns[i] for i in order]


@dataclass
class FeatureRecovery:
    """How well latents stand for true features; means are over the features active in the samples.

    Each true feature's *best latent* is the one whose decoder row has the largest cosine with it.
    """

    mcc: float  # mean over true features of the cosine to the decoder row matched one-to-one (Hungarian)
    f1: float  # mean per-feature F1 of "best latent fires" against "feature active"
    precision: float  # mean P(feature active | best latent fires); 0 for a latent that never fires
    recall: float  # mean P(best latent fires | feature active)
    uniqueness: float  # share of true features whose best latent is the best latent of no other feature
    shrinkage: float  # mean over features of sum(best latent) / sum(true magnitude) where both are non-zero
    n_scored: int  # true features active at least once in the samples
    per_feature: dict[str, list[float]]  # best_latent, matched_cosine, precision, recall, f1, shrinkage


def feature_recovery(true_directions: Tensor, true_magnitudes: Tensor, decoder: Tensor,
                     latents: Tensor) -> FeatureRecovery:
    """MCC, firing precision/recall/F1, uniqueness and shrinkage of ``latents`` [N, width] (see the fields)."""
    cosines = cosine_matrix(true_directions, decoder)
    n_true = cosines.shape[0]
    rows, columns = hungarian_matching(cosines)
    matched = torch.zeros(n_true)  # a true feature left without a latent (width < features) scores 0
    matched[rows] = cosines[rows, columns].cpu()
    best = cosines.argmax(dim=1).cpu()
    truth = true_magnitudes.detach().cpu().float()
    chosen = latents.detach().cpu().float()[:, best]
    active, fires = truth > 0, chosen > 0
    hits = (active & fires).sum(0).double()
    precision = hits / fires.sum(0).double().clamp_min(1)
    recall = hits / active.sum(0).double().clamp_min(1)
    f1 = torch.where(hits > 0, 2 * precision * recall / (precision + recall).clamp_min(1e-30), torch.zeros_like(hits))
    both = active & fires
    shrinkage = (chosen * both).sum(0).double() / (truth * both).sum(0).double().clamp_min(1e-30)
    scored = active.any(0)
    n_scored = int(scored.sum())
    mean = (lambda values, where=scored: values[where].double().mean().item() if bool(where.any()) else 0.0)
    unique = torch.bincount(best, minlength=decoder.shape[0])[best] == 1
    return FeatureRecovery(
        mcc=matched.double().mean().item(), f1=mean(f1), precision=mean(precision), recall=mean(recall),
        uniqueness=unique.double().mean().item(), shrinkage=mean(shrinkage, scored & both.any(0)),
        n_scored=n_scored,
        per_feature={"best_latent": best.tolist(), "matched_cosine": matched.tolist(),
                     "precision": precision.float().tolist(), "recall": recall.float().tolist(),
                     "f1": f1.float().tolist(), "shrinkage": shrinkage.float().tolist()},
    )


# ---- feature absorption on a hierarchy ----------------------------------------------------------


@dataclass
class Absorption:
    """Which parents are absorbed into their children's latents (see :func:`absorption`)."""

    count: int  # absorbed parents
    n_scored: int  # parents active together with a child on at least ``min_tokens`` samples
    rate: float  # mean over scored parents of the miss share with a child
    miss_threshold: float
    direction_threshold: float
    per_parent: list[dict]  # parent, best_latent, tokens, scored, miss_with_child, miss_alone, carried, absorbed


def absorption(true_directions: Tensor, true_magnitudes: Tensor, parent_of: Tensor, decoder: Tensor,
               latents: Tensor, miss_threshold: float = 0.25, direction_threshold: float = 0.2,
               min_tokens: int = 10) -> Absorption:
    """Count the parents whose latent is absorbed by a child's.

    For a parent p, let L(p) be its best latent (largest decoder cosine with p's direction) and T the
    samples where p is active together with one of its children. p is scored when |T| >= ``min_tokens``
    and counts as **absorbed** when both hold:

    * L(p) stays at zero on at least ``miss_threshold`` of T (the miss share with a child), and
    * some child c of p has a best latent L(c) that carries p's direction: cos(W_dec[L(c)], d_p) -
      cos(d_c, d_p) >= ``direction_threshold`` (the excess over what c's own direction already shares
      with p; a latent fully absorbing p at equal magnitudes sits near 0.7).

    A dictionary with a latent per true feature scores 0. ``miss_alone`` (the miss share where p is
    active without a child) is reported beside it, to tell absorption from a latent that fires rarely.
    """
    cosines = cosine_matrix(true_directions, decoder).cpu()
    true_cosines = cosine_matrix(true_directions, true_directions).cpu()
    best = cosines.argmax(dim=1)
    active = true_magnitudes.detach().cpu() > 0
    fires = latents.detach().cpu() > 0
    parent_of = parent_of.cpu()
    per_parent: list[dict] = []
    for parent in sorted(set(parent_of[parent_of >= 0].tolist())):
        children = (parent_of == parent).nonzero().squeeze(-1)
        with_child = active[:, parent] & active[:, children].any(1)
        alone = active[:, parent] & ~active[:, children].any(1)
        silent = ~fires[:, best[parent]]
        carried = cosines[parent, best[children]] - true_cosines[children, parent]
        tokens = int(with_child.sum())
        miss_with_child = (silent & with_child).sum().item() / max(tokens, 1)
        miss_alone = (silent & alone).sum().item() / max(int(alone.sum()), 1)
        scored = tokens >= min_tokens
        per_parent.append({
            "parent": parent, "best_latent": int(best[parent]), "tokens": tokens, "scored": scored,
            "miss_with_child": miss_with_child, "miss_alone": miss_alone, "carried": carried.max().item(),
            "absorbed": scored and miss_with_child >= miss_threshold and carried.max().item() >= direction_threshold,
        })
    scored = [entry for entry in per_parent if entry["scored"]]
    rate = sum(entry["miss_with_child"] for entry in scored) / len(scored) if scored else 0.0
    return Absorption(count=sum(entry["absorbed"] for entry in per_parent), n_scored=len(scored), rate=rate,
                      miss_threshold=miss_threshold, direction_threshold=direction_threshold, per_parent=per_parent)


def hierarchy_report(dictionary: Encoder, world: HierarchicalWorld, activations: Tensor,
                     magnitudes: Tensor) -> dict:
    """Feature recovery, absorption, L0 and FVU of a dictionary on a hierarchical world's held-out samples."""
    latents = encode(dictionary, activations)
    recovery = feature_recovery(world.directions, magnitudes, dictionary.W_dec, latents)
    absorbed = absorption(world.directions, magnitudes, world.parent_of, dictionary.W_dec, latents)
    return {
        "recovery": asdict(recovery),
        "absorption": asdict(absorbed),
        "l0": (latents > 0).sum(-1).float().mean().item(),
        "fvu": fvu(dictionary, activations, latents),
    }
