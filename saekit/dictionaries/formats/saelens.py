"""SAELens format: ``cfg.json`` + ``sae_weights.safetensors`` (W_enc [d_in, d_sae], b_enc, W_dec
[d_sae, d_in], b_dec, and ``threshold`` for JumpReLU).

Conventions and how the reader reproduces them exactly in saekit's architectures:

- ``apply_b_dec_to_input`` false: saekit always subtracts b_dec from an SAE's input, so the reader
  folds it into the encoder bias (b_enc + b_dec @ W_enc); latents and reconstruction are unchanged.
- ``rescale_acts_by_decoder_norm``: pre-activations multiplied by the decoder row norms n before the
  activation, latents divided by n when decoding; folded as W_enc * n, b_enc * n, W_dec / n.
- decoders need not be unit-norm: the weights are copied as they are, never renormalised.
- JumpReLU: saekit stores log(threshold), so thresholds must be positive (a zero or negative
  threshold is refused); a BatchTopK SAE saved as jumprelu reads as jumprelu.
- ``normalize_activations`` other than "none" is refused (the scaling is not in the files).
- gated and transcoders: refused (not yet verified against SAELens's math).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from saekit.dictionaries.base import Dictionary, DictionaryConfig
from saekit.dictionaries.formats.common import (
    check_shapes,
    load_weights,
    positive_int,
    read_files,
    saelens_hook_to_site,
    site_to_saelens_hook,
)
from saekit.dictionaries.registry import build_dictionary
from saekit.errors import SaekitError
from saekit.io import replace_directory, save_tensors, write_json

CONFIG_FILE = "cfg.json"
WEIGHTS_FILE = "sae_weights.safetensors"
ARCHITECTURES = {"standard": "relu", "topk": "topk", "jumprelu": "jumprelu"}
WRITABLE = {"relu": "standard", "topk": "topk", "jumprelu": "jumprelu", "batchtopk": "jumprelu"}


def _k(config: dict[str, Any], path: Path) -> int:
    if "k" in config:
        return positive_int(config, "k", path)
    kwargs = config.get("activation_fn_kwargs")
    if isinstance(kwargs, dict) and "k" in kwargs:
        return positive_int(kwargs, "k", path)
    raise SaekitError(f"{path}: a topk SAE needs 'k' in cfg.json")


def read_saelens(directory: str | Path) -> tuple[Dictionary, dict[str, Any]]:
    """A SAELens SAE directory -> (saekit Dictionary in eval mode, source dict)."""
    path = Path(directory)
    config, tensors = read_files(path, CONFIG_FILE, WEIGHTS_FILE, "SAELens")
    architecture = config.get("architecture", "standard")
    if architecture == "gated":
        raise SaekitError(f"{path}: SAELens gated SAEs are not read yet (saekit's gated math has not been "
                          "checked against SAELens's); nothing was converted")
    if architecture not in ARCHITECTURES:
        raise SaekitError(f"{path}: SAELens architecture {architecture!r} is not supported; saekit reads "
                          f"{', '.join(sorted(ARCHITECTURES))}")
    if config.get("normalize_activations", "none") not in ("none", None):
        raise SaekitError(f"{path}: normalize_activations={config['normalize_activations']!r} is not supported; "
                          "only 'none'")
    if config.get("reshape_activations", "none") not in ("none", None):
        raise SaekitError(f"{path}: reshape_activations={config['reshape_activations']!r} is not supported")
    d_in, width = positive_int(config, "d_in", path), positive_int(config, "d_sae", path)
    metadata = config.get("metadata") if isinstance(config.get("metadata"), dict) else {}
    hook_name = config.get("hook_name", metadata.get("hook_name"))
    model_name = config.get("model_name", metadata.get("model_name"))
    site = saelens_hook_to_site(hook_name, path)
    expected = {"W_enc": (d_in, width), "b_enc": (width,), "W_dec": (width, d_in), "b_dec": (d_in,)}
    if architecture == "jumprelu":
        expected["threshold"] = (width,)
    check_shapes(path / WEIGHTS_FILE, tensors, expected)
    kind = ARCHITECTURES[architecture]
    k = _k(config, path) if kind == "topk" else 32
    if kind == "topk" and k > width:
        raise SaekitError(f"{path}: k={k} exceeds d_sae={width}")
    W_enc, b_enc = tensors["W_enc"].double(), tensors["b_enc"].double()
    W_dec, b_dec = tensors["W_dec"].double(), tensors["b_dec"].double()
    notes = []
    if not config.get("apply_b_dec_to_input", True):
        b_enc = b_enc + b_dec @ W_enc
        notes.append("apply_b_dec_to_input=false folded into b_enc")
    if config.get("rescale_acts_by_decoder_norm", False):
        norms = W_dec.norm(dim=1)
        W_enc, b_enc, W_dec = W_enc * norms, b_enc * norms, W_dec / norms[:, None]
        notes.append("rescale_acts_by_decoder_norm folded into W_enc, b_enc, W_dec")
    weights = {"W_enc": W_enc, "b_enc": b_enc, "W_dec": W_dec, "b_dec": b_dec}
    if kind == "jumprelu":
        threshold = tensors["threshold"].double()
        if not bool((threshold > 0).all()):
            raise SaekitError(f"{path}: JumpReLU thresholds must be positive (saekit stores log thresholds)")
        weights["log_threshold"] = threshold.log()
    dictionary = build_dictionary(DictionaryConfig(architecture=kind, d_in=d_in, width=width, k=k))
    load_weights(dictionary, weights)
    if kind == "jumprelu":
        dictionary.calibrated.fill_(1.0)
    source = {"model": model_name, "site": site, "target_site": None,
              "format": "saelens", "hook_name": hook_name, "notes": notes}
    return dictionary, source


def write_saelens(directory: str | Path, dictionary: Dictionary, source: dict[str, Any] | None = None) -> Path:
    """Write a saekit SAE (relu, topk, jumprelu; batchtopk as jumprelu) as a SAELens directory."""
    source = source or {}
    config = dictionary.config
    name = config.architecture
    if name not in WRITABLE:
        raise SaekitError(f"architecture {name!r} has no SAELens form; saekit writes {', '.join(sorted(WRITABLE))}")
    if config.is_transcoder or dictionary.W_skip is not None:
        raise SaekitError("transcoders are not written in SAELens format yet")
    hook = site_to_saelens_hook(source.get("site"))
    tensors = {n: getattr(dictionary, n).detach().float().cpu() for n in ("W_enc", "b_enc", "W_dec", "b_dec")}
    architecture = WRITABLE[name]
    if name == "jumprelu":
        tensors["threshold"] = dictionary.threshold.detach().float().cpu()
    elif name == "batchtopk":
        threshold = float(dictionary.threshold) if hasattr(dictionary, "threshold") else None
        if threshold is None or not math.isfinite(threshold) or threshold <= 0:
            raise SaekitError("this batchtopk dictionary has no positive inference threshold to save as jumprelu")
        tensors["threshold"] = torch.full((config.width,), threshold)
    cfg = {"architecture": architecture, "d_in": config.d_in, "d_sae": config.width, "dtype": "float32",
           "device": "cpu", "model_name": source.get("model"), "hook_name": hook, "hook_layer":
           int(hook.split(".")[1]), "hook_head_index": None, "apply_b_dec_to_input": True,
           "normalize_activations": "none", "rescale_acts_by_decoder_norm": False,
           "context_size": source.get("context_size", 128), "prepend_bos": True,
           "dataset_path": source.get("dataset", ""), "model_from_pretrained_kwargs": {}}
    if architecture == "topk":
        cfg["k"] = config.k
        cfg["activation_fn_kwargs"] = {"k": config.k}

    def build(tmp: Path) -> None:
        save_tensors(tmp / WEIGHTS_FILE, tensors)
        write_json(tmp / CONFIG_FILE, cfg)

    return replace_directory(directory, build)
