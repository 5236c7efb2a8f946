"""Gemma Scope (Google DeepMind's JumpReLU SAEs and transcoders), read without unpickling: Gemma Scope 1's
``params.npz`` and Gemma Scope 2's ``params.safetensors`` + ``config.json``.

The math of both (as SAELens's loaders ``gemma_2`` / ``gemma_2_transcoder`` / ``gemma_3`` read it):
pre = x @ W_enc + b_enc, z = relu(pre) * (pre > threshold), x_hat = z @ W_dec + b_dec (+ x @ W_skip for a
Gemma Scope 2 affine transcoder). Nothing is subtracted from the input, so for an SAE saekit (which
encodes x - b_dec) folds b_dec @ W_enc into its encoder bias; a saekit transcoder subtracts nothing
either. saekit's JumpReLU is pre * (pre > threshold) with the threshold stored as its log: equal for the
positive thresholds Gemma Scope has (a non-positive one is refused). Decoder rows are not unit norm and
are kept as they are.

Gemma Scope 1: ``W_enc`` [d, m], ``b_enc`` [m], ``W_dec`` [m, d], ``b_dec`` [d], ``threshold`` [m]
(lower-case ``w_`` names accepted, as SAELens renames them; a ``scaling_factor`` of ones dropped, any
other refused). The file records neither model nor site: both come from the repository path
(``gemma-scope-2b-pt-res/layer_20/width_16k/average_l0_71/params.npz``): ``res`` -> resid_post,
``mlp`` -> mlp_out, ``transcoders`` -> mlp_in to mlp_out (SAELens: ``ln2.hook_normalized`` ->
``hook_mlp_out``). ``att`` SAEs read the heads' outputs before the output projection (hook_z) and
``embedding`` SAEs the token embeddings (SAELens also rescales those by sqrt(d)): no saekit site, refused.

Gemma Scope 2 (``google/gemma-scope-2-270m-pt`` etc.): one folder per dictionary,
``<kind>[_all]/layer_<L>_width_<W>_l0_<size>[_affine]/`` with ``params.safetensors`` (``w_enc`` [d, m],
``w_dec`` [m, d_out], ``b_enc``, ``b_dec``, ``threshold``, and ``affine_skip_connection`` [d, d_out] for an
affine transcoder, saekit's W_skip as it is) and ``config.json`` (``architecture`` "jump_relu",
``model_name`` such as gemma-v3-270m-pt, ``affine_connection``, ``hf_hook_point_in``/``_out``). As SAELens
does, the layer and kind come from the folder names: ``resid_post`` -> resid_post, ``mlp_out`` -> mlp_out,
``transcoder`` -> mlp_in to mlp_out; ``attn_out`` (hook_z) is refused, and so is ``clt``, whose layers
SAELens turns into single-layer transcoders by summing each latent's decoders over all output layers,
which is not the CLT's function. The model name is normalised as SAELens does (google/ prefix, -v3 -> -3,
no -pt for 270m); without config.json it comes from the repository name in the path.

Sites: Gemma's MLP output is taken after its post-feedforward norm (``post_feedforward_layernorm.output``,
the MLP's update to the residual stream, TransformerLens's hook_mlp_out), which is what saekit's mlp_out
means; the transcoders read ``pre_feedforward_layernorm.output``, the MLP's input, saekit's mlp_in. Where
saekit differs: its hook for the Gemma 2 layout reads the MLP module's own output, before that norm, and
saekit has no Gemma 3 layout yet, so these dictionaries are read for conversion, not yet run on Gemma.
"""

from __future__ import annotations

import re
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from saekit.dictionaries.base import Dictionary, DictionaryConfig
from saekit.dictionaries.formats.common import PICKLE_SUFFIXES, load_weights
from saekit.dictionaries.registry import build_dictionary
from saekit.dictionaries.validate import check_tensors, stated
from saekit.errors import SaekitError
from saekit.io import load_tensors, read_json

PARAMS_FILE = "params.npz"
PARAMS_SAFETENSORS = "params.safetensors"  # Gemma Scope 2
CONFIG_FILE = "config.json"  # Gemma Scope 2
_KINDS = {"res": "resid_post", "mlp": "mlp_out"}
_MODELS = {"2b": "google/gemma-2-2b", "9b": "google/gemma-2-9b", "27b": "google/gemma-2-27b"}
_SCOPE2_KINDS = {"resid_post": "resid_post", "mlp_out": "mlp_out", "transcoder": "mlp_in"}
_SCOPE2_NAMES = {"W_enc": "w_enc", "W_dec": "w_dec", "b_enc": "b_enc", "b_dec": "b_dec", "threshold": "threshold",
                 "W_skip": "affine_skip_connection"}


