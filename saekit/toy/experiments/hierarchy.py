"""The hierarchy experiment: feature absorption on the parent/child world, architectures at matched L0, over seeds."""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from saekit.errors import SaekitError
from saekit.io import write_json, write_text
from saekit.render import markdown_inline, markdown_table
from saekit.toy.experiments.common import ToyRunConfig, check_architectures, fit_summary, train_architectures
from saekit.toy.fitting import FitConfig
from saekit.toy.plotting import new_figure, save_png
from saekit.toy.recovery import hierarchy_report
from saekit.toy.worlds import HierarchicalWorld, HierarchicalWorldConfig


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
    check_architectures(config.architectures)
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
