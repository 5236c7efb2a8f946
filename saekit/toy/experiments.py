"""The named toy experiments (phase-diagram, rescaling, recovery, hierarchy, all): run, plot, write JSON and summary.md.

Each experiment writes into ``out/<name>/``: PNG plots, a JSON file of every number (through
:func:`saekit.io.write_json`) and a short ``summary.md``; ``all`` runs them in turn and also writes a
combined ``out/summary.md``. ``ToyRunConfig.steps`` sets the training length of every model.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from tqdm.auto import tqdm

from saekit.dictionaries.registry import ARCHITECTURES
from saekit.errors import SaekitError
from saekit.io import write_json, write_text
from saekit.render import markdown_inline, markdown_table
from saekit.toy.fitting import FitConfig, FitResult, fit_at_l0
from saekit.toy.plotting import new_figure, save_png
from saekit.toy.recovery import (
    ANIMAL_SETS,
    MIXTURE,
    animals_report,
    hierarchy_report,
    random_dictionary_like,
    reference_dictionaries,
    sparse_world_report,
)
from saekit.toy.superposition import (
    PHASES,
    SUPERPOSITION,
    PhaseDiagram,
    PhaseDiagramConfig,
    TMSTrainConfig,
    phase_diagram,
    plot_phase_diagram,
    rescaling_check,
    train_tms,
)
from saekit.toy.worlds import (
    AnimalsWorld,
    AnimalsWorldConfig,
    HierarchicalWorld,
    HierarchicalWorldConfig,
    SparseFeatureWorld,
    SparseWorldConfig,
    World,
    activation_stream,
)


@dataclass
class ToyRunConfig:
    """What the CLI controls: output directory, seed, training length, progress bars."""

    out: Path = Path("runs/toy")
    seed: int = 0
    steps: int = 600
    progress: bool = True


@dataclass
class ExperimentResult:
    name: str
    directory: Path
    summary: str  # the markdown written to summary.md
    seconds: float
    files: list[str] = field(default_factory=list)


# ---- phase diagram -------------------------------------------------------------------------------


def run_phase_diagram(run: ToyRunConfig, directory: Path) -> list[str]:
    config = PhaseDiagramConfig(train=TMSTrainConfig(steps=run.steps, seed=run.seed))
    diagram = phase_diagram(config, progress=run.progress)
    plot_phase_diagram(diagram, directory / "phase_diagram.png")
    write_json(directory / "phase_diagram.json", {"config": asdict(config), **diagram.to_dict()})
    write_text(directory / "summary.md", phase_summary(diagram, config))
    return ["phase_diagram.png", "phase_diagram.json", "summary.md"]


def phase_summary(diagram: PhaseDiagram, config: PhaseDiagramConfig) -> str:
    letters = {name: name[0].upper() for name in PHASES}  # N(ot represented), D(edicated), S(uperposition)
    header = ["1 - S \\ r", *[f"{r:.2g}" for r in diagram.importances]]
    labels = diagram.labels()
    rows = [[f"{p:.2g}", *[letters[label] for label in labels[i]]]
            for i, p in reversed(list(enumerate(diagram.densities)))]
    legend = ", ".join(f"{letter} = {name}" for name, letter in letters.items())
    return (
        "# Phase diagram: 2 features in 1 hidden dimension\n\n"
        f"Feature 2 of the best of {config.seeds} seeds per cell ({config.train.steps} steps). {legend}. "
        f"Not represented: ||W_2|| < {config.norm_threshold}; superposition: (W^_2 . W_1)^2 > "
        f"{config.interference_threshold}.\n\n"
        + markdown_table(header, rows) + "\n\n" + phase_verdict(diagram) + "\n"
    )


def phase_verdict(diagram: PhaseDiagram) -> str:
    """One line per extreme density: which phase holds at the lowest and highest importance."""
    lines = []
    for row, density in ((len(diagram.densities) - 1, diagram.densities[-1]), (0, diagram.densities[0])):
        labels = diagram.labels()[row]
        superposed = [r for r, label in zip(diagram.importances, labels, strict=True) if label == SUPERPOSITION]
        span = f"superposition for r in [{min(superposed):.2g}, {max(superposed):.2g}]" if superposed else \
            "no superposition"
        lines.append(f"- density {density:.2g}: r = {diagram.importances[0]:.2g} -> {labels[0]}, "
                     f"r = {diagram.importances[-1]:.2g} -> {labels[-1]}; {span}")
    return "\n".join(lines)


# ---- rescaling -----------------------------------------------------------------------------------


RESCALING_SCALES: tuple[float, ...] = (0.25, 0.5, 1.0, 2.0, 4.0)


@dataclass
class TMSSetting:
    """One toy model trained for the rescaling check: n features into m dimensions."""

    name: str
    n_features: int
    m_hidden: int
    density: float
    importance_decay: float  # importance of feature i is decay**i
    seeds: int = 4


RESCALING_SETTINGS: tuple[TMSSetting, ...] = (
    TMSSetting("5 features in 2 dims (pentagon)", 5, 2, 0.1, 1.0),
    TMSSetting("20 features in 5 dims", 20, 5, 0.1, 0.9),
)


def train_setting(setting: TMSSetting, run: ToyRunConfig) -> tuple[torch.Tensor, float]:
    """Train ``seeds`` copies at once; return the best one's W [m, n] and loss."""
    n = setting.n_features
    density = torch.full((setting.seeds, n), setting.density)
    importance = (setting.importance_decay ** torch.arange(n, dtype=torch.float32)).expand(setting.seeds, n)
    models = train_tms(density, importance.contiguous(), setting.m_hidden,
                       TMSTrainConfig(steps=run.steps, seed=run.seed), progress=run.progress)
    best = int(models.loss.argmin())
    return models.W[best], models.loss[best].item()


