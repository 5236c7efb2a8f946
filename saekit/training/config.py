"""The run configuration: the data, dictionary and optimisation sections and the run's own settings.

``config.json`` in a run directory holds :class:`TrainConfig` with one object per section::

    {"name": ..., "site": ..., "target_site": ...,
     "data": {DataConfig: what decides the activations; its hash is the cache key},
     "dictionary": {DictionarySettings: architecture, width, the sparsity settings},
     "optim": {OptimConfig: tokens, batch size, learning rate, schedule, resampling},
     "run": {RunSettings: device, cache, checkpoints, evaluation size}}

Each default is stated once, on its field (:func:`saekit.settings.setting`); CLI flags, sweep grids
and the flat ``config.json`` of saekit before sections existed all use the fields' flat names
(``--lr``, ``k=32``, ``"context_length": 128``), resolved by :mod:`saekit.settings`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from saekit.activations.spec import ActivationSpec, DataConfig
from saekit.dictionaries.base import DictionarySettings, upgrade_sparsity
from saekit.dictionaries.registry import ARCHITECTURES
from saekit.errors import SaekitError
from saekit.io import read_json
from saekit.settings import flat_index, from_dict, from_flat, section_names, setting, to_dict, updated
from saekit.training.schedule import OptimConfig


@dataclass
class RunSettings:
    """The ``run`` section: where and how the run executes; none of it changes what is learned."""

    device: str = setting("cpu", "torch device: cpu, cuda, cuda:1, mps")
    cache_dir: str | None = setting(".saekit_cache", "activation cache directory (none: compute in memory)")
    model_batch_contexts: int = setting(16, "contexts per model forward when computing activations")
    checkpoint_every: int = setting(25, "steps between checkpoints (and latent-density snapshots)")
    eval_tokens: int = setting(8192, "held-out tokens for evaluation")
    eval_batch_contexts: int = setting(8, "contexts per model forward when evaluating")


@dataclass
class TrainConfig:
    """Everything a training run needs; saved as ``config.json`` in the run directory."""

    name: str = setting("run", "run directory name under --runs-dir (may hold '/')")
    site: str = setting("blocks.14.resid_post", "the input site, blocks.{layer}.{kind}")
    target_site: str | None = setting(None, "a transcoder's target site (e.g. site=mlp_in, target_site=mlp_out)")
    data: DataConfig = field(default_factory=DataConfig)
    dictionary: DictionarySettings = field(default_factory=DictionarySettings)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunSettings = field(default_factory=RunSettings)

    @property
    def total_steps(self) -> int:
        return self.optim.total_steps

    @property
    def sites(self) -> tuple[str, ...]:
        return (self.site,) if self.target_site is None else (self.site, self.target_site)

    def activation_spec(self) -> ActivationSpec:
        return ActivationSpec(self.data, self.sites)

    def validate(self) -> TrainConfig:
        """Ranges and names, checked before any model loads (types are checked on construction)."""
        optim, dictionary, run = self.optim, self.dictionary, self.run
        if dictionary.architecture not in ARCHITECTURES:
            raise SaekitError(f"unknown architecture {dictionary.architecture!r}; "
                              f"choose one of {sorted(ARCHITECTURES)}")
        ARCHITECTURES[dictionary.architecture].resolve_options(dictionary.architecture, dictionary.extra)
        _at_least(1, batch_size=optim.batch_size, expansion_factor=dictionary.expansion_factor,
                  checkpoint_every=run.checkpoint_every, eval_tokens=run.eval_tokens,
                  model_batch_contexts=run.model_batch_contexts, eval_batch_contexts=run.eval_batch_contexts,
                  contexts_per_chunk=self.data.contexts_per_chunk, k=dictionary.k)
        _at_least(2, context_length=self.data.context_length)
        if dictionary.width is not None:
            _at_least(1, width=dictionary.width)
        if optim.lr is not None and not optim.lr > 0:
            raise SaekitError(f"lr must be positive, got {optim.lr}")
        if self.total_steps < 1:
            raise SaekitError(f"train_tokens={optim.train_tokens} is less than one batch of {optim.batch_size}")
        if not 0 < self.data.eval_fraction < 1:
            raise SaekitError(f"eval_fraction must be between 0 and 1, got {self.data.eval_fraction}")
        return self

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)

    def updated(self, **flat: Any) -> TrainConfig:
        """A copy with settings changed by flat name (``config.updated(lr=1e-3, k=64)``)."""
        return updated(self, "config", **flat)

    @classmethod
    def from_flat(cls, flat: dict[str, Any], where: str = "config") -> TrainConfig:
        """From flat names alone, the rest at their defaults (``TrainConfig.from_flat({"k": 8})``)."""
        return from_flat(cls, flat, where)

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "config") -> TrainConfig:
        if isinstance(data, dict) and is_flat_config(data):
            return cls.from_flat(flat_from_legacy(data), f"{where} (flat, from an older saekit)")
        return from_dict(cls, data, where)

    @classmethod
    def from_file(cls, path: str | Path) -> TrainConfig:
        return cls.from_dict(read_json(path, "config file"), str(path))


def _at_least(minimum: int, **values: int) -> None:
    for name, value in values.items():
        if value < minimum:
            raise SaekitError(f"{name} must be at least {minimum}, got {value}")


def is_flat_config(data: dict[str, Any]) -> bool:
    """A config from before sections: no section object, and some key that only a flat config has."""
    if any(isinstance(data.get(section), dict) for section in section_names(TrainConfig)):
        return False
    return bool(set(data) & set(flat_index(TrainConfig)) - {"name", "site", "target_site"})


def flat_from_legacy(data: dict[str, Any]) -> dict[str, Any]:
    """The flat names of an old flat config: one ``seed`` then set both the data and the optimiser seed."""
    flat = upgrade_sparsity(data)
    if "seed" in flat:
        flat.setdefault("data_seed", flat["seed"])
    return flat
