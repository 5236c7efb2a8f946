"""Gemma Scope ``params.npz`` and Gemma Scope 2 ``params.safetensors``: saekit's latents and reconstructions
equal the published JumpReLU math computed in numpy on the file's arrays (non-unit decoder rows, an
uncentred input) and SAELens's own loaders' outputs (fixtures made by scripts/interop/gemma_scope_worker.py);
sites from the repository path as SAELens reads them; pickles, attention SAEs, CLTs and bad shapes refused
in one line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from format_helpers import pickle_only, refusal
from safetensors.torch import load_file, save_file

from saekit.cli import main
from saekit.dictionaries.formats import read_gemma_scope, read_saelens, write_saelens
from saekit.dictionaries.formats.common import saelens_hook_to_site
from saekit.dictionaries.formats.detect import detect_format, read_dictionaries
from saekit.errors import SaekitError

D, WIDTH, D_OUT = 24, 80, 20
FIXTURES = Path(__file__).parent.parent / "fixtures" / "interop" / "gemma_scope"


def _params(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"W_enc": rng.normal(0, 0.3, (D, WIDTH)).astype(np.float32),
            "b_enc": rng.normal(0, 0.2, WIDTH).astype(np.float32),
            "W_dec": (rng.normal(0, 1, (WIDTH, D)) * rng.uniform(0.2, 3, (WIDTH, 1))).astype(np.float32),
            "b_dec": rng.normal(0, 1, D).astype(np.float32),
            "threshold": rng.uniform(0.05, 0.6, WIDTH).astype(np.float32)}


def _gemma_scope(params: dict[str, np.ndarray], x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The published Gemma Scope forward: no input centring, z = relu(pre) * (pre > threshold)."""
    pre = x.astype(np.float64) @ params["W_enc"] + params["b_enc"]
    z = np.maximum(pre, 0) * (pre > params["threshold"])
    return z, z @ params["W_dec"] + params["b_dec"]


@pytest.fixture
def release(tmp_path):
    folder = tmp_path / "gemma-scope-2b-pt-res" / "layer_12" / "width_16k" / "average_l0_41"
    folder.mkdir(parents=True)
    params = _params()
    np.savez(folder / "params.npz", **params)
    return folder, params


def test_reader_reproduces_the_published_math_and_names_the_site(release):
    folder, params = release
    dictionary, source = read_gemma_scope(folder)
    assert (source["model"], source["site"], source["format"]) == ("google/gemma-2-2b", "blocks.12.resid_post",
                                                                    "gemma-scope")
    x = np.random.default_rng(1).normal(0, 1, (64, D)).astype(np.float32)
    z, x_hat = _gemma_scope(params, x)
    assert 0 < (z > 0).mean() < 1
    with torch.no_grad():
        out = dictionary(torch.from_numpy(x))
    np.testing.assert_array_equal(out.latents.numpy() > 0, z > 0)
    assert np.linalg.norm(out.latents.numpy() - z) / np.linalg.norm(z) < 1e-5
    assert np.linalg.norm(out.reconstruction.numpy() - x_hat) / np.linalg.norm(x_hat) < 1e-5
    # The decoder keeps its stored norms (Gemma Scope's are not unit).
    torch.testing.assert_close(dictionary.W_dec.detach(), torch.from_numpy(params["W_dec"]))
    assert detect_format(folder) == "gemma-scope" and detect_format(folder / "params.npz") == "gemma-scope"


def test_convert_to_saelens_keeps_the_function(release, tmp_path, capsys):
    folder, params = release
    assert main(["convert", str(folder / "params.npz"), "--to", "saelens", str(tmp_path / "sl")]) == 0
    dictionary, source = read_saelens(tmp_path / "sl")
    assert source["site"] == "blocks.12.resid_post"
    x = np.random.default_rng(2).normal(0, 1, (32, D)).astype(np.float32)
    _, x_hat = _gemma_scope(params, x)
    with torch.no_grad():
        out = dictionary(torch.from_numpy(x)).reconstruction.numpy()
    assert np.linalg.norm(out - x_hat) / np.linalg.norm(x_hat) < 1e-5


