"""The transcoders that replace a model's MLPs: one per layer (saekit runs) or one cross-layer transcoder.

Both give, per replaced layer j, ``encode(j, x_j)`` (the latents from the MLP input) and ``decode(j,
latents, x_j)`` (the MLP output from the latents of the layers that write to j: j alone for per-layer
transcoders, every layer of the range up to j for a CLT; plus the skip path when there is one).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from torch import Tensor

from saekit.activations.spec import DataConfig
from saekit.dictionaries.base import Dictionary
from saekit.dictionaries.crosslayer import CrossLayerTranscoder
from saekit.dictionaries.registry import load_dictionary, read_sites, written_sites
from saekit.errors import SaekitError
from saekit.models.loading import LoadedModel
from saekit.models.sites import parse_site
from saekit.rundir import DICTIONARY_DIR
from saekit.training.config import load_run_config


@dataclass
class TranscoderSet:
    """Transcoders from ``mlp_in`` to ``mlp_out`` for the model layers ``layers`` (in order)."""

    layers: list[int]
    per_layer: dict[int, Dictionary] | None = None
    clt: CrossLayerTranscoder | None = None
    data: DataConfig | None = None  # the runs' data settings: which model (and randomization) they read

    def width(self, layer: int) -> int:
        return self.clt.latents_per_layer if self.clt is not None else self.per_layer[layer].config.width

    def writers(self, layer: int) -> list[int]:
        """The layers whose latents write to ``layer``'s MLP output."""
        return [source for source in self.layers if source <= layer] if self.clt is not None else [layer]

    def encode(self, layer: int, x: Tensor) -> Tensor:
        if self.clt is not None:
            return self.clt.encode_layer(self.layers.index(layer), x)
        return self.per_layer[layer].encode(x)

    def pre_activations(self, layer: int, x: Tensor) -> Tensor:
        """Layer ``layer``'s latents before their activation function, from its MLP input ``x``."""
        if self.clt is not None:
            latents = self.clt.layer_slice(self.layers.index(layer), self.clt.latents_per_layer)
            return x @ self.clt.W_enc[:, latents] + self.clt.b_enc[latents]  # a CLT is a transcoder: no b_pre
        return self.per_layer[layer].pre_activations(x)

    def decoder(self, source: int, layer: int) -> Tensor:
        """[latents of ``source``, d]: what each latent of layer ``source`` writes to layer ``layer``'s MLP output."""
        if self.clt is None:
            return self.per_layer[layer].W_dec
        first, position = self.layers.index(source), self.layers.index(layer)
        block = self.clt.decoder_block(first).view(self.clt.latents_per_layer, -1, self.clt.layer_output_width)
        return block[:, position - first]

    def decode(self, layer: int, latents: dict[int, Tensor], x: Tensor) -> Tensor:
        """Layer ``layer``'s MLP output from ``latents[source]`` of every writer, and its input ``x`` (skip)."""
        if self.clt is not None:
            position = self.layers.index(layer)
            out = self.clt.b_dec[self.clt.layer_slice(position, self.clt.layer_output_width)]
            skip = None if self.clt.W_skip is None else \
                x @ self.clt.W_skip[:, self.clt.layer_slice(position, self.clt.layer_output_width)]
        else:
            dictionary = self.per_layer[layer]
            out, skip = dictionary.b_dec, dictionary.skip(x)
        for source in self.writers(layer):
            out = out + latents[source] @ self.decoder(source, layer)
        return out if skip is None else out + skip

    def requires_grad_(self, flag: bool) -> TranscoderSet:
        for dictionary in self.dictionaries():
            dictionary.requires_grad_(flag)
        return self

    def dictionaries(self) -> list[Dictionary]:
        return [self.clt] if self.clt is not None else list(self.per_layer.values())


def _check_transcoder(run_dir: Path, source: dict) -> int:
    """The layer of a per-layer transcoder run reading blocks.L.mlp_in and writing blocks.L.mlp_out."""
    reads, writes = read_sites(source), written_sites(source)
    read, write = parse_site(reads[0]), parse_site(writes[0])
    if len(reads) != 1 or (read.kind, write.kind) != ("mlp_in", "mlp_out") or read.layer != write.layer:
        raise SaekitError(f"{run_dir} is not a transcoder from blocks.L.mlp_in to blocks.L.mlp_out (it reads "
                          f"{', '.join(reads)} and writes {', '.join(writes)}); circuits replace MLPs")
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
    for _, dictionary, _ in loaded:
        dictionary.eval().requires_grad_(False)
    if len(loaded) == 1 and isinstance(loaded[0][1], CrossLayerTranscoder):
        run_dir, clt, source = loaded[0]
        layers = [_check_transcoder(run_dir, {"site": r, "target_site": w})
                  for r, w in zip(read_sites(source), written_sites(source))]
        return TranscoderSet(layers, clt=clt, data=data[0])
    per_layer: dict[int, Dictionary] = {}
    for run_dir, dictionary, source in loaded:
        if isinstance(dictionary, CrossLayerTranscoder) and dictionary.layers > 1:
            raise SaekitError(f"{run_dir} is a cross-layer transcoder; give it alone, not among per-layer runs")
        layer = _check_transcoder(run_dir, source)
        if layer in per_layer:
            raise SaekitError(f"two runs in {path} replace the MLP of layer {layer}; keep one")
        per_layer[layer] = dictionary
    return TranscoderSet(sorted(per_layer), per_layer=per_layer, data=data[0])


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
