"""Train any registry architecture on a synthetic world at a chosen L0, on the same samples every time.

Architectures control sparsity differently (each names its setting in ``SPARSITY_SETTING``): the
TopK family through ``k``, JumpReLU through ``l0_coefficient``, the ReLU/gated family through
``l1_coefficient``. For a penalty
knob, :func:`fit_at_l0` searches the coefficient with a few full training runs (a secant in
log L0 vs log coefficient; L0 keeps falling late in training, so short probes mislead) and keeps the
run whose L0 is closest to ``k``. Inputs are scaled to E||x||^2 = 1
for training, as saekit does for real activations, and the scale is folded into the weights after,
so the returned dictionary reads raw activations.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
from torch import Tensor

from saekit.dictionaries.base import Dictionary, DictionaryConfig
from saekit.dictionaries.registry import ARCHITECTURES, build_dictionary, seeded
from saekit.errors import SaekitError
from saekit.training.schedule import OptimConfig
from saekit.training.trainer import fit_dictionary

StreamFactory = Callable[[], Iterator[Tensor]]  # a fresh, identical stream of raw batches per call

K_KNOB = "k"
L1_KNOB = "l1_coefficient"
L0_KNOB = "l0_coefficient"
DEFAULT_PENALTY_START = {L1_KNOB: 0.7, L0_KNOB: 0.03}  # starting points for E||x||^2 = 1 inputs


@dataclass
class FitConfig:
    """Shape, sparsity target and optimisation of one toy dictionary."""

    width: int = 256
    k: int = 4  # the TopK family's k and every other architecture's target L0
    steps: int = 600
    batch_size: int = 512
    lr: float = 1e-3
    seed: int = 0  # the dictionary's initialisation
    sparsity_warmup_fraction: float = 0.5  # penalties ramp up slowly: short runs learn directions first
    max_probes: int = 4  # full training runs allowed to find a penalty coefficient
    l0_tolerance: float = 0.25  # stop probing when |L0 / k - 1| is below this
    penalty_start: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_PENALTY_START))


@dataclass
class FitResult:
    """A trained dictionary (reading raw activations) and how it got there."""

    dictionary: Dictionary
    knob: str
    knob_value: float
    train_l0: float  # mean L0 over the last 10% of steps
    train_fvu: float
    probes: list[dict[str, float]]
    seconds: float


def sparsity_knob(architecture: str) -> str:
    """Which setting controls this architecture's L0: ``k``, the L1 coefficient or the L0 coefficient."""
    if architecture not in ARCHITECTURES:
        raise SaekitError(f"unknown architecture {architecture!r}; choose one of {sorted(ARCHITECTURES)}")
    return ARCHITECTURES[architecture].SPARSITY_SETTING


def dictionary_config(architecture: str, d: int, config: FitConfig, knob_value: float | None) -> DictionaryConfig:
    knob = sparsity_knob(architecture)
    dictionary_cfg = DictionaryConfig(architecture, d, config.width, k=config.k)
    if knob != K_KNOB and knob_value is not None:
        setattr(dictionary_cfg, knob, knob_value)
    return dictionary_cfg


def input_scale(stream_factory: StreamFactory, batches: int = 8) -> float:
    """c with E||c x||^2 = 1, from the first batches of the stream."""
    stream = stream_factory()
    mean_square = torch.stack([next(stream).pow(2).sum(-1).mean() for _ in range(batches)]).mean().item()
    if mean_square <= 0:
        raise SaekitError("the world produced all-zero activations; raise its firing probabilities")
    return mean_square**-0.5


def train_once(architecture: str, d: int, stream_factory: StreamFactory, config: FitConfig,
               knob_value: float | None, steps: int, scale: float) -> tuple[Dictionary, list[dict[str, float]]]:
    """Train with a fixed sparsity setting; returns the dictionary (scale folded in) and the step log."""
    dictionary = seeded(config.seed, build_dictionary, dictionary_config(architecture, d, config, knob_value))
    batches = (scale * x for x in stream_factory())
    optim = OptimConfig(lr=config.lr, sparsity_warmup_fraction=config.sparsity_warmup_fraction)
    log = fit_dictionary(dictionary, batches, steps, optim)
    dictionary.fold_input_scale(scale)
    dictionary.eval()
    return dictionary, log


def _tail_mean(log: list[dict[str, float]], key: str) -> float:
    tail = log[-max(1, len(log) // 10):]
    return sum(record[key] for record in tail) / len(tail)


def next_penalty(probes: list[dict[str, float]], target: float, default_slope: float = 1.0) -> float:
    """Next coefficient, assuming L0 ~ c**(-slope): the slope from the last two probes once there are two.

    The step is capped at a factor of 8 either way; a non-decreasing pair falls back to the default slope.
    """
    last = probes[-1]
    slope = default_slope
    if len(probes) >= 2:
        previous = probes[-2]
        d_log_c = math.log(last["value"] / previous["value"])
        d_log_l0 = math.log(max(last["l0"], 1e-3) / max(previous["l0"], 1e-3))
        if d_log_c != 0 and -d_log_l0 / d_log_c > 0.05:
            slope = -d_log_l0 / d_log_c
    step = math.log(max(last["l0"], 1e-3) / target) / slope
    return last["value"] * math.exp(max(-math.log(8), min(math.log(8), step)))


def fit_at_l0(architecture: str, d: int, stream_factory: StreamFactory, config: FitConfig) -> FitResult:
    """Train ``architecture`` on the stream with L0 comparable to ``config.k``.

    A ``k`` architecture trains once. A penalty architecture trains up to ``max_probes`` full runs,
    moving the coefficient along a log-log secant, and keeps the run whose L0 is closest to ``k``.
    """
    start = time.perf_counter()
    scale = input_scale(stream_factory)
    knob = sparsity_knob(architecture)
    if knob == K_KNOB:
        dictionary, log = train_once(architecture, d, stream_factory, config, None, config.steps, scale)
        return FitResult(dictionary, knob, float(config.k), _tail_mean(log, "l0"), _tail_mean(log, "fvu"),
                         [], time.perf_counter() - start)
    value = config.penalty_start[knob]
    probes: list[dict[str, float]] = []
    best: tuple[float, Dictionary, list[dict[str, float]]] | None = None
    for _ in range(config.max_probes):
        dictionary, log = train_once(architecture, d, stream_factory, config, value, config.steps, scale)
        l0 = _tail_mean(log, "l0")
        probes.append({"value": value, "l0": l0, "fvu": _tail_mean(log, "fvu")})
        miss = abs(math.log(max(l0, 1e-3) / config.k))
        if best is None or miss < best[0]:
            best = (miss, dictionary, log)
        if abs(l0 / config.k - 1) < config.l0_tolerance:
            break
        value = next_penalty(probes, config.k)
    assert best is not None
    _, dictionary, log = best
    chosen = min(probes, key=lambda probe: abs(math.log(max(probe["l0"], 1e-3) / config.k)))
    return FitResult(dictionary, knob, chosen["value"], _tail_mean(log, "l0"), _tail_mean(log, "fvu"),
                     probes, time.perf_counter() - start)