def run_rescaling(run: ToyRunConfig, directory: Path) -> list[str]:
    results = []
    for setting in RESCALING_SETTINGS:
        W, loss = train_setting(setting, run)
        rows = rescaling_check(W, RESCALING_SCALES)
        results.append({"setting": asdict(setting), "loss": loss, "W": W.tolist(),
                        "rows": [asdict(row) for row in rows]})
    write_json(directory / "rescaling.json", {"scales": list(RESCALING_SCALES), "models": results})
    plot_rescaling(results, directory / "rescaling.png")
    write_text(directory / "summary.md", rescaling_summary(results))
    return ["rescaling.png", "rescaling.json", "summary.md"]


def plot_rescaling(results: list[dict], path: Path) -> None:
    figure, (left, right) = new_figure(11, 4.2, ncols=2)
    for index, result in enumerate(results):
        scales = [row["scale"] for row in result["rows"]]
        name = result["setting"]["name"]
        left.plot(scales, [row["frobenius_features_per_dimension"] for row in result["rows"]], "o-", label=name)
        for feature in range(result["setting"]["n_features"]):
            right.plot(scales, [row["dimensionality"][feature] for row in result["rows"]], "--" if index else "-",
                       color=f"C{index}", alpha=0.6, lw=3 - index, label=name if feature == 0 else None)
    for ax in (left, right):
        ax.set_xscale("log")
        ax.minorticks_off()
        ax.set_xticks(list(RESCALING_SCALES), [f"{scale:g}" for scale in RESCALING_SCALES])
        ax.set_xlabel("rescaling c (W -> cW)")
        ax.legend(fontsize=8)
    left.set(yscale="log", ylabel="‖cW‖²_F / m", title="Frobenius 'features per dimension' moves as c²")
    right.set(ylabel="D_i (one line per feature)", title="feature dimensionality D_i does not move",
              ylim=(-0.05, 1.05))
    save_png(figure, path)


def rescaling_summary(results: list[dict]) -> str:
    rows = []
    for result in results:
        for row in result["rows"]:
            dims = row["dimensionality"]
            rows.append([result["setting"]["name"], f"{row['scale']:g}", row["frobenius_features_per_dimension"],
                         row["total_dimensionality"], f"{min(dims):.3f}-{max(dims):.3f}"])
    table = markdown_table(["model", "scale c", "‖cW‖²_F / m", "sum_i D_i", "D_i range"], rows)
    return (
        "# Rescaling: Frobenius features-per-dimension vs feature dimensionality\n\n"
        "Trained ReLU-output toy models, W rescaled as a function (c W). The Frobenius count grows as c^2; "
        "D_i and their sum (the dimensions in use) are unchanged.\n\n" + table + "\n"
    )


