"""SAEBench's SCR (spurious correlation removal) and TPP (targeted probe perturbation) on a run's dictionary.

**SCR** reads a biased mix (``saekit.data.labelled.SpuriousTask``: a target attribute crossed with a spurious one,
built in ``topic-language``: computing vs other fortune topics x English vs other languages). Three probes on the
raw activations, as SAEBench trains them: the *target* probe (computing / other, on all four quadrants), the
*spurious* probe (en / foreign, on all four) and the *biased* probe (computing-en / other-foreign: only the two
quadrants where the attributes agree, so it may read either). Direction 1 ablates the top-N latents of the spurious
probe and measures the biased probe on target data; direction 2 ablates the target probe's latents and measures the
biased probe on spurious data; ``scr_metric`` is direction 1 where the biased probe is worse on target data than on
spurious data (it leans on the spurious attribute), direction 2 where it is worse on spurious data, and None on a
tie (SAEBench leaves the key out then).

**TPP** reads a multi-class task: one probe per class (that class against as many texts of the others); class i's
top-N latents by clamped effect are ablated and the drop in class i's probe accuracy, minus the mean drop of the
other probes, is its score; scores are averaged over the classes.

Both ablate in the pooled activations (``ablation.ablate``), which equals SAEBench's per-token ablation over the
kept tokens. SAEBench also subtracts f(0)[A] W_dec[A] at every zeroed BOS/pad position (non-zero for a TopK SAE):
saekit ablates real tokens only, unless ``saebench_masked_positions`` asks for SAEBench's term too
(``ablation.masked_positions_shift``), which makes its numbers comparable with SAEBench's published ones
(tests/probing/test_saebench_scr_tpp_parity.py measures the difference).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from saekit.data.labelled import LabelledTask, SpuriousTask, load_task, spurious_task
from saekit.errors import SaekitError
from saekit.models.loading import LoadedModel
from saekit.probing.ablation import (
    ablate,
    latent_effects,
    masked_positions_shift,
    probe_accuracy,
    scr_score,
    select_top,
    tpp_scores,
    train_probe,
)
from saekit.probing.pooling import pooled_activations, tokenize
from saekit.probing.probes import NEGATIVE, POSITIVE, BinaryTask
from saekit.probing.sparse_probing import (
    PooledRuns,
    ProbeInputs,
    ProbeSettings,
    binary_tasks,
    load_probe_inputs,
    pooled_task,
)
from saekit.settings import check_rules, setting
from saekit.training.config import load_run_config

DEFAULT_SCR_TASK = "topic-language"
RELIABILITY_WARNING = (
    "Reliability: Chanin (2026, \"Are SAE Benchmarks Reliable?\") finds that SCR and TPP fail reseed-noise, "
    "ground-truth and discriminability tests (two seeds of one recipe can differ by more than two recipes do; the "
    "scores do not track ground-truth feature recovery; they do not tell a trained checkpoint from its neighbours), "
    "while sparse probing held up. Read these numbers as indicative only.")
QUADRANTS = ((True, True), (True, False), (False, True), (False, False))  # (target first class, spurious first)


@dataclass
class RemovalSettings:
    """SCR's and TPP's own settings (SAEBench's defaults); sizes, context, seed and batch are the probe settings."""

    n_values: tuple[int, ...] = setting((2, 5, 10, 20, 50, 100, 500), "numbers of latents ablated, comma-separated "
                                        "(SAEBench: 2,5,10,20,50,100,500; values above the width are left out)",
                                        minimum=1, invalid=((0,),))
    probe_epochs: int = setting(20, "epochs of the attribution probe (SAEBench: 20)", minimum=1)
    probe_lr: float = setting(1e-3, "AdamW learning rate of the attribution probe (SAEBench: 1e-3)", above=0)
    probe_batch_size: int = setting(16, "batch size of the attribution probe; it sets how much of the spurious "
                                    "correlation the biased probe learns (SAEBench: 16)", minimum=1)
    probe_l1: float = setting(1e-3, "L1 penalty on the attribution probe's weights (SAEBench: 1e-3)", minimum=0)
    saebench_masked_positions: bool = setting(
        False, "also subtract the ablated latents' decode of the zero vector at each text's BOS and padding up to "
        "the context length, as SAEBench 0.6.0's ablation does (non-zero for TopK and biased encoders): for numbers "
        "comparable with SAEBench's; off, only real tokens are ablated", switch=True)

    def __post_init__(self) -> None:
        self.n_values = tuple(self.n_values)

    def validate(self) -> RemovalSettings:
        check_rules(self, "SCR/TPP settings")
        if not self.n_values or len(set(self.n_values)) != len(self.n_values):
            raise SaekitError("--n-values must be distinct whole numbers >= 1, e.g. 2,5,10")
        return self


@dataclass
class RemovalResults:
    """What an SCR or TPP evaluation measured (``metric``: "scr" or "tpp")."""

    metric: str
    run: str
    model: str
    site: str
    architecture: str
    width: int
    task: dict[str, Any]
    settings: dict[str, Any]
    clean_accuracy: dict[str, float]  # probe name (or "biased on X") -> test accuracy before any ablation
    metrics: dict[str, float | None]  # SAEBench's metric keys -> value
    details: dict[str, Any] = field(default_factory=dict)  # selected latents, ablated accuracies, per-class scores
    warning: str = RELIABILITY_WARNING

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _probe(task: BinaryTask, settings: RemovalSettings, seed: int) -> torch.nn.Linear:
    return train_probe(task, settings.probe_epochs, settings.probe_lr, settings.probe_batch_size, settings.probe_l1,
                       seed)


def check_ablatable(inputs: ProbeInputs) -> None:
    """A transcoder writes elsewhere than it reads: ablating its latents at the read site means nothing."""
    if inputs.dictionary.config.is_transcoder:
        raise SaekitError(f"{inputs.run_dir} is a transcoder; SCR and TPP ablate latents at the site the dictionary "
                          "reconstructs, so they need an SAE")


def usable_n(settings: RemovalSettings, width: int) -> tuple[int, ...]:
    """The N values at most the width (SAEBench would assert); none left is one line."""
    kept = tuple(n for n in settings.n_values if n <= width)
    if not kept:
        raise SaekitError(f"every --n-values entry is above the dictionary's {width} latents; use smaller values")
    return kept


def _with_masked_positions(latents: Tensor, rows: list[Tensor], inputs: ProbeInputs, context_length: int) -> Tensor:
    """Pooled latents [n, width] plus SAEBench's masked-position term for the tokenised ``rows`` (BOS first)."""
    d_in = inputs.dictionary.W_dec.shape[1]
    zero = torch.zeros(1, d_in, dtype=inputs.dictionary.W_dec.dtype, device=inputs.dictionary.W_dec.device)
    with torch.no_grad():
        of_zero = inputs.dictionary.encode(zero)[0].float().cpu()
    kept = torch.tensor([len(row) - 1 for row in rows])
    return latents + masked_positions_shift(kept, context_length, of_zero)


def _identity(inputs: ProbeInputs) -> dict[str, Any]:
    config = inputs.dictionary.config
    return {"run": str(inputs.run_dir), "model": inputs.loaded.name, "site": inputs.site,
            "architecture": config.architecture, "width": config.width}


# --- SCR


def _pooled_quadrants(inputs: ProbeInputs, task: SpuriousTask, probe_settings: ProbeSettings,
                      masked_positions: bool = False) -> dict[str, dict[tuple[bool, bool], dict[str, Tensor]]]:
    """``{split: {quadrant: {"raw": [q, d], "sae": [q, width]}}}``; ``masked_positions``: the test latents carry
    SAEBench's masked-position term (see the module docstring)."""
    pooled: dict[str, dict[tuple[bool, bool], dict[str, Tensor]]] = {}
    for split, quadrants in (("train", task.train), ("test", task.test)):
        texts = [text for quadrant in QUADRANTS for text in quadrants[quadrant]]
        rows = tokenize(inputs.loaded, texts, probe_settings.context_length)
        features = pooled_activations(inputs.loaded, inputs.site, rows, {"sae": inputs.dictionary.encode},
                                      probe_settings.batch_size, desc=f"pooling {split} texts")
        if masked_positions and split == "test":
            features["sae"] = _with_masked_positions(features["sae"], rows, inputs, probe_settings.context_length)
        size = len(quadrants[True, True])
        pooled[split] = {quadrant: {name: values[i * size:(i + 1) * size] for name, values in features.items()}
                         for i, quadrant in enumerate(QUADRANTS)}
    return pooled


def scr_binary_tasks(pooled: dict[str, dict[tuple[bool, bool], dict[str, Tensor]]], key: str,
                     ) -> dict[str, BinaryTask]:
    """SAEBench's three SCR tasks on one feature set (``key``: "raw" or "sae"): target, spurious, biased."""
    groups = {"target": ([(True, True), (True, False)], [(False, True), (False, False)]),
              "spurious": ([(True, True), (False, True)], [(True, False), (False, False)]),
              "biased": ([(True, True)], [(False, False)])}
    tasks = {}
    for name, (positive, negative) in groups.items():
        parts = []
        for split in ("train", "test"):
            x_pos = torch.cat([pooled[split][q][key] for q in positive])
            x_neg = torch.cat([pooled[split][q][key] for q in negative])
            y = torch.cat([torch.full((len(x_pos),), POSITIVE), torch.full((len(x_neg),), NEGATIVE)])
            parts += [torch.cat([x_pos, x_neg]), y]
        tasks[name] = BinaryTask(name, *parts)
    return tasks


def train_probes(tasks: dict[str, BinaryTask], settings: RemovalSettings, seed: int) -> dict[str, torch.nn.Linear]:
    """SAEBench's attribution probe on each task's raw features (seeded by the task's position)."""
    return {name: _probe(task, settings, seed + i) for i, (name, task) in enumerate(tasks.items())}


def scr_from_pooled(raw: dict[str, BinaryTask], sae: dict[str, BinaryTask], decoder: Tensor, n_values: tuple[int, ...],
                    probes: dict[str, torch.nn.Linear]) -> tuple[dict[str, float], dict[str, float | None],
                                                                 dict[str, Any]]:
    """SCR with the target, spurious and biased ``probes`` on the three tasks' raw and latent features: clean
    accuracies, SAEBench's metrics, and the details."""
    clean = {name: probe_accuracy(probes[name], raw[name].test_x, raw[name].test_y) for name in ("target", "spurious")}
    clean |= {f"biased on {name}": probe_accuracy(probes["biased"], raw[name].test_x, raw[name].test_y)
              for name in ("target", "spurious", "biased")}
    # direction 1 ablates the spurious probe's latents and reads target data; direction 2 the other way round
    directions = {1: ("spurious", "target"), 2: ("target", "spurious")}
    metrics: dict[str, float | None] = {}
    details: dict[str, Any] = {"selected": {}, "ablated_accuracy": {}}
    for direction, (ablated_by, data) in directions.items():
        effects = latent_effects(sae[ablated_by].train_x, sae[ablated_by].train_y, probes[ablated_by].weight,
                                 decoder, scr=True)
        for n in n_values:
            chosen = select_top(effects, n)
            x = ablate(raw[data].test_x, sae[data].test_x, decoder, chosen)
            accuracy = probe_accuracy(probes["biased"], x, raw[data].test_y)
            metrics[f"scr_dir{direction}_threshold_{n}"] = scr_score(accuracy, clean[f"biased on {data}"],
                                                                     clean[data])
            details["selected"][f"dir{direction}_{n}"] = chosen
            details["ablated_accuracy"][f"dir{direction}_{n}"] = accuracy
    chosen_direction = _scr_direction(clean)
    for n in n_values:
        metrics[f"scr_metric_threshold_{n}"] = (None if chosen_direction is None
                                                else metrics[f"scr_dir{chosen_direction}_threshold_{n}"])
    details["scr_metric_direction"] = chosen_direction
    return clean, metrics, details


def _scr_direction(clean: dict[str, float]) -> int | None:
    on_target, on_spurious = clean["biased on target"], clean["biased on spurious"]
    if on_target == on_spurious:
        return None
    return 1 if on_target < on_spurious else 2


def scr_run(run_dir: str | Path, task_name: str = DEFAULT_SCR_TASK, probe_settings: ProbeSettings | None = None,
            settings: RemovalSettings | None = None, loaded: LoadedModel | None = None) -> RemovalResults:
    """SCR of the run's dictionary on a built-in biased mix (nothing written)."""
    probe_settings = (probe_settings or ProbeSettings()).validate()
    settings = (settings or RemovalSettings()).validate()
    task = spurious_task(task_name, probe_settings.train_per_class, probe_settings.test_per_class)
    load_run_config(Path(run_dir))
    inputs = load_probe_inputs(Path(run_dir), loaded)
    check_ablatable(inputs)
    n_values = usable_n(settings, inputs.dictionary.config.width)
    pooled = _pooled_quadrants(inputs, task, probe_settings, settings.saebench_masked_positions)
    decoder = inputs.dictionary.W_dec.detach().float().cpu()
    raw = scr_binary_tasks(pooled, "raw")
    probes = train_probes(raw, settings, probe_settings.seed)
    clean, metrics, details = scr_from_pooled(raw, scr_binary_tasks(pooled, "sae"), decoder, n_values, probes)
    return RemovalResults("scr", **_identity(inputs), task=task.describe(),
                          settings={**asdict(probe_settings), **asdict(settings), "n_values": list(n_values)},
                          clean_accuracy=clean, metrics=metrics, details=details)


# --- TPP


def tpp_from_tasks(raw: list[BinaryTask], sae: list[BinaryTask], decoder: Tensor, n_values: tuple[int, ...],
                   probes: dict[str, torch.nn.Linear]) -> tuple[dict[str, float], dict[str, float], dict[str, Any]]:
    """TPP with one probe per class on one-vs-rest tasks (raw and latent features of the same rows): clean
    accuracies, the metrics averaged over classes, and the details (selected latents, per-class scores)."""
    clean = {task.label: probe_accuracy(probes[task.label], task.test_x, task.test_y) for task in raw}
    per_class: dict[str, dict[str, float]] = {task.label: {} for task in raw}
    selected: dict[str, dict[str, list[int]]] = {task.label: {} for task in raw}
    for raw_i, sae_i in tqdm(list(zip(raw, sae, strict=True)), desc="TPP ablations", unit="class"):
        effects = latent_effects(sae_i.train_x, sae_i.train_y, probes[raw_i.label].weight, decoder, scr=False)
        for n in n_values:
            chosen = select_top(effects, n)
            selected[raw_i.label][str(n)] = chosen
            after = {r.label: probe_accuracy(probes[r.label], ablate(r.test_x, s.test_x, decoder, chosen), r.test_y)
                     for r, s in zip(raw, sae, strict=True)}
            scores = tpp_scores(clean, {raw_i.label: after})[raw_i.label]
            per_class[raw_i.label].update({f"tpp_threshold_{n}_{key}": value for key, value in scores.items()})
    keys = next(iter(per_class.values()))
    metrics = {key: sum(scores[key] for scores in per_class.values()) / len(per_class) for key in keys}
    return clean, metrics, {"selected": selected, "per_class": per_class}


def tpp_run(run_dir: str | Path, task_name: str, probe_settings: ProbeSettings | None = None,
            settings: RemovalSettings | None = None, loaded: LoadedModel | None = None) -> RemovalResults:
    """TPP of the run's dictionary on a built-in multi-class task or a labelled file (nothing written)."""
    probe_settings = (probe_settings or ProbeSettings()).validate()
    settings = (settings or RemovalSettings()).validate()
    task: LabelledTask = load_task(task_name, probe_settings.train_per_class, probe_settings.test_per_class)
    load_run_config(Path(run_dir))
    inputs = load_probe_inputs(Path(run_dir), loaded)
    check_ablatable(inputs)
    n_values = usable_n(settings, inputs.dictionary.config.width)
    pooled = pooled_task(inputs, task, probe_settings)
    if settings.saebench_masked_positions:
        rows = tokenize(inputs.loaded, [example.text for example in task.test], probe_settings.context_length)
        pooled["test"]["sae"] = _with_masked_positions(pooled["test"]["sae"], rows, inputs,
                                                       probe_settings.context_length)
    raw = binary_tasks(pooled, task, "llm", probe_settings.seed)
    sae = binary_tasks(pooled, task, "sae", probe_settings.seed)
    decoder = inputs.dictionary.W_dec.detach().float().cpu()
    probes = train_probes({task.label: task for task in raw}, settings, probe_settings.seed)
    clean, metrics, details = tpp_from_tasks(raw, sae, decoder, n_values, probes)
    return RemovalResults("tpp", **_identity(inputs), task=task.describe(),
                          settings={**asdict(probe_settings), **asdict(settings), "n_values": list(n_values)},
                          clean_accuracy=clean, metrics=metrics, details=details)


def tpp_of_runs(runs: PooledRuns, probe_settings: ProbeSettings, settings: RemovalSettings) -> list[dict[str, float]]:
    """TPP metrics of several runs on texts pooled once (a reliability study): the probes read the raw
    activations, the same for every run, so they are trained once; each run's latents pick what is ablated."""
    seed = probe_settings.seed
    raw = binary_tasks(runs.pooled[0], runs.task, "llm", seed)
    probes = train_probes({task.label: task for task in raw}, settings, seed)
    metrics = []
    for inputs, pooled in zip(runs.inputs, runs.pooled, strict=True):
        check_ablatable(inputs)
        sae = binary_tasks(pooled, runs.task, "sae", seed)
        decoder = inputs.dictionary.W_dec.detach().float().cpu()
        n_values = usable_n(settings, inputs.dictionary.config.width)
        metrics.append(tpp_from_tasks(raw, sae, decoder, n_values, probes)[1])
    return metrics
