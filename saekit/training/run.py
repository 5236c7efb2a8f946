"""A training run on a model's activations: data, scaling, checkpoints, resume, the saved dictionary.

It writes the run directory whose layout ``saekit.rundir`` names: ``config.json`` (the TrainConfig),
``checkpoint.safetensors`` (latest state; scaled weights, optimizer, counters), ``log.jsonl`` (one
line per step), ``dictionary/`` (final weights with the input scaling folded in, ready for raw
activations) and ``activation_stats.safetensors`` (per-site mean of the training activations, for
mean-ablation).

One process writes a run directory at a time (``saekit.locks.exclusive``; a second gets one line naming
the first), and the activation cache entry being filled is locked the same way. A checkpoint records
the config it was written under and is refused by any other run; a partial last log line (what a kill
leaves) is dropped and that step redone; the dictionary directory is swapped in whole.
"""

from __future__ import annotations

import functools
import itertools
import json
import os
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import Tensor
from tqdm.auto import tqdm

from saekit.activations.buffer import shuffled_batches
from saekit.activations.source import ActivationSource
from saekit.activations.spec import ActivationSpec
from saekit.dictionaries.base import Dictionary, DictionaryConfig
from saekit.dictionaries.registry import build_dictionary, save_dictionary
from saekit.errors import SaekitError
from saekit.io import (
    OutputTarget,
    remove_stale_temporaries,
    replace_directory,
    write_json,
    write_text,
)
from saekit.locks import exclusive
from saekit.models.loading import LoadedModel, layer_count
from saekit.models.precision import resolve_autocast
from saekit.models.sites import parse_site
from saekit.rundir import (
    CHECKPOINT_FILE,
    CONFIG_FILE,
    DENSITY_FILE,
    DICTIONARY_DIR,
    FRESH_RUN_ENTRIES,
    LOG_FILE,
    PREVIOUS_CHECKPOINT_FILE,
    THROUGHPUT_FILE,
    save_activation_means,
    write_run_config,
)
from saekit.settings import differences, flat_values
from saekit.training.checkpoint import load_checkpoint, optimizer_tensors, restore_optimizer, save_checkpoint
from saekit.training.config import TrainConfig
from saekit.training.distributed import ProcessGroup
from saekit.training.model_loop import context_batches, contexts_per_step, model_step
from saekit.training.objectives import ObjectiveConfig
from saekit.training.trainer import DictionaryTrainer, NonFiniteLossError

T = TypeVar("T")


def model_loader(config: TrainConfig, loaded: LoadedModel | None = None,
                 sites: tuple[str, ...] | None = None) -> Callable[[], LoadedModel]:
    """A loader that validates the sites against the model, loading it only when first called."""
    def load() -> LoadedModel:
        model = loaded or config.data.load_model(config.run.device)
        for name in sites or config.sites:
            model.adapter.site(name)
        return model
    return load


@dataclass
class InputScaling:
    """Training sees c * x with c chosen so E||c x||^2 = 1; folded back into the weights on save.

    One float per side for a single-site run; one per layer (lists, in layer order) for a cross-layer run.
    """

    input_scale: float | list[float]
    output_scale: float | list[float]

    @staticmethod
    def estimate(chunk: dict[str, Tensor], config: TrainConfig) -> InputScaling:
        def scales(sites: tuple[str, ...]) -> float | list[float]:
            values = [float(chunk[site].pow(2).sum(-1).mean().rsqrt()) for site in sites]
            return values if config.over_layers else values[0]
        return InputScaling(scales(config.input_sites), scales(config.output_sites))


def scaled(batch: dict[str, Tensor], sites: tuple[str, ...], scale: float | list[float]) -> Tensor:
    """The sites' activations times their scales, concatenated in layer order (one site: just scaled)."""
    if isinstance(scale, float):
        return batch[sites[0]] * scale
    return torch.cat([batch[site] * factor for site, factor in zip(sites, scale)], dim=-1)


def scaled_mean(chunk: dict[str, Tensor], sites: tuple[str, ...], scale: float | list[float]) -> Tensor:
    """The mean of :func:`scaled` over the chunk's tokens."""
    return scaled({site: chunk[site].mean(0) for site in sites}, sites, scale)