# ---- recovery ------------------------------------------------------------------------------------


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
    return {"knob": result.knob, "knob_value": result.knob_value, "train_l0": result.train_l0,
            "train_fvu": result.train_fvu, "probes": result.probes, "seconds": result.seconds}


def sparse_recovery(config: RecoveryConfig, run: ToyRunConfig, architectures: list[str]) -> dict:
    world = SparseFeatureWorld(config.sparse_world)
    x, magnitudes = world.sample(config.eval_samples, torch.Generator().manual_seed(run.seed + 2000))
    fit = fit_config(config, run, config.sparse_world.expected_active)
    fits, failures = train_architectures(world, config.sparse_world.d, fit, architectures, run.seed + 1000,
                                         run.progress)
    results = {}
    for name, result in fits.items():
        random = random_dictionary_like(result.dictionary, seed=run.seed + 3000)
        results[name] = {
            "fit": fit_summary(result),
            "trained": sparse_world_report(result.dictionary, world.directions, x, magnitudes),
            "random": sparse_world_report(random, world.directions, x, magnitudes),
        }
    return {"world": asdict(config.sparse_world), "k": fit.k, "width": fit.width, "results": results,
            "failures": failures}


def animals_recovery(config: RecoveryConfig, run: ToyRunConfig, architectures: list[str]) -> dict:
    world = AnimalsWorld(config.animals_world)
    sample = world.sample(config.eval_samples, torch.Generator().manual_seed(run.seed + 2000))
    fit = fit_config(config, run, config.animals_world.expected_active)
    fits, failures = train_architectures(world, config.animals_world.d, fit, architectures, run.seed + 1000,
                                         run.progress)
    results = {}
    for name, result in fits.items():
        random = random_dictionary_like(result.dictionary, seed=run.seed + 3000)
        results[name] = {
            "fit": fit_summary(result),
            "trained": animals_report(result.dictionary, world, sample),
            "random": animals_report(random, world, sample),
        }
    references = {name: animals_report(ref, world, sample) for name, ref in reference_dictionaries(world).items()}
    return {"world": asdict(config.animals_world), "k": fit.k, "width": fit.width, "results": results,
            "references": references, "failures": failures}


def run_recovery(run: ToyRunConfig, directory: Path, config: RecoveryConfig | None = None) -> list[str]:
    config = config or RecoveryConfig()
    architectures = config.architectures or list(ARCHITECTURES)
    unknown = sorted(set(architectures) - set(ARCHITECTURES))
    if unknown:
        raise SaekitError(f"unknown architectures {unknown}; choose from {sorted(ARCHITECTURES)}")
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


# ---- hierarchy: feature absorption at matched L0 -------------------------------------------------


@dataclass
class HierarchyConfig:
    """The hierarchical world and the dictionaries compared on it, all at the same k (matched L0)."""

    world: HierarchicalWorldConfig = field(default_factory=HierarchicalWorldConfig)
    architectures: list[str] = field(default_factory=lambda: ["matryoshka_batchtopk", "batchtopk", "topk"])
    width: int | None = None  # None: the number of true features (140 for the default world)
    k: int | None = None  # None: the world's expected L0, rounded (4 for the default world)
    batch_size: int = 512
    lr: float = 3e-3
    eval_samples: int = 8192
    seeds: int = 5  # repeats i = 0, 1, ...: world directions seed + i, data, samples and initialisation run.seed + i


HIERARCHY_METRICS: tuple[tuple[str, Callable[[dict], float]], ...] = (
    ("F1", lambda r: r["recovery"]["f1"]),
    ("parent F1", lambda r: r["parent_f1"]),
    ("MCC", lambda r: r["recovery"]["mcc"]),
    ("uniqueness", lambda r: r["recovery"]["uniqueness"]),
    ("shrinkage", lambda r: r["recovery"]["shrinkage"]),
    ("absorbed parents", lambda r: r["absorption"]["count"]),
    ("absorption rate", lambda r: r["absorption"]["rate"]),
    ("L0", lambda r: r["l0"]),
    ("FVU", lambda r: r["fvu"]),
)


