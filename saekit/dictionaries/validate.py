"""The one check every dictionary reader runs on the tensors it read, native or foreign, before anything is
folded, cast or written: the tensors are exactly those the format expects, each with the shape the file's
stated sizes give it, of a floating dtype (an integer one for counts such as dictionary_learning's ``k``),
and every value finite.

It runs on the raw tensors, so what is reported is what the file holds: an inf stays an inf (Gemma Scope's
bias fold would turn it into a NaN), and an int8 tensor is refused rather than cast. Each refusal is one
:class:`~saekit.errors.SaekitError` line naming the file, the tensor and what to do.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from pathlib import Path

import torch
from torch import Tensor

from saekit.errors import SaekitError

Shape = tuple[int, ...]
NO_TENSORS: Mapping[str, Shape] = {}


def stated(where: str, **sizes: int | None) -> str:
    """What the expected shapes come from, for the refusal: ``cfg.json (d_in=32, d_sae=128)``."""
    given = ", ".join(f"{name}={value}" for name, value in sizes.items() if value is not None)
    return f"{where} ({given})" if given else where


def check_tensors(file: Path, tensors: Mapping[str, Tensor], shapes: Mapping[str, Shape], basis: str, *,
                  optional: Mapping[str, Shape] = NO_TENSORS, counts: Collection[str] = ()) -> None:
    """Refuse in one line unless ``tensors`` (as read from ``file``) are a valid dictionary's.

    ``shapes``: every tensor that must be there and its shape, as ``basis`` (the stated sizes, see
    :func:`stated`) gives it; ``optional``: tensors that may be there; anything else is refused.
    ``counts``: tensors holding integers (sizes, k), which must have an integer dtype; the rest a floating one.
    """
    _check_names(file, tensors, shapes, optional)
    # In the format's order (its matrices first), so the first tensor named is the one most telling.
    present = {name: shape for name, shape in {**shapes, **optional}.items() if name in tensors}
    for name, shape in present.items():
        _check_shape(file, name, tensors[name], shape, basis)
        _check_dtype(file, name, tensors[name], name in counts)
    _check_finite(file, {name: tensors[name] for name in present if name not in counts})


def _check_names(file: Path, tensors: Mapping[str, Tensor], shapes: Mapping[str, Shape],
                 optional: Mapping[str, Shape]) -> None:
    missing = [name for name in shapes if name not in tensors]
    if missing:
        raise SaekitError(f"{file} has no tensor {missing[0]!r} (found {sorted(tensors)}); it is not a complete "
                          "dictionary of this format")
    extra = sorted(set(tensors) - set(shapes) - set(optional))
    if extra:
        raise SaekitError(f"{file} holds tensors saekit cannot place: {extra}; remove them or name the right format")


def _check_shape(file: Path, name: str, tensor: Tensor, shape: Shape, basis: str) -> None:
    if tuple(tensor.shape) != tuple(shape):
        raise SaekitError(f"{file}: {name} has shape {tuple(tensor.shape)}, expected {tuple(shape)} from {basis}; "
                          "the weights and their stated sizes disagree: re-export the dictionary")


def _dtype(tensor: Tensor) -> str:
    return str(tensor.dtype).removeprefix("torch.")


def _check_dtype(file: Path, name: str, tensor: Tensor, count: bool) -> None:
    if count and (tensor.is_floating_point() or tensor.is_complex() or tensor.dtype == torch.bool):
        raise SaekitError(f"{file}: {name} has dtype {_dtype(tensor)} but holds a count; save it as an integer "
                          "tensor (int64)")
    if not count and not tensor.is_floating_point():
        # Never cast: an integer or bool tensor is quantised or damaged, and a cast would silently make zeros.
        raise SaekitError(f"{file}: {name} has dtype {_dtype(tensor)}, not a floating dtype; saekit reads float "
                          "weights only and never casts them: save it as float32, float16 or bfloat16")


def _check_finite(file: Path, tensors: Mapping[str, Tensor]) -> None:
    counts = {name: (int(t.isnan().sum()), int(t.isinf().sum()), t.numel()) for name, t in tensors.items()}
    bad = {name: count for name, count in counts.items() if count[0] or count[1]}
    if bad:
        detail = ", ".join(f"{nan} NaN and {inf} infinite of {total} in {name}"
                           for name, (nan, inf, total) in bad.items())
        raise SaekitError(f"weights in {file} hold NaN or infinite values ({', '.join(bad)}): {detail}; the "
                          "dictionary diverged or the file is damaged: retrain it (with a lower lr), or restore or "
                          "re-export it")
