"""SAELens format: ``cfg.json`` + ``sae_weights.safetensors``, read into saekit's architectures and written from them.

Architectures (SAELens's name -> saekit's):

- ``standard`` -> relu, ``topk`` -> topk, ``jumprelu`` -> jumprelu (``threshold``; an older ``log_threshold``
  is exponentiated as SAELens does), ``gated`` -> gated;
- ``transcoder`` / ``skip_transcoder`` -> relu with ``d_out`` (plus ``W_skip``), ``jumprelu_transcoder`` /
  ``jumprelu_skip_transcoder`` -> jumprelu with ``d_out`` (plus ``W_skip``). A transcoder's input site is
  its ``hook_name``, its target site its ``hook_name_out`` (top level or in ``metadata``; without one
  SAELens splices at the input hook, and so the target is the input site).

Hooks (``formats/common.py``): ``hook_mlp_in``, ``ln2.hook_normalized`` and ``mlp.hook_in`` all read as saekit's
mlp_in, the MLP's input after its norm, which is what SAELens's transcoder releases mean by them (Gemma Scope
2 records ``hf_hook_name`` pre_feedforward_layernorm.output beside ``hook_mlp_in``), although TransformerLens's
own ``hook_mlp_in`` is the residual stream before that norm; the writer writes ``hook_mlp_in``.

Weights: W_enc [d_in, d_sae], W_dec [d_sae, d_out], b_dec [d_out] as saekit's; SAELens's W_skip is
[d_out, d_in] (applied as x @ W_skip.T), the transpose of saekit's. Gated: SAELens has no b_enc but b_gate
(saekit's b_enc), r_mag and b_mag; its magnitude path sae_in @ (W_enc * exp(r_mag)) + b_mag is saekit's
(pi_gate - b_enc) * exp(r_mag) + b_mag exactly, and both gate on pi_gate > 0 and take ReLU of the magnitude.

Conventions folded so latents and reconstructions are unchanged (computed in float64):

- ``apply_b_dec_to_input`` false (SAEs): saekit always encodes x - b_dec, so b_dec @ W_enc is added to
  b_enc (for gated, to b_gate, and (b_dec @ W_enc) * exp(r_mag) to b_mag). Transcoders never subtract
  b_dec in either library.
- ``rescale_acts_by_decoder_norm`` (TopK, the only SAELens config with it): pre-activations times the decoder
  row norms n, latents divided by n before decoding; folded as W_enc * n, b_enc * n, W_dec / n.
- ``normalize_activations``: SAELens's SAE classes apply none of the stored ones at inference; the trainer
  scales inputs outside the SAE and folds the scaling in when training ends, so a saved SAE says "none"
  unless it is a checkpoint. A checkpoint keeps the statistics beside cfg.json, and saekit folds them:
  ``expected_average_only_in`` (x * s, reconstruction / s; s from ``activation_scaler.json``
  ``scaling_factor``, or the ``norm_scaling_factor`` argument, which is where SAELens's pretrained_saes.yaml
  keeps it for hub releases) and ``covariance_whitening`` ((x - mean) @ M, reconstruction @ M^-1 + mean;
  ``activation_whitening.safetensors``): W_enc <- M W_enc, W_dec <- W_dec M^-1, b_dec <- b_dec M^-1 + mean,
  after the folds above (so TopK's decoder-norm rescaling is taken in the space it was trained in).
  ``constant_norm_rescale`` and ``layer_norm`` divide each token by its own norm or spread: not linear,
  no saekit dictionary computes them, refused. Transcoders with any normalisation are refused (SAELens
  defines no output scaling for them).
- decoders need not be unit-norm: the weights are copied as they are, never renormalised.
- JumpReLU: SAELens computes relu(pre) * (pre > threshold), saekit pre * (pre > exp(log_threshold)); equal
  for positive thresholds, so a zero or negative threshold is refused.
- a ``scaling_factor`` tensor of ones is dropped (SAELens drops it too); any other is refused.

Refused: other architectures (abstopk, matching_pursuit, temporal, training-only batchtopk), ``hook_z``
reshaping, hooks with no saekit site. Written (flat pre-6.0 keys, which SAELens's loader upgrades): relu ->
standard, topk, jumprelu, batchtopk and matryoshka_batchtopk (their inference threshold) -> jumprelu, gated,
gated_rescale -> standard (exp(r_scale) folded into W_enc and b_enc: relu(pre) * s = relu(pre * s)); the
relu/jumprelu/batchtopk/gated_rescale transcoders (with or without skip) -> the four transcoder
architectures. SAELens has no TopK or gated transcoder and no SAE with a skip path: refused.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from saekit.dictionaries.base import Dictionary, DictionaryConfig
from saekit.dictionaries.formats.common import (
    load_weights,
    positive_int,
    read_files,
    saelens_hook_to_site,
    site_to_saelens_hook,
)
from saekit.dictionaries.registry import build_dictionary
from saekit.dictionaries.validate import check_tensors, stated
from saekit.errors import SaekitError
from saekit.io import load_tensors, read_json, replace_directory, save_tensors, write_json

CONFIG_FILE = "cfg.json"
WEIGHTS_FILE = "sae_weights.safetensors"
SCALER_FILE = "activation_scaler.json"  # a SAELens checkpoint's input statistics
WHITENING_FILE = "activation_whitening.safetensors"
PER_TOKEN_NORMALISATIONS = ("constant_norm_rescale", "layer_norm")


@dataclass(frozen=True)
class Layout:
    """How one SAELens architecture sits in saekit: the activation, and whether it is a (skip) transcoder."""

    kind: str
    transcoder: bool = False
    skip: bool = False


ARCHITECTURES = {
    "standard": Layout("relu"), "topk": Layout("topk"), "jumprelu": Layout("jumprelu"), "gated": Layout("gated"),
    "transcoder": Layout("relu", True), "skip_transcoder": Layout("relu", True, True),
    "jumprelu_transcoder": Layout("jumprelu", True), "jumprelu_skip_transcoder": Layout("jumprelu", True, True),
}
THRESHOLD_KINDS = ("jumprelu", "batchtopk", "matryoshka_batchtopk")  # saekit's, written as SAELens jumprelu
_SAE_NAMES = {"relu": "standard", "topk": "topk", "gated": "gated", "gated_rescale": "standard",
              **{kind: "jumprelu" for kind in THRESHOLD_KINDS}}
_TRANSCODER_NAMES = {"relu": "transcoder", "gated_rescale": "transcoder",
                     **{kind: "jumprelu_transcoder" for kind in THRESHOLD_KINDS}}
WRITABLE = sorted(_SAE_NAMES)


def _k(config: dict[str, Any], path: Path) -> int:
    if "k" in config:
        return positive_int(config, "k", path)
    kwargs = config.get("activation_fn_kwargs")
    if isinstance(kwargs, dict) and "k" in kwargs:
        return positive_int(kwargs, "k", path)
    raise SaekitError(f"{path}: a topk SAE needs 'k' in cfg.json")


def _field(config: dict[str, Any], *names: str) -> Any:
    """A cfg.json value at the top level (pre-6.0 files) or in ``metadata`` (6.x), under any of ``names``."""
    metadata = config.get("metadata") if isinstance(config.get("metadata"), dict) else {}
    for name in names:
        if config.get(name) is not None:
            return config[name]
        if metadata.get(name) is not None:
            return metadata[name]
    return None


def _expected_shapes(layout: Layout, d_in: int, width: int, d_out: int,
                     tensors: dict[str, Tensor]) -> dict[str, tuple[int, ...]]:
    """The raw tensors' shapes (a JumpReLU's thresholds under whichever name the file uses)."""
    shapes: dict[str, tuple[int, ...]] = {"W_enc": (d_in, width), "W_dec": (width, d_out), "b_dec": (d_out,)}
    if layout.kind == "gated":
        shapes.update({"b_gate": (width,), "r_mag": (width,), "b_mag": (width,)})
    else:
        shapes["b_enc"] = (width,)
    if layout.kind == "jumprelu":
        shapes["log_threshold" if "log_threshold" in tensors and "threshold" not in tensors else "threshold"] = \
            (width,)
    if layout.skip:
        shapes["W_skip"] = (d_out, d_in)
    return shapes


def _standard_tensors(tensors: dict[str, Tensor], path: Path) -> dict[str, Tensor]:
    """SAELens's loader conventions on the raw tensors: log_threshold -> threshold, unit scaling_factor dropped."""
    tensors = dict(tensors)
    if "log_threshold" in tensors and "threshold" not in tensors:
        tensors["threshold"] = tensors.pop("log_threshold").double().exp()
    if "scaling_factor" in tensors:
        factor = tensors.pop("scaling_factor")
        if not torch.allclose(factor, torch.ones_like(factor)):
            raise SaekitError(f"{path / WEIGHTS_FILE}: a finetuning scaling_factor other than 1 is not supported")
    return tensors


