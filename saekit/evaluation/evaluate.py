"""Evaluate a trained run on held-out contexts: reconstruction, sparsity, spliced losses, effective compute.

Writes ``metrics.json`` (every number, with formulas and baselines named) and ``report.md`` into the
run directory.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

from torch import Tensor
from tqdm.auto import tqdm

from saekit.activations.source import contexts_for, load_split
from saekit.data.contexts import take_contexts
from saekit.dictionaries.registry import load_dictionary, read_sites, written_sites
from saekit.errors import SaekitError
from saekit.evaluation.damage import token_damage
from saekit.evaluation.effective_compute import (
    ComputeNotReported,
    EffectiveCompute,
    LawLike,
    effective_compute_report,
    get_law,
)
from saekit.evaluation.generation import ACAUSAL, SideBySide, generation_prompts, side_by_side
from saekit.evaluation.report import render_report
from saekit.evaluation.results import EvaluationResults, LossResults
from saekit.evaluation.splice import LossComparison, compare_losses_many, measured_splice_targets
from saekit.io import OutputTarget, claim_output, mark_output, read_json, write_json, write_text
from saekit.locks import LOCK_FILE, exclusive
from saekit.models.loading import (
    DEFAULT_MODEL,
    DEFAULT_MODEL_PARAMS,
    DEFAULT_MODEL_TRAINING_TOKENS,
    LoadedModel,
)
from saekit.rundir import (
    DICTIONARY_DIR,
    METRICS_FILE,
    REPORT_FILE,
    THROUGHPUT_FILE,
    load_activation_means,
)
from saekit.training.config import TrainConfig, load_run_config
from saekit.training.splicing import SpliceTarget

EVAL_SEED_OFFSET = 1_000_003  # eval contexts use their own document order, independent of training's
GENERATIONS = 4  # side-by-side generations in a report unless asked otherwise


def check_generations(count: int) -> int:
    """``count`` if it is a number of generations to sample (>= 0); checked before any model loads."""
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        raise SaekitError(f"generations must be a whole number >= 0 (0: sample none), got {count!r}")
    return count


def eval_contexts(loaded: LoadedModel, config: TrainConfig, tokens: int) -> Tensor:
    """Held-out contexts from the eval split, enough to cover ``tokens`` non-BOS predictions."""
    data = config.data
    n_contexts = max(1, math.ceil(tokens / (data.context_length - 2)))
    iterator = contexts_for(loaded, load_split(data).eval, data, data.seed + EVAL_SEED_OFFSET)
    return take_contexts(iterator, n_contexts)


def load_splice_targets(run_dir: Path, loaded: LoadedModel, device: str = "cpu") -> list[SpliceTarget]:
    """The run's dictionary as splice targets: one, or one per layer of a cross-layer run (spliced jointly)."""
    dictionary, source = load_dictionary(run_dir / DICTIONARY_DIR, device)
    dictionary = dictionary.eval().requires_grad_(False)
    adapter = loaded.adapter
    reads = [adapter.site(name) for name in read_sites(source)]
    writes = [adapter.site(name) for name in written_sites(source)]
    layers = len(reads)
    for site, width in [(site, dictionary.config.d_in // layers) for site in reads] + \
                       [(site, dictionary.config.output_dim // layers) for site in writes]:
        if adapter.site_width(site) != width:
            raise SaekitError(f"dictionary in {run_dir} has width {width} but {site} of {loaded.name} has "
                              f"{adapter.site_width(site)}; evaluate it with the model it was trained on")
    means = load_activation_means(run_dir, [site.name for site in writes])
    outliers = load_run_config(run_dir).data.outlier_norm_factor
    return measured_splice_targets(dictionary, reads, writes, [mean.to(device) for mean in means], outliers)


def _batches(contexts: Tensor, batch_size: int, desc: str) -> Iterator[Tensor]:
    yield from tqdm(contexts.split(batch_size), desc=desc, unit="batch")


def evaluate_runs(run_dirs: list[Path], loaded: LoadedModel | None = None, eval_tokens: int | None = None,
                  law: LawLike = "chinchilla", generations: int = GENERATIONS) -> EvaluationResults:
    """Splice the runs' dictionaries jointly (one run: alone) and measure everything.

    The held-out contexts come from the first run's corpus split; all runs must share the model.
    """
    return _evaluate_groups([run_dirs], loaded, eval_tokens, law, [generations])[0]


def evaluate_alternatives(run_dirs: list[Path], loaded: LoadedModel | None = None, eval_tokens: int | None = None,
                          law: LawLike = "chinchilla", generations: int = 0) -> list[EvaluationResults]:
    """Evaluate each run alone where all splice the same site (a sweep), sharing the baseline passes."""
    return _evaluate_groups([[d] for d in run_dirs], loaded, eval_tokens, law, [generations] * len(run_dirs))


def _evaluate_groups(groups: list[list[Path]], loaded: LoadedModel | None, eval_tokens: int | None, law: LawLike,
                     generations: list[int]) -> list[EvaluationResults]:
    """Each group of runs spliced jointly, on the same contexts, sharing the clean and ablation passes."""
    law = get_law(law)  # an unknown law name fails now, not as an error entry after the whole evaluation
    for count in generations:
        check_generations(count)
    configs = [load_run_config(d) for group in groups for d in group]
    config = configs[0]
    if len({(c.data.model, c.data.randomize_weights, c.data.randomization_seed) for c in configs}) > 1:
        models = ", ".join(c.data.model + (" (randomized)" if c.data.randomize_weights else "") for c in configs)
        raise SaekitError(f"runs evaluated together must come from the same model; got {models}")
    loaded = loaded or config.data.load_model(config.run.device)
    target_groups = [[target for d in group for target in load_splice_targets(d, loaded, config.run.device)]
                     for group in groups]
    for targets in target_groups:
        if len({t.write_site for t in targets}) < len(targets):
            raise SaekitError("two of the runs write the same site; splice each site at most once")
    contexts = eval_contexts(loaded, config, eval_tokens or config.run.eval_tokens)
    comparisons = [LossComparison() for _ in groups]
    batches = _batches(contexts, config.run.eval_batch_contexts, "evaluating")
    results = compare_losses_many(loaded, target_groups, batches, comparisons)
    return [_metrics(loaded, group, targets, contexts, losses, comparison, config, law, samples)
            for group, targets, losses, comparison, samples in zip(groups, target_groups, results, comparisons,
                                                                   generations)]


def _metrics(loaded: LoadedModel, run_dirs: list[Path], targets: list[SpliceTarget], contexts: Tensor,
             losses: LossResults, comparison: LossComparison, config: TrainConfig, law: LawLike,
             generations: int) -> EvaluationResults:
    # Read the reconstruction metrics before sampling: generation runs the splice too and would add to them.
    reconstruction = {str(t.write_site): t.metrics.result() for t in targets}
    rows, skipped = _generations(loaded, targets, generations, config.data.seed)
    return EvaluationResults(
        model=loaded.name,
        runs=[str(d) for d in run_dirs],
        sites=[f"{t.read_site}->{t.write_site}" if t.read_site != t.write_site else str(t.read_site)
               for t in targets],
        eval_contexts=int(contexts.shape[0]),
        context_length=config.data.context_length,
        bos_handling="BOS keeps its clean activation; predictions made at BOS are excluded",
        losses=losses,
        reconstruction=reconstruction,
        token_damage=token_damage(contexts, comparison.token_delta(), loaded.tokenizer),
        effective_compute=_effective_compute(config, losses, law),
        generations=rows,
        generations_skipped=skipped,
    )


def _generations(loaded: LoadedModel, targets: list[SpliceTarget], count: int,
                 seed: int) -> tuple[list[SideBySide], str | None]:
    """``count`` side-by-side samples, or none and why not (the report says so instead of an empty section)."""
    if count == 0:
        return [], "0 generations requested"
    if not all(target.causal for target in targets):  # an acausal splice needs its capture before each forward
        return [], ACAUSAL
    return side_by_side(loaded, targets, generation_prompts(count), seed=seed), None


def _effective_compute(config: TrainConfig, losses: LossResults, law: LawLike,
                       ) -> EffectiveCompute | ComputeNotReported:
    # Only the embedded model's size and training tokens are known; a randomized one was never trained.
    known = config.data.model == DEFAULT_MODEL and not config.data.randomize_weights
    params, train_tokens = (DEFAULT_MODEL_PARAMS, DEFAULT_MODEL_TRAINING_TOKENS) if known else (None, None)
    try:
        return effective_compute_report(law, losses.ce_clean.mean, losses.ce_spliced.mean,
                                        params, train_tokens)
    except SaekitError as err:  # e.g. clean loss below the law's floor E: say so instead of a number
        return ComputeNotReported(str(err))


def evaluate_run(run_dir: str | Path, loaded: LoadedModel | None = None, eval_tokens: int | None = None,
                 law: LawLike = "chinchilla", generations: int = GENERATIONS) -> EvaluationResults:
    """Evaluate one run and write metrics.json and report.md beside it (holding the run's lock throughout)."""
    run_dir = Path(run_dir)
    check_generations(generations)
    load_run_config(run_dir)  # a missing run is one line, not a lock directory created for it
    with exclusive(run_dir):
        return write_run_evaluation(run_dir, evaluate_runs([run_dir], loaded, eval_tokens, law, generations))


def write_run_evaluation(run_dir: Path, results: EvaluationResults) -> EvaluationResults:
    """Record the run's config in its results and write ``metrics.json`` and ``report.md`` beside it."""
    results.run = load_run_config(run_dir).to_dict()
    if (run_dir / THROUGHPUT_FILE).is_file():
        results.training = read_json(run_dir / THROUGHPUT_FILE, "training throughput record")
    with exclusive(run_dir):
        write_evaluation(run_dir, results)
    return results


def write_evaluation(out_dir: Path, results: EvaluationResults) -> None:
    # The report first: metrics.json is what other commands read, so it is the last file to change.
    write_text(out_dir / REPORT_FILE, render_report(results))
    write_json(out_dir / METRICS_FILE, results.to_dict())


JOINT_ENTRIES = frozenset({REPORT_FILE, METRICS_FILE, LOCK_FILE})  # a joint evaluation's files before records


def evaluate_joint(run_dirs: list[Path], out_dir: str | Path, loaded: LoadedModel | None = None,
                   eval_tokens: int | None = None, law: LawLike = "chinchilla",
                   generations: int = GENERATIONS, force: bool = False) -> EvaluationResults:
    """Splice several runs' dictionaries at once, and each alone on the same contexts; write a joint report.

    The joint splice gets ``generations`` side-by-side samples; each run alone gets none. ``out_dir`` may
    hold an earlier joint evaluation only, unless ``force``.
    """
    out_dir = Path(out_dir)
    check_generations(generations)  # before the model loads
    target = OutputTarget(out_dir, "evaluate", entries=JOINT_ENTRIES, force=force)
    target.check()
    first = load_run_config(run_dirs[0])
    loaded = loaded or first.data.load_model(first.run.device)
    # One pass over the contexts: the joint splice and each run alone share the clean and ablation passes.
    joint, *alone = _evaluate_groups([run_dirs] + [[d] for d in run_dirs], loaded, eval_tokens, law,
                                     [generations] + [0] * len(run_dirs))
    joint.alone = {str(d): results for d, results in zip(run_dirs, alone)}
    with claim_output(target):
        mark_output(target)
        write_evaluation(out_dir, joint)
    return joint
