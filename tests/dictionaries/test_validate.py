"""``validate.check_tensors``, the one check every reader runs on the raw tensors: what it refuses, what each
refusal says, and that floating dtypes other than float32 and optional tensors pass."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from format_helpers import one_line

from saekit.dictionaries.validate import check_tensors, stated
from saekit.errors import SaekitError

FILE = Path("/data/sae/weights.safetensors")
SHAPES = {"W_enc": (4, 6), "b_enc": (6,)}
BASIS = stated("cfg.json", d_in=4, d_sae=6)


def _tensors(**changed: torch.Tensor) -> dict[str, torch.Tensor]:
    return {"W_enc": torch.randn(4, 6), "b_enc": torch.randn(6), **changed}


def _refusal(tensors: dict[str, torch.Tensor], **kwargs) -> str:
    with pytest.raises(SaekitError) as excinfo:
        check_tensors(FILE, tensors, SHAPES, BASIS, **kwargs)
    return one_line(excinfo)


def test_stated_names_the_sizes_given_and_drops_the_unknown():
    assert stated("cfg.json", d_in=4, d_out=None, d_sae=6) == "cfg.json (d_in=4, d_sae=6)"
    assert stated("b_enc and b_dec") == "b_enc and b_dec"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_every_floating_dtype_and_the_optional_tensors_pass(dtype):
    tensors = {name: value.to(dtype) for name, value in _tensors().items()}
    check_tensors(FILE, tensors, SHAPES, BASIS)
    check_tensors(FILE, {**tensors, "scale": torch.ones(6, dtype=dtype)}, SHAPES, BASIS, optional={"scale": (6,)})
    check_tensors(FILE, {**tensors, "k": torch.tensor(3)}, SHAPES, BASIS, optional={"k": ()}, counts=("k",))


def test_non_finite_values_are_counted_per_tensor_as_the_file_holds_them():
    W_enc = torch.randn(4, 6)
    W_enc[0, :2] = float("nan")
    W_enc[3, 5] = float("-inf")
    b_enc = torch.randn(6)
    b_enc[1] = float("inf")
    line = _refusal(_tensors(W_enc=W_enc, b_enc=b_enc))
    assert line.startswith(f"weights in {FILE} hold NaN or infinite values (W_enc, b_enc): "
                           "2 NaN and 1 infinite of 24 in W_enc, 0 NaN and 1 infinite of 6 in b_enc; ")


@pytest.mark.parametrize("dtype", [torch.int8, torch.int64, torch.uint8, torch.bool])
def test_a_weight_that_is_not_floating_point_is_refused_not_cast(dtype):
    line = _refusal(_tensors(b_enc=torch.ones(6, dtype=dtype)))
    assert line.startswith(f"{FILE}: b_enc has dtype {str(dtype).removeprefix('torch.')}, not a floating dtype")


def test_a_count_must_be_an_integer():
    line = _refusal(_tensors(k=torch.tensor(3.0)), optional={"k": ()}, counts=("k",))
    assert line.startswith(f"{FILE}: k has dtype float32 but holds a count")


def test_shapes_missing_and_unplaced_tensors_are_named_with_what_states_them():
    assert _refusal(_tensors(b_enc=torch.randn(5))).startswith(
        f"{FILE}: b_enc has shape (5,), expected (6,) from cfg.json (d_in=4, d_sae=6); ")
    assert _refusal({"W_enc": torch.randn(4, 6)}).startswith(f"{FILE} has no tensor 'b_enc' (found ['W_enc'])")
    assert _refusal(_tensors(extra=torch.randn(2))).startswith(f"{FILE} holds tensors saekit cannot place: ['extra']")
