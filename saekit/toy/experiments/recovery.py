"""The recovery experiment: every architecture on the sparse and animals worlds, against baselines."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from saekit.dictionaries.base import Dictionary
from saekit.dictionaries.registry import ARCHITECTURES
from saekit.io import write_json, write_text
from saekit.render import markdown_inline, markdown_table
from saekit.toy.experiments.common import ToyRunConfig, check_architectures, fit_summary, train_architectures
from saekit.toy.fitting import FitConfig, FitResult
from saekit.toy.plotting import new_figure, save_png
from saekit.toy.recovery import (
    ANIMAL_SETS,
    MIXTURE,
    animals_report,
    random_dictionary_like,
    reference_dictionaries,
    sparse_world_report,
)
from saekit.toy.worlds import AnimalsWorld, AnimalsWorldConfig, SparseFeatureWorld, SparseWorldConfig


@dataclass
class RecoveryConfig:
    """The two worlds and the dictionary shape every architecture is trained at."""

    sparse_world: SparseWorldConfig = field(default_factory=lambda: SparseWorldConfig(
        n_features=128, d=32, firing_probability=0.03))
    animals_world: AnimalsWorldConfig = field(default_factory=AnimalsWorldConfig)
    width: int = 256  # 2x the sparse world's features, ~3x the animals world's 92 (animals+attributes+unrelated)
    batch_size: int = 256
    lr: float = 1e-2  # high for short runs on tiny worlds (TopK recovers as well as with 1e-3 for 3x the steps)
    eval_samples: int = 8192
    architectures: list[str] | None = None  # None: every architecture in the registry


def fit_config(config: RecoveryConfig, run: ToyRunConfig, expected_active: float) -> FitConfig:
    """k = the expected number of active features (rounded), the L0 target of penalty architectures."""
    return FitConfig(width=config.width, k=max(1, round(expected_active)), steps=run.steps,
                     batch_size=config.batch_size, lr=config.lr, seed=run.seed)


def _trained_and_random(fits: dict[str, FitResult], report: Callable[[Dictionary], dict], seed: int) -> dict:
    """Each fit's summary and ``report`` of its dictionary beside a random dictionary of the same shape."""
    results = {}
    for name, result in fits.items():
        random = random_dictionary_like(result.dictionary, seed=seed + 3000)
        results[name] = {"fit": fit_summary(result), "trained": report(result.dictionary), "random": report(random)}
    return results


def sparse_recovery(config: RecoveryConfig, run: ToyRunConfig, architectures: list[str]) -> dict:
    world = SparseFeatureWorld(config.sparse_world)
    x, magnitudes = world.sample(config.eval_samples, torch.Generator().manual_seed(run.seed + 2000))
    fit = fit_config(config, run, config.sparse_world.expected_active)
    fits, failures = train_architectures(world, config.sparse_world.d, fit, architectures, run.seed + 1000,
                                         run.progress)
    results = _trained_and_random(fits, lambda d: sparse_world_report(d, world.directions, x, magnitudes), run.seed)
    return {"world": asdict(config.sparse_world), "k": fit.k, "width": fit.width, "results": results,
            "failures": failures}


def animals_recovery(config: RecoveryConfig, run: ToyRunConfig, architectures: list[str]) -> dict:
    world = AnimalsWorld(config.animals_world)
    sample = world.sample(config.eval_samples, torch.Generator().manual_seed(run.seed + 2000))
    fit = fit_config(config, run, config.animals_world.expected_active)
    fits, failures = train_architectures(world, config.animals_world.d, fit, architectures, run.seed + 1000,
                                         run.progress)
    results = _trained_and_random(fits, lambda d: animals_report(d, world, sample), run.seed)
    references = {name: animals_report(ref, world, sample) for name, ref in reference_dictionaries(world).items()}
    return {"world": asdict(config.animals_world), "k": fit.k, "width": fit.width, "results": results,
            "references": references, "failures": failures}


