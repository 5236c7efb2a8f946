"""Synthetic feature worlds: sparse ground-truth features embedded in fewer dimensions, seeded.

Two generators, each built from a dataclass config whose ``seed`` fixes the geometry (the true
directions); ``sample`` draws activations from a caller-supplied ``torch.Generator``:

* :class:`SparseFeatureWorld` -- ``n_features`` sparse features with unit directions in ``d < n``
  dimensions, a firing probability, per-feature importance (a magnitude scale decaying geometrically
  from 1 to ``min_importance``) and a correlation structure: independent features, groups that
  co-fire (``"correlated"``) or groups whose members exclude each other (``"anticorrelated"``).
  Every structure keeps each feature's marginal firing probability equal to ``firing_probability``.
* :class:`AnimalsWorld` -- the "features that form no basis" geometry: ``n_animals`` sparse animal
  features whose directions are fixed nonnegative combinations of a few orthonormal, dense attribute
  directions, plus ``n_unrelated`` sparse features in the orthogonal complement. A sample carries both
  ground truths: animal magnitudes and the attribute magnitudes they induce (the projection of the
  activation onto each attribute direction), and the unrelated magnitudes.
* :class:`HierarchicalWorld` -- parent/child ground truth: ``n_parents`` parent features, each with
  ``children_per_parent`` children that fire only when their parent fires and exclude each other,
  plus ``n_independent`` features with no hierarchy; root (parent and independent) firing
  probabilities are Zipfian, optionally correlated within groups of roots. The world where feature
  absorption happens (a child latent that takes over its parent's direction).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from saekit.errors import SaekitError

Correlation = Literal["independent", "correlated", "anticorrelated"]
CORRELATIONS: tuple[str, ...] = ("independent", "correlated", "anticorrelated")


def _check_probability(name: str, value: float) -> None:
    if not 0.0 < value <= 1.0:
        raise SaekitError(f"{name} must be in (0, 1], got {value}")


def _unit_rows(matrix: Tensor) -> Tensor:
    return matrix / matrix.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def _uniform(shape: tuple[int, ...], low: float, high: float, generator: torch.Generator | None) -> Tensor:
    return low + (high - low) * torch.rand(shape, generator=generator)


# ---- sparse feature world ------------------------------------------------------------------------


@dataclass
class SparseWorldConfig:
    """Sizes, sparsity, importance and correlation of a :class:`SparseFeatureWorld`."""

    n_features: int = 128
    d: int = 32
    firing_probability: float = 0.03
    min_importance: float = 1.0  # importance (magnitude scale) decays geometrically from 1 to this
    magnitude_range: tuple[float, float] = (0.0, 1.0)  # active magnitudes ~ U(range) * importance
    correlation: Correlation = "independent"
    group_size: int = 4  # consecutive features form groups for the (anti)correlated structures
    correlation_strength: float = 1.0  # 0: independent ... 1: fully (anti)correlated groups
    seed: int = 0  # fixes the feature directions

    def __post_init__(self) -> None:
        if self.n_features < 1 or self.d < 1:
            raise SaekitError(f"world sizes must be positive, got n_features={self.n_features} d={self.d}")
        _check_probability("firing_probability", self.firing_probability)
        if self.min_importance <= 0:
            raise SaekitError(f"min_importance must be positive, got {self.min_importance}")
        low, high = self.magnitude_range
        if not 0 <= low < high:
            raise SaekitError(f"magnitude_range must satisfy 0 <= low < high, got {self.magnitude_range}")
        if self.correlation not in CORRELATIONS:
            raise SaekitError(f"correlation must be one of {CORRELATIONS}, got {self.correlation!r}")
        if self.group_size < 1 or not 0.0 <= self.correlation_strength <= 1.0:
            raise SaekitError("group_size must be >= 1 and correlation_strength in [0, 1]")
        if self.correlation == "anticorrelated" and self.firing_probability * self.group_size > 1:
            raise SaekitError(
                f"anticorrelated groups need firing_probability * group_size <= 1, "
                f"got {self.firing_probability} * {self.group_size}"
            )

    @property
    def expected_active(self) -> float:
        return self.n_features * self.firing_probability


class SparseFeatureWorld:
    """Sparse features with fixed unit directions; ``sample`` returns activations and true magnitudes."""

    def __init__(self, config: SparseWorldConfig) -> None:
        self.config = config
        seeded = torch.Generator().manual_seed(config.seed)
        self.directions = _unit_rows(torch.randn(config.n_features, config.d, generator=seeded))
        exponents = torch.arange(config.n_features, dtype=torch.float32) / max(config.n_features - 1, 1)
        self.importance = config.min_importance**exponents
        self.group = torch.arange(config.n_features) // config.group_size

    def firing_mask(self, n_samples: int, generator: torch.Generator | None = None) -> Tensor:
        """Boolean [n_samples, n_features]: which features fire, with the configured correlation."""
        cfg = self.config
        independent = torch.rand(n_samples, cfg.n_features, generator=generator) < cfg.firing_probability
        if cfg.correlation == "independent" or cfg.correlation_strength == 0:
            return independent
        n_groups = int(self.group[-1]) + 1
        if cfg.correlation == "correlated":
            return self._correlated(independent, n_groups, generator)
        return self._anticorrelated(independent, n_groups, generator)

    def _correlated(self, independent: Tensor, n_groups: int, generator: torch.Generator | None) -> Tensor:
        # Each feature copies its group's event with probability c, else fires independently:
        # the marginal stays p and two members of a group have correlation c**2.
        cfg = self.config
        group_event = torch.rand(independent.shape[0], n_groups, generator=generator) < cfg.firing_probability
        copies = torch.rand(independent.shape, generator=generator) < cfg.correlation_strength
        return torch.where(copies, group_event[:, self.group], independent)

    def _anticorrelated(self, independent: Tensor, n_groups: int, generator: torch.Generator | None) -> Tensor:
        # With probability c a group is "exclusive" for this sample: at most one member fires (any one
        # with probability p * size, a uniform member); otherwise members fire independently.
        cfg = self.config
        n_samples = independent.shape[0]
        sizes = torch.bincount(self.group, minlength=n_groups)
        starts = torch.cumsum(sizes, 0) - sizes
        exclusive = torch.rand(n_samples, n_groups, generator=generator) < cfg.correlation_strength
        event = torch.rand(n_samples, n_groups, generator=generator) < cfg.firing_probability * sizes
        member = (torch.rand(n_samples, n_groups, generator=generator) * sizes).long().clamp_max(sizes - 1)
        offset = torch.arange(cfg.n_features) - starts[self.group]
        chosen = event[:, self.group] & (member[:, self.group] == offset)
        return torch.where(exclusive[:, self.group], chosen, independent)

    def sample(self, n_samples: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """Draw ``(activations [n, d], true_magnitudes [n, n_features])``."""
        cfg = self.config
        mask = self.firing_mask(n_samples, generator)
        magnitudes = _uniform((n_samples, cfg.n_features), *cfg.magnitude_range, generator) * self.importance
        magnitudes = magnitudes * mask
        return magnitudes @ self.directions, magnitudes


# ---- animals in attributes -----------------------------------------------------------------------


@dataclass
class AnimalsWorldConfig:
    """Sizes and sparsity of an :class:`AnimalsWorld`."""

    d: int = 32
    n_attributes: int = 12
    n_animals: int = 32
    attributes_per_animal: int = 3
    attribute_weight_range: tuple[float, float] = (0.5, 1.0)  # nonnegative, before normalising
    animal_firing_probability: float = 0.04
    n_unrelated: int = 48
    unrelated_firing_probability: float = 0.04
    magnitude_range: tuple[float, float] = (0.0, 1.0)
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0 < self.n_attributes < self.d:
            raise SaekitError(f"need 0 < n_attributes < d, got n_attributes={self.n_attributes} d={self.d}")
        if not 0 < self.attributes_per_animal <= self.n_attributes:
            raise SaekitError("attributes_per_animal must be between 1 and n_attributes")
        if self.n_animals < 1 or self.n_unrelated < 0:
            raise SaekitError("need n_animals >= 1 and n_unrelated >= 0")
        if self.n_animals > math.comb(self.n_attributes, self.attributes_per_animal):
            raise SaekitError(
                f"{self.n_animals} animals cannot have distinct sets of {self.attributes_per_animal} "
                f"of {self.n_attributes} attributes; raise n_attributes or attributes_per_animal"
            )
        _check_probability("animal_firing_probability", self.animal_firing_probability)
        _check_probability("unrelated_firing_probability", self.unrelated_firing_probability)
        low, high = self.attribute_weight_range
        if not 0 < low <= high:
            raise SaekitError(f"attribute_weight_range must satisfy 0 < low <= high, got {self.attribute_weight_range}")
        low, high = self.magnitude_range
        if not 0 <= low < high:
            raise SaekitError(f"magnitude_range must satisfy 0 <= low < high, got {self.magnitude_range}")

    @property
    def expected_active(self) -> float:
        """Expected number of active animal + unrelated features per sample."""
        return (self.n_animals * self.animal_firing_probability
                + self.n_unrelated * self.unrelated_firing_probability)


@dataclass
class AnimalsSample:
    """Activations with every ground truth: animal, induced attribute and unrelated magnitudes."""

    activations: Tensor  # [n, d]
    animal_magnitudes: Tensor  # [n, n_animals]
    attribute_magnitudes: Tensor  # [n, n_attributes]: projections onto the attribute directions
    unrelated_magnitudes: Tensor  # [n, n_unrelated]


class AnimalsWorld:
    """Sparse animals inside a dense attribute subspace, plus unrelated sparse features outside it."""

    def __init__(self, config: AnimalsWorldConfig) -> None:
        self.config = config
        seeded = torch.Generator().manual_seed(config.seed)
        basis, _ = torch.linalg.qr(torch.randn(config.d, config.d, generator=seeded))
        self.attribute_directions = basis[:, : config.n_attributes].T.contiguous()
        complement = basis[:, config.n_attributes:].T
        self.animal_weights = self._animal_weights(seeded)  # [n_animals, n_attributes], unit rows
        self.animal_directions = self.animal_weights @ self.attribute_directions
        unrelated = torch.randn(config.n_unrelated, complement.shape[0], generator=seeded)
        self.unrelated_directions = _unit_rows(unrelated) @ complement

    def _animal_weights(self, generator: torch.Generator) -> Tensor:
        cfg = self.config
        supports: list[tuple[int, ...]] = []
        seen: set[tuple[int, ...]] = set()
        while len(supports) < cfg.n_animals:  # distinct attribute sets, found by rejection
            chosen = torch.randperm(cfg.n_attributes, generator=generator)[: cfg.attributes_per_animal]
            support = tuple(sorted(chosen.tolist()))
            if support not in seen:
                seen.add(support)
                supports.append(support)
        weights = torch.zeros(cfg.n_animals, cfg.n_attributes)
        for row, support in enumerate(supports):
            values = _uniform((len(support),), *cfg.attribute_weight_range, generator)
            weights[row, list(support)] = values
        return _unit_rows(weights)

    def sample(self, n_samples: int, generator: torch.Generator | None = None) -> AnimalsSample:
        cfg = self.config
        animals = self._sparse(n_samples, cfg.n_animals, cfg.animal_firing_probability, generator)
        unrelated = self._sparse(n_samples, cfg.n_unrelated, cfg.unrelated_firing_probability, generator)
        activations = animals @ self.animal_directions + unrelated @ self.unrelated_directions
        return AnimalsSample(
            activations=activations,
            animal_magnitudes=animals,
            attribute_magnitudes=animals @ self.animal_weights,
            unrelated_magnitudes=unrelated,
        )

    def _sparse(self, n_samples: int, n_features: int, probability: float,
                generator: torch.Generator | None) -> Tensor:
        mask = torch.rand(n_samples, n_features, generator=generator) < probability
        return _uniform((n_samples, n_features), *self.config.magnitude_range, generator) * mask


# ---- hierarchy ---------------------------------------------------------------------------------


@dataclass
class HierarchicalWorldConfig:
    """Sizes, Zipfian frequencies, child rules and root correlation of a :class:`HierarchicalWorld`.

    Feature order: parents ``[0, n_parents)``, then the independent features, then the children, parent
    i's at ``n_roots + i * children_per_parent + j``. The roots (parents, then independent features)
    have Zipfian firing probabilities in index order: root r fires with ``max_firing_probability /
    (r + 1) ** zipf_exponent``, so parents are the most frequent roots. When its parent fires, a parent
    has one active child with probability ``child_probability`` (none otherwise), child j chosen with
    weight ``1 / (j + 1) ** child_zipf_exponent`` (0: uniformly). With ``correlation_strength`` rho > 0,
    consecutive roots in groups of ``correlated_group_size`` co-fire through a Gaussian copula (each
    fires when sqrt(1 - rho) e_i + sqrt(rho) g_group exceeds its quantile), which keeps every marginal.
    Active magnitudes are uniform in ``magnitude_range``; ``seed`` fixes the (random unit) directions.
    """

    n_parents: int = 20
    children_per_parent: int = 5
    n_independent: int = 20
    d: int = 64
    max_firing_probability: float = 0.3
    zipf_exponent: float = 0.6
    child_probability: float = 0.8
    child_zipf_exponent: float = 0.0
    magnitude_range: tuple[float, float] = (0.75, 1.25)
    correlated_group_size: int = 1
    correlation_strength: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.n_parents < 0 or self.n_independent < 0 or self.n_parents + self.n_independent < 1:
            raise SaekitError(f"need n_parents >= 0, n_independent >= 0 and at least one feature, got "
                              f"n_parents={self.n_parents} n_independent={self.n_independent}")
        if self.children_per_parent < 1 or self.d < 1:
            raise SaekitError(f"children_per_parent and d must be positive, got {self.children_per_parent}, {self.d}")
        _check_probability("max_firing_probability", self.max_firing_probability)
        if not 0.0 <= self.child_probability <= 1.0:
            raise SaekitError(f"child_probability must be in [0, 1], got {self.child_probability}")
        if self.zipf_exponent < 0 or self.child_zipf_exponent < 0:
            raise SaekitError("zipf_exponent and child_zipf_exponent must be >= 0")
        low, high = self.magnitude_range
        if not 0 <= low < high:
            raise SaekitError(f"magnitude_range must satisfy 0 <= low < high, got {self.magnitude_range}")
        if self.correlated_group_size < 1 or not 0.0 <= self.correlation_strength < 1.0:
            raise SaekitError("correlated_group_size must be >= 1 and correlation_strength in [0, 1)")

    @property
    def n_roots(self) -> int:
        return self.n_parents + self.n_independent

    @property
    def n_features(self) -> int:
        return self.n_roots + self.n_parents * self.children_per_parent

    def firing_probabilities(self) -> Tensor:
        """Each feature's marginal firing probability [n_features] (children: parent's x child_probability x share)."""
        ranks = torch.arange(self.n_roots, dtype=torch.float64) + 1
        roots = self.max_firing_probability / ranks**self.zipf_exponent
        shares = self.child_shares().double()
        children = roots[: self.n_parents, None] * self.child_probability * shares[None, :]
        return torch.cat([roots, children.reshape(-1)]).float()

    def child_shares(self) -> Tensor:
        """Which child fires, given that one does: weights 1 / (j + 1) ** child_zipf_exponent, normalised."""
        weights = (torch.arange(self.children_per_parent, dtype=torch.float64) + 1) ** -self.child_zipf_exponent
        return (weights / weights.sum()).float()

    @property
    def expected_active(self) -> float:
        return float(self.firing_probabilities().double().sum())


class HierarchicalWorld:
    """Parents, their mutually exclusive children and independent features; ``sample`` as SparseFeatureWorld's."""

    def __init__(self, config: HierarchicalWorldConfig) -> None:
        self.config = config
        seeded = torch.Generator().manual_seed(config.seed)
        self.directions = _unit_rows(torch.randn(config.n_features, config.d, generator=seeded))
        self.probabilities = config.firing_probabilities()
        parent_of = torch.full((config.n_features,), -1, dtype=torch.long)
        parent_of[config.n_roots:] = torch.arange(config.n_parents).repeat_interleave(config.children_per_parent)
        self.parent_of = parent_of  # per feature: its parent's index, -1 for roots

    def children(self, parent: int) -> list[int]:
        """The feature indices of ``parent``'s children."""
        start = self.config.n_roots + parent * self.config.children_per_parent
        return list(range(start, start + self.config.children_per_parent))

    def firing_mask(self, n_samples: int, generator: torch.Generator | None = None) -> Tensor:
        """Boolean [n_samples, n_features]: roots by their (correlated) Zipfian probabilities, then children."""
        cfg = self.config
        roots = self._roots(n_samples, generator)
        if cfg.n_parents == 0:
            return roots
        has_child = roots[:, : cfg.n_parents] & (torch.rand(n_samples, cfg.n_parents, generator=generator)
                                                 < cfg.child_probability)
        choice = torch.multinomial(cfg.child_shares(), n_samples * cfg.n_parents, replacement=True,
                                   generator=generator).view(n_samples, cfg.n_parents)
        children = torch.nn.functional.one_hot(choice, cfg.children_per_parent).bool() & has_child[..., None]
        return torch.cat([roots, children.reshape(n_samples, -1)], dim=1)

    def _roots(self, n_samples: int, generator: torch.Generator | None) -> Tensor:
        cfg = self.config
        p = self.probabilities[: cfg.n_roots]
        rho = cfg.correlation_strength
        if rho == 0 or cfg.correlated_group_size == 1:
            return torch.rand(n_samples, cfg.n_roots, generator=generator) < p
        group = torch.arange(cfg.n_roots) // cfg.correlated_group_size
        shared = torch.randn(n_samples, int(group[-1]) + 1, generator=generator)[:, group]
        own = torch.randn(n_samples, cfg.n_roots, generator=generator)
        latent = (1 - rho) ** 0.5 * own + rho**0.5 * shared  # standard normal per root
        return latent > torch.special.ndtri(1 - p.double()).float()

    def sample(self, n_samples: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """Draw ``(activations [n, d], true_magnitudes [n, n_features])``."""
        mask = self.firing_mask(n_samples, generator)
        magnitudes = _uniform((n_samples, self.config.n_features), *self.config.magnitude_range, generator) * mask
        return magnitudes @ self.directions, magnitudes


World = SparseFeatureWorld | AnimalsWorld | HierarchicalWorld


def activation_stream(world: World, batch_size: int, seed: int) -> Iterator[Tensor]:
    """Endless batches of activations drawn with ``torch.Generator(seed)``: the same seed, the same data."""
    generator = torch.Generator().manual_seed(seed)
    while True:
        drawn = world.sample(batch_size, generator)
        yield drawn.activations if isinstance(drawn, AnimalsSample) else drawn[0]
