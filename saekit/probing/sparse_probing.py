"""SAEBench's sparse probing of a run's dictionary on a labelled task, beside the raw activations and a random
dictionary of the same shape.

For every class of the task, a one-vs-rest binary task (``probes.one_vs_rest``); for every k, the k features with
the largest mean difference on its training split and a logistic regression on them (``probes.sparse_probe``),
on three feature sets pooled from the same forward passes (``pooling.pooled_activations``): the dictionary's
latents, the model's raw activations at the dictionary's site (and a probe on all of them, SAEBench's
``llm_test_accuracy``), and the latents of an untrained dictionary of the same architecture and config, seeded.
Scores are averaged over the classes, as SAEBench averages over a dataset's classes.

The training split is SAEBench's balanced one unless ``--train-size`` (sae-probes' data-scarce setting: that many
training texts per binary task) or ``--positive-fraction`` (its class-imbalanced setting) says otherwise
(``SplitPlan``); the test split stays balanced unless ``--test-positive-fraction`` is given. AUC is reported beside
accuracy throughout: it is the metric sae-probes uses and the one the reliability study kept.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from saekit.data.labelled import LabelledTask, load_task
from saekit.dictionaries.base import Dictionary
from saekit.dictionaries.registry import build_dictionary, load_dictionary, read_sites, seeded
from saekit.errors import SaekitError
from saekit.models.loading import LoadedModel
from saekit.probing.pooling import pooled_activations, tokenize
from saekit.probing.probes import BinaryTask, ProbeScore, binary_split, fit_probe, sparse_probe, split_counts
from saekit.rundir import DICTIONARY_DIR
from saekit.settings import SEED, check_rules, setting
from saekit.training.config import load_run_config

FEATURE_SETS = ("sae", "llm", "random")  # the run's latents, the raw activations, a random dictionary's latents


@dataclass
class ProbeSettings:
    """How the probes are built (SAEBench's defaults where it has one)."""

    k: tuple[int, ...] = setting((1, 2, 5), "the numbers of features each sparse probe reads, comma-separated "
                                 "(SAEBench: 1,2,5)", minimum=1, invalid=((0,),))
    context_length: int = setting(128, "tokens per text, BOS included; longer texts are cut (SAEBench: 128)",
                                  minimum=2)
    train_per_class: int | None = setting(None, "training texts per class (none: the task's stated size)",
                                          minimum=1, none="task")
    test_per_class: int | None = setting(None, "test texts per class (none: the task's stated size)", minimum=1,
                                         none="task")
    train_size: int | None = setting(None, "training texts per one-vs-rest task, positives and negatives together "
                                     "(sae-probes' data-scarce setting: 2 to 1024; task: the most the task allows "
                                     "at --positive-fraction)", minimum=2, none="task")
    positive_fraction: float = setting(0.5, "share of positives in each one-vs-rest training split (sae-probes' "
                                       "class-imbalanced setting: 0.05 to 0.95; 0.5: balanced, SAEBench's)",
                                       above=0, below=1)
    test_positive_fraction: float | None = setting(None, "share of positives in each test split (balanced: every "
                                                   "test text of the class against as many others)",
                                                   above=0, below=1, none="balanced")
    batch_size: int = setting(32, "texts per forward pass", minimum=1)
    seed: int = setting(42, "seed of the negatives' draw and of the random dictionary (SAEBench: 42)", **SEED)

    def __post_init__(self) -> None:
        self.k = tuple(self.k)

    def validate(self) -> ProbeSettings:
        check_rules(self, "probe settings")
        if not self.k or len(set(self.k)) != len(self.k):
            raise SaekitError(f"--k must be distinct whole numbers >= 1, e.g. 1,2,5, got {','.join(map(str, self.k))}")
        return self


@dataclass(frozen=True)
class SplitPlan:
    """Positives and negatives of every one-vs-rest task's training and test split (None: SAEBench's balanced
    split, every text of the class against as many others), and the setting's name for the reports."""

    setting: str
    train_positives: int | None = None
    train_negatives: int | None = None
    test_positives: int | None = None
    test_negatives: int | None = None

    def describe(self, task: LabelledTask, settings: ProbeSettings) -> dict[str, Any]:
        """The plan with the counts filled in (a balanced split: the task's texts per class, as many negatives)."""
        return {"setting": self.setting, "train_size": settings.train_size,
                "positive_fraction": settings.positive_fraction,
                "test_positive_fraction": settings.test_positive_fraction,
                "train_positives": self.train_positives or task.train_per_class,
                "train_negatives": self.train_negatives or task.train_per_class,
                "test_positives": self.test_positives or task.test_per_class,
                "test_negatives": self.test_negatives or task.test_per_class}


BALANCED = SplitPlan("balanced")


def split_setting(settings: ProbeSettings) -> str:
    """The split's name: SAEBench's balanced one, or sae-probes' data-scarce and/or class-imbalanced ones."""
    names = [name for name, on in (("data-scarce", settings.train_size is not None),
                                   ("class-imbalanced", settings.positive_fraction != 0.5)) if on]
    return ", ".join(names) or "balanced"


def split_plan(task: LabelledTask, settings: ProbeSettings) -> SplitPlan:
    """The counts of every one-vs-rest split, checked against the task's texts (one line naming the flag that
    asks too much); every class has the same counts, as the task is balanced."""
    others = len(task.classes) - 1
    name = split_setting(settings)
    train = test = (None, None)
    if name != "balanced":
        train = split_counts(task.train_per_class, others * task.train_per_class, settings.positive_fraction,
                             settings.train_size)
        _check_split(task, "training", train, task.train_per_class, others * task.train_per_class,
                     "--train-size", "--train-per-class")
    if settings.test_positive_fraction is not None:
        test = split_counts(task.test_per_class, others * task.test_per_class, settings.test_positive_fraction)
        _check_split(task, "test", test, task.test_per_class, others * task.test_per_class,
                     "--test-positive-fraction", "--test-per-class")
    return SplitPlan(name, *train, *test)


def _check_split(task: LabelledTask, split: str, counts: tuple[int, int], positives: int, negatives: int,
                 flag: str, size_flag: str) -> None:
    wanted_pos, wanted_neg = counts
    if wanted_pos < 1 or wanted_neg < 1:
        raise SaekitError(f"task {task.name}: a {split} split of {wanted_pos} positives and {wanted_neg} negatives "
                          f"needs at least one of each; change {flag} or the positive fraction")
    if wanted_pos > positives or wanted_neg > negatives:
        raise SaekitError(f"task {task.name}: the {split} split asks {wanted_pos} positives and {wanted_neg} "
                          f"negatives per class, the task has {positives} and {negatives}; use a smaller {flag} "
                          f"or raise {size_flag}")


@dataclass
class ClassResult:
    """One class against the rest: the scores of every probe, by feature set and k."""

    label: str
    llm_all: ProbeScore
    top_k: dict[str, dict[str, ProbeScore]] = field(default_factory=dict)  # feature set -> str(k) -> score


@dataclass
class ProbingResults:
    """Everything ``saekit probe`` measured, with what it was measured on."""

    run: str
    model: str
    site: str
    architecture: str
    width: int
    task: dict[str, Any]
    settings: dict[str, Any]
    classes: list[ClassResult]
    mean: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)  # set -> str(k) -> metric -> mean
    llm_all: dict[str, float] = field(default_factory=dict)
    split: dict[str, Any] = field(default_factory=dict)  # SplitPlan.describe: the setting and its counts

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ProbeInputs:
    """A run's dictionary, the site it reads and the model, ready to probe."""

    run_dir: Path
    dictionary: Dictionary
    site: str
    loaded: LoadedModel


