"""The run configuration: the data, dictionary and optimisation sections and the run's own settings.

``config.json`` in a run directory holds :class:`TrainConfig` with one object per section::

    {"name": ..., "site": ..., "target_site": ..., "layers": ...,
     "data": {DataConfig: what decides the activations; its hash is the cache key},
     "dictionary": {DictionarySettings: architecture, width, the sparsity settings},
     "optim": {OptimConfig: tokens, batch size, learning rate, schedule, resampling},
     "run": {RunSettings: device, cache, checkpoints, evaluation size}}

Each default is stated once, on its field (:func:`saekit.settings.setting`); CLI flags, sweep grids
and the flat ``config.json`` of saekit before sections existed all use the fields' flat names
(``--lr``, ``k=32``, ``"context_length": 128``), resolved by :mod:`saekit.settings`.

Cross-layer architectures (``clt_topk``, ``clt_jumprelu``, ``crosscoder``) read a range of layers,
``layers="FIRST-LAST"``: ``site`` (and a CLT's ``target_site``) name the first layer's sites, and the
same kinds at every layer of the range are read from one forward (:attr:`TrainConfig.input_sites`,
:attr:`TrainConfig.target_sites`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import torch

from saekit.activations.spec import ActivationSpec, DataConfig
from saekit.dictionaries.base import DictionaryOptions, DictionarySettings, Span, upgrade_sparsity
from saekit.dictionaries.registry import ARCHITECTURES, architectures_over_layers, span_of
from saekit.errors import SaekitError
from saekit.io import read_json
from saekit.models.loading import sizes_of
from saekit.models.sites import parse_site
from saekit.rundir import read_run_config
from saekit.settings import (
    NON_EMPTY,
    check_rules,
    flat_index,
    from_dict,
    from_flat,
    printable,
    section_names,
    setting,
    to_dict,
    updated,
)
from saekit.training.objectives import ObjectiveConfig
from saekit.training.schedule import OptimConfig

DEVICE_PATTERN = re.compile(r"^(cpu|mps|(cuda|xpu)(:\d+)?)$")


def device_name(value: str) -> str | None:
    """A rule check: a torch device name this code can run on (availability is checked by ``validate``)."""
    return None if DEVICE_PATTERN.match(value) else "cpu, cuda, cuda:N, xpu, xpu:N or mps"


def site_name(value: str) -> str | None:
    """A rule check: ``blocks.{layer}.{kind}`` (the layer is checked against the model before it loads)."""
    try:
        parse_site(value)
    except SaekitError:
        return "blocks.<layer>.<kind> with kind resid_pre, attn_out, mlp_in, mlp_act, mlp_out or resid_post"
    return None


LAYER_RANGE_PATTERN = re.compile(r"^(\d+)-(\d+)$")


def layer_range(value: str) -> str | None:
    """A rule check: ``FIRST-LAST`` with FIRST <= LAST (the layers are checked against the model before it loads)."""
    match = LAYER_RANGE_PATTERN.match(value)
    if match is None or int(match.group(1)) > int(match.group(2)):
        return "a layer range FIRST-LAST with FIRST <= LAST, such as 0-29"
    return None


def run_name(value: str) -> str | None:
    """A rule check: a relative path of printable characters below --runs-dir (no '..', no absolute path, no
    empty part; '/' nests it, '\\' is refused)."""
    if (problem := printable(value)) is not None:
        return problem
    parts = PurePosixPath(value).parts
    if not value.strip() or value.startswith(("/", "~")) or "\\" in value or any(p in ("..", ".") for p in parts) \
            or "//" in value or value.endswith("/"):
        return "a relative name below --runs-dir such as 'my-run' or 'sweep/topk-32' (no '..', no leading '/')"
    return None


@dataclass
class RunSettings:
    """The ``run`` section: where and how the run executes; none of it changes what is learned."""

    device: str = setting("cpu", "torch device: cpu, cuda, cuda:1, mps", check=device_name,
                          invalid=("banana", "cuda:x"))
    cache_dir: str | None = setting(".saekit_cache", "activation cache directory (none: compute in memory)",
                                    **NON_EMPTY)
    model_batch_contexts: int = setting(16, "contexts per model forward when computing activations", minimum=1)
    checkpoint_every: int = setting(25, "steps between checkpoints (and latent-density snapshots)", minimum=1)
    eval_tokens: int = setting(8192, "held-out tokens for evaluation", minimum=1)
    eval_batch_contexts: int = setting(8, "contexts per model forward when evaluating", minimum=1)
    read_every: int = setting(10, "steps between reads of the logged scalars from the device (each read waits "
                              "for it; checkpoints always read first, so a NaN is never saved)", minimum=1)
    prefetch_chunks: int | None = setting(
        None, "activation chunks made ahead on a background thread while the dictionaries train (none: 1 on a GPU, "
        "0 on a CPU, where the thread takes cores from the steps: 15% slower end to end on 2 cores)", minimum=0)
    compile: bool = setting(False, "torch.compile the dictionary's forward (falls back to eager where it fails)")

    def resolved_prefetch(self) -> int:
        """Chunks to make ahead here: the setting, or by device (measured, see the README's speed notes)."""
        if self.prefetch_chunks is not None:
            return self.prefetch_chunks
        return 0 if self.device in ("cpu", "mps") else 1


@dataclass
class TrainConfig:
    """Everything a training run needs; saved as ``config.json`` in the run directory."""

    name: str = setting("run", "run directory name under --runs-dir (may hold '/')", check=run_name,
                        invalid=("", "../elsewhere", "/absolute", "a\nb", "\x1b[31mred"))
    site: str = setting("blocks.14.resid_post", "the input site, blocks.{layer}.{kind}", check=site_name,
                        invalid=("blocks.x.resid_post", "blocks.0.banana"))
    target_site: str | None = setting(None, "a transcoder's target site (e.g. site=mlp_in, target_site=mlp_out)",
                                      check=site_name, invalid=("mlp_out",))
    layers: str | None = setting(None, "cross-layer architectures (clt_topk, clt_jumprelu, crosscoder): the layers "
                                 "FIRST-LAST they read; site (and target_site) name the first layer's sites",
                                 check=layer_range, invalid=("5-2", "0..3", "3"))
    data: DataConfig = field(default_factory=DataConfig)
    dictionary: DictionarySettings = field(default_factory=DictionarySettings)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunSettings = field(default_factory=RunSettings)
    loss: ObjectiveConfig = field(default_factory=ObjectiveConfig)  # what it minimises (training/objectives.py)

    @property
    def total_steps(self) -> int:
        return self.optim.total_steps

    @property
    def over_layers(self) -> bool:
        """Whether the run reads a range of layers (``layers=FIRST-LAST``: a dictionary whose span is not one site);
        its scales and saved sources are then per layer."""
        return self.layers is not None

    @property
    def layer_numbers(self) -> range:
        """The layers a cross-layer run reads; the site's own layer otherwise."""
        if self.layers is None:
            return range(parse_site(self.site).layer, parse_site(self.site).layer + 1)
        first, last = (int(part) for part in self.layers.split("-"))
        return range(first, last + 1)

    def _range_of(self, site: str) -> tuple[str, ...]:
        if self.layers is None:
            return (site,)
        kind = parse_site(site).kind
        return tuple(f"blocks.{layer}.{kind}" for layer in self.layer_numbers)

    @property
    def input_sites(self) -> tuple[str, ...]:
        """The sites the dictionary reads, in layer order (one unless ``layers`` is set)."""
        return self._range_of(self.site)

    @property
    def target_sites(self) -> tuple[str, ...]:
        """The sites a transcoder writes, in layer order; empty for an SAE (it reconstructs its input)."""
        return () if self.target_site is None else self._range_of(self.target_site)

    @property
    def output_sites(self) -> tuple[str, ...]:
        """The sites the dictionary's reconstruction stands for: its targets (a transcoder's), else its inputs."""
        return self.target_sites or self.input_sites

    @property
    def sites(self) -> tuple[str, ...]:
        return self.input_sites + self.target_sites

    def activation_spec(self) -> ActivationSpec:
        return ActivationSpec(self.data, self.sites)

    def validate(self) -> TrainConfig:
        """Every rule, then what spans fields or needs the machine, before any model loads."""
        check_rules(self)
        dictionary = self.dictionary
        self.check_layers()  # first: its refusal of extra 'layers' says where the layer count comes from
        options = dictionary.options_for(len(self.layer_numbers))
        if dictionary.width is not None and ARCHITECTURES[dictionary.architecture].fixed_l0() \
                and dictionary.k > dictionary.width:
            raise SaekitError(f"k={dictionary.k} is more than the width {dictionary.width}; lower k or raise width")
        if self.total_steps < 1:
            raise SaekitError(f"train_tokens={self.optim.train_tokens} is less than one batch of "
                              f"{self.optim.batch_size}; raise train_tokens or lower batch_size")
        self.loss.validate().check_sites(self.sites)
        check_device(self.run.device)
        self.data.check_paths()
        self.check_k_against_model(options)
        return self

    def check_k_against_model(self, options: DictionaryOptions) -> None:
        """A TopK-family k (and the resolved ``options``) within the width the model gives when no width is set:
        expansion_factor x the input sites' widths, from the model's config alone (the weights would load only
        after files exist)."""
        dictionary = self.dictionary
        if dictionary.width is not None or not ARCHITECTURES[dictionary.architecture].fixed_l0():
            return
        sizes = sizes_of(self.data.model)
        # parse_site with the layer count: a layer the model lacks is named as that, not as a width.
        kinds = [parse_site(site, sizes.layers).kind for site in self.sites]
        inputs = sum(sizes.d_mlp if kind == "mlp_act" else sizes.d_model for kind in kinds[:len(self.input_sites)])
        width, count = dictionary.expansion_factor * inputs, len(self.layer_numbers)
        ARCHITECTURES[dictionary.architecture].check_shape(dictionary.architecture, options, count, width)
        made = f"expansion_factor {dictionary.expansion_factor} x {inputs}, the width of {', '.join(self.input_sites)}"
        fix = "lower k or raise expansion_factor or width"
        if span_of(dictionary.architecture) is Span.CAUSAL and dictionary.k > width // count:
            raise SaekitError(f"k={dictionary.k} is more than the {width // count} latents per layer ({made}, over "
                              f"{count} layers); {fix}")
        if dictionary.k > width:
            raise SaekitError(f"k={dictionary.k} is more than the width {width} ({made}); {fix}")

    def check_layers(self) -> None:
        """A layer range goes with a cross-layer architecture, and its sites with the range's first layer."""
        architecture = self.dictionary.architecture
        span = span_of(architecture)
        if not span.over_layers:
            if self.layers is not None:
                raise SaekitError(f"layers={self.layers} is only for the cross-layer architectures "
                                  f"({', '.join(architectures_over_layers())}), not {architecture}")
            return
        if self.layers is None:
            raise SaekitError(f"architecture {architecture} needs a layer range: set layers=FIRST-LAST (--layers 0-29)")
        if "layers" in self.dictionary.extra:
            raise SaekitError("the layer count comes from layers=FIRST-LAST; remove 'layers' from extra")
        if span.needs_target != (self.target_site is not None):
            raise SaekitError(f"architecture {architecture} " + ("needs a target_site (blocks.N.mlp_out)"
                                                                if span.needs_target
                                                                else "reconstructs its input: leave target_site unset"))
        first = self.layer_numbers.start
        for site in (self.site, self.target_site):
            if site is not None and parse_site(site).layer != first:
                raise SaekitError(f"layers={self.layers} starts at layer {first}, but {site} is in layer "
                                  f"{parse_site(site).layer}; name the first layer's site (blocks.{first}."
                                  f"{parse_site(site).kind})")
        count, dictionary = len(self.layer_numbers), self.dictionary
        if not ARCHITECTURES[architecture].RESAMPLES and self.optim.resample_every:
            raise SaekitError(f"{architecture} does not support resampling; set resample_every=0")
        if dictionary.width is not None and dictionary.width % count:
            raise SaekitError(f"width={dictionary.width} counts every layer's latents: use a multiple of the "
                              f"{count} layers")
        if span is Span.CAUSAL and ARCHITECTURES[architecture].fixed_l0() and dictionary.width is not None \
                and dictionary.k > dictionary.width // count:
            raise SaekitError(f"k={dictionary.k} (per layer) is more than the {dictionary.width // count} latents "
                              "per layer; lower k or raise width")

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


def load_run_config(run_dir: str | Path) -> TrainConfig:
    """The config of the run in ``run_dir`` (a missing directory or config is one line naming it)."""
    return TrainConfig.from_dict(read_run_config(run_dir))


def check_device(device: str) -> None:
    """Refuse a device this machine does not have, with one line saying which it has."""
    kind, _, index = device.partition(":")
    backends = {"cuda": torch.cuda, "xpu": getattr(torch, "xpu", None)}
    if kind in backends:
        backend = backends[kind]
        count = backend.device_count() if backend is not None and backend.is_available() else 0
        if count == 0:
            raise SaekitError(f"device {device!r} is not available on this machine (no {kind} device found); "
                              "use --device cpu")
        if index and int(index) >= count:
            raise SaekitError(f"device {device!r} does not exist: this machine has {kind}:0..{kind}:{count - 1}")
    elif kind == "mps" and not torch.backends.mps.is_available():
        raise SaekitError("device 'mps' is not available on this machine; use --device cpu")


def is_flat_config(data: dict[str, Any]) -> bool:
    """A config from before sections: no section object, and some key that only a flat config has."""
    if any(isinstance(data.get(section), dict) for section in section_names(TrainConfig)):
        return False
    return bool(set(data) & set(flat_index(TrainConfig)) - {"name", "site", "target_site", "layers"})


def flat_from_legacy(data: dict[str, Any]) -> dict[str, Any]:
    """The flat names of an old flat config: one ``seed`` then set both the data and the optimiser seed."""
    flat = upgrade_sparsity(data)
    if "seed" in flat:
        flat.setdefault("data_seed", flat["seed"])
    return flat
