"""dictionary_learning (Marks et al.) format: a trainer folder holding ``config.json`` and ``ae.pt``.

``config.json`` is what ``trainSAE`` writes: ``{"trainer": trainer.config, "buffer": buffer.config}``,
the trainer part naming ``dict_class`` (and ``trainer_class``), ``activation_dim``, ``dict_size``, ``k``,
``layer``, ``lm_name`` and ``submodule_name``. ``ae.pt`` is ``torch.save`` of the module's state dict;
saekit opens it only with ``torch.load(weights_only=True)``, which reads tensors and refuses any
pickled object (a whole module saved with ``torch.save(ae)`` is refused, never unpickled). A
checkpoint (``checkpoints/ae_<step>.pt``) is read by naming the file: its config is the trainer's.

Each class and how it becomes a saekit architecture exactly (``nn.Linear`` weights are stored
transposed: encoder [dict_size, d] and decoder [d, dict_size], saekit keeps W_enc [d, width] and
W_dec [width, d]):

- ``AutoEncoder`` (standard, April-update and p-anneal trainers) -> ``relu``: ``relu(W(x - bias) + b)``.
  dictionary_learning's ``load_dictionary`` normalises its decoder columns on load (encoder rows and
  bias multiplied by the norms: the reconstruction is unchanged, latents scale by the norms); the
  reader does the same, so its latents are the ones dictionary_learning's users get.
- ``AutoEncoderTopK`` -> ``topk``: per-token top-k of ``relu(pre)``. Its stored ``threshold`` is used
  only by ``encode(use_threshold=True)``, not by the default encode or forward, so it is not read.
- ``BatchTopKSAE`` -> ``batchtopk``: at inference ``relu(pre) * (relu(pre) > threshold)``, which is
  saekit's eval rule ``pre * (pre > threshold)`` for a threshold >= 0. A negative threshold (never
  set in training) makes dictionary_learning's encode a plain ReLU: refused.
- ``MatryoshkaBatchTopKSAE`` -> ``matryoshka_batchtopk``: as BatchTopK, with its ``group_sizes``.
- ``JumpReluAutoEncoder`` -> ``jumprelu``: ``relu(pre * (pre > threshold))`` with ``pre = x W + b``
  (no b_dec subtraction: b_dec W folded into b_enc). saekit stores log thresholds, so a threshold
  <= 0 is refused.
- ``GatedAutoEncoder`` -> ``gated``: gate ``(x - b_dec) W + gate_bias`` and magnitude
  ``exp(r_mag) (x - b_dec) W + mag_bias`` are saekit's pi_gate and pi_mag with b_enc = gate_bias.

Decoders are never renormalised otherwise (non-unit norms are kept). ``trainSAE`` folds its
``normalize_activations`` norm factor into the biases (and thresholds) before saving, so ``ae.pt``
takes raw activations and a recorded ``norm_factor`` is not applied again. Transcoders (``buffer.io``
``in_and_out``) are refused: the installed trainers define no transcoder target.

The site comes from ``submodule_name`` written as ``<kind>_layer_<N>`` (the convention of the
library's demo, e.g. ``resid_post_layer_3``) with kind a saekit site kind and N equal to ``layer``;
anything else leaves the site None, and the caller must give it.
"""

from __future__ import annotations

import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from saekit.dictionaries.base import Dictionary, DictionaryConfig
from saekit.dictionaries.formats.common import PICKLE_SUFFIXES, load_weights
from saekit.dictionaries.registry import build_dictionary
from saekit.dictionaries.validate import check_tensors, stated
from saekit.errors import SaekitError
from saekit.io import read_json
from saekit.site_kinds import SITE_KINDS

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "ae.pt"
FORMAT = "dictionary-learning"
TRAINER_CLASSES = {  # for a config that names only its trainer
    "StandardTrainer": "AutoEncoder", "StandardTrainerAprilUpdate": "AutoEncoder", "PAnnealTrainer": "AutoEncoder",
    "GatedSAETrainer": "GatedAutoEncoder", "GatedAnnealTrainer": "GatedAutoEncoder",
    "TopKTrainer": "AutoEncoderTopK", "BatchTopKTrainer": "BatchTopKSAE",
    "MatryoshkaBatchTopKTrainer": "MatryoshkaBatchTopKSAE", "JumpReluTrainer": "JumpReluAutoEncoder",
}
COUNTS = ("k", "group_sizes")  # the state dicts' integer tensors
_SUBMODULE = re.compile(rf"({'|'.join(SITE_KINDS)})_layer_(\d+)")
_SITE = re.compile(rf"blocks\.\d+\.({'|'.join(SITE_KINDS)})")