def hierarchy_seed(config: HierarchyConfig, run: ToyRunConfig, repeat: int) -> dict:
    """One repeat: every architecture on the same world, batches and held-out samples, at the same k."""
    world = HierarchicalWorld(replace(config.world, seed=config.world.seed + repeat))
    seed = run.seed + repeat
    x, magnitudes = world.sample(config.eval_samples, torch.Generator().manual_seed(seed + 2000))
    k = config.k or max(1, round(config.world.expected_active))
    fit = FitConfig(width=config.width or config.world.n_features, k=k, steps=run.steps,
                    batch_size=config.batch_size, lr=config.lr, seed=seed)
    fits, failures = train_architectures(world, config.world.d, fit, config.architectures, seed + 1000, run.progress)
    results = {}
    for name, result in fits.items():
        report = hierarchy_report(result.dictionary, world, x, magnitudes)
        f1 = report["recovery"]["per_feature"]["f1"][: config.world.n_parents]
        report["parent_f1"] = sum(f1) / len(f1) if f1 else 0.0
        report["fit"] = fit_summary(result)
        results[name] = report
    return {"seed": seed, "world_seed": world.config.seed, "k": k, "width": fit.width, "results": results,
            "failures": failures}


def run_hierarchy(run: ToyRunConfig, directory: Path, config: HierarchyConfig | None = None) -> list[str]:
    """Train the architectures on the hierarchical world ``config.seeds`` times; table, JSON and plot."""
    config = config or HierarchyConfig()
    unknown = sorted(set(config.architectures) - set(ARCHITECTURES))
    if unknown:
        raise SaekitError(f"unknown architectures {unknown}; choose from {sorted(ARCHITECTURES)}")
    if config.seeds < 1:
        raise SaekitError(f"seeds must be at least 1, got {config.seeds}")
    repeats = [hierarchy_seed(config, run, repeat) for repeat in range(config.seeds)]
    data = {"world": asdict(config.world), "config": {key: value for key, value in asdict(config).items()
                                                      if key != "world"},
            "steps": run.steps, "seed": run.seed, "repeats": repeats,
            "means": hierarchy_means(repeats, config.architectures)}
    write_json(directory / "hierarchy.json", data)
    plot_hierarchy(data, directory / "hierarchy.png")
    write_text(directory / "summary.md", hierarchy_summary(data))
    return ["hierarchy.png", "hierarchy.json", "summary.md"]


def hierarchy_means(repeats: list[dict], architectures: list[str]) -> dict[str, dict[str, list[float]]]:
    """Per architecture and metric: [mean, standard deviation] over the repeats it trained in."""
    means: dict[str, dict[str, list[float]]] = {}
    for name in architectures:
        reports = [repeat["results"][name] for repeat in repeats if name in repeat["results"]]
        if reports:
            means[name] = {metric: _mean_sd([float(read(report)) for report in reports])
                           for metric, read in HIERARCHY_METRICS}
    return means


def _mean_sd(values: list[float]) -> list[float]:
    return [statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0]


def plot_hierarchy(data: dict, path: Path) -> None:
    names = list(data["means"])
    scores = ("F1", "parent F1", "MCC", "uniqueness", "shrinkage")
    figure, (left, right) = new_figure(max(9.0, 2.4 * len(names) + 5), 4.4, ncols=2)
    width = 0.8 / len(scores)
    for m, metric in enumerate(scores):
        positions = [i + (m - (len(scores) - 1) / 2) * width for i in range(len(names))]
        mean = [data["means"][n][metric][0] for n in names]
        sd = [data["means"][n][metric][1] for n in names]
        left.bar(positions, mean, width, yerr=sd, color=f"C{m}", label=metric)
    top = max([1.0, *[data["means"][n][metric][0] for n in names for metric in scores]])
    left.set_xticks(range(len(names)), names)
    left.set(ylim=(0, 1.05 * top), ylabel="score (mean ± sd over seeds)",
             title=f"Matched L0 (k = {data['repeats'][0]['k']})")
    left.legend(fontsize=8, ncol=len(scores), loc="upper center", bbox_to_anchor=(0.5, -0.07), frameon=False)
    n_parents = data["world"]["n_parents"]
    for i, name in enumerate(names):
        counts = [repeat["results"][name]["absorption"]["count"] for repeat in data["repeats"]
                  if name in repeat["results"]]
        right.bar(i, statistics.fmean(counts), 0.6, color=f"C{i}")
        right.plot([i] * len(counts), counts, "o", color="black", ms=4)
    right.set_xticks(range(len(names)), names)
    right.set(ylim=(0, n_parents + 0.5), ylabel=f"absorbed parents (of {n_parents})",
              title="Feature absorption (bar: mean, dots: seeds)")
    save_png(figure, path)