def dictionary_config(config: TrainConfig, first_chunk: dict[str, Tensor]) -> DictionaryConfig:
    """The dictionary to build: widths from the activations (summed over a cross-layer run's layers)."""
    def width(sites: tuple[str, ...]) -> int:
        return sum(first_chunk[site].shape[1] for site in sites)
    return config.dictionary.build_config(width(config.input_sites),
                                          width(config.target_sites) if config.target_sites else None,
                                          layers=len(config.layer_numbers))


class RunState:
    """The dictionary, its trainer, the scaling and the running activation sums of one run."""

    def __init__(self, config: TrainConfig, first_chunk: dict[str, Tensor], group: ProcessGroup | None = None) -> None:
        self.config = config
        self.scaling = InputScaling.estimate(first_chunk, config)
        torch.manual_seed(config.optim.seed)
        # Built on the CPU (the same initial weights on every device), then moved where it trains.
        self.dictionary: Dictionary = build_dictionary(dictionary_config(config, first_chunk)).to(config.run.device)
        with torch.no_grad():  # start the decoder bias at the data mean: latents then model deviations
            self.dictionary.b_dec.copy_(scaled_mean(first_chunk, config.output_sites,
                                                    self.scaling.output_scale))
        self.trainer = DictionaryTrainer(self.dictionary, config.optim, config.total_steps,
                                         autocast_dtype=resolve_autocast(config.optim.autocast, config.run.device),
                                         compile=config.run.compile, group=group)
        # Summed where the batches are (no copy per step); float64, which MPS lacks.
        sums_dtype = torch.float32 if torch.device(config.run.device).type == "mps" else torch.float64
        self.activation_sums = {site: torch.zeros(first_chunk[site].shape[1], dtype=sums_dtype,
                                                  device=config.run.device) for site in config.sites}

    def record_batch(self, batch: dict[str, Tensor]) -> None:
        for site, total in self.activation_sums.items():
            total += batch[site].sum(0, dtype=total.dtype)

    def step(self, batch: dict[str, Tensor], read: bool = True) -> dict[str, float] | None:
        """One training step; ``read=False`` leaves its logged scalars on the device (``trainer.read_pending``)."""
        batch = self.on_device(batch)
        record = self.trainer.train_step(*self.scaled_inputs(batch), read=read)
        self.record_batch(batch)
        return record

    def on_device(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        device = self.dictionary.W_dec.device
        return {site: value.to(device, non_blocking=True) for site, value in batch.items()}

    def scaled_inputs(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor | None]:
        """(input, target) of the dictionary from a batch of raw activations by site, scaled as it trains."""
        config = self.config
        x = scaled(batch, config.input_sites, self.scaling.input_scale)
        target = scaled(batch, config.target_sites, self.scaling.output_scale) if config.target_sites else None
        return x, target

    def save(self, path: Path, keep_previous: bool = False) -> None:
        """Write the checkpoint; ``keep_previous`` first moves the last one aside (runs that resume together)."""
        if keep_previous and path.exists():
            os.replace(path, path.with_name(PREVIOUS_CHECKPOINT_FILE))
        names = [name for name, _ in self.dictionary.named_parameters()]
        optimizer, optimizer_meta = optimizer_tensors(self.trainer.optimizer, names)
        tensors = {f"dictionary.{name}": value for name, value in self.dictionary.state_dict().items()}
        tensors.update(optimizer)
        tensors.update({f"trainer.{name}": value for name, value in self.trainer.state_tensors().items()})
        tensors.update({f"sums.{site}": total for site, total in self.activation_sums.items()})
        meta = {**self.trainer.state_scalars(), "scaling": vars(self.scaling), "optimizer": optimizer_meta,
                "config": self.config.to_dict()}
        save_checkpoint(path, tensors, meta)

    def restore(self, path: Path) -> None:
        tensors, meta = load_checkpoint(path)
        self._check_provenance(path, meta)
        prefix = "dictionary."
        weights = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        try:
            self.dictionary.load_state_dict(weights)
        except RuntimeError as err:  # missing keys or other shapes: not this run's dictionary
            raise SaekitError(f"checkpoint {path} does not hold this run's dictionary ({str(err).splitlines()[0]}); "
                              "delete it to restart the run") from err
        names = [name for name, _ in self.dictionary.named_parameters()]
        restore_optimizer(self.trainer.optimizer, names, tensors, meta["optimizer"])
        prefix = "trainer."
        self.trainer.load_state({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}, meta)
        self.scaling = InputScaling(**meta["scaling"])
        self.activation_sums = {site: tensors[f"sums.{site}"].to(self.activation_sums[site])
                                for site in self.config.sites}

    def _check_provenance(self, path: Path, meta: dict) -> None:
        """Refuse a checkpoint written under another config (checkpoints from before this record none)."""
        if "config" not in meta:
            return
        written = TrainConfig.from_dict(meta["config"], f"config recorded in {path}")
        if written != self.config:
            raise SaekitError(f"checkpoint {path} was written by another run (its config differs in "
                              f"{differences(written, self.config)}); delete it to restart this run, or put it "
                              "back in its own run directory")

    def save_outputs(self, run_dir: Path) -> None:
        """The folded dictionary (raw activations in, raw reconstruction out) and the activation means."""
        folded = build_dictionary(self.dictionary.config)
        folded.load_state_dict({name: value.cpu() for name, value in self.dictionary.state_dict().items()})
        folded.fold_input_scale(self.scaling.input_scale, self.scaling.output_scale)
        source = dictionary_source(self.config, self.scaling.input_scale, self.scaling.output_scale,
                                   self.trainer.tokens_seen)
        replace_directory(run_dir / DICTIONARY_DIR, lambda tmp: save_dictionary(tmp, folded, source))
        tokens = max(self.trainer.tokens_seen, 1)
        save_activation_means(run_dir, {site: total.cpu().double() / tokens
                                        for site, total in self.activation_sums.items()})


def dictionary_source(config: TrainConfig, input_scale: float = 1.0, output_scale: float = 1.0,
                      trained_tokens: int | None = None) -> dict[str, Any]:
    """What a run's saved dictionary records of where it reads and writes (``dictionary/config.json``'s source)."""
    source = {"model": config.data.model, "site": config.site, "target_site": config.target_site,
              "context_length": config.data.context_length, "input_scale": input_scale,
              "output_scale": output_scale, "trained_tokens": trained_tokens}
    if config.over_layers:
        source.update(layers=config.layers, sites=list(config.input_sites), target_sites=list(config.target_sites))
    return source


def _prepare_run_dir(config: TrainConfig, run_dir: Path, resume: bool) -> None:
    if resume:
        saved = TrainConfig.from_file(run_dir / CONFIG_FILE)
        if saved != config:
            changed = differences(saved, config)
            raise SaekitError(f"--resume with a different config (changed: {changed}); resume with the saved one")
        return
    if any((run_dir / name).exists() for name in (CHECKPOINT_FILE, PREVIOUS_CHECKPOINT_FILE, DICTIONARY_DIR)):
        raise SaekitError(f"run directory {run_dir} already holds a run; pass --resume or choose another --name")
    foreign = OutputTarget(run_dir, "train", entries=FRESH_RUN_ENTRIES).foreign_entries()
    if foreign:
        raise SaekitError(f"run directory {run_dir} holds {', '.join(foreign[:5])}, which is not a run's; training "
                          "would write over it, so choose another --name or --runs-dir")
    write_run_config(run_dir, config.to_dict())


def _append_density(run_dir: Path, snapshot: dict) -> None:
    with open(run_dir / DENSITY_FILE, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(snapshot) + "\n")


def truncate_log(path: Path, step: int) -> None:
    """Drop log lines written after the checkpoint we resume from (they will be redone).

    A kill can leave the last line half-written: it is dropped like any other line after the
    checkpoint. A line that does not parse anywhere else means the file was damaged otherwise.
    """
    if not path.exists():
        return
    lines = [line for line in path.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
    kept = []
    for number, line in enumerate(lines, 1):
        try:
            record = json.loads(line)
            line_step = record["step"]
        except (ValueError, KeyError, TypeError):
            if number == len(lines):
                break  # the partial write of a killed process
            raise SaekitError(f"line {number} of {path} is not a log record; remove the line (or the file) "
                              "and resume") from None
        if line_step <= step:
            kept.append(line)
    write_text(path, "".join(line + "\n" for line in kept))


def chunk_sequence(source: ActivationSource, config: TrainConfig,
                   group: ProcessGroup | None) -> Iterator[dict[str, Tensor]]:
    """The one-process chunk sequence; under torchrun each rank computes its share and the group gathers."""
    prefetch, progress = config.run.resolved_prefetch(), group is None or group.is_writer
    if group is None:
        return source.chunks(prefetch=prefetch, progress=progress)
    own = source.chunks(start=group.rank, step=group.world_size, prefetch=prefetch, progress=progress)
    return group.gather_chunks(own)


def _batches_from(chunks: Iterator[dict[str, Tensor]], config: TrainConfig, skip: int) -> Iterator[dict[str, Tensor]]:
    optim = config.optim
    batches = shuffled_batches(chunks, optim.batch_size, optim.shuffle_buffer_tokens, optim.seed)
    for index, batch in enumerate(batches):
        if index >= skip:  # replaying the skipped batches is what makes resume exact
            yield batch


# Besides the data section, the settings that decide the batch sequence (flat names): runs trained
# together from one forward must share them.
BATCH_SEQUENCE_SETTINGS = ("train_tokens", "batch_size", "shuffle_buffer_tokens", "seed", "cache_dir",
                           "model_batch_contexts", "device", "prefetch_chunks", "read_every",
                           *(spec.name for spec in fields(ObjectiveConfig)))  # one spliced forward serves them all


def shared_activation_spec(configs: list[TrainConfig]) -> ActivationSpec:
    """One spec reading every config's sites, after checking the configs agree on the data."""
    first = flat_values(configs[0])
    for config in configs[1:]:
        values = flat_values(config)
        differing = [name for name in BATCH_SEQUENCE_SETTINGS if values[name] != first[name]]
        differing += differences(config.data, configs[0].data)
        if differing:
            raise SaekitError(
                f"runs trained in one pass must share data settings; {config.name} differs in {differing}"
            )
    names = [c.name for c in configs]
    if len(set(names)) < len(names):
        raise SaekitError(f"run names must be unique, got {names}")
    sites = tuple(dict.fromkeys(site for c in configs for site in c.sites))
    return ActivationSpec(configs[0].data, sites)


def train_many(configs: list[TrainConfig], runs_dir: str | Path = "runs", resume: bool = False,
               loaded: LoadedModel | None = None, progress: bool = True,
               group: ProcessGroup | None = None) -> list[Path]:
    """Train several dictionaries from one model forward per batch (layers, sites, or a sweep grid).

    Each run keeps its own directory, optimizer state, checkpoint and log; they step together on
    the same batches, so one run's resume is everyone's. Under torchrun (``group``) the ranks share
    the forward and split the steps (``saekit.training.distributed``); this returns the directories
    this rank wrote.
    """
    for config in configs:
        config.validate()
    spec = shared_activation_spec(configs)
    check_group(configs, group)
    if loaded is None:
        check_sites_exist(spec)
    owned = [index for index in range(len(configs)) if group is None or group.owns(index)]
    writes = writes_runs(group)
    # Runs trained together (here or on other ranks) keep their previous checkpoint, for common_checkpoints.
    keep_previous = len(configs) > 1
    configs = [configs[index] for index in owned]
    run_dirs = [Path(runs_dir) / config.name for config in configs]
    with ExitStack() as locks:
        if writes:
            for run_dir in run_dirs:
                locks.enter_context(exclusive(run_dir))
        source = ActivationSource(spec, configs[0].run.cache_dir, model_loader(configs[0], loaded, spec.sites),
                                  configs[0].run.model_batch_contexts)
        if source.cache_dir is not None and (group is None or group.is_writer):
            locks.enter_context(exclusive(source.cache_dir, "activation cache entry"))
        if writes:
            for config, run_dir in zip(configs, run_dirs):
                remove_stale_temporaries(run_dir)
                _prepare_run_dir(config, run_dir, resume)
        if group is not None:
            group.barrier()  # the writers have checked and written the run directories
        _train_prepared(configs, run_dirs, source, resume, progress and writes, group, keep_previous)
    return run_dirs if writes else []


def writes_runs(group: ProcessGroup | None) -> bool:
    """Whether this process writes its runs' directories (a data-parallel group's rank 0 writes for all)."""
    return group is None or not group.data_parallel or group.is_writer


def check_group(configs: list[TrainConfig], group: ProcessGroup | None) -> None:
    """What a torchrun group needs of the runs: a batch that splits evenly, or a run for every rank."""
    if group is None:
        return
    if configs[0].loss.needs_model:
        _check_model_group(configs[0], group)
    if group.data_parallel:
        uneven = [c.name for c in configs if c.optim.batch_size % group.world_size]
        if uneven:
            raise SaekitError(f"batch_size={configs[0].optim.batch_size} does not split over {group.world_size} "
                              f"processes (runs {uneven}); choose a multiple of {group.world_size}")
    elif len(configs) < group.world_size:
        raise SaekitError(f"--distribute sites deals runs out to processes, but there are {len(configs)} runs for "
                          f"{group.world_size} processes; give more --sites or start fewer processes")


def _check_model_group(config: TrainConfig, group: ProcessGroup) -> None:
    """The model-loss objectives split each step's whole contexts over data-parallel processes."""
    objective = f"objective {config.loss.objective}{' with a fine-tune tail' if config.loss.finetune_fraction else ''}"
    if not group.data_parallel:
        raise SaekitError(f"{objective} runs the model in the training loop; --distribute sites is not supported "
                          "for it: use --distribute data")
    contexts = contexts_per_step(config.optim.batch_size, config.data.context_length)
    if contexts % group.world_size:
        raise SaekitError(f"{objective} steps on {contexts} whole contexts (batch_size={config.optim.batch_size}, "
                          f"context_length={config.data.context_length}), which do not split over "
                          f"{group.world_size} processes; choose a batch_size of a multiple of "
                          f"{group.world_size} contexts")


def check_sites_exist(spec: ActivationSpec) -> None:
    """Check each site's layer against the model's config (no weights are read), before the model loads."""
    n_layers = layer_count(spec.data.model)
    for name in spec.sites:
        parse_site(name, n_layers)


def _train_prepared(configs: list[TrainConfig], run_dirs: list[Path], source: ActivationSource, resume: bool,
                    progress: bool, group: ProcessGroup | None = None, keep_previous: bool = False) -> None:
    timing = LoopTiming(started=time.perf_counter())  # from the first chunk: its forward is part of the run
    chunks = chunk_sequence(source, configs[0], group)
    first_chunk = next(chunks)  # for the input scaling, then trained on like the rest
    states = [RunState(config, first_chunk, group) for config in configs]
    if resume:
        for state, checkpoint in zip(states, common_checkpoints(run_dirs, group)):
            state.restore(checkpoint)
    step = states[0].trainer.step
    writes = writes_runs(group)
    if writes:
        for run_dir in run_dirs:
            truncate_log(run_dir / LOG_FILE, step)
            truncate_log(run_dir / DENSITY_FILE, step)
    loop = functools.partial(_train_loop, states, run_dirs if writes else [], progress=progress, timing=timing,
                             keep_previous=keep_previous)
    model_from = configs[0].loss.model_phase_start(configs[0].total_steps)
    if step < model_from:
        batches = _batches_from(itertools.chain([first_chunk], chunks), configs[0], step)
        loop(batches, _activation_step(states, run_dirs if writes else []), until=model_from)
    if model_from < configs[0].total_steps:
        loaded = source.loaded
        loaded.model.requires_grad_(False)  # the backward reaches the dictionaries only
        written = [site for config in configs for site in config.output_sites]
        batches = context_batches(loaded, configs[0], source.spec.sites, written, states[0].trainer.step,
                                  configs[0].run.device, states[0].trainer.group)
        loop(batches, functools.partial(model_step, states, loaded=loaded), until=configs[0].total_steps)
    if writes:
        for state, run_dir in zip(states, run_dirs):
            state.save_outputs(run_dir)
            # A resume of a finished run trains nothing: the session that trained keeps its record.
            if timing.steps or not (run_dir / THROUGHPUT_FILE).exists():
                write_json(run_dir / THROUGHPUT_FILE, throughput_record(timing, source, state, len(states), group))


def train_run(config: TrainConfig, runs_dir: str | Path = "runs", resume: bool = False,
              loaded: LoadedModel | None = None, progress: bool = True) -> Path:
    """Train (or resume) the run described by ``config``; returns its directory."""
    return train_many([config], runs_dir, resume, loaded, progress)[0]


@dataclass
class LoopTiming:
    """Where a training loop's wall time went (this process, this session: a resumed run counts anew)."""

    started: float
    steps: int = 0
    tokens: int = 0
    wall_seconds: float = 0.0
    step_seconds: float = 0.0  # inside the dictionaries' steps
    wait_seconds: float = 0.0  # waiting for the next batch: the activations not ready in time


def throughput_record(timing: LoopTiming, source: ActivationSource, state: RunState, dictionaries: int,
                      group: ProcessGroup | None = None) -> dict:
    """End-to-end tokens/s beside the model-forward-only and dictionary-step-only rates."""
    def rate(tokens: float, seconds: float) -> float | None:
        return tokens / seconds if seconds > 0 else None
    return {
        "tokens_trained_this_session": timing.tokens, "steps_this_session": timing.steps,
        "wall_seconds": timing.wall_seconds, "end_to_end_tokens_per_s": rate(timing.tokens, timing.wall_seconds),
        "waiting_for_activations_seconds": timing.wait_seconds,
        "dictionary_steps_seconds": timing.step_seconds, "dictionaries_trained_together": dictionaries,
        "dictionary_steps_tokens_per_s": rate(timing.tokens * dictionaries, timing.step_seconds),
        "model_forward_tokens": source.forward_tokens, "model_forward_seconds": source.forward_seconds,
        "model_forward_tokens_per_s": rate(source.forward_tokens, source.forward_seconds),
        "prefetch_chunks": state.config.run.resolved_prefetch(), "model_dtype": state.config.data.model_dtype,
        "autocast": str(state.trainer.autocast_dtype).removeprefix("torch.") if state.trainer.autocast_dtype
        else "none",
        "device": state.config.run.device, "torch_threads": torch.get_num_threads(),
        "processes": 1 if group is None else group.world_size,
        "distribute": None if group is None else group.mode,
        "note": "model_forward counts the tokens run through the model (BOS included) for chunks computed in "
                "this session, cache reads excluded; with prefetching the forward overlaps the steps, so the "
                "parts can add up to more than the wall time",
    }


def _checkpoint_paths(states: list[RunState], run_dirs: list[Path]) -> list[Path | None]:
    """Each run's checkpoint path (None for all on a data-parallel rank that writes no directory)."""
    return [d / CHECKPOINT_FILE for d in run_dirs] or [None] * len(states)


def _activation_step(states: list[RunState], run_dirs: list[Path]) -> Callable[[dict[str, Tensor]], int]:
    """Each run's step on a batch of activations (``mse``); returns the tokens it trained on."""
    checkpoints = _checkpoint_paths(states, run_dirs)

    def step_all(batch: dict[str, Tensor]) -> int:
        for state, checkpoint in zip(states, checkpoints):
            _or_stop(state, checkpoint, functools.partial(state.step, batch, read=False))
        return states[0].config.optim.batch_size
    return step_all


def _train_loop(states: list[RunState], run_dirs: list[Path], batches: Iterator[Any],
                step_all: Callable[[Any], int], *, until: int, progress: bool, timing: LoopTiming,
                keep_previous: bool) -> None:
    """Steps until step ``until``: ``step_all`` steps every run on each batch (scalars left on the device);
    the loop reads them, writes the logs and checkpoints."""
    config = states[0].config
    label = config.name if len(states) == 1 else f"{len(states)} dictionaries"
    bar = tqdm(total=config.total_steps, initial=states[0].trainer.step, desc=f"training {label}",
               unit="step", disable=not progress)
    checkpoints = _checkpoint_paths(states, run_dirs)
    with ExitStack() as stack:
        stack.enter_context(bar)
        # A data-parallel rank other than 0 steps with no directory: rank 0 writes for the group.
        logs = [stack.enter_context(open(d / LOG_FILE, "a", encoding="utf-8")) for d in run_dirs]
        while states[0].trainer.step < until:
            waited = time.perf_counter()
            batch = next(batches)
            stepped = time.perf_counter()
            timing.wait_seconds += stepped - waited
            tokens = step_all(batch)
            step = states[0].trainer.step
            saving = step % config.run.checkpoint_every == 0 or step == config.total_steps
            # The device is waited for only here: every read_every steps, and before a checkpoint, so a
            # non-finite loss is found before it could be saved.
            if saving or step % config.run.read_every == 0:
                for index, (state, checkpoint) in enumerate(zip(states, checkpoints)):
                    records = _or_stop(state, checkpoint, state.trainer.read_pending)
                    if run_dirs:
                        logs[index].write("".join(json.dumps(record) + "\n" for record in records))
                        logs[index].flush()
                bar.set_postfix(fvu=f"{records[-1]['fvu']:.3f}", l0=f"{records[-1]['l0']:.1f}")
            timing.step_seconds += time.perf_counter() - stepped
            timing.steps += 1
            timing.tokens += tokens
            bar.update()
            if saving:
                for state, run_dir in zip(states, run_dirs):
                    _append_density(run_dir, state.trainer.density_snapshot())
                    state.save(run_dir / CHECKPOINT_FILE, keep_previous=keep_previous)
    timing.wall_seconds = time.perf_counter() - timing.started


def _or_stop(state: RunState, checkpoint: Path | None, work: Callable[[], T]) -> T:
    """``work()`` (a step, or reading the steps' scalars); a non-finite loss stops the run in one line."""
    try:
        return work()
    except NonFiniteLossError as err:
        last_good = read_checkpoint_step(checkpoint) if checkpoint is not None else None
        if last_good is None:
            raise SaekitError(f"{err} in run {state.config.name}; stopped before its first checkpoint. Lower the "
                              "learning rate and start the run again (delete its directory)") from err
        raise SaekitError(f"{err} in run {state.config.name}; stopped. The last good checkpoint (step {last_good}) "
                          f"is kept in {checkpoint}; lower the learning rate and resume") from err


def common_checkpoints(run_dirs: list[Path], group: ProcessGroup | None) -> list[Path]:
    """Each run's checkpoint at the latest step all runs (of every process) reached.

    Runs trained together checkpoint one after another, so a kill can leave some one interval ahead;
    those resume from the checkpoint they kept from before.
    """
    def steps_of(run_dir: Path) -> dict[int, Path]:
        found = {}
        for name in (CHECKPOINT_FILE, PREVIOUS_CHECKPOINT_FILE):
            step = read_checkpoint_step(run_dir / name)
            if step is not None:
                found[step] = run_dir / name
        if not found:
            load_checkpoint(run_dir / CHECKPOINT_FILE)  # its one-line error: no checkpoint to resume from
        return found

    available = [steps_of(run_dir) for run_dir in run_dirs]
    latest = [max(found) for found in available]
    target = min(latest)
    if group is not None:
        target = group.minimum(target)
    chosen = []
    for run_dir, found in zip(run_dirs, available):
        if target not in found:
            raise SaekitError(f"runs trained together were checkpointed at different steps ({run_dir} has "
                              f"{sorted(found)}, others {target}); resume them separately")
        chosen.append(found[target])
    return chosen


def read_checkpoint_step(path: Path) -> int | None:
    if not path.exists():
        return None
    return load_checkpoint(path)[1]["step"]