def _scaling_factor(path: Path, given: float | None) -> float:
    value = given
    if value is None and (path / SCALER_FILE).is_file():
        scaler = read_json(path / SCALER_FILE, "SAELens activation scaler")
        value = scaler.get("scaling_factor") if isinstance(scaler, dict) else None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise SaekitError(f"{path}: normalize_activations='expected_average_only_in' needs its scaling factor (a "
                          f"positive 'scaling_factor' in {SCALER_FILE} beside cfg.json, or norm_scaling_factor=...); "
                          f"found {value!r}")
    return float(value)


def _whitening(path: Path, d_in: int) -> tuple[Tensor, Tensor, Tensor]:
    file = path / WHITENING_FILE
    if not file.is_file():
        raise SaekitError(f"{path}: normalize_activations='covariance_whitening' needs {WHITENING_FILE} (mean, "
                          "matrix, inverse_matrix) beside cfg.json, as a SAELens checkpoint keeps it")
    tensors = load_tensors(file, "SAELens activation whitening")
    check_tensors(file, tensors, {"mean": (d_in,), "matrix": (d_in, d_in), "inverse_matrix": (d_in, d_in)},
                  stated(CONFIG_FILE, d_in=d_in))
    return tensors["mean"].double(), tensors["matrix"].double(), tensors["inverse_matrix"].double()