def hierarchy_summary(data: dict) -> str:
    world, first = data["world"], data["repeats"][0]
    rows = [[name, *[f"{mean:.1f} ± {sd:.1f}" if metric == "absorbed parents" else f"{mean:.3f} ± {sd:.3f}"
                     for metric, (mean, sd) in values.items()]]
            for name, values in data["means"].items()]
    failures = [f"- seed {repeat['seed']}: {name} failed to train: {markdown_inline(message)}"
                for repeat in data["repeats"] for name, message in repeat["failures"].items()]
    n_features = world["n_parents"] * (1 + world["children_per_parent"]) + world["n_independent"]
    scored = next((report["absorption"] for report in first["results"].values()), None)
    miss, excess = (scored["miss_threshold"], scored["direction_threshold"]) if scored else (0.25, 0.2)
    return (
        "# Hierarchy: feature absorption at matched L0\n\n"
        f"{world['n_parents']} parents with {world['children_per_parent']} mutually exclusive children each "
        f"(a child fires only with its parent; one child with probability {world['child_probability']}) and "
        f"{world['n_independent']} independent features: {n_features} features in d = {world['d']}; Zipfian root "
        f"frequencies (max {world['max_firing_probability']}, exponent {world['zipf_exponent']}), magnitudes "
        f"U{tuple(world['magnitude_range'])}. Every dictionary has width {first['width']} and k = {first['k']} "
        f"(the world's expected L0), {data['steps']} steps of {data['config']['batch_size']}; mean ± sd over "
        f"{len(data['repeats'])} seeds (world directions, data, initialisation) from seed {data['seed']}; "
        f"metrics on {data['config']['eval_samples']} held-out samples, in inference mode.\n\n"
        + markdown_table(["architecture", *[metric for metric, _ in HIERARCHY_METRICS]], rows) + "\n\n"
        "Each true feature's best latent is the one whose decoder row is most similar to it. F1: of \"best "
        "latent fires\" against \"feature active\", mean over features (parent F1: over parents only). MCC: mean "
        "cosine of the one-to-one (Hungarian) matching of decoder rows to features. Uniqueness: share of features "
        "whose best latent is no other feature's. Shrinkage: best latent's activation / true magnitude where both "
        f"are non-zero (1 = none). A parent is absorbed when its best latent is silent on >= {miss:.0%} of the "
        "samples where it is active with a child while a child's best latent has a cosine with the parent's "
        f"direction at least {excess} above the child's own direction's; absorption rate: that silent share, "
        "mean over parents.\n"
        + ("\n## Failures\n\n" + "\n".join(failures) + "\n" if failures else "")
    )


# ---- dispatch ------------------------------------------------------------------------------------


EXPERIMENTS: dict[str, Callable[[ToyRunConfig, Path], list[str]]] = {
    "phase-diagram": run_phase_diagram,
    "rescaling": run_rescaling,
    "recovery": run_recovery,
    "hierarchy": run_hierarchy,
}


def run_experiment(name: str, run: ToyRunConfig) -> ExperimentResult:
    if name not in EXPERIMENTS:
        raise SaekitError(f"unknown toy experiment {name!r}; choose one of {[*EXPERIMENTS, 'all']}")
    directory = Path(run.out) / name
    start = time.perf_counter()
    files = EXPERIMENTS[name](run, directory)
    summary = (directory / "summary.md").read_text(encoding="utf-8")
    return ExperimentResult(name, directory, summary, time.perf_counter() - start, files)


def run_all(run: ToyRunConfig) -> list[ExperimentResult]:
    """Every experiment in turn, then ``out/summary.md`` with each one's summary and timing."""
    results = [run_experiment(name, run) for name in EXPERIMENTS]
    timing = markdown_table(["experiment", "seconds", "directory"],
                            [[r.name, r.seconds, str(r.directory)] for r in results])
    body = "\n\n".join(r.summary.strip() for r in results)
    write_text(Path(run.out) / "summary.md",
               f"# Toy experiments (seed {run.seed}, {run.steps} steps)\n\n{timing}\n\n{body}\n")
    return results
