"""SAELens format: the reader reproduces SAELens's math (written out here from its format), the writer
round-trips, and bad inputs give one clear line and write nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from format_helpers import one_line, pickle_only, refusal
from safetensors.torch import save_file

from saekit.dictionaries.base import DictionaryConfig
from saekit.dictionaries.formats import read_saelens, write_saelens
from saekit.dictionaries.registry import build_dictionary
from saekit.errors import SaekitError

D_IN, WIDTH = 16, 64
FIXTURES = Path(__file__).parent.parent / "fixtures" / "interop" / "saelens"


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-12))


def _weights(architecture: str, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    tensors = {"W_enc": torch.randn(D_IN, WIDTH, generator=g) / 4, "b_enc": torch.randn(WIDTH, generator=g) / 10,
               # non-unit decoder norms on purpose
               "W_dec": torch.randn(WIDTH, D_IN, generator=g) * (0.5 + torch.rand(WIDTH, 1, generator=g)),
               "b_dec": torch.randn(D_IN, generator=g) / 10}
    if architecture == "jumprelu":
        tensors["threshold"] = 0.1 + torch.rand(WIDTH, generator=g) / 5
    return tensors


def _write(directory: Path, architecture: str, cfg_extra: dict | None = None, tensors=None) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    tensors = tensors if tensors is not None else _weights(architecture)
    save_file(tensors, str(directory / "sae_weights.safetensors"))
    cfg = {"architecture": architecture, "d_in": D_IN, "d_sae": WIDTH, "hook_name": "blocks.14.hook_resid_post",
           "model_name": "toy", "apply_b_dec_to_input": True, "normalize_activations": "none", **(cfg_extra or {})}
    (directory / "cfg.json").write_text(json.dumps(cfg))
    return directory


def _reference(tensors, cfg, x):
    """SAELens's forward, written from its documented conventions."""
    sae_in = x - tensors["b_dec"] if cfg.get("apply_b_dec_to_input", True) else x
    pre = sae_in @ tensors["W_enc"] + tensors["b_enc"]
    norms = tensors["W_dec"].norm(dim=1)
    if cfg.get("rescale_acts_by_decoder_norm"):
        pre = pre * norms
    if cfg["architecture"] == "standard":
        z = pre.relu()
    elif cfg["architecture"] == "topk":
        top = pre.topk(cfg["k"], dim=-1)
        z = torch.zeros_like(pre).scatter(-1, top.indices, top.values.relu())
    else:
        z = pre.relu() * (pre > tensors["threshold"])
    out = (z / norms if cfg.get("rescale_acts_by_decoder_norm") else z) @ tensors["W_dec"] + tensors["b_dec"]
    return z, out


CASES = [
    ("standard", {}),
    ("standard", {"apply_b_dec_to_input": False}),
    ("topk", {"k": 8}),
    ("topk", {"activation_fn_kwargs": {"k": 8}, "rescale_acts_by_decoder_norm": True}),
    ("jumprelu", {}),
    ("jumprelu", {"apply_b_dec_to_input": False}),
]


@pytest.mark.parametrize(("architecture", "extra"), CASES)
def test_reader_matches_saelens_math(tmp_path, architecture, extra):
    tensors = _weights(architecture)
    directory = _write(tmp_path / "sae", architecture, extra, tensors)
    dictionary, source = read_saelens(directory)
    assert source["site"] == "blocks.14.resid_post" and source["model"] == "toy"
    x = torch.randn(32, D_IN, generator=torch.Generator().manual_seed(1))
    cfg = {"architecture": architecture, **extra}
    if "activation_fn_kwargs" in extra:
        cfg["k"] = extra["activation_fn_kwargs"]["k"]
    z, out = _reference(tensors, cfg, x)
    with torch.no_grad():
        result = dictionary(x)
    assert _rel(result.latents, z) <= 1e-5
    assert _rel(result.reconstruction, out) <= 1e-5
    if not extra.get("rescale_acts_by_decoder_norm"):  # weights kept as they are: no renormalisation
        assert torch.allclose(dictionary.W_dec, tensors["W_dec"])