def _input_map(config: dict[str, Any], path: Path, d_in: int, transcoder: bool,
               norm_scaling_factor: float | None) -> tuple[Tensor, Tensor, Tensor, str] | None:
    """The affine map (mean, M, M^-1) the SAE's inputs went through in training, or None; per-token ones refused."""
    mode = config.get("normalize_activations")
    if mode in ("none", None, False):
        return None
    if mode is True:  # pre-6.0 files: true meant expected_average_only_in
        mode = "expected_average_only_in"
    if mode in PER_TOKEN_NORMALISATIONS:
        raise SaekitError(f"{path}: normalize_activations={mode!r} rescales every token by its own statistics, "
                          "which is not linear and no saekit dictionary computes; not converted")
    if transcoder:
        raise SaekitError(f"{path}: normalize_activations={mode!r} on a transcoder is not supported (SAELens "
                          "defines no output scaling for transcoders)")
    if mode == "expected_average_only_in":
        scale = _scaling_factor(path, norm_scaling_factor)
        eye = torch.eye(d_in, dtype=torch.float64)
        return torch.zeros(d_in, dtype=torch.float64), eye * scale, eye / scale, f"scaling factor {scale:.6g}"
    if mode == "covariance_whitening":
        return (*_whitening(path, d_in), "covariance whitening")
    raise SaekitError(f"{path}: normalize_activations={mode!r} is not a SAELens mode saekit knows")


def _saekit_weights(layout: Layout, config: dict[str, Any], tensors: dict[str, Tensor],
                    notes: list[str]) -> dict[str, Tensor]:
    """SAELens's tensors (float64) -> saekit's parameters, folding b_dec-on-input and decoder-norm rescaling."""
    t = {name: value.double() for name, value in tensors.items()}
    weights = {"W_enc": t["W_enc"], "W_dec": t["W_dec"], "b_dec": t["b_dec"]}
    weights["b_enc"] = t["b_gate"] if layout.kind == "gated" else t["b_enc"]
    if layout.kind == "gated":
        weights.update(r_mag=t["r_mag"], b_mag=t["b_mag"])
        notes.append("b_gate read as b_enc")
    if not layout.transcoder and config.get("apply_b_dec_to_input", True) is False:
        shift = t["b_dec"] @ t["W_enc"]
        weights["b_enc"] = weights["b_enc"] + shift
        if layout.kind == "gated":
            weights["b_mag"] = weights["b_mag"] + shift * t["r_mag"].exp()
        notes.append("apply_b_dec_to_input=false folded into the encoder biases")
    if layout.kind == "topk" and config.get("rescale_acts_by_decoder_norm", False):
        norms = weights["W_dec"].norm(dim=1)
        weights.update(W_enc=weights["W_enc"] * norms, b_enc=weights["b_enc"] * norms,
                       W_dec=weights["W_dec"] / norms[:, None])
        notes.append("rescale_acts_by_decoder_norm folded into W_enc, b_enc, W_dec")
    if layout.kind == "jumprelu":
        if not bool((t["threshold"] > 0).all()):
            raise SaekitError("JumpReLU thresholds must be positive (saekit stores log thresholds)")
        weights["log_threshold"] = t["threshold"].log()
    if layout.skip:
        weights["W_skip"] = t["W_skip"].T
        notes.append("W_skip transposed")
    return weights


