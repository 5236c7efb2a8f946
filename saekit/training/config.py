"""The run configuration: one flat dataclass, read from JSON and overridden by CLI flags."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from saekit.errors import SaekitError
from saekit.io import read_json


@dataclass
class TrainConfig:
    """Everything a training run needs; saved as ``config.json`` in the run directory."""

    name: str = "run"
    model: str = "default"
    site: str = "blocks.14.resid_post"
    target_site: str | None = None  # set for a transcoder (e.g. site=mlp_in, target_site=mlp_out)
    # Dictionary
    architecture: str = "topk"
    expansion_factor: int = 8
    width: int | None = None  # overrides expansion_factor
    k: int = 32
    # ReLU family, in units of inputs scaled to E||x||^2 = 1 (Anthropic's lambda / sqrt(d)). On the
    # default model (blocks.14.resid_post, 200k tokens) 0.1 gives L0 ~ 140; 5 collapsed to L0 0.6.
    l1_coefficient: float = 0.1
    extra: dict[str, Any] = field(default_factory=dict)
    # Data
    corpus: str = "default"
    text_field: str = "text"
    eval_fraction: float = 0.05
    context_length: int = 128
    exclude_bos: bool = True
    outlier_norm_factor: float | None = 10.0
    contexts_per_chunk: int = 64
    model_batch_contexts: int = 16
    shuffle_buffer_tokens: int = 65_536
    cache_dir: str | None = ".saekit_cache"  # None: compute activations in memory, never cache
    # Optimisation
    train_tokens: int = 200_000
    batch_size: int = 2048
    lr: float | None = None
    warmup_steps: int = 20
    decay_fraction: float = 0.2
    sparsity_warmup_fraction: float = 0.05
    dead_window_tokens: int = 100_000
    resample_every: int = 0  # steps; 0 = no resampling of dead latents
    resample_density_threshold: float = 0.0
    resample_holdout_fraction: float = 0.0  # the rare-latent experiment (see DictionaryTrainer.resample)
    checkpoint_every: int = 25
    seed: int = 0
    device: str = "cpu"
    # Evaluation
    eval_tokens: int = 8192
    eval_batch_contexts: int = 8

    @property
    def total_steps(self) -> int:
        return self.train_tokens // self.batch_size

    @property
    def sites(self) -> tuple[str, ...]:
        return (self.site,) if self.target_site is None else (self.site, self.target_site)

    def validate(self) -> TrainConfig:
        if self.total_steps < 1:
            raise SaekitError(f"train_tokens={self.train_tokens} is less than one batch of {self.batch_size}")
        if self.context_length < 2:
            raise SaekitError(f"context_length must be at least 2, got {self.context_length}")
        if self.checkpoint_every < 1:
            raise SaekitError(f"checkpoint_every must be at least 1, got {self.checkpoint_every}")
        if not 0 < self.eval_fraction < 1:
            raise SaekitError(f"eval_fraction must be between 0 and 1, got {self.eval_fraction}")
        return self

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise SaekitError(f"unknown config keys {unknown}; valid keys: {', '.join(sorted(known))}")
        return cls(**data)

    @classmethod
    def from_file(cls, path: str | Path) -> TrainConfig:
        data = read_json(path, "config file")
        if not isinstance(data, dict):
            raise SaekitError(f"config file {path} must hold a JSON object")
        return cls.from_dict(data)
