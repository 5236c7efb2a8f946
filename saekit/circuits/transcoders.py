"""The transcoders that replace a model's MLPs: one per layer (saekit runs), one cross-layer transcoder, or both.

Each dictionary covers a run of model layers (one for a per-layer transcoder, its range for a CLT) and
answers per layer of that run what it reads and writes (``Dictionary.encode_layer``, ``writers``,
``decoder_into``, ``decode_layer``); the set only maps a model layer to its dictionary and its position
in that dictionary's range, so it holds no knowledge of any architecture.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

from torch import Tensor

from saekit.activations.spec import DataConfig
from saekit.dictionaries.base import Dictionary
from saekit.dictionaries.registry import load_dictionary, read_sites, written_sites
from saekit.errors import SaekitError
from saekit.models.loading import LoadedModel
from saekit.models.sites import parse_site
from saekit.rundir import DICTIONARY_DIR
from saekit.training.config import load_run_config


@dataclass
class TranscoderSet:
    """Transcoders from ``mlp_in`` to ``mlp_out``: each dictionary with the model layers it replaces, in order."""

    covering: list[tuple[list[int], Dictionary]]
    data: DataConfig | None = None  # the runs' data settings: which model (and randomization) they read
    layers: list[int] = field(init=False)  # every replaced model layer, in order
    _placed: dict[int, tuple[Dictionary, list[int]]] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._placed = {}
        for layers, dictionary in self.covering:
            if len(layers) != dictionary.layers:
                raise SaekitError(f"a dictionary over {dictionary.layers} layers cannot replace the "
                                  f"{len(layers)} MLPs of layers {layers}")
            for layer in layers:
                if layer in self._placed:
                    raise SaekitError(f"two transcoders replace the MLP of layer {layer}; keep one")
                self._placed[layer] = (dictionary, layers)
        self.layers = sorted(self._placed)

    @classmethod
    def per_layer(cls, dictionaries: dict[int, Dictionary], data: DataConfig | None = None) -> TranscoderSet:
        """One single-site transcoder per model layer."""
        return cls([([layer], dictionary) for layer, dictionary in sorted(dictionaries.items())], data)

    def dictionary_of(self, layer: int) -> Dictionary:
        return self._placed[layer][0]

    def _position(self, layer: int) -> tuple[Dictionary, list[int], int]:
        dictionary, layers = self._placed[layer]
        return dictionary, layers, layers.index(layer)

    def width(self, layer: int) -> int:
        return self.dictionary_of(layer).latents_per_layer

    def writers(self, layer: int) -> list[int]:
        """The model layers whose latents write to ``layer``'s MLP output."""
        dictionary, layers, position = self._position(layer)
        return [layers[source] for source in dictionary.writers(position)]

    def encode(self, layer: int, x: Tensor) -> Tensor:
        dictionary, _, position = self._position(layer)
        return dictionary.encode_layer(position, x)

    def pre_activations(self, layer: int, x: Tensor) -> Tensor:
        """Layer ``layer``'s latents before their activation function, from its MLP input ``x``."""
        dictionary, _, position = self._position(layer)
        return dictionary.layer_pre_activations(position, x)

    def decoder(self, source: int, layer: int) -> Tensor:
        """[latents of ``source``, d]: what each latent of layer ``source`` writes to layer ``layer``'s MLP output."""
        dictionary, layers, position = self._position(layer)
        return dictionary.decoder_into(layers.index(source), position)

    def decode(self, layer: int, latents: dict[int, Tensor], x: Tensor) -> Tensor:
        """Layer ``layer``'s MLP output from ``latents[source]`` of every writer, and its input ``x`` (skip)."""
        dictionary, _, position = self._position(layer)
        return dictionary.decode_layer(position, [latents[source] for source in self.writers(layer)], x)

    def requires_grad_(self, flag: bool) -> TranscoderSet:
        for dictionary in self.dictionaries():
            dictionary.requires_grad_(flag)
        return self

    def dictionaries(self) -> list[Dictionary]:
        return [dictionary for _, dictionary in self.covering]


def _check_transcoder(run_dir: Path, read_name: str, write_name: str) -> int:
    """The layer whose MLP a transcoder run replaces there: it reads blocks.L.mlp_in and writes blocks.L.mlp_out."""
    read, write = parse_site(read_name), parse_site(write_name)
    if (read.kind, write.kind) != ("mlp_in", "mlp_out") or read.layer != write.layer:
        raise SaekitError(f"{run_dir} is not a transcoder from blocks.L.mlp_in to blocks.L.mlp_out (it reads "
                          f"{read_name} and writes {write_name}); circuits replace MLPs")
    return read.layer


def transcoder_run_dirs(path: Path) -> list[Path]:
    """The runs a transcoders path names: itself (a run directory) or the runs inside it, by name."""
    if (path / DICTIONARY_DIR).is_dir():
        return [path]
    return sorted((d for d in path.glob("*") if (d / DICTIONARY_DIR).is_dir()), key=lambda d: d.name)


def load_transcoders(path: str | Path, device: str = "cpu") -> TranscoderSet:
    """A CLT run directory, one transcoder run, or a directory of per-layer transcoder runs (``--sites``)."""
    path = Path(path)
    run_dirs = transcoder_run_dirs(path)
    if not run_dirs:
        raise SaekitError(f"{path} holds no transcoder run (a run directory, or a directory of runs from "
                          "`saekit train --sites 'blocks.*.mlp_in->blocks.*.mlp_out'`)")
    data = [load_run_config(d).data for d in run_dirs]
    models = {(c.model, c.randomize_weights, c.randomization_seed) for c in data}
    if len(models) > 1:
        names = ", ".join(sorted({c.model for c in data}))
        raise SaekitError(f"the transcoder runs in {path} come from different models (or randomizations): {names}")
    loaded = [(d, *load_dictionary(d / DICTIONARY_DIR, device)) for d in run_dirs]
    covering = []
    for run_dir, dictionary, source in loaded:
        dictionary.eval().requires_grad_(False)
        if dictionary.layers > 1 and len(loaded) > 1:
            raise SaekitError(f"{run_dir} spans {dictionary.layers} layers; give it alone, not among per-layer runs")
        layers = [_check_transcoder(run_dir, read, write) for read, write in zip(read_sites(source),
                                                                                   written_sites(source))]
        covering.append((layers, dictionary))
    return TranscoderSet(covering, data=data[0])


def check_fits(transcoders: TranscoderSet, n_layers: int, d_model: int) -> None:
    """One line if the transcoders do not fit the model (layers beyond it, another width)."""
    if max(transcoders.layers) >= n_layers:
        raise SaekitError(f"the transcoders replace layer {max(transcoders.layers)} but the model has "
                          f"{n_layers} layers")
    for layer in transcoders.layers:
        width = transcoders.decoder(transcoders.writers(layer)[0], layer).shape[-1]
        if width != d_model:
            raise SaekitError(f"the transcoder of layer {layer} writes width {width}, the model's MLP output "
                              f"is {d_model}; use the model it was trained on")


def load_model_for(transcoders: TranscoderSet, device: str = "cpu") -> LoadedModel:
    """The model the transcoders were trained on, in float32 (attribution sums many small effects exactly)."""
    if transcoders.data is None:
        raise SaekitError("these transcoders record no model; load it yourself and pass it in")
    return replace(transcoders.data, model_dtype="float32").load_model(device)
