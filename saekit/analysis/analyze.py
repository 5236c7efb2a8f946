"""Run the whole feature analysis of one dictionary and write the analysis store.

One streamed pass over the analysis contexts feeds the statistics accumulator and the example
collector; then decoder geometry (no model needed) and logit weights (model weights only) are
computed, token strings decoded, and everything is written to ``RUN_DIR/analysis/`` (see
:mod:`saekit.analysis.store`). The store is built in a temporary directory beside it and swapped in
only when complete (:func:`saekit.io.replace_directory`), so a failed or killed analysis leaves the
previous store exactly as it was; :func:`analyze_run` holds the run directory's lock meanwhile.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from saekit.analysis import store
from saekit.analysis.examples import KINDS, ExampleCollector, ExampleConfig, collector_bytes, merge_bytes, table_bytes
from saekit.analysis.geometry import GeometryConfig, decoder_geometry
from saekit.analysis.latents import TokenMaskRule, analysis_contexts, batch_bytes, latent_batches
from saekit.analysis.logits import LogitConfig, logit_note, logit_skip_reason, logit_weights, output_layer_logits
from saekit.analysis.statistics import (
    FlagRule,
    HistogramBins,
    StatisticsAccumulator,
    accumulator_bytes,
    density_summary,
    finish_statistics,
    update_bytes,
)
from saekit.dictionaries.base import Dictionary
from saekit.dictionaries.registry import dictionary_fingerprint, load_dictionary, read_sites, written_sites
from saekit.errors import SaekitError
from saekit.io import replace_directory, save_tensors, write_json
from saekit.locks import exclusive
from saekit.memory import gigabytes, largest_fitting, memory_budget
from saekit.models.loading import LoadedModel
from saekit.provenance import fingerprint_json
from saekit.rundir import DICTIONARY_DIR
from saekit.settings import setting, to_dict
from saekit.training.config import load_run_config

# What a cross-layer latent's headline logit weights read (its per-layer ones are in layers.safetensors).

@dataclass
class AnalysisConfig:
    """What to analyse and how much of it."""

    tokens: int = setting(32_768, "held-out tokens (counted, not BOS) to stream through the model", minimum=1)
    latents: int | None = setting(None, "analyse all latents or the first N", minimum=1, none="all")
    batch_contexts: int = setting(8, "contexts encoded at once; memory grows with it", minimum=1)
    mask: TokenMaskRule = field(default_factory=TokenMaskRule)
    histogram: HistogramBins = field(default_factory=HistogramBins)
    flags: FlagRule = field(default_factory=FlagRule)
    examples: ExampleConfig = field(default_factory=ExampleConfig)
    geometry: GeometryConfig = field(default_factory=GeometryConfig)
    logits: LogitConfig = field(default_factory=LogitConfig)
    progress: bool = setting(True, "show progress bars")
    max_memory_gb: float | None = setting(None, "refuse to start when the estimated peak memory is over this many GB "
                                          "(none: 90% of the memory free when the check runs)", above=0)

    def __post_init__(self) -> None:
        if self.max_memory_gb is not None and not self.max_memory_gb > 0:
            raise SaekitError(f"--max-memory-gb must be positive, got {self.max_memory_gb}")

    def n_latents(self, width: int) -> int:
        if self.latents is None:
            return width
        if self.latents < 1:
            raise SaekitError(f"--latents must be 'all' or a positive number, got {self.latents}")
        return min(self.latents, width)


@dataclass(frozen=True)
class AnalysisMemory:
    """Bytes an analysis holds (host memory): ``held`` from the first batch to the end, and each later
    step's temporaries on top of it, one step at a time."""

    held: int  # the context table, the statistics and the example selections
    stream: int  # one batch: its latent activations, statistics update and example merge
    table: int  # assembling the example table
    geometry: int  # decoder geometry and its random baseline
    logits: int

    @property
    def peak(self) -> int:
        return self.held + max(self.stream, self.table, self.geometry, self.logits)