def run_recovery(run: ToyRunConfig, directory: Path, config: RecoveryConfig | None = None) -> list[str]:
    config = config or RecoveryConfig()
    architectures = config.architectures or list(ARCHITECTURES)
    check_architectures(architectures)
    data = {"sparse": sparse_recovery(config, run, architectures),
            "animals": animals_recovery(config, run, architectures), "steps": run.steps}
    write_json(directory / "recovery.json", data)
    plot_sparse_recovery(data["sparse"], directory / "recovery_sparse.png")
    plot_animals(data["animals"], directory / "recovery_animals.png")
    write_text(directory / "summary.md", recovery_summary(data))
    return ["recovery_sparse.png", "recovery_animals.png", "recovery.json", "summary.md"]


SPARSE_METRICS: tuple[tuple[str, Callable[[dict], float]], ...] = (
    ("recovery", lambda r: r["directions"]["recovery"]),
    ("precision", lambda r: r["directions"]["precision"]),
    ("recovered >= 0.9", lambda r: r["directions"]["fraction_recovered"]),
    ("magnitude corr", lambda r: r["magnitude_correlation"]),
    ("magnitude R²", lambda r: r["magnitude_r2"]),
)


def plot_sparse_recovery(sparse: dict, path: Path) -> None:
    names = list(sparse["results"])
    figure, (ax,) = new_figure(max(6.4, 1.6 * len(names) + 2), 4.4)
    width = 0.8 / len(SPARSE_METRICS)
    for m, (metric, read) in enumerate(SPARSE_METRICS):
        positions = [i + (m - (len(SPARSE_METRICS) - 1) / 2) * width for i in range(len(names))]
        ax.bar(positions, [read(sparse["results"][n]["trained"]) for n in names], width, color=f"C{m}",
               label=metric)
        ax.bar(positions, [read(sparse["results"][n]["random"]) for n in names], width * 0.5, color="black",
               alpha=0.55, label="random baseline" if m == 0 else None)
    ax.set_xticks(range(len(names)), names)
    ax.set(ylim=(0, 1.05), ylabel="score", title=f"Sparse world: {sparse['world']['n_features']} features in "
           f"{sparse['world']['d']} dims, width {sparse['width']}, L0 ~ {sparse['k']}")
    ax.legend(fontsize=8, ncol=len(SPARSE_METRICS) + 1, loc="upper center", bbox_to_anchor=(0.5, -0.07),
              frameon=False)
    save_png(figure, path)


def plot_animals(animals: dict, path: Path) -> None:
    figure, (corr, r2, bars) = new_figure(17, 5.2, ncols=3)
    points = {name: r["trained"] for name, r in animals["results"].items()}
    points.update({f"random {name}": r["random"] for name, r in animals["results"].items()})
    points.update(animals["references"])
    for ax, key, what in ((corr, "magnitude_correlation", "correlation"), (r2, "magnitude_r2", "R²")):
        _scatter_sets(ax, points, key)
        ax.set(xlim=(-0.02, 1.05), ylim=(-0.02, 1.05),
               xlabel=f"animal magnitude {what} (mean)\no trained, x random baseline, ■ reference",
               ylabel=f"attribute magnitude {what} (mean)", title=f"{what}: nobody reaches the top right")
    names = list(animals["results"])
    bottom = [0.0] * len(names)
    for s, group in enumerate([*ANIMAL_SETS, MIXTURE]):
        counts = [animals["results"][n]["trained"]["alignment_counts"].get(group, 0) for n in names]
        bars.bar(names, counts, bottom=bottom, color=f"C{s}", label=group)
        bottom = [b + c for b, c in zip(bottom, counts, strict=True)]
    bars.set(ylabel="latents", title="Set each trained latent points at (cos >= 0.9)")
    bars.tick_params(axis="x", labelrotation=30)
    bars.legend(fontsize=8)
    save_png(figure, path)


