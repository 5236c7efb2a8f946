"""What the toy experiments share: the run configuration and training every architecture on one world."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from saekit.dictionaries.registry import ARCHITECTURES
from saekit.errors import SaekitError
from saekit.toy.fitting import FitConfig, FitResult, fit_at_l0
from saekit.toy.worlds import World, activation_stream


@dataclass
class ToyRunConfig:
    """What the CLI controls: output directory, seed, training length, progress bars."""

    out: Path = Path("runs/toy")
    seed: int = 0
    steps: int = 600
    progress: bool = True


def check_architectures(architectures: list[str]) -> None:
    """Raise a one-line error naming any architecture the registry does not know."""
    unknown = sorted(set(architectures) - set(ARCHITECTURES))
    if unknown:
        raise SaekitError(f"unknown architectures {unknown}; choose from {sorted(ARCHITECTURES)}")


def train_architectures(world: World, d: int, fit: FitConfig, architectures: list[str], data_seed: int,
                        progress: bool) -> tuple[dict[str, FitResult], dict[str, str]]:
    """Every architecture on the same batch stream (same seed, same samples) at comparable L0.

    An architecture whose training fails (a non-finite loss...) is reported, not fatal: the rest still run.
    """
    stream = lambda: activation_stream(world, fit.batch_size, data_seed)
    fits, failures = {}, {}
    for name in tqdm(architectures, desc="architectures", disable=not progress):
        try:
            fits[name] = fit_at_l0(name, d, stream, fit)
        except SaekitError as err:
            failures[name] = str(err)
    return fits, failures


def fit_summary(result: FitResult) -> dict:
    """The numbers of a fit that go into an experiment's JSON."""
    return {"knob": result.knob, "knob_value": result.knob_value, "train_l0": result.train_l0,
            "train_fvu": result.train_fvu, "probes": result.probes, "seconds": result.seconds}
