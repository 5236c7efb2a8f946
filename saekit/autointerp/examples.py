"""The one adapter between the analysis store and autointerp: per-latent examples, windowed and split.

Everything autointerp knows about the store goes through this module. It turns the store's
examples of a latent (top-activating, quantile-sampled, random non-activating contexts with
per-token activations) into :class:`LatentExamples`: an explainer-training set (the top examples
plus a few quantile samples) and held-out scoring sets (the remaining quantile samples as
activating examples; random non-activating contexts, or hard negatives from neighbouring latents,
as non-activating ones). The split is deterministic: it depends only on the store and the seed.

Contexts are cut to a window of ``window`` tokens around the strongest activation (random
offset, seeded per latent and context) so prompts stay short; leading positions that do not
count (BOS) are dropped.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from saekit.errors import SaekitError

TOP, QUANTILE, NEGATIVE = "top", "quantile", "random-negative"


@dataclass(frozen=True)
class Example:
    """One context as autointerp sees it: token strings and the latent's activation on each."""

    tokens: list[str]
    activations: list[float]
    context: int = -1  # row of the store's context table (-1: synthetic); used to keep splits disjoint
    source: str = ""  # "top", "quantile", "random-negative", "neighbour-<latent>", ...

    @property
    def max_activation(self) -> float:
        return max(self.activations, default=0.0)

    @property
    def text(self) -> str:
        return "".join(self.tokens)


@dataclass
class LatentExamples:
    """A latent's explainer-training examples and its held-out scoring examples."""

    latent: int
    train: list[Example]
    test_activating: list[Example]
    test_nonactivating: list[Example]


@dataclass(frozen=True)
class SplitConfig:
    """How a latent's stored examples are split into explainer-training and held-out scoring sets."""

    train_top: int = 10  # top-activating examples shown to the explainer
    train_per_quantile: int = 1  # quantile samples per group also shown to the explainer; the rest are held out
    max_test_activating: int = 8
    max_test_nonactivating: int = 8
    min_train: int = 3
    min_test_activating: int = 2
    min_test_nonactivating: int = 2
    window: int = 32  # tokens per example shown in prompts
    negatives: str = "random"  # "random" (the store's random non-activating contexts) or "neighbours"
    seed: int = 0

    def validate(self) -> SplitConfig:
        if self.negatives not in ("random", "neighbours"):
            raise SaekitError(f"negatives must be 'random' or 'neighbours', got {self.negatives!r}")
        if self.window < 2 or self.min_train < 1 or self.min_test_activating < 1 or self.min_test_nonactivating < 1:
            raise SaekitError("window must be at least 2 and every minimum number of examples at least 1")
        return self


@dataclass
class ExampleSet:
    """The latents that can be explained, and those that cannot (latent id -> reason)."""

    latents: list[LatentExamples]
    skipped: dict[int, str] = field(default_factory=dict)
    examined: int = 0

    def skipped_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for reason in self.skipped.values():
            key = reason.split(" (")[0]
            counts[key] = counts.get(key, 0) + 1
        return counts


def stable_seed(*parts: int) -> int:
    """A seed from integers, the same in every process (unlike hash() of a tuple with strings)."""
    value = 0
    for part in parts:
        value = (value * 1_000_003 + int(part) + 7) % (1 << 61)
    return value