def _scatter_sets(ax, points: dict[str, dict], key: str) -> None:
    """One marker per dictionary: o trained, x random baseline (grey, unlabelled), s reference."""
    for name, report in points.items():
        random = name.startswith("random")
        style = "s" if name.startswith("reference") else ("x" if random else "o")
        xy = (report["animal"][key], report["attribute"][key])
        ax.plot(*xy, style, color="grey" if random else None)
        if not random:
            ax.annotate(name.replace("reference: ", "ref: "), xy, fontsize=7, xytext=(3, 3),
                        textcoords="offset points")


def recovery_summary(data: dict) -> str:
    failures = [f"- {world}: {name} failed to train: {markdown_inline(message)}"  # an exception's text
                for world in ("sparse", "animals") for name, message in data[world]["failures"].items()]
    sections = ["# Recovery of ground-truth features", sparse_summary(data["sparse"]), animals_summary(data["animals"])]
    return "\n\n".join(sections + (["## Failures\n\n" + "\n".join(failures)] if failures else [])) + "\n"


def sparse_summary(sparse: dict) -> str:
    rows = []
    for name, result in sparse["results"].items():
        trained, random = result["trained"], result["random"]
        rows.append([name, trained["l0"], trained["fvu"],
                     *[f"{read(trained):.3f} ({read(random):.3f})" for _, read in SPARSE_METRICS]])
    world = sparse["world"]
    return (
        f"## Sparse world: {world['n_features']} features in {world['d']} dims, firing probability "
        f"{world['firing_probability']}, width {sparse['width']}, k / target L0 {sparse['k']}\n\n"
        "Trained value (random baseline of the same shape in brackets).\n\n"
        + markdown_table(["architecture", "L0", "FVU", *[m for m, _ in SPARSE_METRICS]], rows)
    )


def animals_summary(animals: dict) -> str:
    entries = [(name, r["trained"]) for name, r in animals["results"].items()]
    entries += _merge_identical([(f"random {name}", r["random"]) for name, r in animals["results"].items()])
    entries += list(animals["references"].items())
    rows = [_animals_row(name, report) for name, report in entries]
    header = ["dictionary", "L0", "FVU", *[f"{s} recovery" for s in ANIMAL_SETS],
              *[f"{s} corr" for s in ANIMAL_SETS], *[f"{s} R²" for s in ANIMAL_SETS],
              "latents anim/attr/unrel/mix"]
    world = animals["world"]
    return (
        f"## Animals world: {world['n_animals']} animals in the span of {world['n_attributes']} attributes, "
        f"{world['n_unrelated']} unrelated features, d = {world['d']}, width {animals['width']}, "
        f"k / target L0 {animals['k']}\n\n"
        "corr: mean Pearson correlation between each true feature's magnitude and the activation of the "
        "latent whose decoder row is closest to it; R²: the same pair compared without refitting scale "
        "(clipped at 0), which a code that splits magnitudes between sets cannot fake. No dictionary scores "
        "high on both animals and attributes; references use a fixed true decoder and a least-squares "
        "encoder (nonnegative and sparse, or the dense min-norm split code).\n\n"
        + markdown_table(header, rows)
    )


def _animals_row(name: str, report: dict) -> list:
    counts = report["alignment_counts"]
    return [name, report["l0"], report["fvu"],
            *[report[s]["directions"]["recovery"] for s in ANIMAL_SETS],
            *[report[s]["magnitude_correlation"] for s in ANIMAL_SETS],
            *[report[s]["magnitude_r2"] for s in ANIMAL_SETS],
            "/".join(str(counts.get(g, 0)) for g in [*ANIMAL_SETS, MIXTURE])]


def _merge_identical(entries: list[tuple[str, dict]]) -> list[tuple[str, dict]]:
    """Random baselines of architectures with the same initialisation score the same: one row for them."""
    merged: list[tuple[str, dict]] = []
    for name, report in entries:
        for index, (other_name, other) in enumerate(merged):
            if other == report:
                merged[index] = (f"{other_name}/{name.removeprefix('random ')}", other)
                break
        else:
            merged.append((name, report))
    return merged