def load_probe_inputs(run_dir: Path, loaded: LoadedModel | None = None) -> ProbeInputs:
    """The run's (input-scaling-folded) dictionary, its one read site, and its model (loaded unless given)."""
    config = load_run_config(run_dir)
    dictionary, source = load_dictionary(run_dir / DICTIONARY_DIR, config.run.device)
    sites = read_sites(source)
    if len(sites) != 1:
        raise SaekitError(f"{run_dir} reads {len(sites)} sites ({', '.join(sites)}); sparse probing reads one site, "
                          "probe a single-site SAE or transcoder")
    loaded = loaded or config.data.load_model(config.run.device)
    if loaded.adapter.site_width(sites[0]) != dictionary.config.d_in:
        raise SaekitError(f"{run_dir}'s dictionary reads width {dictionary.config.d_in} but {sites[0]} of "
                          f"{loaded.name} has {loaded.adapter.site_width(sites[0])}; probe it with its own model")
    return ProbeInputs(run_dir, dictionary.eval().requires_grad_(False), sites[0], loaded)


def random_dictionary(dictionary: Dictionary, seed: int) -> Dictionary:
    """An untrained dictionary of the same architecture and config, initialised under ``seed``."""
    twin = seeded(seed, build_dictionary, dictionary.config)
    return twin.to(next(dictionary.parameters()).device).eval().requires_grad_(False)