def test_refusals_are_one_line(tmp_path, capsys):
    att = tmp_path / "gemma-scope-2b-pt-att" / "layer_3" / "width_16k" / "average_l0_10"
    att.mkdir(parents=True)
    np.savez(att / "params.npz", **_params())
    with pytest.raises(SaekitError, match="hook_z"):
        read_gemma_scope(att)
    pickled = tmp_path / "gemma-scope-2b-pt-mlp" / "layer_3"
    pickled.mkdir(parents=True)
    np.savez(pickled / "params.npz", W_enc=np.array([{"a": 1}], dtype=object))
    with pytest.raises(SaekitError, match="never unpickles"):
        read_gemma_scope(pickled)
    bad = tmp_path / "gemma-scope-9b-pt-mlp" / "layer_5"
    bad.mkdir(parents=True)
    params = _params()
    params["b_dec"] = params["b_dec"][:-1]
    np.savez(bad / "params.npz", **params)
    assert main(["convert", str(bad), "--to", "saekit", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err.strip()
    assert "b_dec has shape" in err and len(err.splitlines()) == 1 and not (tmp_path / "out").exists()
    nameless = tmp_path / "elsewhere"
    nameless.mkdir()
    np.savez(nameless / "params.npz", **_params())
    with pytest.raises(SaekitError, match="give the site"):
        read_gemma_scope(nameless)
    assert read_gemma_scope(nameless, site="blocks.1.mlp_out")[1]["site"] == "blocks.1.mlp_out"


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-12))


@pytest.mark.parametrize("case", sorted(p.name for p in FIXTURES.glob("*") if (p / "case.json").is_file()))
def test_reader_reproduces_saelens_loaders(case):
    """The fixture's files laid out as the hub repository is, read by SAELens's own Gemma Scope loaders."""
    info = json.loads((FIXTURES / case / "case.json").read_text())
    expected = load_file(str(FIXTURES / case / "expected.safetensors"))
    dictionary, source = read_gemma_scope(FIXTURES / case / info["path"])
    with torch.no_grad():
        out = dictionary(expected["inputs"])
    assert _rel(out.latents, expected["latents"]) <= 1e-5
    assert _rel(out.reconstruction, expected["reconstruction"]) <= 1e-5
    assert (dictionary.config.d_in, dictionary.config.width, dictionary.config.output_dim) == (
        info["d_in"], info["d_sae"], info["d_out"])
    assert source["site"] == saelens_hook_to_site(info["hook_name"], Path(case))
    target = info["hook_name_out"] and saelens_hook_to_site(info["hook_name_out"], Path(case))
    assert source["target_site"] == target
    assert dictionary.config.is_transcoder == ("Transcoder" in info["saelens_class"])
    assert (dictionary.W_skip is not None) == ("Skip" in info["saelens_class"])
    # SAELens names Gemma 2 "gemma-2-2b" and Gemma 3 "google/gemma-3-270m"; saekit always the hub id.
    assert source["model"] in (info["model_name"], f"google/{info['model_name']}")


def _scope2(root: Path, folder: str, seed: int = 0, transcoder: bool = False, affine: bool = False,
            config: dict | None = None) -> tuple[Path, dict[str, np.ndarray]]:
    """A Gemma Scope 2 folder as the hub holds it: params.safetensors (w_enc, w_dec, ...) + config.json."""
    path = root / "gemma-scope-2-270m-pt" / folder
    path.mkdir(parents=True)
    params = _params(seed)
    if transcoder:
        rng = np.random.default_rng(seed + 1)
        params["W_dec"] = rng.normal(0, 1, (WIDTH, D_OUT)).astype(np.float32)
        params["b_dec"] = rng.normal(0, 1, D_OUT).astype(np.float32)
        if affine:
            params["affine_skip_connection"] = rng.normal(0, 0.3, (D, D_OUT)).astype(np.float32)
    save_file({k.lower(): torch.from_numpy(v) for k, v in params.items()}, str(path / "params.safetensors"))
    cfg = {"architecture": "jump_relu", "model_name": "gemma-v3-270m-pt", **({"affine_connection": affine}
                                                                              if transcoder else {})}
    (path / "config.json").write_text(json.dumps({**cfg, **(config or {})}))
    return path, params