@dataclass
class _Mapped:
    """One class's state dict as saekit weights (float64 until copied in) and settings."""

    architecture: str
    weights: dict[str, Tensor]
    k: int = 32
    extra: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def is_dictionary_learning(path: Path) -> bool:
    """A trainer folder: ``ae.pt`` beside ``config.json`` (the rule format detection uses)."""
    return (path / WEIGHTS_FILE).is_file() and (path / CONFIG_FILE).is_file()


def dictionary_learning_folders(path: Path) -> list[Path]:
    """The trainer folders a path names: itself, or (a trainSAE ``save_dir``) its ``trainer_*`` children."""
    if is_dictionary_learning(path):
        return [path]
    return sorted(child for child in path.glob("*") if is_dictionary_learning(child))


def _files(path: Path) -> tuple[Path, Path]:
    """(config.json, weights file) of a trainer folder or of a named ``.pt`` file (a checkpoint)."""
    if path.is_file():
        if path.suffix != ".pt":
            raise SaekitError(f"{path} is not a dictionary_learning .pt file; give its trainer folder (config.json "
                              "+ ae.pt) or a checkpoint .pt file")
        configs = [folder / CONFIG_FILE for folder in (path.parent, path.parent.parent)
                   if (folder / CONFIG_FILE).is_file()]
        if not configs:
            raise SaekitError(f"{path}: no {CONFIG_FILE} beside it or in the folder above; dictionary_learning "
                              "writes one per trainer folder")
        return configs[0], path
    if not path.is_dir():
        raise SaekitError(f"dictionary_learning directory not found: {path}")
    weights, config = path / WEIGHTS_FILE, path / CONFIG_FILE
    if not weights.is_file():
        others = sorted(p.name for p in path.iterdir() if p.suffix in (*PICKLE_SUFFIXES, ".safetensors"))
        found = f" (found {', '.join(others)}; a checkpoint .pt can be named directly)" if others else ""
        raise SaekitError(f"{path} is not a dictionary_learning trainer folder: {WEIGHTS_FILE} not found{found}")
    if not config.is_file():
        raise SaekitError(f"{path} is not a dictionary_learning trainer folder: {CONFIG_FILE} not found beside "
                          f"{WEIGHTS_FILE}")
    return config, weights


def load_state_dict(file: Path) -> dict[str, Tensor]:
    """The tensors of a torch-saved state dict, through ``torch.load(weights_only=True)`` only."""
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if "weights only" in str(err).lower():
            raise SaekitError(f"{file} pickles Python objects (torch.load(weights_only=True) refused it); saekit will "
                              "not unpickle it: save ae.state_dict() instead of the module") from err
        raise SaekitError(f"{file} is not a torch file saekit can read: {str(err).splitlines()[0]}") from err
    except Exception as err:  # torch.load raises many kinds on a file that is no torch save at all
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise SaekitError(f"{file} is not a torch file saekit can read ({type(err).__name__}: {first})") from err
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, Tensor) for k, v in state.items()):
        raise SaekitError(f"{file} holds a {type(state).__name__}, not a state dict of named tensors")
    return state


def _trainer_config(file: Path) -> dict[str, Any]:
    config = read_json(file, "dictionary_learning config")
    trainer = config.get("trainer") if isinstance(config, dict) else None
    if not isinstance(trainer, dict):
        raise SaekitError(f"{file} has no 'trainer' object: not a dictionary_learning config.json")
    buffer = config.get("buffer")
    if isinstance(buffer, dict) and buffer.get("io") == "in_and_out":
        raise SaekitError(f"{file}: a transcoder (buffer io 'in_and_out'); saekit reads dictionary_learning SAEs only")
    return trainer


def _positive_int(config: dict[str, Any], key: str, file: Path) -> int:
    value = config.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise SaekitError(f"{file}: the trainer config needs a positive integer {key!r}, got {value!r}")
    return value


def _stored_k(tensors: dict[str, Tensor], trainer: dict[str, Any], file: Path) -> int:
    k = int(tensors["k"])
    if "k" in trainer and trainer["k"] != k:
        raise SaekitError(f"{file}: k={k} in the state dict but k={trainer['k']!r} in config.json")
    return k


def _inference_threshold(tensors: dict[str, Tensor], file: Path) -> Tensor:
    threshold = tensors["threshold"]
    if float(threshold) < 0:
        raise SaekitError(f"{file}: the BatchTopK inference threshold was never set ({float(threshold):g}), so "
                          "dictionary_learning's encode is a plain ReLU here; train past threshold_start_step")
    return threshold