def site_from_path(path: Path) -> tuple[str | None, str | None]:
    """(model, saekit site) from a Gemma Scope 1 repository path, or (None, None) where it names neither.

    A transcoder's site is its input (mlp_in); its target is the same layer's mlp_out."""
    text = path.as_posix()
    layer = re.search(r"layer_(\d+)", text)
    kind = re.search(r"gemma-scope-(\d+b)-(pt|it)-(res|mlp|att|transcoders)", text)
    if kind and kind.group(3) == "att":
        raise SaekitError(f"{path}: Gemma Scope attention SAEs read the heads' outputs before the output "
                          "projection (hook_z), which has no saekit site")
    if kind and kind.group(3) == "res" and "embedding" in path.parts:
        raise SaekitError(f"{path}: Gemma Scope embedding SAEs read the token embeddings (hook_embed), which "
                          "have no saekit site")
    model = None if kind is None else _MODELS.get(kind.group(1), f"google/gemma-2-{kind.group(1)}") + \
        ("-it" if kind.group(2) == "it" else "")
    site_kind = None if kind is None else "mlp_in" if kind.group(3) == "transcoders" else _KINDS[kind.group(3)]
    site = None if layer is None or site_kind is None else f"blocks.{layer.group(1)}.{site_kind}"
    return model, site


def _load_npz(path: Path) -> dict[str, torch.Tensor]:
    try:
        with np.load(path, allow_pickle=False) as archive:
            return {name: torch.from_numpy(np.array(archive[name])) for name in archive.files}
    except ValueError as err:  # an object array needs pickling: refused
        raise SaekitError(f"{path} holds pickled objects; saekit never unpickles ({err})") from err
    except (zipfile.BadZipFile, OSError) as err:
        raise SaekitError(f"{path} is not a readable .npz archive: {err}") from err


