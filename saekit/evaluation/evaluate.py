"""Evaluate a trained run on held-out contexts: reconstruction, sparsity, spliced losses, effective compute.

Writes ``metrics.json`` (every number, with formulas and baselines named) and ``report.md`` into the
run directory.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from torch import Tensor
from tqdm.auto import tqdm

from saekit.activations.source import contexts_for, load_split
from saekit.data.contexts import take_contexts
from saekit.dictionaries.registry import load_dictionary
from saekit.errors import SaekitError
from saekit.evaluation.damage import token_damage
from saekit.evaluation.effective_compute import effective_compute_report
from saekit.evaluation.generation import side_by_side
from saekit.evaluation.report import render_report
from saekit.evaluation.splice import LossComparison, SpliceTarget, compare_losses_many
from saekit.io import load_tensors, write_json, write_text
from saekit.models.loading import (
    DEFAULT_MODEL,
    DEFAULT_MODEL_PARAMS,
    DEFAULT_MODEL_TRAINING_TOKENS,
    LoadedModel,
    load_model,
)
from saekit.training.config import TrainConfig
from saekit.training.run import DICTIONARY_DIR, STATS_FILE, activation_spec, load_run_config

EVAL_SEED_OFFSET = 1_000_003  # eval contexts use their own document order, independent of training's


def eval_contexts(loaded: LoadedModel, config: TrainConfig, tokens: int) -> Tensor:
    """Held-out contexts from the eval split, enough to cover ``tokens`` non-BOS predictions."""
    split = load_split(activation_spec(config))
    n_contexts = max(1, math.ceil(tokens / (config.context_length - 2)))
    iterator = contexts_for(loaded, split.eval, activation_spec(config), config.seed + EVAL_SEED_OFFSET)
    return take_contexts(iterator, n_contexts)


def load_splice_target(run_dir: Path, loaded: LoadedModel, device: str = "cpu") -> SpliceTarget:
    dictionary, source = load_dictionary(run_dir / DICTIONARY_DIR, device)
    adapter = loaded.adapter
    read_site = adapter.site(source["site"])
    write_site = adapter.site(source.get("target_site") or source["site"])
    for site, width in ((read_site, dictionary.config.d_in), (write_site, dictionary.config.output_dim)):
        if adapter.site_width(site) != width:
            raise SaekitError(f"dictionary in {run_dir} has width {width} but {site} of {loaded.name} has "
                              f"{adapter.site_width(site)}; evaluate it with the model it was trained on")
    stats = load_tensors(run_dir / STATS_FILE, "activation statistics")
    mean = stats.get(f"mean.{write_site.name}")
    if mean is None:
        raise SaekitError(f"{run_dir / STATS_FILE} has no mean for {write_site}; the run is incomplete")
    return SpliceTarget(dictionary.eval().requires_grad_(False), read_site, write_site, mean.to(device),
                        load_run_config(run_dir).outlier_norm_factor)


def _batches(contexts: Tensor, batch_size: int, desc: str) -> Iterator[Tensor]:
    yield from tqdm(contexts.split(batch_size), desc=desc, unit="batch")


def evaluate_runs(run_dirs: list[Path], loaded: LoadedModel | None = None, eval_tokens: int | None = None,
                  law: str = "chinchilla", generations: int = 4) -> dict[str, Any]:
    """Splice the runs' dictionaries jointly (one run: alone) and measure everything.

    The held-out contexts come from the first run's corpus split; all runs must share the model.
    """
    return _evaluate_groups([run_dirs], loaded, eval_tokens, law, generations)[0]


def evaluate_alternatives(run_dirs: list[Path], loaded: LoadedModel | None = None, eval_tokens: int | None = None,
                          law: str = "chinchilla", generations: int = 0) -> list[dict[str, Any]]:
    """Evaluate each run alone where all splice the same site (a sweep), sharing the baseline passes."""
    return _evaluate_groups([[d] for d in run_dirs], loaded, eval_tokens, law, generations)


def _evaluate_groups(groups: list[list[Path]], loaded: LoadedModel | None, eval_tokens: int | None, law: str,
                     generations: int) -> list[dict[str, Any]]:
    configs = [load_run_config(d) for group in groups for d in group]
    config = configs[0]
    if len({c.model for c in configs}) > 1:
        models = ", ".join(c.model for c in configs)
        raise SaekitError(f"runs evaluated together must come from the same model; got {models}")
    loaded = loaded or load_model(config.model, device=config.device)
    target_groups = [[load_splice_target(d, loaded, config.device) for d in group] for group in groups]
    for targets in target_groups:
        if len({t.write_site for t in targets}) < len(targets):
            raise SaekitError("two of the runs write the same site; splice each site at most once")
    contexts = eval_contexts(loaded, config, eval_tokens or config.eval_tokens)
    comparisons = [LossComparison() for _ in groups]
    batches = _batches(contexts, config.eval_batch_contexts, "evaluating")
    results = compare_losses_many(loaded, target_groups, batches, comparisons)
    return [_metrics(loaded, group, targets, contexts, losses, comparison, config, law, generations)
            for group, targets, losses, comparison in zip(groups, target_groups, results, comparisons)]


def _metrics(loaded: LoadedModel, run_dirs: list[Path], targets: list[SpliceTarget], contexts: Tensor,
             losses: dict[str, Any], comparison: LossComparison, config: TrainConfig, law: str,
             generations: int) -> dict[str, Any]:
    metrics: dict[str, Any] = {
        "model": loaded.name,
        "runs": [str(d) for d in run_dirs],
        "sites": [f"{t.read_site}->{t.write_site}" if t.read_site != t.write_site else str(t.read_site)
                  for t in targets],
        "eval_contexts": int(contexts.shape[0]),
        "context_length": config.context_length,
        "bos_handling": "BOS keeps its clean activation; predictions made at BOS are excluded",
        "losses": losses,
        "reconstruction": {str(t.write_site): t.metrics.result() for t in targets},
        "token_damage": token_damage(contexts, comparison.token_delta(), loaded.tokenizer),
        "effective_compute": _effective_compute(config, losses, law),
    }
    if generations:
        rows = side_by_side(loaded, targets, seed=config.seed)[:generations]
        metrics["generations"] = [vars(row) for row in rows]
    return metrics


def _effective_compute(config: TrainConfig, losses: dict[str, Any], law: str) -> dict[str, Any]:
    params, train_tokens = ((DEFAULT_MODEL_PARAMS, DEFAULT_MODEL_TRAINING_TOKENS) if config.model == DEFAULT_MODEL
                            else (None, None))
    try:
        return effective_compute_report(law, losses["ce_clean"]["mean"], losses["ce_spliced"]["mean"],
                                        params, train_tokens)
    except SaekitError as err:  # e.g. clean loss below the law's floor E: say so instead of a number
        return {"error": str(err)}


def evaluate_run(run_dir: str | Path, loaded: LoadedModel | None = None, eval_tokens: int | None = None,
                 law: str = "chinchilla", generations: int = 4) -> dict[str, Any]:
    """Evaluate one run and write metrics.json and report.md beside it."""
    run_dir = Path(run_dir)
    metrics = evaluate_runs([run_dir], loaded, eval_tokens, law, generations)
    metrics["run"] = load_run_config(run_dir).to_dict()
    write_json(run_dir / "metrics.json", metrics)
    write_text(run_dir / "report.md", render_report(metrics))
    return metrics


def evaluate_joint(run_dirs: list[Path], out_dir: str | Path, loaded: LoadedModel | None = None,
                   eval_tokens: int | None = None, law: str = "chinchilla") -> dict[str, Any]:
    """Splice several runs' dictionaries at once, and each alone on the same contexts; write a joint report."""
    out_dir = Path(out_dir)
    loaded = loaded or load_model(load_run_config(run_dirs[0]).model)
    joint = evaluate_runs(run_dirs, loaded, eval_tokens, law)
    alone = {str(d): evaluate_runs([d], loaded, eval_tokens, law, generations=0) for d in run_dirs}
    metrics = {**joint, "alone": alone}
    write_json(out_dir / "metrics.json", metrics)
    write_text(out_dir / "report.md", render_report(metrics))
    return metrics
