"""The reliability study: train each recipe at several seeds (and earlier checkpoints), measure every run, and
tabulate how much to trust each metric (``saekit.evaluation.reliability`` holds the statistics).

On a model, every seed and checkpoint reads the one cached activation stream (one model pass, then a dictionary
training per run); on a toy world the same recipes train on synthetic activations with known features.
``saekit reliability`` (``saekit/cli/reliability.py``) is its command line.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from saekit.errors import SaekitError
from saekit.evaluation.reliability import (
    EVALUATION_METRICS,
    FULL,
    Observation,
    ReliabilityResults,
    evaluation_values,
    reliability_table,
)
from saekit.settings import SEED, check_rules, setting
from saekit.training.config import TrainConfig

if TYPE_CHECKING:  # torch and the models load only when the command runs
    from torch import Tensor

    from saekit.dictionaries.base import Dictionary
    from saekit.evaluation.results import EvaluationResults
    from saekit.models.loading import LoadedModel

Probe = Callable[[list[Path], "LoadedModel"], list[dict[str, float | None]]]

TOY_WORLDS = ("sparse",)
TOY_EVAL_SAMPLES = 4096
TOY_GROUND_TRUTH = "mcc"
# The toy recovery metrics, by key and label; MCC (one-to-one matched cosine) is the ground-truth recovery.
TOY_METRICS: dict[str, str] = {
    "mcc": "MCC (ground-truth recovery)",
    "recovery": "direction recovery",
    "precision": "direction precision",
    "fraction_recovered": "features recovered (cos >= 0.9)",
    "magnitude_correlation": "magnitude correlation",
    "magnitude_r2": "magnitude R²",
    "f1": "firing F1",
    "uniqueness": "uniqueness",
    "shrinkage": "shrinkage",
}
TPP_N = (2, 20)  # latents ablated for the TPP rows (SAEBench reports N = 2 to 500; two keep the table short)
TOY_DICTIONARY_METRICS = ("fvu", "l0", "dead_fraction")  # of EVALUATION_METRICS, the ones a toy world has
@dataclass(frozen=True)
class ReliabilitySettings:
    """What ``saekit reliability`` runs beside the shared run config (and the sweep's grid settings)."""

    seeds: tuple[int, ...] = setting((0, 1, 2), "optimiser seeds (initialisation, batch order, resampling), "
                                     "comma-separated: every recipe trains once per seed; at least 2", **SEED)
    grid: str | None = setting(None, "recipes as a sweep grid, e.g. 'topk:k=16,32;relu:l1_coefficient=0.1' "
                               "(none: the config's one recipe)")
    checkpoints: tuple[float, ...] | None = setting(
        (0.25, 0.5), "earlier checkpoints as shares of the training budget, comma-separated: each is the recipe "
        "trained for that share of its tokens, same seed and data order, its schedule fitted to the share (a run "
        "keeps only its last checkpoint) (none: the full runs only)", above=0, below=1)
    task: str | None = setting(None, "also sparse-probe every run (k = 1, 2, 5) on this labelled task: a built-in "
                               "name or a .csv/.jsonl file (none: no probing)")
    train_per_class: int | None = setting(None, "--task: training texts per class (none: the task's stated size)",
                                          minimum=1, none="task")
    test_per_class: int | None = setting(None, "--task: test texts per class (none: the task's stated size)",
                                         minimum=1, none="task")
    tpp: bool = setting(False, "--task: also TPP (SAEBench's targeted probe perturbation, N = 2 and 20 latents "
                        "ablated) on the task's classes, with the same pooled texts (SAEs only)", switch=True)
    toy: str | None = setting(None, "train on this synthetic world instead of the model's activations (its "
                              "features are known, so each metric is rank-correlated with their recovery); "
                              "--data-seed seeds the world (none: the model)", choices=TOY_WORLDS)

    def validate(self) -> ReliabilitySettings:
        check_rules(self, "reliability settings")
        if len(self.seeds) < 2 or len(set(self.seeds)) != len(self.seeds):
            raise SaekitError(f"--seeds needs at least 2 distinct seeds to measure seed noise, got "
                              f"{','.join(map(str, self.seeds))}")
        if self.checkpoints and len(set(self.checkpoints)) != len(self.checkpoints):
            raise SaekitError(f"--checkpoints must be distinct shares, got {','.join(map(str, self.checkpoints))}")
        if self.task is None and (self.train_per_class or self.test_per_class):
            raise SaekitError("--train-per-class and --test-per-class size the --task's splits; give --task too")
        if self.tpp and self.task is None:
            raise SaekitError("--tpp runs on the classes of a --task; give --task too")
        if self.toy is not None and self.task is not None:
            raise SaekitError("--task probes the model's activations on texts; a --toy world has none")
        return self

    @property
    def shares(self) -> list[float]:
        """The budget shares trained, the full run first (its first seed fills the activation cache)."""
        return [FULL, *sorted(self.checkpoints or (), reverse=True)]


@dataclass(frozen=True)
class PlannedRun:
    """One run of the study: its recipe's name, seed, budget share and full config."""

    recipe: str
    seed: int
    share: float
    config: TrainConfig


def plan_runs(base: TrainConfig, settings: ReliabilitySettings, widths: list[int | None]) -> list[PlannedRun]:
    """Every (recipe, seed, share) as a validated config, named ``NAME/RECIPE-seedS[-atPpct]``.

    The recipes are the sweep's grid points (``grid_configs``). A checkpoint is the recipe trained for its share of
    the tokens (same seed and data order; the learning-rate and sparsity schedules then span the share): a run
    keeps only its latest checkpoint, so the earlier ones are trained as runs of their own.
    """
    from saekit.training.sweep import grid_configs, parse_grid

    grid = parse_grid(settings.grid) if settings.grid else [(base.dictionary.architecture, {})]
    plan = []
    for recipe in grid_configs(base, grid, widths):
        for seed in settings.seeds:
            for share in settings.shares:
                steps = int(recipe.total_steps * share)
                if steps < 1:
                    raise SaekitError(f"--checkpoints {share:g} of {recipe.total_steps} steps is less than one "
                                      "step; raise --train-tokens or the share")
                suffix = "" if share == FULL else f"-at{share * 100:g}pct"
                config = recipe.updated(name=f"{recipe.name}-seed{seed}{suffix}", seed=seed,
                                        train_tokens=steps * recipe.optim.batch_size)
                plan.append(PlannedRun(recipe.name, seed, share, config.validate()))
    return plan


@dataclass
class Study:
    """The table, and each run's evaluation (none on a toy world), written once the table is."""

    table: ReliabilityResults
    evaluations: list[tuple[Path, EvaluationResults]] = field(default_factory=list)


# ---- on a model --------------------------------------------------------------------------------------------------


def model_study(plan: list[PlannedRun], base: TrainConfig, settings: ReliabilitySettings, runs_dir: Path,
                resume: bool) -> Study:
    """Train every planned run from the cached activations, evaluate (and probe) each; the table over them."""
    from saekit.evaluation.evaluate import evaluate_alternatives
    from saekit.rundir import CONFIG_FILE
    from saekit.training.run import train_many

    if base.run.cache_dir is None:
        raise SaekitError("--cache-dir none would run the model again for every seed; give a cache directory")
    probe = _probe_check(settings)
    if settings.tpp and base.target_site is not None:
        raise SaekitError("--tpp ablates latents at the site an SAE reconstructs; a transcoder writes elsewhere")
    run_dirs = [runs_dir / p.config.name for p in plan]
    held = [str(d) for d in run_dirs if (d / CONFIG_FILE).exists()]
    if held and not resume:
        raise SaekitError(f"{held[0]} already holds a run; pass --resume or choose another --name")
    loaded = base.data.load_model(base.run.device)
    # Runs of one seed and share train together from one stream; the seed orders the batches, so each seed is
    # its own pass over the cache, which the first (full-budget) pass fills.
    for seed in settings.seeds:
        for share in settings.shares:
            group = [p.config for p in plan if p.seed == seed and p.share == share]
            train_many(group, runs_dir, resume=resume, loaded=loaded)
    evaluations = evaluate_alternatives(run_dirs, loaded)
    probed = probe(run_dirs, loaded) if probe else [{} for _ in run_dirs]
    observations = []
    for p, run_dir, results, accuracies in zip(plan, run_dirs, evaluations, probed):
        values = {**evaluation_values(results), **accuracies}
        observations.append(Observation(p.recipe, p.seed, p.share, values, str(run_dir)))
    labels = dict(EVALUATION_METRICS)
    if settings.task is not None:
        labels.update(_probe_labels())
    if settings.tpp:
        labels.update({f"tpp_n{n}": f"TPP, N={n}" for n in TPP_N})
    return Study(reliability_table(observations, labels, loaded.name), list(zip(run_dirs, evaluations)))


def _probe_labels() -> dict[str, str]:
    from saekit.probing.sparse_probing import ProbeSettings

    return {f"probe_accuracy_k{k}": f"sparse probing accuracy, k={k}" for k in ProbeSettings().k}


def _probe_check(study: ReliabilitySettings) -> Probe | None:
    """The task loaded and checked now (an unknown one is one line before the model loads); then the probes of
    every run, the texts pooled in one pass of the model for all of them."""
    task_name = study.task
    if task_name is None:
        return None
    from saekit.data.labelled import load_task
    from saekit.probing.scr_tpp import RemovalSettings, tpp_of_runs
    from saekit.probing.sparse_probing import ProbeSettings, check_examples, pool_runs, probe_runs

    settings = ProbeSettings(train_per_class=study.train_per_class, test_per_class=study.test_per_class).validate()
    check_examples(load_task(task_name, settings.train_per_class, settings.test_per_class), settings)

    def probe(run_dirs: list[Path], loaded: LoadedModel) -> list[dict[str, float | None]]:
        pooled = pool_runs(run_dirs, task_name, settings, loaded)
        rows: list[dict[str, float | None]] = [
            {f"probe_accuracy_k{k}": results.mean["sae"][str(k)]["accuracy"] for k in settings.k}
            for results in probe_runs(run_dirs, task_name, settings, loaded, pooled)]
        if study.tpp:
            removal = RemovalSettings(n_values=TPP_N).validate()
            for row, metrics in zip(rows, tpp_of_runs(pooled, settings, removal), strict=True):
                row.update({f"tpp_n{n}": metrics.get(f"tpp_threshold_{n}_total_metric") for n in TPP_N})
        return rows
    return probe


# ---- on a toy world ----------------------------------------------------------------------------------------------


def toy_study(plan: list[PlannedRun], world_name: str, data_seed: int) -> Study:
    """Train every planned run on the toy world's stream (the data fixed, the seed moving the initialisation);
    the table over the dictionary and recovery metrics, rank-correlated with MCC."""
    import torch

    from saekit.toy.fitting import input_scale
    from saekit.toy.worlds import SparseFeatureWorld, SparseWorldConfig, activation_stream

    if world_name not in TOY_WORLDS:
        raise SaekitError(f"unknown toy world {world_name!r}; choose from {', '.join(TOY_WORLDS)}")
    for p in plan:  # the toy trainer builds the dictionary from its sparsity setting alone
        if p.config.dictionary.extra:
            raise SaekitError(f"recipe {p.recipe} sets options {sorted(p.config.dictionary.extra)}, which a toy "
                              "world does not train with; vary k, the penalty, lr or width")
    world = SparseFeatureWorld(SparseWorldConfig(seed=data_seed))
    x, magnitudes = world.sample(TOY_EVAL_SAMPLES, torch.Generator().manual_seed(data_seed + 2000))
    batch_sizes = {p.config.optim.batch_size for p in plan}
    streams = {size: (lambda size=size: activation_stream(world, size, data_seed + 1000)) for size in batch_sizes}
    scales = {size: input_scale(stream) for size, stream in streams.items()}
    observations = []
    for p in plan:
        dictionary = _toy_train(p.config, world.config.d, streams[p.config.optim.batch_size],
                                scales[p.config.optim.batch_size])
        observations.append(Observation(p.recipe, p.seed, p.share, toy_values(dictionary, world.directions, x,
                                                                            magnitudes)))
    labels = {key: EVALUATION_METRICS[key] for key in TOY_DICTIONARY_METRICS} | TOY_METRICS
    source = (f"toy {world_name} world: {world.config.n_features} features in {world.config.d} dimensions, firing "
              f"probability {world.config.firing_probability}, seed {data_seed}")
    return Study(reliability_table(observations, labels, source, ground_truth=TOY_GROUND_TRUTH))


def _toy_train(config: TrainConfig, d: int, stream: Callable[[], Iterator[Tensor]], scale: float) -> Dictionary:
    """The run config's dictionary trained on the world: its architecture, sparsity setting, width (or expansion
    factor x d), lr, batch size, steps and seed."""
    from saekit.toy.fitting import FitConfig, sparsity_knob, train_once

    dictionary = config.dictionary
    width = dictionary.width or dictionary.expansion_factor * d
    knob = sparsity_knob(dictionary.architecture)
    fit = FitConfig(width=width, k=dictionary.k, steps=config.total_steps, batch_size=config.optim.batch_size,
                    lr=config.optim.resolved_lr(width), seed=config.optim.seed,
                    sparsity_warmup_fraction=config.optim.sparsity_warmup_fraction)
    knob_value = None if knob == "k" else getattr(dictionary, knob)
    trained, _ = train_once(dictionary.architecture, d, stream, fit, knob_value, fit.steps, scale)
    return trained


def toy_values(dictionary: Dictionary, directions: Tensor, x: Tensor, magnitudes: Tensor) -> dict[str, float | None]:
    """FVU, L0, dead fraction and the recovery metrics of a dictionary on the world's held-out samples."""
    from saekit.toy.recovery import encode, feature_recovery, sparse_world_report

    report = sparse_world_report(dictionary, directions, x, magnitudes)
    latents = encode(dictionary, x)
    recovery = feature_recovery(directions, magnitudes, dictionary.W_dec, latents)
    dead = (latents > 0).any(0).logical_not().float().mean().item()  # latents that never fire on the samples
    return {
        "fvu": report["fvu"], "l0": report["l0"], "dead_fraction": dead,
        "mcc": recovery.mcc, "recovery": report["directions"]["recovery"],
        "precision": report["directions"]["precision"],
        "fraction_recovered": report["directions"]["fraction_recovered"],
        "magnitude_correlation": report["magnitude_correlation"], "magnitude_r2": report["magnitude_r2"],
        "f1": recovery.f1, "uniqueness": recovery.uniqueness, "shrinkage": recovery.shrinkage,
    }
