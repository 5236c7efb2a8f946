"""sparsify format: the reader reproduces sparsify's TopK math (written out here from its format), the
writer round-trips, and bad inputs give one clear line and write nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from format_helpers import one_line, pickle_only, refusal
from safetensors.torch import load_file, save_file

from saekit.dictionaries.base import DictionaryConfig
from saekit.dictionaries.formats import read_sparsify, write_sparsify
from saekit.dictionaries.registry import build_dictionary
from saekit.errors import SaekitError

D_IN, WIDTH, K = 16, 64, 8
FIXTURES = Path(__file__).parent.parent / "fixtures" / "interop" / "sparsify"


def _rel(a, b) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-12))


def _write(directory: Path, transcode=False, skip=False, cfg_extra=None) -> tuple[Path, dict]:
    g = torch.Generator().manual_seed(0)
    tensors = {"encoder.weight": torch.randn(WIDTH, D_IN, generator=g) / 4,
               "encoder.bias": torch.randn(WIDTH, generator=g) / 10,
               "W_dec": torch.randn(WIDTH, D_IN, generator=g) * 0.7, "b_dec": torch.randn(D_IN, generator=g) / 10}
    if skip:
        tensors["W_skip"] = torch.randn(D_IN, D_IN, generator=g) / 8
    directory.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(directory / "sae.safetensors"))
    cfg = {"expansion_factor": WIDTH // D_IN, "normalize_decoder": True, "num_latents": WIDTH, "k": K,
           "multi_topk": False, "skip_connection": skip, "transcode": transcode, "d_in": D_IN, **(cfg_extra or {})}
    (directory / "cfg.json").write_text(json.dumps(cfg))
    return directory, tensors


def _reference(t, x, transcode):
    pre = ((x if transcode else x - t["b_dec"]) @ t["encoder.weight"].T + t["encoder.bias"]).relu()
    top = pre.topk(K, dim=-1)
    z = torch.zeros_like(pre).scatter(-1, top.indices, top.values)
    out = z @ t["W_dec"] + t["b_dec"]
    if "W_skip" in t:
        out = out + x @ t["W_skip"].T
    return z, out


@pytest.mark.parametrize(("hookpoint", "transcode", "skip", "site", "target"), [
    ("layers.14", False, False, "blocks.14.resid_post", None),
    ("layers.14.mlp", False, False, "blocks.14.mlp_out", None),
    ("layers.14.mlp", True, False, "blocks.14.mlp_in", "blocks.14.mlp_out"),
    ("layers.14.mlp", True, True, "blocks.14.mlp_in", "blocks.14.mlp_out"),
])
def test_reader_matches_sparsify_math(tmp_path, hookpoint, transcode, skip, site, target):
    directory, tensors = _write(tmp_path / hookpoint, transcode, skip)
    dictionary, source = read_sparsify(directory)
    assert (source["site"], source["target_site"]) == (site, target)
    x = torch.randn(32, D_IN, generator=torch.Generator().manual_seed(1))
    z, out = _reference(tensors, x, transcode)
    with torch.no_grad():
        result = dictionary(x)
    assert _rel(result.latents, z) <= 1e-5
    assert _rel(result.reconstruction, out) <= 1e-5


def _fixture_dirs():
    return sorted(p for p in FIXTURES.glob("*") if (p / "expected.safetensors").is_file()) if FIXTURES.is_dir() else []


@pytest.mark.parametrize("fixture", _fixture_dirs(), ids=lambda p: p.name)
def test_reader_reproduces_anchor_fixture(fixture):
    expected = load_file(str(fixture / "expected.safetensors"))
    hookpoint = next(p for p in fixture.iterdir() if (p / "sae.safetensors").is_file())
    dictionary, _ = read_sparsify(hookpoint)
    with torch.no_grad():
        result = dictionary(expected["inputs"])
    assert _rel(result.latents, expected["latents"]) <= 1e-5
    assert _rel(result.reconstruction, expected["reconstruction"]) <= 1e-5


@pytest.mark.parametrize(("transcoder", "skip", "site"), [
    (False, False, "blocks.2.resid_post"), (True, False, "blocks.2.mlp_in"), (True, True, "blocks.2.mlp_in")])
def test_round_trip(tmp_path, transcoder, skip, site):
    torch.manual_seed(0)
    config = DictionaryConfig(architecture="topk", d_in=D_IN, width=WIDTH, k=K, d_out=D_IN if transcoder else None,
                              extra={"skip_connection": skip})
    dictionary = build_dictionary(config).eval()
    with torch.no_grad():
        dictionary.W_dec.mul_(3.0)
        dictionary.b_dec.normal_()
        if skip:
            dictionary.W_skip.normal_()
    target = "blocks.2.mlp_out" if transcoder else None
    name = "layers.2.mlp" if transcoder else "layers.2"
    write_sparsify(tmp_path / name, dictionary, {"site": site, "target_site": target})
    loaded, source = read_sparsify(tmp_path / name)
    assert (source["site"], source["target_site"]) == (site, target)
    x = torch.randn(20, D_IN)
    with torch.no_grad():
        a, b = dictionary(x), loaded(x)
    assert _rel(b.latents, a.latents) <= 1e-5
    assert _rel(b.reconstruction, a.reconstruction) <= 1e-5


@pytest.mark.parametrize(("name", "change", "needle"), [
    ("layers.3", {"d_in": D_IN + 2}, "shape"),
    ("layers.3.attention", {}, "hookpoint"),
    ("layers.3", {"multi_topk": True}, "multi_topk"),
    ("layers.3", {"k": 0}, "'k'"),
])
def test_bad_input_is_one_line(tmp_path, name, change, needle):
    directory, _ = _write(tmp_path / name, cfg_extra=change)
    assert needle in refusal(read_sparsify, directory)


def test_pickle_is_refused(tmp_path):
    directory = pickle_only(tmp_path / "layers.1", "cfg.json", "sae.pt")
    assert "never unpickles" in refusal(read_sparsify, directory)


def test_writer_refuses_non_topk(tmp_path):
    dictionary = build_dictionary(DictionaryConfig(architecture="relu", d_in=D_IN, width=WIDTH))
    with pytest.raises(SaekitError) as excinfo:
        write_sparsify(tmp_path / "layers.1", dictionary, {"site": "blocks.1.resid_post"})
    assert "TopK" in one_line(excinfo)
    assert list(tmp_path.iterdir()) == []
