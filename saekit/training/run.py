"""A training run on a model's activations: data, scaling, checkpoints, resume, the saved dictionary.

Layout of ``runs/<name>/``: ``config.json`` (the TrainConfig), ``checkpoint.safetensors`` (latest
state; scaled weights, optimizer, counters), ``log.jsonl`` (one line per step), ``dictionary/``
(final weights with the input scaling folded in, ready for raw activations) and
``activation_stats.safetensors`` (per-site mean of the training activations, for mean-ablation).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor
from tqdm.auto import tqdm

from saekit.activations.buffer import shuffled_batches
from saekit.activations.source import ActivationSource, ActivationSpec
from saekit.dictionaries.base import Dictionary, DictionaryConfig
from saekit.dictionaries.registry import build_dictionary, save_dictionary
from saekit.errors import SaekitError
from saekit.io import read_json, save_tensors, write_json, write_text
from saekit.models.loading import LoadedModel, load_model
from saekit.training.checkpoint import load_checkpoint, optimizer_tensors, restore_optimizer, save_checkpoint
from saekit.training.config import TrainConfig
from saekit.training.schedule import OptimConfig
from saekit.training.trainer import DictionaryTrainer, NonFiniteLossError

CHECKPOINT_FILE = "checkpoint.safetensors"
LOG_FILE = "log.jsonl"
STATS_FILE = "activation_stats.safetensors"
DICTIONARY_DIR = "dictionary"


def activation_spec(config: TrainConfig) -> ActivationSpec:
    return ActivationSpec(
        model=config.model, sites=config.sites, corpus=config.corpus, text_field=config.text_field,
        eval_fraction=config.eval_fraction, context_length=config.context_length, seed=config.seed,
        exclude_bos=config.exclude_bos, outlier_norm_factor=config.outlier_norm_factor,
        contexts_per_chunk=config.contexts_per_chunk,
    )


def model_loader(config: TrainConfig, loaded: LoadedModel | None = None) -> Callable[[], LoadedModel]:
    """A loader that validates the sites against the model, loading it only when first called."""
    def load() -> LoadedModel:
        model = loaded or load_model(config.model, device=config.device)
        for name in config.sites:
            model.adapter.site(name)
        return model
    return load


@dataclass
class InputScaling:
    """Training sees c * x with c chosen so E||c x||^2 = 1; folded back into the weights on save."""

    input_scale: float
    output_scale: float

    @staticmethod
    def estimate(chunk: dict[str, Tensor], site: str, target_site: str | None) -> InputScaling:
        def scale(x: Tensor) -> float:
            return float(x.pow(2).sum(-1).mean().rsqrt())
        return InputScaling(scale(chunk[site]), scale(chunk[target_site or site]))


def _optim_config(config: TrainConfig) -> OptimConfig:
    return OptimConfig(lr=config.lr, warmup_steps=config.warmup_steps, decay_fraction=config.decay_fraction,
                       sparsity_warmup_fraction=config.sparsity_warmup_fraction,
                       dead_window_tokens=config.dead_window_tokens)


def _dictionary_config(config: TrainConfig, d_in: int, d_out: int) -> DictionaryConfig:
    width = config.width or config.expansion_factor * d_in
    return DictionaryConfig(architecture=config.architecture, d_in=d_in, width=width,
                            d_out=d_out if config.target_site else None, k=config.k,
                            l1_coefficient=config.l1_coefficient, extra=dict(config.extra))


class RunState:
    """The dictionary, its trainer, the scaling and the running activation sums of one run."""

    def __init__(self, config: TrainConfig, first_chunk: dict[str, Tensor]) -> None:
        self.config = config
        self.scaling = InputScaling.estimate(first_chunk, config.site, config.target_site)
        d_in = first_chunk[config.site].shape[1]
        d_out = first_chunk[config.target_site or config.site].shape[1]
        torch.manual_seed(config.seed)
        self.dictionary: Dictionary = build_dictionary(_dictionary_config(config, d_in, d_out))
        with torch.no_grad():  # start the decoder bias at the data mean: latents then model deviations
            self.dictionary.b_dec.copy_(first_chunk[config.target_site or config.site].mean(0)
                                        * self.scaling.output_scale)
        self.trainer = DictionaryTrainer(self.dictionary, _optim_config(config), config.total_steps)
        self.activation_sums = {site: torch.zeros(first_chunk[site].shape[1], dtype=torch.float64)
                                for site in config.sites}

    def record_batch(self, batch: dict[str, Tensor]) -> None:
        for site, total in self.activation_sums.items():
            total += batch[site].sum(0, dtype=torch.float64)

    def step(self, batch: dict[str, Tensor]) -> dict[str, float]:
        config = self.config
        x = batch[config.site] * self.scaling.input_scale
        target = batch[config.target_site] * self.scaling.output_scale if config.target_site else None
        record = self.trainer.train_step(x, target)
        self.record_batch(batch)
        return record

    def save(self, path: Path) -> None:
        names = [name for name, _ in self.dictionary.named_parameters()]
        optimizer, optimizer_meta = optimizer_tensors(self.trainer.optimizer, names)
        tensors = {f"dictionary.{name}": value for name, value in self.dictionary.state_dict().items()}
        tensors.update(optimizer)
        tensors["trainer.tokens_since_fired"] = self.trainer.tokens_since_fired
        tensors["trainer.fire_counts"] = self.trainer.fire_counts
        tensors.update({f"sums.{site}": total for site, total in self.activation_sums.items()})
        meta = {"step": self.trainer.step, "tokens_seen": self.trainer.tokens_seen,
                "scaling": vars(self.scaling), "optimizer": optimizer_meta}
        save_checkpoint(path, tensors, meta)

    def restore(self, path: Path) -> None:
        tensors, meta = load_checkpoint(path)
        prefix = "dictionary."
        self.dictionary.load_state_dict({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)})
        names = [name for name, _ in self.dictionary.named_parameters()]
        restore_optimizer(self.trainer.optimizer, names, tensors, meta["optimizer"])
        self.trainer.step, self.trainer.tokens_seen = meta["step"], meta["tokens_seen"]
        self.trainer.tokens_since_fired = tensors["trainer.tokens_since_fired"]
        self.trainer.fire_counts = tensors["trainer.fire_counts"]
        self.scaling = InputScaling(**meta["scaling"])
        self.activation_sums = {site: tensors[f"sums.{site}"] for site in self.config.sites}

    def save_outputs(self, run_dir: Path) -> None:
        """The folded dictionary (raw activations in, raw reconstruction out) and the activation means."""
        folded = build_dictionary(self.dictionary.config)
        folded.load_state_dict(self.dictionary.state_dict())
        folded.fold_input_scale(self.scaling.input_scale, self.scaling.output_scale)
        source = {"model": self.config.model, "site": self.config.site, "target_site": self.config.target_site,
                  "context_length": self.config.context_length, "input_scale": self.scaling.input_scale,
                  "output_scale": self.scaling.output_scale, "trained_tokens": self.trainer.tokens_seen}
        save_dictionary(run_dir / DICTIONARY_DIR, folded, source)
        tokens = max(self.trainer.tokens_seen, 1)
        save_tensors(run_dir / STATS_FILE, {f"mean.{site}": (total / tokens).float()
                                            for site, total in self.activation_sums.items()})


def _prepare_run_dir(config: TrainConfig, run_dir: Path, resume: bool) -> None:
    config_path = run_dir / "config.json"
    if resume:
        saved = TrainConfig.from_file(config_path)
        if saved.to_dict() != config.to_dict():
            changed = sorted(k for k, v in config.to_dict().items() if saved.to_dict().get(k) != v)
            raise SaekitError(f"--resume with a different config (changed: {changed}); resume with the saved one")
        return
    if (run_dir / CHECKPOINT_FILE).exists() or (run_dir / DICTIONARY_DIR).exists():
        raise SaekitError(f"run directory {run_dir} already holds a run; pass --resume or choose another --name")
    write_json(config_path, config.to_dict())


def _truncate_log(path: Path, step: int) -> None:
    """Drop log lines written after the checkpoint we resume from (they will be redone)."""
    if not path.exists():
        return
    kept = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step]
    write_text(path, "".join(line + "\n" for line in kept))


def _batches_from(source: ActivationSource, config: TrainConfig, skip: int) -> Iterator[dict[str, Tensor]]:
    batches = shuffled_batches(source.chunks(), config.batch_size, config.shuffle_buffer_tokens, config.seed)
    for index, batch in enumerate(batches):
        if index >= skip:  # replaying the skipped batches is what makes resume exact
            yield batch


def train_run(config: TrainConfig, runs_dir: str | Path = "runs", resume: bool = False,
              loaded: LoadedModel | None = None, progress: bool = True) -> Path:
    """Train (or resume) the run described by ``config``; returns its directory."""
    config.validate()
    run_dir = Path(runs_dir) / config.name
    _prepare_run_dir(config, run_dir, resume)
    source = ActivationSource(activation_spec(config), config.cache_dir, model_loader(config, loaded),
                              config.model_batch_contexts)
    state = RunState(config, source.chunk(0))
    if resume:
        state.restore(run_dir / CHECKPOINT_FILE)
    _truncate_log(run_dir / LOG_FILE, state.trainer.step)
    _train_loop(state, _batches_from(source, config, state.trainer.step), run_dir, progress)
    state.save_outputs(run_dir)
    return run_dir


def _train_loop(state: RunState, batches: Iterator[dict[str, Tensor]], run_dir: Path, progress: bool) -> None:
    config = state.config
    checkpoint = run_dir / CHECKPOINT_FILE
    bar = tqdm(total=config.total_steps, initial=state.trainer.step, desc=f"training {config.name}",
               unit="step", disable=not progress)
    with open(run_dir / LOG_FILE, "a", encoding="utf-8") as log, bar:
        while state.trainer.step < config.total_steps:
            try:
                record = state.step(next(batches))
            except NonFiniteLossError as err:
                last_good = read_checkpoint_step(checkpoint)
                raise SaekitError(f"{err}; stopped. The last good checkpoint (step {last_good}) is kept in "
                                  f"{checkpoint}; lower the learning rate and resume") from err
            log.write(json.dumps(record) + "\n")
            log.flush()
            bar.update()
            bar.set_postfix(fvu=f"{record['fvu']:.3f}", l0=f"{record['l0']:.1f}")
            step = state.trainer.step
            if step % config.checkpoint_every == 0 or step == config.total_steps:
                state.save(checkpoint)


def read_checkpoint_step(path: Path) -> int | None:
    if not path.exists():
        return None
    return load_checkpoint(path)[1]["step"]


def load_run_config(run_dir: str | Path) -> TrainConfig:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise SaekitError(f"run directory not found: {run_dir}")
    return TrainConfig.from_dict(read_json(run_dir / "config.json", "run config"))