def check_examples(task: LabelledTask, settings: ProbeSettings) -> SplitPlan:
    """The split plan, checked before the model loads: a split the task cannot fill, or fewer training positives
    per class than the largest k, is one line."""
    largest = max(settings.k)
    plan = split_plan(task, settings)
    if plan.train_positives is None and task.train_per_class < largest:
        raise SaekitError(f"task {task.name} has {task.train_per_class} training examples per class, fewer than "
                          f"k = {largest}; use a smaller --k or more examples")
    if plan.train_positives is not None and plan.train_positives < largest:
        raise SaekitError(f"task {task.name}: the {plan.setting} split has {plan.train_positives} training "
                          f"positives per class, fewer than k = {largest}; use a smaller --k, a larger --train-size "
                          "or --positive-fraction")
    return plan


def check_width(settings: ProbeSettings, width: int) -> None:
    """A k above the features of a feature set (the raw activations or the latents): one line."""
    if max(settings.k) > width:
        raise SaekitError(f"k = {max(settings.k)} is more than the {width} features probed; use a smaller --k")


def pooled_task(inputs: ProbeInputs, task: LabelledTask, settings: ProbeSettings) -> dict[str, dict[str, Tensor]]:
    """``{split: {feature set: [n, features]}}`` for the task's train and test texts."""
    return pooled_tasks([inputs], task, settings)[0]


def pooled_tasks(inputs: list[ProbeInputs], task: LabelledTask,
                 settings: ProbeSettings) -> list[dict[str, dict[str, Tensor]]]:
    """:func:`pooled_task` for several runs of one model and site, from ONE pass of the model over the texts (a
    reliability study probes every seed and checkpoint: the forward, not the encoders, is the cost). Runs whose
    dictionaries share a config share their random twin."""
    first = inputs[0]
    if other := next((i for i in inputs if i.site != first.site or i.loaded is not first.loaded), None):
        raise SaekitError(f"{other.run_dir} reads {other.site}, {first.run_dir} {first.site}: pool runs of one model "
                          "and site together")
    twins: dict[str, Dictionary] = {}
    encoders = {}
    for index, run in enumerate(inputs):
        key = repr(run.dictionary.config)
        twin = twins.setdefault(key, random_dictionary(run.dictionary, settings.seed))
        encoders[f"sae{index}"], encoders[f"random:{key}"] = run.dictionary.encode, twin.encode
    pooled = {}
    for split, examples in (("train", task.train), ("test", task.test)):
        rows = tokenize(first.loaded, [e.text for e in examples], settings.context_length)
        pooled[split] = pooled_activations(first.loaded, first.site, rows, encoders, settings.batch_size,
                                           desc=f"pooling {split} texts")
    return [{split: {"raw": sets["raw"], "sae": sets[f"sae{index}"],
                     "random": sets[f"random:{repr(run.dictionary.config)}"]} for split, sets in pooled.items()}
            for index, run in enumerate(inputs)]


def binary_tasks(pooled: dict[str, dict[str, Tensor]], task: LabelledTask, feature_set: str,
                 seed: int, plan: SplitPlan = BALANCED) -> list[BinaryTask]:
    """One-vs-rest tasks on one feature set, split as ``plan`` says; the draws depend only on the seed and class
    (so every feature set sees the same texts)."""
    train_labels = [e.label for e in task.train]
    test_labels = [e.label for e in task.test]
    tasks = []
    for index, label in enumerate(task.classes):
        generator = torch.Generator().manual_seed(seed + index)
        key = "raw" if feature_set == "llm" else feature_set
        train_x, train_y = binary_split(pooled["train"][key], train_labels, label, generator, plan.train_positives,
                                        plan.train_negatives)
        test_x, test_y = binary_split(pooled["test"][key], test_labels, label, generator, plan.test_positives,
                                      plan.test_negatives)
        tasks.append(BinaryTask(label, train_x, train_y, test_x, test_y))
    return tasks


