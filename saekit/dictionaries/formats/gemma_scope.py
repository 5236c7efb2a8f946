"""Gemma Scope (1) format: the ``params.npz`` of Google DeepMind's JumpReLU SAEs, read without unpickling.

A file holds ``W_enc`` [d, m], ``b_enc`` [m], ``W_dec`` [m, d], ``b_dec`` [d] and ``threshold`` [m];
the published math is pre = x @ W_enc + b_enc, z = relu(pre) * (pre > threshold), x_hat = z @ W_dec +
b_dec: the decoder bias is not subtracted from the input, so saekit (which encodes x - b_dec) folds
``b_dec @ W_enc`` into its encoder bias. The decoder rows are not unit norm and are kept as they are.

The file records neither model nor site. Both come from the repository path Gemma Scope uses
(``gemma-scope-2b-pt-res/layer_20/width_16k/average_l0_71/params.npz``: ``res`` = the residual stream
after the block, ``mlp`` = the MLP output) or from the caller; ``att`` SAEs read the heads' outputs
before the output projection, which is no saekit site, and are refused.
"""

from __future__ import annotations

import re
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from saekit.dictionaries.base import Dictionary, DictionaryConfig
from saekit.dictionaries.formats.common import check_shapes, load_weights
from saekit.dictionaries.registry import build_dictionary
from saekit.errors import SaekitError

PARAMS_FILE = "params.npz"
_KINDS = {"res": "resid_post", "mlp": "mlp_out"}
_MODELS = {"2b": "google/gemma-2-2b", "9b": "google/gemma-2-9b", "27b": "google/gemma-2-27b"}


def site_from_path(path: Path) -> tuple[str | None, str | None]:
    """(model, saekit site) from a Gemma Scope repository path, or (None, None) where it names neither."""
    text = path.as_posix()
    layer = re.search(r"layer_(\d+)", text)
    kind = re.search(r"gemma-scope-(\d+b)-(pt|it)-(res|mlp|att)", text)
    if kind and kind.group(3) == "att":
        raise SaekitError(f"{path}: Gemma Scope attention SAEs read the heads' outputs before the output "
                          "projection (hook_z), which has no saekit site")
    model = None if kind is None else _MODELS.get(kind.group(1), f"google/gemma-2-{kind.group(1)}") + \
        ("-it" if kind.group(2) == "it" else "")
    site = None if layer is None or kind is None else f"blocks.{layer.group(1)}.{_KINDS[kind.group(3)]}"
    return model, site


def _load_npz(path: Path) -> dict[str, torch.Tensor]:
    try:
        with np.load(path, allow_pickle=False) as archive:
            return {name: torch.from_numpy(np.array(archive[name])) for name in archive.files}
    except ValueError as err:  # an object array needs pickling: refused
        raise SaekitError(f"{path} holds pickled objects; saekit never unpickles ({err})") from err
    except (zipfile.BadZipFile, OSError) as err:
        raise SaekitError(f"{path} is not a readable .npz archive: {err}") from err


def read_gemma_scope(path: str | Path, site: str | None = None, model: str | None = None) -> tuple[Dictionary,
                                                                                                  dict[str, Any]]:
    """A Gemma Scope ``params.npz`` (or its directory) -> (saekit JumpReLU dictionary in eval mode, source)."""
    path = Path(path)
    file = path / PARAMS_FILE if path.is_dir() else path
    if not file.is_file():
        raise SaekitError(f"Gemma Scope file not found: {file}")
    path_model, path_site = site_from_path(file)
    site, model = site or path_site, model or path_model
    if site is None:
        raise SaekitError(f"{file}: the path names no Gemma Scope layer and kind (layer_N under "
                          "gemma-scope-*-res or -mlp); give the site")
    tensors = _load_npz(file)
    if "W_enc" not in tensors or tensors["W_enc"].ndim != 2:
        raise SaekitError(f"{file} has no 2-D W_enc: not a Gemma Scope SAE (found {sorted(tensors)})")
    d_in, width = tensors["W_enc"].shape
    check_shapes(file, tensors, {"W_enc": (d_in, width), "b_enc": (width,), "W_dec": (width, d_in),
                                 "b_dec": (d_in,), "threshold": (width,)})
    weights = {name: value.double() for name, value in tensors.items()}
    if not bool((weights["threshold"] > 0).all()):
        raise SaekitError(f"{file}: JumpReLU thresholds must be positive (saekit stores log thresholds)")
    dictionary = build_dictionary(DictionaryConfig(architecture="jumprelu", d_in=d_in, width=width))
    load_weights(dictionary, {"W_enc": weights["W_enc"], "W_dec": weights["W_dec"], "b_dec": weights["b_dec"],
                              "b_enc": weights["b_enc"] + weights["b_dec"] @ weights["W_enc"],
                              "log_threshold": weights["threshold"].log()})
    dictionary.calibrated.fill_(1.0)
    notes = ["the input is not centred by b_dec in Gemma Scope: b_dec @ W_enc folded into b_enc",
             "decoder rows kept at their stored (non-unit) norms"]
    return dictionary, {"model": model, "site": site, "target_site": None, "format": "gemma-scope", "notes": notes}