def _fold_input_map(weights: dict[str, Tensor], mean: Tensor, matrix: Tensor, inverse: Tensor) -> None:
    """Make a saekit SAE trained on (x - mean) @ M (its output mapped back by M^-1, + mean) take x itself."""
    weights["W_enc"] = matrix @ weights["W_enc"]
    weights["W_dec"] = weights["W_dec"] @ inverse
    weights["b_dec"] = weights["b_dec"] @ inverse + mean


def read_saelens(directory: str | Path, norm_scaling_factor: float | None = None) -> tuple[Dictionary,
                                                                                            dict[str, Any]]:
    """A SAELens SAE or transcoder directory -> (saekit Dictionary in eval mode, source dict).

    ``norm_scaling_factor``: the ``expected_average_only_in`` factor of a hub release (SAELens keeps it in its
    pretrained_saes.yaml, not in the files); a checkpoint's own ``activation_scaler.json`` is read otherwise.
    """
    path = Path(directory)
    config, tensors = read_files(path, CONFIG_FILE, WEIGHTS_FILE, "SAELens")
    architecture = config.get("architecture", "standard")
    if architecture not in ARCHITECTURES:
        raise SaekitError(f"{path}: SAELens architecture {architecture!r} is not supported; saekit reads "
                          f"{', '.join(sorted(ARCHITECTURES))}")
    layout = ARCHITECTURES[architecture]
    if config.get("reshape_activations", "none") not in ("none", None):
        raise SaekitError(f"{path}: reshape_activations={config['reshape_activations']!r} is not supported")
    d_in, width = positive_int(config, "d_in", path), positive_int(config, "d_sae", path)
    d_out = positive_int(config, "d_out", path) if layout.transcoder else d_in
    check_tensors(path / WEIGHTS_FILE, tensors, _expected_shapes(layout, d_in, width, d_out, tensors),
                  stated(CONFIG_FILE, d_in=d_in, d_sae=width, d_out=d_out if layout.transcoder else None),
                  optional={"scaling_factor": (width,)})
    input_map = _input_map(config, path, d_in, layout.transcoder, norm_scaling_factor)
    hook_name = _field(config, "hook_name", "hook_point")
    site = saelens_hook_to_site(hook_name, path)
    hook_out = _field(config, "hook_name_out") if layout.transcoder else None
    target = (saelens_hook_to_site(hook_out, path) if hook_out is not None else site) if layout.transcoder else None
    tensors = _standard_tensors(tensors, path)
    k = _k(config, path) if layout.kind == "topk" else 32
    if layout.kind == "topk" and k > width:
        raise SaekitError(f"{path}: k={k} exceeds d_sae={width}")
    notes: list[str] = []
    try:
        weights = _saekit_weights(layout, config, tensors, notes)
    except SaekitError as err:
        raise SaekitError(f"{path}: {err}") from None
    if input_map is not None:
        _fold_input_map(weights, *input_map[:3])
        notes.append(f"normalize_activations={config['normalize_activations']!r} ({input_map[3]}) folded into "
                     "W_enc, W_dec, b_dec")
    dconfig = DictionaryConfig(architecture=layout.kind, d_in=d_in, width=width, k=k,
                               d_out=d_out if layout.transcoder else None, extra={"skip_connection": layout.skip})
    dictionary = load_weights(build_dictionary(dconfig), weights)
    if layout.kind == "jumprelu":
        dictionary.calibrated.fill_(1.0)
    source = {"model": _field(config, "model_name"), "site": site, "target_site": target, "format": "saelens",
              "hook_name": hook_name, "notes": notes}
    if layout.transcoder:
        source["hook_name_out"] = hook_out
    return dictionary, source