def probe_classes(pooled: dict[str, dict[str, Tensor]], task: LabelledTask, settings: ProbeSettings,
                  plan: SplitPlan = BALANCED) -> list[ClassResult]:
    """Every class's probes: all raw activations, and the top-k probes on each feature set."""
    by_set = {name: binary_tasks(pooled, task, name, settings.seed, plan) for name in FEATURE_SETS}
    results = [ClassResult(label, fit_probe(by_set["llm"][i])) for i, label in enumerate(task.classes)]
    jobs = [(name, i, k) for name in FEATURE_SETS for i in range(len(task.classes)) for k in settings.k]
    for name, i, k in tqdm(jobs, desc="fitting probes", unit="probe"):
        results[i].top_k.setdefault(name, {})[str(k)] = sparse_probe(by_set[name][i], k)
    return results


def _averages(classes: list[ClassResult]) -> tuple[dict[str, dict[str, dict[str, float]]], dict[str, float]]:
    def mean(scores: list[ProbeScore]) -> dict[str, float]:
        count = len(scores)
        return {"accuracy": sum(s.accuracy for s in scores) / count, "auc": sum(s.auc for s in scores) / count}

    first = classes[0].top_k
    table = {name: {k: mean([c.top_k[name][k] for c in classes]) for k in first[name]} for name in first}
    return table, mean([c.llm_all for c in classes])


def probe_run(run_dir: str | Path, task_name: str, settings: ProbeSettings | None = None,
              loaded: LoadedModel | None = None) -> ProbingResults:
    """Sparse probing of the run's dictionary on a built-in task or a labelled file (nothing written)."""
    return probe_runs([run_dir], task_name, settings, loaded)[0]


@dataclass
class PooledRuns:
    """Several runs of one model and site with the task's texts pooled once for all of them."""

    task: LabelledTask
    plan: SplitPlan
    inputs: list[ProbeInputs]
    pooled: list[dict[str, dict[str, Tensor]]]  # per run, as :func:`pooled_task` gives it


def pool_runs(run_dirs: list[str | Path], task_name: str, settings: ProbeSettings,
              loaded: LoadedModel | None = None) -> PooledRuns:
    """The runs loaded and checked (a missing run is one line before the model loads) and the task's texts pooled
    in one pass of the model for all of them."""
    run_dirs = [Path(run_dir) for run_dir in run_dirs]
    task = load_task(task_name, settings.train_per_class, settings.test_per_class)
    plan = check_examples(task, settings)
    configs = [load_run_config(run_dir) for run_dir in run_dirs]
    loaded = loaded or configs[0].data.load_model(configs[0].run.device)
    inputs = [load_probe_inputs(run_dir, loaded) for run_dir in run_dirs]
    for run in inputs:
        check_width(settings, min(run.dictionary.config.width, run.dictionary.config.d_in))
    return PooledRuns(task, plan, inputs, pooled_tasks(inputs, task, settings))


def probe_runs(run_dirs: list[str | Path], task_name: str, settings: ProbeSettings | None = None,
               loaded: LoadedModel | None = None, pooled_runs: PooledRuns | None = None) -> list[ProbingResults]:
    """:func:`probe_run` for several runs of one model and site, the texts pooled in one pass of the model (or
    ``pooled_runs``, pooled already with these settings)."""
    settings = (settings or ProbeSettings()).validate()
    pooled_runs = pooled_runs or pool_runs(run_dirs, task_name, settings, loaded)
    task, plan = pooled_runs.task, pooled_runs.plan
    results = []
    for run, pooled in zip(pooled_runs.inputs, pooled_runs.pooled, strict=True):
        classes = probe_classes(pooled, task, settings, plan)
        table, llm_all = _averages(classes)
        config = run.dictionary.config
        results.append(ProbingResults(run=str(run.run_dir), model=run.loaded.name, site=run.site,
                                      architecture=config.architecture, width=config.width, task=task.describe(),
                                      settings=asdict(settings), classes=classes, mean=table, llm_all=llm_all,
                                      split=plan.describe(task, settings)))
    return results