def _geometry_bytes(config: GeometryConfig, width: int, n_latents: int, dim: int) -> int:
    """Unit copies of the decoder and of its random baseline, both searches' top-k cosines (float32 and
    int64 indices), and one block of cosines (a square block and its transpose for the full search)."""
    k = max(config.top_k, config.neighbours, 100)
    found = (n_latents + min(width, config.baseline_rows or width)) * k * 12
    side = min(width, max(1, config.col_block // 4))
    block = max(side * side * (8 if width > side else 4), config.row_block * min(width, config.col_block) * 4)
    return 12 * width * dim + found + block + 5 * side * k * 12  # and merging a block's top-k (measured)


def _logit_bytes(config: LogitConfig, n_latents: int, vocab: int) -> int:
    """A block of latents' logits over the vocabulary with its top-k and histogram copies (five float32
    copies, measured), and the results."""
    block = min(n_latents, config.latent_block) * vocab * 4 * 5
    return block + n_latents * (2 * config.top * 12 + config.histogram_bins * 8 + (config.histogram_bins + 1) * 4)


def analysis_memory(config: AnalysisConfig, width: int, direction_dim: int, context_length: int, n_contexts: int,
                    vocab: int, firing_per_token: int | None = None) -> AnalysisMemory:
    """The analysis's memory from its sizes: latents x (the batch's tokens + the kept examples' tokens).

    ``firing_per_token``: latents active per token (a TopK dictionary's k); None counts every analysed
    latent as firing on every token, an upper bound.
    """
    n = config.n_latents(width)
    batch = min(config.batch_contexts, n_contexts)
    tokens = batch * context_length
    firing = tokens * (n if firing_per_token is None else min(n, firing_per_token))
    held = (n_contexts * context_length * (8 + 1) + accumulator_bytes(n, config.histogram)
            + collector_bytes(n, context_length, config.examples))
    # One batch is held (the loop's previous one while the next is made) during making the next batch,
    # the statistics update and the example merge, which come one after another.
    stream = 4 * tokens * n + max(batch_bytes(tokens, width, n), update_bytes(tokens, n, firing),
                                  merge_bytes(n, context_length, batch, config.examples))
    return AnalysisMemory(held, stream, table_bytes(n, context_length, config.examples),
                          _geometry_bytes(config.geometry, width, n, direction_dim),
                          _logit_bytes(config.logits, n, vocab))


def _largest_fitting(config: AnalysisConfig, fits: Callable[[AnalysisConfig], bool], width: int) -> int:
    """The most latents that fit with ``config``'s batch (0: not even one)."""
    return largest_fitting(config.n_latents(width), lambda n: fits(replace(config, latents=n)))


def _analysis_fix(config: AnalysisConfig, fits: Callable[[AnalysisConfig], bool], width: int) -> str:
    """The flags that bring it under budget: a smaller batch keeps every latent, fewer latents shrink all."""
    batch = config.batch_contexts
    while batch > 1:
        batch //= 2
        if fits(replace(config, batch_contexts=batch)):
            return f"lower --batch-contexts to {batch}"
    latents = _largest_fitting(config, fits, width)
    if latents:
        return f"analyse the first {latents} latents with --latents {latents}"
    latents = _largest_fitting(replace(config, batch_contexts=1), fits, width)
    if latents:
        return f"analyse the first {latents} latents with --latents {latents} and --batch-contexts 1"
    return "shorten the contexts (the run's context length)"


def _largest_step(estimate: AnalysisMemory, batch_contexts: int) -> str:
    steps = [(estimate.stream, f"batches of {batch_contexts} contexts"), (estimate.table, "example table"),
             (estimate.geometry, "decoder geometry"), (estimate.logits, "logit weights")]
    size, step = max(steps, key=lambda item: item[0])
    return f"{gigabytes(size)} for its {step}"


def check_analysis_memory(config: AnalysisConfig, width: int, direction_dim: int, context_length: int,
                          n_contexts: int, vocab: int, firing_per_token: int | None = None) -> AnalysisMemory:
    """Refuse (one line, naming the flags that lower it) an analysis whose estimated peak is over budget."""
    budget = memory_budget(config.max_memory_gb)
    estimate = analysis_memory(config, width, direction_dim, context_length, n_contexts, vocab, firing_per_token)
    if budget is None or estimate.peak <= budget:
        return estimate

    def fits(smaller: AnalysisConfig) -> bool:
        return analysis_memory(smaller, width, direction_dim, context_length, n_contexts, vocab,
                               firing_per_token).peak <= budget

    raise SaekitError(
        f"the analysis would need about {gigabytes(estimate.peak)} ({config.n_latents(width)} latents, contexts of "
        f"{context_length} tokens: {gigabytes(estimate.held)} held for the statistics and examples, then at most "
        f"{_largest_step(estimate, config.batch_contexts)}), over the {gigabytes(budget)} budget; "
        f"{_analysis_fix(config, fits, width)}, or raise --max-memory-gb")


def _stream(
    loaded: LoadedModel, dictionary: Dictionary, sites: list[str], contexts: Tensor, n_latents: int,
    config: AnalysisConfig,
) -> tuple[StatisticsAccumulator, ExampleCollector, Tensor]:
    accumulator = StatisticsAccumulator(n_latents, config.histogram)
    collector = ExampleCollector(n_latents, contexts.shape[1], config.examples)
    counted_rows = []
    batches = latent_batches(loaded, dictionary, sites, contexts, n_latents, config.batch_contexts, config.mask)
    total = math.ceil(contexts.shape[0] / config.batch_contexts)
    for batch in tqdm(batches, total=total, desc="analysing latents", unit="batch", disable=not config.progress):
        accumulator.update(batch.activations[batch.counted])
        collector.update(batch.activations, batch.context_ids)
        counted_rows.append(batch.counted)
    return accumulator, collector, torch.cat(counted_rows)


def decode_tokens(loaded: LoadedModel, token_ids: Tensor) -> dict[str, str]:
    ids = torch.unique(token_ids).tolist()
    return {str(i): s for i, s in zip(ids, loaded.token_strings(ids))}


def _write_logits(loaded: LoadedModel, dictionary: Dictionary, source: dict, n_latents: int, config: AnalysisConfig,
                  out_dir: Path) -> tuple[dict[str, Any], Tensor]:
    """Logit weights (and, for a cross-layer dictionary, per output layer); returns the note and token ids used."""
    writes = written_sites(source)
    width = dictionary.config.output_dim // len(writes)
    reason = next(filter(None, (logit_skip_reason(loaded, site, width) for site in writes)), None)
    if reason is not None:
        return {"computed": False, "note": reason}, torch.empty(0, dtype=torch.long)
    latent_ids = torch.arange(n_latents)
    weights = logit_weights(loaded, dictionary.logit_directions(latent_ids), config.logits, config.progress)
    save_tensors(out_dir / store.LOGITS_TENSORS, weights.tensors())
    used = [weights.positive_ids.flatten(), weights.negative_ids.flatten()]
    note = logit_note(loaded, config.logits)
    if len(writes) > 1:
        by_layer = output_layer_logits(loaded, dictionary, latent_ids, config.logits, config.progress)
        save_tensors(out_dir / store.LAYERS_TENSORS, by_layer)
        used += [by_layer["positive_ids"].flatten(), by_layer["negative_ids"].flatten()]
        note["output_layers"] = {"sites": writes, "per_latent": int(by_layer["layers"].shape[1]),
                                 "total": dictionary.LOGIT_DIRECTION_NOTE}
    return note, torch.cat(used)


@torch.no_grad()
def _write_store(
    out_dir: Path, loaded: LoadedModel, dictionary: Dictionary, source: dict[str, Any], contexts: Tensor,
    config: AnalysisConfig, provenance: dict[str, Any],
) -> None:
    """Run the analysis and write every store file into ``out_dir`` (a fresh temporary directory)."""
    n_latents = config.n_latents(dictionary.config.width)
    latent_ids = torch.arange(n_latents)
    started = time.perf_counter()
    accumulator, collector, counted = _stream(loaded, dictionary, read_sites(source), contexts, n_latents, config)
    same_space = source.get("target_site") in (None, source["site"])
    stats = finish_statistics(accumulator, dictionary, latent_ids, same_space, config.flags)
    pass_seconds = time.perf_counter() - started
    save_tensors(out_dir / store.STATS_TENSORS, stats.tensors())
    write_json(out_dir / store.STATS_JSON, density_summary(stats, config.flags))
    save_tensors(out_dir / store.EXAMPLES_TENSORS, collector.table(latent_ids).tensors(),
                 metadata={"kinds": ",".join(KINDS)})
    save_tensors(out_dir / store.CONTEXTS_TENSORS, {"token_ids": contexts.int(), "counted": counted.to(torch.uint8)})
    directions = dictionary.decoder_directions().detach().cpu()
    geometry = decoder_geometry(directions, latent_ids, config.geometry, config.progress)
    save_tensors(out_dir / store.GEOMETRY_TENSORS, geometry.tensors())
    write_json(out_dir / store.GEOMETRY_JSON, geometry.summary)
    logits, logit_ids = _write_logits(loaded, dictionary, source, n_latents, config, out_dir)
    write_json(out_dir / store.TOKENS_JSON, decode_tokens(loaded, torch.cat([contexts.flatten(), logit_ids])))
    write_json(out_dir / store.MANIFEST, {
        "format_version": store.FORMAT_VERSION, "model": loaded.name, "site": source["site"],
        "target_site": source.get("target_site"), "sites": read_sites(source), "written_sites": written_sites(source),
        "decoder_direction_dim": int(directions.shape[1]), "dictionary": dictionary.config.to_dict(),
        "latents_analysed": n_latents, "contexts": int(contexts.shape[0]), "context_length": int(contexts.shape[1]),
        "tokens_counted": stats.tokens, "logits": logits, "seconds": {"stream": pass_seconds},
        "example_kinds": list(KINDS), "config": asdict(config), **provenance,
    })


def analyze_dictionary(
    loaded: LoadedModel, dictionary: Dictionary, source: dict[str, Any], contexts: Tensor, out_dir: str | Path,
    config: AnalysisConfig | None = None, extra: dict[str, Any] | None = None, *,
    dictionary_fingerprint: str | None = None, data_fingerprint: str | None = None,
) -> Path:
    """Analyse ``dictionary`` (reading ``source['site']`` of ``loaded``) on ``contexts``; write the store.

    The fingerprints (of the saved dictionary and of the data settings) go into the manifest so readers
    can refuse a store made from other inputs; None (no run directory to take them from) is recorded as
    unknown. The whole store replaces ``out_dir`` only once complete.
    """
    config = config or AnalysisConfig()
    provenance = {**(extra or {}), store.DICTIONARY_FINGERPRINT: dictionary_fingerprint,
                  store.DATA_FINGERPRINT: data_fingerprint}
    dictionary = dictionary.eval()
    estimate = check_analysis_memory(
        config, dictionary.config.width, dictionary.config.output_dim // len(written_sites(source)),
        contexts.shape[1], contexts.shape[0], int(loaded.adapter.unembedding().weight.shape[0]),
        dictionary.config.k if dictionary.fixed_l0() else None)
    if config.progress:
        print(f"analysis: {config.n_latents(dictionary.config.width)} latents, {contexts.shape[0]} contexts of "
              f"{contexts.shape[1]} tokens; estimated peak {gigabytes(estimate.peak)}")
    return replace_directory(out_dir, lambda tmp: _write_store(tmp, loaded, dictionary, source, contexts, config,
                                                               provenance))


def analyze_run(run_dir: str | Path, loaded: LoadedModel | None = None, config: AnalysisConfig | None = None) -> Path:
    """Analyse a trained run's dictionary on held-out contexts; writes and returns ``RUN_DIR/analysis``.

    Holds the run directory's lock throughout, so a second writer fails at once naming this one.
    """
    run_dir = Path(run_dir)
    run_config = load_run_config(run_dir)  # first: it refuses a missing run dir, which the lock would create
    with exclusive(run_dir):
        config = replace(config or AnalysisConfig(),
                         mask=TokenMaskRule(run_config.data.exclude_bos, run_config.data.outlier_norm_factor))
        # Fingerprinted before loading, under the lock: the files the store claims are the ones analysed.
        fingerprint = dictionary_fingerprint(run_dir / DICTIONARY_DIR)
        dictionary, source = load_dictionary(run_dir / DICTIONARY_DIR, run_config.run.device)
        loaded = loaded or run_config.data.load_model(run_config.run.device)
        contexts, splits = analysis_contexts(loaded, run_config.data, config.tokens)
        return analyze_dictionary(
            loaded, dictionary, source, contexts, run_dir / store.ANALYSIS_DIR, config,
            extra={"run": run_config.name, "context_source": {
                "corpus": run_config.data.corpus, "contexts_per_split": splits,
                "order": "eval split in its own seeded order; training split (separate seed) "
                         "only if the eval split ran out"}},
            dictionary_fingerprint=fingerprint, data_fingerprint=fingerprint_json(to_dict(run_config.data)))