def _fixture_dirs():
    return sorted(p for p in FIXTURES.glob("*") if (p / "expected.safetensors").is_file()) if FIXTURES.is_dir() else []


@pytest.mark.parametrize("fixture", _fixture_dirs(), ids=lambda p: p.name)
def test_reader_reproduces_anchor_fixture(fixture):
    from safetensors.torch import load_file

    expected = load_file(str(fixture / "expected.safetensors"))
    dictionary, _ = read_saelens(fixture / "sae")
    with torch.no_grad():
        result = dictionary(expected["inputs"])
    assert _rel(result.latents, expected["latents"]) <= 1e-5
    assert _rel(result.reconstruction, expected["reconstruction"]) <= 1e-5


@pytest.mark.parametrize("architecture", ["relu", "topk", "jumprelu"])
def test_round_trip(tmp_path, architecture):
    torch.manual_seed(0)
    dictionary = build_dictionary(DictionaryConfig(architecture=architecture, d_in=D_IN, width=WIDTH, k=8)).eval()
    with torch.no_grad():
        dictionary.W_dec.mul_(2.0)
        dictionary.b_dec.normal_()
    write_saelens(tmp_path / "out", dictionary, {"site": "blocks.3.mlp_out", "model": "toy"})
    loaded, source = read_saelens(tmp_path / "out")
    assert source["site"] == "blocks.3.mlp_out"
    x = torch.randn(20, D_IN)
    with torch.no_grad():
        a, b = dictionary(x), loaded(x)
    assert _rel(b.latents, a.latents) <= 1e-5
    assert _rel(b.reconstruction, a.reconstruction) <= 1e-5


@pytest.mark.parametrize(("change", "needle"), [
    ({"architecture": "banana"}, "not supported"),
    ({"architecture": "gated"}, "gated"),
    ({"hook_name": "blocks.3.hook_weird"}, "no saekit site"),
    ({"d_in": D_IN + 1}, "shape"),
    ({"normalize_activations": "expected_average_only_in"}, "normalize_activations"),
])
def test_bad_config_is_one_line(tmp_path, change, needle):
    architecture = change.get("architecture", "standard")
    tensors = _weights("standard")
    directory = _write(tmp_path / "sae", architecture if architecture in ("standard",) else "standard", None, tensors)
    cfg = json.loads((directory / "cfg.json").read_text())
    cfg.update(change)
    (directory / "cfg.json").write_text(json.dumps(cfg))
    assert needle in refusal(read_saelens, directory)


def test_pickle_is_refused(tmp_path):
    directory = pickle_only(tmp_path / "sae", "cfg.json", "sae_weights.pt")
    assert "never unpickles" in refusal(read_saelens, directory)


def test_non_positive_threshold_is_refused(tmp_path):
    tensors = _weights("jumprelu")
    tensors["threshold"][0] = 0.0
    with pytest.raises(SaekitError) as excinfo:
        read_saelens(_write(tmp_path / "sae", "jumprelu", None, tensors))
    assert "positive" in one_line(excinfo)


def test_writer_refuses_and_writes_nothing(tmp_path):
    dictionary = build_dictionary(DictionaryConfig(architecture="gated", d_in=D_IN, width=WIDTH))
    with pytest.raises(SaekitError) as excinfo:
        write_saelens(tmp_path / "out", dictionary, {"site": "blocks.1.resid_post"})
    one_line(excinfo)
    relu = build_dictionary(DictionaryConfig(architecture="relu", d_in=D_IN, width=WIDTH))
    with pytest.raises(SaekitError) as excinfo:
        write_saelens(tmp_path / "out", relu, {"site": "nowhere"})
    one_line(excinfo)
    assert list(tmp_path.iterdir()) == []