def window_example(tokens: Sequence[str], values: Sequence[float], window: int, rng: random.Random,
                   context: int, source: str) -> Example:
    """Cut ``window`` tokens around the strongest activation (placed at a random offset) or anywhere if none."""
    n = len(tokens)
    if n <= window:
        return Example(list(tokens), [float(v) for v in values], context, source)
    peak = max(range(n), key=lambda i: values[i])
    if values[peak] > 0:
        offset = rng.randint(window // 4, (3 * window) // 4)
        start = min(max(peak - offset, 0), n - window)
    else:
        start = rng.randint(0, n - window)
    return Example(list(tokens[start:start + window]), [float(v) for v in values[start:start + window]],
                   context, source)


def _round_robin(groups: dict[int, list[Example]], limit: int) -> list[Example]:
    """Take examples alternately from each quantile group (lowest first) so a capped set stays stratified."""
    queues = [list(groups[g]) for g in sorted(groups)]
    out: list[Example] = []
    while len(out) < limit and any(queues):
        for queue in queues:
            if queue and len(out) < limit:
                out.append(queue.pop(0))
    return out


def split_latent(latent: int, top: list[Example], quantiles: dict[int, list[Example]], negatives: list[Example],
                 config: SplitConfig) -> LatentExamples:
    """Split one latent's examples: ``top`` by rank, ``quantiles`` group -> examples by rank, ``negatives``."""
    train = list(top[:config.train_top])
    held: dict[int, list[Example]] = {}
    for group, examples in sorted(quantiles.items()):
        train.extend(examples[:config.train_per_quantile])
        held[group] = examples[config.train_per_quantile:]
    seen = {e.context for e in train if e.context >= 0}
    unique: dict[int, list[Example]] = {}
    for group, examples in held.items():
        for example in examples:
            if example.context >= 0 and example.context in seen:
                continue
            seen.add(example.context)
            unique.setdefault(group, []).append(example)
    test_activating = _round_robin(unique, config.max_test_activating)
    nonactivating = []
    for example in negatives:
        if example.context >= 0 and example.context in seen:
            continue
        seen.add(example.context)
        nonactivating.append(example)
    return LatentExamples(latent, train, test_activating, nonactivating[:config.max_test_nonactivating])


def too_few(examples: LatentExamples, config: SplitConfig) -> str | None:
    """Why a latent cannot be scored fairly, or None."""
    counts = (len(examples.train), len(examples.test_activating), len(examples.test_nonactivating))
    if (counts[0] < config.min_train or counts[1] < config.min_test_activating
            or counts[2] < config.min_test_nonactivating):
        return (f"too few examples (train {counts[0]}/{config.min_train}, held-out activating "
                f"{counts[1]}/{config.min_test_activating}, "
                f"non-activating {counts[2]}/{config.min_test_nonactivating})")
    return None


class StoreExamples:
    """Reads latents' examples from an analysis store directory (``RUN_DIR/analysis``)."""

    def __init__(self, analysis_dir: str | Path, config: SplitConfig | None = None) -> None:
        from saekit.analysis.store import AnalysisStore, store_exists

        analysis_dir = Path(analysis_dir)
        if not store_exists(analysis_dir):
            raise SaekitError(f"no analysis store in {analysis_dir}; run `saekit analyze RUN_DIR` first")
        self.store = AnalysisStore(analysis_dir)
        self.config = (config or SplitConfig()).validate()
        counted = self.store.counted
        # Leading positions that do not count (BOS) are dropped from every example.
        self.first_counted = [int(row.nonzero()[0]) if bool(row.any()) else 0 for row in counted]
        self.firing: torch.Tensor | None = None  # [contexts, analysed latents] bool, for verified hard negatives

    @property
    def latent_ids(self) -> list[int]:
        return list(self.store.latent_ids)

    @property
    def manifest(self) -> dict:
        return self.store.manifest

    def is_dead(self, latent: int) -> bool:
        stats = self.store.stats
        if "dead" in stats:
            return bool(stats["dead"][self.store.position[latent]])
        return self.store.stat("fire_counts", latent) == 0

    def _example(self, latent: int, context: int, values: Sequence[float], source: str) -> Example:
        first = self.first_counted[context]
        ids = self.store.token_ids[context].tolist()[first:]
        tokens = [self.store.token_string(i) for i in ids]
        rng = random.Random(stable_seed(self.config.seed, latent, context))
        return window_example(tokens, list(values)[first:], self.config.window, rng, context, source)

    def _neighbour_negatives(self, latent: int) -> list[Example]:
        """Top contexts of the latent's decoder neighbours where the latent itself is verified silent."""
        if self.firing is None:
            raise SaekitError("hard negatives need the latents' firing on every context; call set_firing first")
        neighbours, _ = self.store.geometry_row(latent)
        column = self.store.position[latent]
        out: list[Example] = []
        for neighbour in neighbours:
            if neighbour not in self.store.position or neighbour == latent:
                continue
            for example in self.store.latent_examples(neighbour):
                if example.kind == TOP and not bool(self.firing[example.context, column]):
                    length = len(example.values)
                    out.append(self._example(latent, example.context, [0.0] * length, f"neighbour-{neighbour}"))
                    break  # one context per neighbour: spread over neighbours
        return out

    def set_firing(self, firing: torch.Tensor) -> None:
        """``firing`` [contexts, analysed latents]: whether each latent fires anywhere (counted) in each context."""
        expected = (self.store.token_ids.shape[0], len(self.store.latent_ids))
        if tuple(firing.shape) != expected:
            raise SaekitError(f"firing matrix has shape {tuple(firing.shape)}, expected {expected}")
        self.firing = firing.bool()

    def latent(self, latent: int) -> LatentExamples:
        top: list[Example] = []
        quantiles: dict[int, list[Example]] = {}
        negatives: list[Example] = []
        rows = sorted(self.store.latent_examples(latent), key=lambda e: (e.kind, e.quantile, e.rank))
        for row in rows:
            example = self._example(latent, row.context, row.values, row.kind)
            if row.kind == TOP:
                top.append(example)
            elif row.kind == QUANTILE:
                quantiles.setdefault(row.quantile, []).append(example)
            elif row.kind == NEGATIVE:
                negatives.append(example)
        if self.config.negatives == "neighbours":
            negatives = self._neighbour_negatives(latent)
        return split_latent(latent, top, quantiles, negatives, self.config)

    def select(self, limit: int | None = None, latents: Sequence[int] | None = None) -> ExampleSet:
        """The first ``limit`` explainable latents (in store order, or of ``latents``); others skipped with why."""
        candidates = list(latents) if latents is not None else self.latent_ids
        result = ExampleSet([])
        for latent in candidates:
            if limit is not None and len(result.latents) >= limit:
                break
            result.examined += 1
            if latent not in self.store.position:
                result.skipped[latent] = "not analysed (not in the analysis store)"
                continue
            if self.is_dead(latent):
                result.skipped[latent] = "dead (never fired on the analysed tokens)"
                continue
            examples = self.latent(latent)
            reason = too_few(examples, self.config)
            if reason:
                result.skipped[latent] = reason
            else:
                result.latents.append(examples)
        return result


@torch.no_grad()
def context_firing(run_dir: str | Path, analysis_dir: str | Path, loaded=None, batch_contexts: int = 8) -> torch.Tensor:
    """Recompute which analysed latents fire anywhere in each stored context (for verified hard negatives).

    One pass of the run's model and dictionary over the store's contexts; ``loaded`` is the run's
    model (loaded from the run config when None). Returns ``[contexts, analysed latents]`` bool.
    """
    from saekit.analysis.latents import TokenMaskRule, latent_batches
    from saekit.analysis.store import AnalysisStore
    from saekit.dictionaries.registry import load_dictionary, read_sites
    from saekit.rundir import DICTIONARY_DIR
    from saekit.training.config import load_run_config

    run_config = load_run_config(run_dir)
    store = AnalysisStore(analysis_dir)
    dictionary, source = load_dictionary(Path(run_dir) / DICTIONARY_DIR, run_config.run.device)
    loaded = loaded or run_config.data.load_model(run_config.run.device)
    n_latents = len(store.latent_ids)
    if store.latent_ids != list(range(n_latents)):
        raise SaekitError("hard negatives need an analysis of the first N latents; rerun `saekit analyze`")
    rule = TokenMaskRule(run_config.data.exclude_bos, run_config.data.outlier_norm_factor)
    rows = [batch.activations.amax(1) > 0 for batch in latent_batches(
        loaded, dictionary.eval(), read_sites(source), store.token_ids.long(), n_latents, batch_contexts, rule)]
    return torch.cat(rows)
