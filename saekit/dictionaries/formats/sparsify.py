"""sparsify (EleutherAI) format: one folder per hookpoint with ``cfg.json`` + ``sae.safetensors``
(``encoder.weight`` [num_latents, d_in], ``encoder.bias``, ``W_dec`` [num_latents, d_in], ``b_dec``,
optional ``W_skip`` [d_out, d_in]).

sparsify encodes ``topk(relu(encoder(x - b_dec)))`` (no b_dec subtraction for a transcoder), which is
saekit's TopK (top-k then ReLU: the same values). The encoder weight is the transpose of saekit's
W_enc and W_skip the transpose of saekit's. Hookpoints: ``layers.N`` = ``blocks.N.resid_post``;
``layers.N.mlp`` = ``blocks.N.mlp_out`` (a transcoder there reads ``blocks.N.mlp_in``).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from saekit.dictionaries.base import Dictionary, DictionaryConfig
from saekit.dictionaries.formats.common import load_weights, positive_int, read_files
from saekit.dictionaries.registry import build_dictionary
from saekit.dictionaries.validate import check_tensors, stated
from saekit.errors import SaekitError
from saekit.io import replace_directory, save_tensors, write_json

CONFIG_FILE = "cfg.json"
WEIGHTS_FILE = "sae.safetensors"


def hookpoint_sites(hookpoint: str, transcoder: bool, path: Path | str) -> tuple[str, str | None]:
    """(input site, target site) of a sparsify hookpoint."""
    match = re.fullmatch(r"(?:gpt_neox\.|model\.)?layers\.(\d+)(\.mlp)?", hookpoint or "")
    if match is None:
        raise SaekitError(f"{path}: sparsify hookpoint {hookpoint!r} has no saekit site; saekit maps "
                          "layers.N and layers.N.mlp")
    layer = match.group(1)
    if match.group(2) is None:
        return f"blocks.{layer}.resid_post", (f"blocks.{layer}.resid_post" if transcoder else None)
    if transcoder:
        return f"blocks.{layer}.mlp_in", f"blocks.{layer}.mlp_out"
    return f"blocks.{layer}.mlp_out", None


def site_hookpoint(site: Any) -> str:
    match = re.fullmatch(r"blocks\.(\d+)\.(resid_post|mlp_out|mlp_in)", site) if isinstance(site, str) else None
    if match is None:
        raise SaekitError(f"site {site!r} has no sparsify hookpoint (saekit writes resid_post, mlp_in/mlp_out)")
    return f"layers.{match.group(1)}" + ("" if match.group(2) == "resid_post" else ".mlp")


def _width(config: dict[str, Any], path: Path, d_in: int) -> tuple[int, str]:
    """The latent count by sparsify's rule (num_latents when non-zero, else d_in x expansion_factor), and the
    stated sizes it comes from."""
    if config.get("num_latents"):
        width = positive_int(config, "num_latents", path)
        return width, stated(CONFIG_FILE, d_in=d_in, num_latents=width)
    factor = positive_int(config, "expansion_factor", path)
    return d_in * factor, stated(CONFIG_FILE, d_in=d_in, expansion_factor=factor)


def read_sparsify(directory: str | Path, hookpoint: str | None = None) -> tuple[Dictionary, dict[str, Any]]:
    """A sparsify hookpoint folder -> (saekit TopK Dictionary in eval mode, source dict)."""
    path = Path(directory)
    config, tensors = read_files(path, CONFIG_FILE, WEIGHTS_FILE, "sparsify")
    hookpoint = hookpoint or path.name
    if "encoder.weight" not in tensors:
        raise SaekitError(f"{path / WEIGHTS_FILE} has no 'encoder.weight': not a sparsify SAE")
    if config.get("activation", "topk") != "topk":
        raise SaekitError(f"{path}: sparsify activation {config['activation']!r} is not supported; only topk")
    if config.get("multi_topk"):
        raise SaekitError(f"{path}: multi_topk sparsify SAEs are not supported")
    d_in = positive_int(config, "d_in", path)
    k = positive_int(config, "k", path)
    width, sizes = _width(config, path, d_in)
    transcoder = bool(config.get("transcode", False))
    skip = bool(config.get("skip_connection", False))
    expected = {"encoder.weight": (width, d_in), "encoder.bias": (width,), "W_dec": (width, d_in),
                "b_dec": (d_in,)}
    if skip:
        expected["W_skip"] = (d_in, d_in)
    check_tensors(path / WEIGHTS_FILE, tensors, expected, sizes)
    if k > width:
        raise SaekitError(f"{path}: k={k} exceeds num_latents={width}")
    site, target = hookpoint_sites(hookpoint, transcoder, path)
    dconfig = DictionaryConfig(architecture="topk", d_in=d_in, width=width, k=k,
                               d_out=d_in if transcoder else None, extra={"skip_connection": skip})
    weights = {"W_enc": tensors["encoder.weight"].T, "b_enc": tensors["encoder.bias"],
               "W_dec": tensors["W_dec"], "b_dec": tensors["b_dec"]}
    if skip:
        weights["W_skip"] = tensors["W_skip"].T
    dictionary = load_weights(build_dictionary(dconfig), weights)
    source = {"model": config.get("model"), "site": site, "target_site": target, "format": "sparsify",
              "hookpoint": hookpoint, "notes": ["encoder.weight transposed to W_enc"]
              + (["W_skip transposed"] if skip else [])}
    return dictionary, source


def write_sparsify(directory: str | Path, dictionary: Dictionary, source: dict[str, Any] | None = None) -> Path:
    """Write a saekit TopK dictionary (SAE, transcoder, skip transcoder) as a sparsify hookpoint folder."""
    source = source or {}
    config = dictionary.config
    if config.architecture != "topk":
        raise SaekitError(f"sparsify holds TopK dictionaries only; this one is {config.architecture!r}")
    if config.output_dim != config.d_in:
        raise SaekitError(f"sparsify transcoders map d_in to d_in; this one maps {config.d_in} to {config.d_out}")
    site_hookpoint(source.get("target_site") or source.get("site"))
    tensors = {"encoder.weight": dictionary.W_enc.detach().T.float().cpu(),
               "encoder.bias": dictionary.b_enc.detach().float().cpu(),
               "W_dec": dictionary.W_dec.detach().float().cpu(), "b_dec": dictionary.b_dec.detach().float().cpu()}
    if dictionary.W_skip is not None:
        tensors["W_skip"] = dictionary.W_skip.detach().T.float().cpu()
    cfg = {"expansion_factor": max(1, config.width // config.d_in), "normalize_decoder": False,
           "num_latents": config.width, "k": config.k, "multi_topk": False, "activation": "topk",
           "skip_connection": dictionary.W_skip is not None, "transcode": config.is_transcoder, "d_in": config.d_in}

    def build(tmp: Path) -> None:
        save_tensors(tmp / WEIGHTS_FILE, tensors)
        write_json(tmp / CONFIG_FILE, cfg)

    return replace_directory(directory, build)