def _relu(t: dict[str, Tensor], file: Path) -> _Mapped:
    W_enc, b_enc, W_dec = t["encoder.weight"].T, t["encoder.bias"], t["decoder.weight"].T
    norms = W_dec.norm(dim=1)
    notes = []
    # load_dictionary -> AutoEncoder.from_pretrained(normalize_decoder=True), which skips decoders allclose to 1.
    if not torch.allclose(norms.float(), torch.ones_like(norms.float())):
        if not bool((norms > 0).all()):
            raise SaekitError(f"{file}: a decoder column has zero norm; dictionary_learning's load_dictionary "
                              "cannot normalise it either")
        W_enc, b_enc, W_dec = W_enc * norms, b_enc * norms, W_dec / norms[:, None]
        notes.append("decoder columns normalised to unit norm with the encoder rescaled, as dictionary_learning's "
                     "load_dictionary does (reconstruction unchanged, latents times the decoder norms)")
    return _Mapped("relu", {"W_enc": W_enc, "b_enc": b_enc, "W_dec": W_dec, "b_dec": t["bias"]}, notes=notes)


def _linear_weights(t: dict[str, Tensor]) -> dict[str, Tensor]:
    return {"W_enc": t["encoder.weight"].T, "b_enc": t["encoder.bias"], "W_dec": t["decoder.weight"].T,
            "b_dec": t["b_dec"]}


def _topk(t: dict[str, Tensor], trainer: dict[str, Any], file: Path) -> _Mapped:
    notes = ["its stored threshold is not read: dictionary_learning's default encode is per-token top-k"]
    return _Mapped("topk", _linear_weights(t), k=_stored_k(t, trainer, file), notes=notes)


def _batchtopk(t: dict[str, Tensor], trainer: dict[str, Any], file: Path) -> _Mapped:
    weights = {**_linear_weights(t), "threshold": _inference_threshold(t, file)}
    return _Mapped("batchtopk", weights, k=_stored_k(t, trainer, file),
                   notes=["inference uses the stored threshold, as dictionary_learning's encode does"])


def _matryoshka(t: dict[str, Tensor], trainer: dict[str, Any], file: Path) -> _Mapped:
    groups = [int(size) for size in t["group_sizes"].tolist()]
    if "group_sizes" in trainer and list(trainer["group_sizes"]) != groups:
        raise SaekitError(f"{file}: group_sizes {groups} in the state dict but {trainer['group_sizes']!r} in "
                          "config.json")
    weights = {name: t[name] for name in ("W_enc", "b_enc", "W_dec", "b_dec")}
    weights["threshold"] = _inference_threshold(t, file)
    return _Mapped("matryoshka_batchtopk", weights, k=_stored_k(t, trainer, file), extra={"group_sizes": groups},
                   notes=["inference uses the stored threshold with every group active, as dictionary_learning's "
                          "encode does"])


def _jumprelu(t: dict[str, Tensor], trainer: dict[str, Any], file: Path) -> _Mapped:
    threshold = t["threshold"]
    if not bool((threshold > 0).all()):
        raise SaekitError(f"{file}: JumpReLU thresholds must be positive (saekit stores log thresholds); "
                          f"the smallest is {float(threshold.min()):g}")
    W_enc, b_dec = t["W_enc"], t["b_dec"]
    weights = {"W_enc": W_enc, "b_enc": t["b_enc"] + b_dec @ W_enc, "W_dec": t["W_dec"], "b_dec": b_dec,
               "log_threshold": threshold.log()}
    bandwidth = trainer.get("bandwidth")
    if isinstance(bandwidth, (int, float)) and not isinstance(bandwidth, bool) and bandwidth > 0:
        weights["bandwidth"] = torch.tensor(float(bandwidth))
    return _Mapped("jumprelu", weights, notes=["the input is not centred by b_dec in dictionary_learning's "
                                               "JumpReLU: b_dec @ W_enc folded into b_enc"])


def _gated(t: dict[str, Tensor], file: Path) -> _Mapped:
    weights = {"W_enc": t["encoder.weight"].T, "b_enc": t["gate_bias"], "W_dec": t["decoder.weight"].T,
               "b_dec": t["decoder_bias"], "r_mag": t["r_mag"], "b_mag": t["mag_bias"]}
    return _Mapped("gated", weights, notes=["gate_bias read as b_enc, mag_bias as b_mag"])