def _threshold(dictionary: Dictionary) -> Tensor:
    """The per-latent inference threshold of a saekit jumprelu or (matryoshka) batchtopk dictionary."""
    width = dictionary.config.width
    if dictionary.config.architecture == "jumprelu":
        return dictionary.threshold.detach().reshape(width)
    threshold = float(dictionary.threshold)
    if not math.isfinite(threshold) or threshold <= 0:
        raise SaekitError(f"this {dictionary.config.architecture} dictionary has no positive inference threshold "
                          "to save as SAELens jumprelu (train it, or evaluate it once in training mode)")
    return torch.full((width,), threshold)


def _saelens_tensors(dictionary: Dictionary, name: str) -> dict[str, Tensor]:
    """saekit's parameters -> SAELens's tensors (float32, CPU, contiguous)."""
    get = {n: getattr(dictionary, n).detach().double().cpu() for n in ("W_enc", "b_enc", "W_dec", "b_dec")}
    tensors = {"W_enc": get["W_enc"], "W_dec": get["W_dec"], "b_dec": get["b_dec"]}
    if name == "gated":
        tensors.update(b_gate=get["b_enc"], r_mag=dictionary.r_mag.detach().double().cpu(),
                       b_mag=dictionary.b_mag.detach().double().cpu())
    elif name == "gated_rescale":
        scale = dictionary.r_scale.detach().double().cpu().exp()
        tensors.update(W_enc=get["W_enc"] * scale, b_enc=get["b_enc"] * scale)
    else:
        tensors["b_enc"] = get["b_enc"]
    if name in THRESHOLD_KINDS:
        tensors["threshold"] = _threshold(dictionary).double().cpu()
    if dictionary.W_skip is not None:
        tensors["W_skip"] = dictionary.W_skip.detach().double().cpu().T
    return {n: value.float().contiguous() for n, value in tensors.items()}


def _saelens_architecture(dictionary: Dictionary) -> str:
    config = dictionary.config
    name = config.architecture
    if config.is_transcoder:
        if name not in _TRANSCODER_NAMES:
            raise SaekitError(f"SAELens has no {name} transcoder; saekit writes transcoders of "
                              f"{', '.join(sorted(_TRANSCODER_NAMES))}")
        base = _TRANSCODER_NAMES[name]
        return base.replace("transcoder", "skip_transcoder") if dictionary.W_skip is not None else base
    if dictionary.W_skip is not None:
        raise SaekitError("SAELens SAEs have no skip connection; only a transcoder (d_out set) is written with one")
    if name not in _SAE_NAMES:
        raise SaekitError(f"architecture {name!r} has no SAELens form; saekit writes {', '.join(WRITABLE)}")
    return _SAE_NAMES[name]


def write_saelens(directory: str | Path, dictionary: Dictionary, source: dict[str, Any] | None = None) -> Path:
    """Write a saekit SAE or transcoder as a SAELens directory (see the module docstring for what maps to what)."""
    source = source or {}
    config = dictionary.config
    architecture = _saelens_architecture(dictionary)
    hook = site_to_saelens_hook(source.get("site"))
    cfg: dict[str, Any] = {
        "architecture": architecture, "d_in": config.d_in, "d_sae": config.width, "dtype": "float32",
        "device": "cpu", "model_name": source.get("model"), "hook_name": hook, "hook_layer": int(hook.split(".")[1]),
        "hook_head_index": None, "apply_b_dec_to_input": not config.is_transcoder, "normalize_activations": "none",
        "reshape_activations": "none", "context_size": source.get("context_size", 128), "prepend_bos": True,
        "dataset_path": source.get("dataset", ""), "model_from_pretrained_kwargs": {}}
    if config.is_transcoder:
        if not source.get("target_site"):
            raise SaekitError("a transcoder needs its target site (source['target_site']) for SAELens's hook_name_out")
        cfg.update(d_out=config.output_dim, hook_name_out=site_to_saelens_hook(source["target_site"]))
    if architecture == "topk":
        cfg.update(k=config.k, activation_fn_kwargs={"k": config.k}, rescale_acts_by_decoder_norm=False)
    tensors = _saelens_tensors(dictionary, config.architecture)

    def build(tmp: Path) -> None:
        save_tensors(tmp / WEIGHTS_FILE, tensors)
        write_json(tmp / CONFIG_FILE, cfg)

    return replace_directory(directory, build)