def test_scope2_transcoder_matches_the_published_math_and_converts_to_saelens(tmp_path):
    folder, params = _scope2(tmp_path, "transcoder_all/layer_9_width_16k_l0_small_affine", transcoder=True,
                             affine=True)
    x = np.random.default_rng(3).normal(0, 1, (40, D)).astype(np.float32)
    pre = x.astype(np.float64) @ params["W_enc"] + params["b_enc"]
    z = np.maximum(pre, 0) * (pre > params["threshold"])
    x_hat = z @ params["W_dec"] + params["b_dec"] + x @ params["affine_skip_connection"]
    fmt, [(dictionary, source)] = read_dictionaries(f"gemma-scope:{folder}")
    assert fmt == "gemma-scope" and source["model"] == "google/gemma-3-270m"
    assert (source["site"], source["target_site"]) == ("blocks.9.mlp_in", "blocks.9.mlp_out")
    with torch.no_grad():
        out = dictionary(torch.from_numpy(x))
    assert np.linalg.norm(out.latents.numpy() - z) / np.linalg.norm(z) < 1e-5
    assert np.linalg.norm(out.reconstruction.numpy() - x_hat) / np.linalg.norm(x_hat) < 1e-5
    write_saelens(tmp_path / "sl", dictionary, source)
    assert json.loads((tmp_path / "sl" / "cfg.json").read_text())["architecture"] == "jumprelu_skip_transcoder"
    again, back = read_saelens(tmp_path / "sl")
    assert (back["site"], back["target_site"]) == ("blocks.9.mlp_in", "blocks.9.mlp_out")
    with torch.no_grad():
        assert _rel(again(torch.from_numpy(x)).reconstruction, torch.from_numpy(x_hat).float()) < 1e-5


@pytest.mark.parametrize(("folder", "transcoder", "affine", "config", "needle"), [
    ("attn_out/layer_3_width_16k_l0_small", False, False, None, "hook_z"),
    ("clt/layer_3_width_16k_l0_small", True, False, None, "cross-layer"),
    ("somewhere/layer_3_width_16k_l0_small", False, False, None, "folder"),
    ("resid_post/width_16k_l0_small", False, False, None, "folder"),
    ("transcoder/layer_3_width_16k_l0_small", True, True, {"affine_connection": False}, "affine_connection"),
    ("transcoder/layer_3_width_16k_l0_small", True, False, {"affine_connection": True}, "affine_connection"),
    ("resid_post/layer_3_width_16k_l0_small", True, False, None, "w_dec has shape"),
    ("resid_post/layer_3_width_16k_l0_small", False, False, {"architecture": "topk"}, "jump_relu"),
])
def test_scope2_refusals_are_one_line(tmp_path, folder, transcoder, affine, config, needle):
    path, _ = _scope2(tmp_path, folder, transcoder=transcoder, affine=affine, config=config)
    assert needle in refusal(read_gemma_scope, path)


def test_scope2_bad_files_are_one_line(tmp_path):
    path, _ = _scope2(tmp_path, "resid_post/layer_3_width_16k_l0_small")
    (path / "params.safetensors").write_bytes(b"not safetensors")
    assert "not safetensors" in refusal(read_gemma_scope, path)
    (tmp_path / "transcoder").mkdir()
    pickled = pickle_only(tmp_path / "transcoder" / "layer_1_width_16k_l0_small", "config.json", "params.pt")
    assert "never unpickles" in refusal(read_gemma_scope, pickled)
    with pytest.raises(SaekitError, match="never unpickles"):
        read_gemma_scope(pickled / "params.pt")


def test_scope1_transcoders_embeddings_and_scaling_factor(tmp_path):
    tc = tmp_path / "gemma-scope-2b-pt-transcoders" / "layer_4" / "width_16k" / "average_l0_30"
    tc.mkdir(parents=True)
    np.savez(tc / "params.npz", **_params())
    dictionary, source = read_gemma_scope(tc)
    assert (source["site"], source["target_site"]) == ("blocks.4.mlp_in", "blocks.4.mlp_out")
    assert dictionary.config.is_transcoder
    x = np.random.default_rng(5).normal(0, 1, (16, D)).astype(np.float32)
    _, x_hat = _gemma_scope(_params(), x)
    with torch.no_grad():
        out = dictionary(torch.from_numpy(x)).reconstruction.numpy()
    assert np.linalg.norm(out - x_hat) / np.linalg.norm(x_hat) < 1e-5
    embedding = tmp_path / "gemma-scope-2b-pt-res" / "embedding" / "width_4k" / "average_l0_6"
    embedding.mkdir(parents=True)
    np.savez(embedding / "params.npz", **_params())
    assert "hook_embed" in refusal(read_gemma_scope, embedding)
    scaled = tmp_path / "gemma-scope-2b-pt-mlp" / "layer_2" / "width_16k" / "average_l0_9"
    scaled.mkdir(parents=True)
    np.savez(scaled / "params.npz", **_params(), scaling_factor=np.full(WIDTH, 2.0, dtype=np.float32))
    assert "scaling_factor" in refusal(read_gemma_scope, scaled)