def _drop_unit_scaling(file: Path, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    tensors = dict(tensors)
    factor = tensors.pop("scaling_factor", None)
    if factor is not None and not torch.allclose(factor.double(), torch.ones_like(factor, dtype=torch.float64)):
        raise SaekitError(f"{file}: a scaling_factor other than 1 (a finetuning scale) is not supported")
    return tensors


def _jumprelu(file: Path, weights: dict[str, torch.Tensor], transcoder: bool) -> Dictionary:
    """A saekit JumpReLU dictionary (transcoder when ``transcoder``; skip path when W_skip is given) computing
    Gemma Scope's uncentred math on the float64 ``weights``."""
    if not bool((weights["threshold"] > 0).all()):
        raise SaekitError(f"{file}: JumpReLU thresholds must be positive (saekit stores log thresholds)")
    d_in, width = weights["W_enc"].shape
    d_out = weights["W_dec"].shape[1]
    skip = "W_skip" in weights
    config = DictionaryConfig(architecture="jumprelu", d_in=d_in, width=width, d_out=d_out if transcoder else None,
                              extra={"skip_connection": skip})
    b_enc = weights["b_enc"] if transcoder else weights["b_enc"] + weights["b_dec"] @ weights["W_enc"]
    params = {"W_enc": weights["W_enc"], "W_dec": weights["W_dec"], "b_dec": weights["b_dec"], "b_enc": b_enc,
              "log_threshold": weights["threshold"].log()}
    if skip:
        params["W_skip"] = weights["W_skip"]
    dictionary = load_weights(build_dictionary(config), params)
    dictionary.calibrated.fill_(1.0)
    return dictionary


def _notes(transcoder: bool) -> list[str]:
    centring = [] if transcoder else ["the input is not centred by b_dec in Gemma Scope: b_dec @ W_enc folded "
                                      "into b_enc"]
    return [*centring, "decoder rows kept at their stored (non-unit) norms"]


def _scope1_name(name: str) -> str:
    """SAELens's spelling of a Gemma Scope 1 array name (``w_enc`` -> ``W_enc``)."""
    return "W_" + name[2:] if name.startswith("w_") else name


def _read_scope1(file: Path, site: str | None, model: str | None) -> tuple[Dictionary, dict[str, Any]]:
    path_model, path_site = site_from_path(file)
    site, model = site or path_site, model or path_model
    if site is None:
        raise SaekitError(f"{file}: the path names no Gemma Scope layer and kind (layer_N under "
                          "gemma-scope-*-res, -mlp or -transcoders); give the site")
    raw = _load_npz(file)
    named = {_scope1_name(name): name for name in raw}  # ours -> the file's
    if "W_enc" not in named or raw[named["W_enc"]].ndim != 2:
        raise SaekitError(f"{file} has no 2-D W_enc: not a Gemma Scope SAE (found {sorted(raw)})")
    d_in, width = raw[named["W_enc"]].shape
    transcoder = re.search(r"gemma-scope-\d+b-(pt|it)-transcoders", file.as_posix()) is not None
    d_out = raw[named["W_dec"]].shape[-1] if transcoder and "W_dec" in named else d_in
    shapes = {"W_enc": (d_in, width), "b_enc": (width,), "W_dec": (width, d_out), "b_dec": (d_out,),
              "threshold": (width,)}
    sizes_from = [named["W_enc"], *([named["W_dec"]] if transcoder and "W_dec" in named else [])]
    basis = stated(", ".join(sizes_from), d_in=d_in, width=width, d_out=d_out if transcoder else None)
    check_tensors(file, raw, {named.get(ours, ours): shape for ours, shape in shapes.items()}, basis,
                  optional={"scaling_factor": (width,)})
    tensors = {_scope1_name(name): value for name, value in _drop_unit_scaling(file, raw).items()}
    dictionary = _jumprelu(file, {name: value.double() for name, value in tensors.items()}, transcoder)
    target = re.sub(r"\.[a-z_]+$", ".mlp_out", site) if transcoder else None
    return dictionary, {"model": model, "site": site, "target_site": target, "format": "gemma-scope",
                        "notes": _notes(transcoder)}


def _scope2_model(config: dict[str, Any], file: Path) -> str | None:
    name = config.get("model_name")
    if not isinstance(name, str):
        repo = re.search(r"gemma-scope-2-([0-9.]+[mb](?:-(?:pt|it))?)", file.as_posix())
        name = None if repo is None else f"google/gemma-3-{repo.group(1)}"
    if name is None:
        return None
    name = name if "google" in name else "google/" + name
    name = name.replace("-v3", "-3")
    return name.replace("-pt", "") if "270m" in name else name


def scope2_sites(file: Path) -> tuple[str, str | None]:
    """(site, target site) of a Gemma Scope 2 dictionary from its folder names, as SAELens reads them."""
    folder = file.parent
    layer = re.search(r"layer_(\d+)", folder.name)
    kind = re.fullmatch(r"(resid_post|mlp_out|attn_out|transcoder|clt)(?:_all)?", folder.parent.name)
    if kind and kind.group(1) == "attn_out":
        raise SaekitError(f"{file}: Gemma Scope 2 attn_out SAEs read the heads' outputs before the output "
                          "projection (hook_z), which has no saekit site")
    if kind and kind.group(1) == "clt":
        raise SaekitError(f"{file}: Gemma Scope 2 cross-layer transcoders are not read (SAELens sums each latent's "
                          "decoders over the output layers, which is not the CLT's function)")
    if layer is None or kind is None:
        raise SaekitError(f"{file}: not in a Gemma Scope 2 folder <resid_post|mlp_out|transcoder>[_all]/layer_N_...; "
                          "keep the repository's folder names")
    site = f"blocks.{layer.group(1)}.{_SCOPE2_KINDS[kind.group(1)]}"
    return site, (f"blocks.{layer.group(1)}.mlp_out" if kind.group(1) == "transcoder" else None)


def _stated_width(config: dict[str, Any], config_file: Path, found: int) -> int:
    """The latent count config.json states (the weights are checked against it), or ``found`` where it states none."""
    width = config.get("width", found)
    if isinstance(width, bool) or not isinstance(width, int) or width < 1:
        raise SaekitError(f"{config_file}: width must be the dictionary's latent count, a positive integer; got "
                          f"{width!r}")
    return width


def _read_scope2(file: Path) -> tuple[Dictionary, dict[str, Any]]:
    config_file = file.parent / CONFIG_FILE
    config = read_json(config_file, "Gemma Scope 2 config") if config_file.is_file() else {}
    if not isinstance(config, dict):
        raise SaekitError(f"{config_file} is not a JSON object")
    if config.get("architecture", "jump_relu") != "jump_relu":
        raise SaekitError(f"{config_file}: architecture {config['architecture']!r} is not Gemma Scope 2's jump_relu")
    site, target = scope2_sites(file)
    transcoder = target is not None
    raw = load_tensors(file, "Gemma Scope 2 weights")
    if "w_enc" not in raw or raw["w_enc"].ndim != 2 or "w_dec" not in raw or raw["w_dec"].ndim != 2:
        raise SaekitError(f"{file} has no 2-D w_enc and w_dec: not a Gemma Scope 2 dictionary (found {sorted(raw)})")
    d_in, width = raw["w_enc"].shape[0], _stated_width(config, config_file, raw["w_enc"].shape[1])
    d_out = raw["w_dec"].shape[1] if transcoder else d_in
    skip = "affine_skip_connection" in raw
    declared = config.get("affine_connection", "affine" in file.parent.name) if transcoder else False
    if transcoder and bool(declared) != skip:
        raise SaekitError(f"{file}: affine_connection={bool(declared)} in {CONFIG_FILE} (or the folder name) but "
                          f"the weights {'hold' if skip else 'lack'} affine_skip_connection")
    expected = {"w_enc": (d_in, width), "w_dec": (width, d_out), "b_enc": (width,), "b_dec": (d_out,),
                "threshold": (width,)}
    if transcoder and skip:
        expected["affine_skip_connection"] = (d_in, d_out)
    sizes_from = [*([CONFIG_FILE] if "width" in config else []), "w_enc", *(["w_dec"] if transcoder else [])]
    check_tensors(file, raw, expected, stated(", ".join(sizes_from), width=width, d_in=d_in,
                                              d_out=d_out if transcoder else None),
                  optional={"scaling_factor": (width,)})
    raw = _drop_unit_scaling(file, raw)
    weights = {ours: raw[theirs].double() for ours, theirs in _SCOPE2_NAMES.items() if theirs in raw}
    dictionary = _jumprelu(file, weights, transcoder)
    notes = _notes(transcoder) + (["affine_skip_connection read as W_skip (same layout)"] if skip else [])
    return dictionary, {"model": _scope2_model(config, file), "site": site, "target_site": target,
                        "format": "gemma-scope", "release": "gemma-scope-2",
                        "hf_hook_point_in": config.get("hf_hook_point_in"),
                        "hf_hook_point_out": config.get("hf_hook_point_out"), "notes": notes}


def _params_file(path: Path) -> Path:
    if not path.is_dir():
        if path.is_file():
            return path
        raise SaekitError(f"Gemma Scope file not found: {path}")
    for name in (PARAMS_FILE, PARAMS_SAFETENSORS):
        if (path / name).is_file():
            return path / name
    pickles = sorted(p.name for p in path.iterdir() if p.suffix in PICKLE_SUFFIXES)
    hint = f" (it holds {', '.join(pickles)}; saekit never unpickles)" if pickles else ""
    raise SaekitError(f"Gemma Scope file not found: {path} has neither {PARAMS_FILE} nor {PARAMS_SAFETENSORS}{hint}")


def read_gemma_scope(path: str | Path, site: str | None = None, model: str | None = None) -> tuple[Dictionary,
                                                                                                  dict[str, Any]]:
    """A Gemma Scope ``params.npz`` or Gemma Scope 2 ``params.safetensors`` (or its folder) -> (saekit JumpReLU
    dictionary in eval mode, source). ``site``/``model`` override what a Gemma Scope 1 path says."""
    file = _params_file(Path(path))
    if file.suffix == ".safetensors":
        if site is not None:
            raise SaekitError(f"{file}: a Gemma Scope 2 dictionary's sites come from its folder names "
                              "(<kind>/layer_N_...); keep them rather than giving a site")
        dictionary, source = _read_scope2(file)
        return dictionary, {**source, "model": model or source["model"]}
    if file.suffix != ".npz":
        raise SaekitError(f"{file} is neither a Gemma Scope {PARAMS_FILE} nor a Gemma Scope 2 {PARAMS_SAFETENSORS}"
                          + ("; saekit never unpickles" if file.suffix in PICKLE_SUFFIXES else ""))
    return _read_scope1(file, site, model)