def _expected_shapes(dict_class: str, d: int, f: int, tensors: dict[str, Tensor],
                     trainer: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    linear = {"encoder.weight": (f, d), "decoder.weight": (d, f)}
    if dict_class == "AutoEncoder":
        return {**linear, "encoder.bias": (f,), "bias": (d,)}
    if dict_class in ("AutoEncoderTopK", "BatchTopKSAE"):
        return {**linear, "encoder.bias": (f,), "b_dec": (d,), "k": (), "threshold": ()}
    if dict_class == "GatedAutoEncoder":
        return {**linear, "decoder_bias": (d,), "r_mag": (f,), "gate_bias": (f,), "mag_bias": (f,)}
    plain = {"W_enc": (d, f), "b_enc": (f,), "W_dec": (f, d), "b_dec": (d,)}
    if dict_class == "JumpReluAutoEncoder":
        return {**plain, "threshold": (f,)}
    # MatryoshkaBatchTopKSAE: one entry per group, as many as config.json lists (else as the state dict holds).
    stated_groups, groups = trainer.get("group_sizes"), tensors.get("group_sizes")
    count = len(stated_groups) if isinstance(stated_groups, list) else groups.numel() if groups is not None else 0
    return {**plain, "k": (), "threshold": (), "group_sizes": (count,)}


def _map(dict_class: str, tensors: dict[str, Tensor], trainer: dict[str, Any], file: Path) -> _Mapped:
    if dict_class == "AutoEncoder":
        return _relu(tensors, file)
    if dict_class == "AutoEncoderTopK":
        return _topk(tensors, trainer, file)
    if dict_class == "BatchTopKSAE":
        return _batchtopk(tensors, trainer, file)
    if dict_class == "MatryoshkaBatchTopKSAE":
        return _matryoshka(tensors, trainer, file)
    if dict_class == "JumpReluAutoEncoder":
        return _jumprelu(tensors, trainer, file)
    return _gated(tensors, file)


READABLE = ("AutoEncoder", "AutoEncoderTopK", "BatchTopKSAE", "MatryoshkaBatchTopKSAE", "JumpReluAutoEncoder",
            "GatedAutoEncoder")


def _dict_class(trainer: dict[str, Any], file: Path) -> str:
    name = trainer.get("dict_class") or TRAINER_CLASSES.get(trainer.get("trainer_class"))
    if name not in READABLE:
        shown = trainer.get("dict_class", trainer.get("trainer_class"))
        raise SaekitError(f"{file}: dictionary_learning class {shown!r} is not supported; saekit reads "
                          f"{', '.join(READABLE)}")
    return name


def site_from_config(trainer: dict[str, Any]) -> str | None:
    """The saekit site a trainer config names unambiguously (``<kind>_layer_<N>`` agreeing with ``layer``)."""
    name = trainer.get("submodule_name")
    match = _SUBMODULE.fullmatch(name) if isinstance(name, str) else None
    if match is None:
        return None
    layer = trainer.get("layer")
    if layer is not None and layer != int(match.group(2)):
        return None
    return f"blocks.{match.group(2)}.{match.group(1)}"


def read_dictionary_learning(directory: str | Path, site: str | None = None) -> tuple[Dictionary, dict[str, Any]]:
    """A dictionary_learning trainer folder (or a checkpoint ``.pt``) -> (saekit Dictionary in eval mode, source).

    ``site`` names the saekit site when config.json does not (see the module docstring); it overrides it.
    """
    if site is not None and _SITE.fullmatch(site) is None:
        raise SaekitError(f"site {site!r} is not a saekit site (blocks.<layer>.<{'|'.join(SITE_KINDS)}>)")
    path = Path(directory)
    config_file, weights_file = _files(path)
    trainer = _trainer_config(config_file)
    dict_class = _dict_class(trainer, config_file)
    d, f = _positive_int(trainer, "activation_dim", config_file), _positive_int(trainer, "dict_size", config_file)
    tensors = load_state_dict(weights_file)
    check_tensors(weights_file, tensors, _expected_shapes(dict_class, d, f, tensors, trainer),
                  stated(config_file.name, activation_dim=d, dict_size=f), counts=COUNTS)
    # Every fold and normalisation in float64 (a bf16 state dict included); copied into float32 at the end.
    tensors = {name: value.double() if value.is_floating_point() else value for name, value in tensors.items()}
    mapped = _map(dict_class, tensors, trainer, weights_file)
    dictionary = build_dictionary(DictionaryConfig(architecture=mapped.architecture, d_in=d, width=f, k=mapped.k,
                                                   extra=mapped.extra))
    load_weights(dictionary, mapped.weights)
    if mapped.architecture == "jumprelu":
        dictionary.calibrated.fill_(1.0)
    named = site_from_config(trainer)
    notes = list(mapped.notes)
    if site is None and named is None:
        notes.append(f"submodule_name {trainer.get('submodule_name')!r} (layer {trainer.get('layer')!r}) names no "
                     "saekit site; pass the site")
    norm_factor = trainer.get("norm_factor")
    if norm_factor is not None:
        notes.append(f"norm_factor {norm_factor!r} not applied: trainSAE folds it into the saved biases")
    source = {"model": trainer.get("lm_name"), "site": site or named, "target_site": None, "format": FORMAT,
              "dict_class": dict_class, "trainer_class": trainer.get("trainer_class"), "layer": trainer.get("layer"),
              "submodule_name": trainer.get("submodule_name"), "weights_file": weights_file.name, "notes": notes}
    return dictionary, source
