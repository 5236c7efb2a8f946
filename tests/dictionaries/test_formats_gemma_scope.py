"""Gemma Scope ``params.npz``: saekit's latents and reconstructions equal the published JumpReLU math computed
in numpy on the file's arrays (non-unit decoder rows, an uncentred input); site from the repository path;
pickles, attention SAEs and bad shapes refused in one line."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from saekit.cli import main
from saekit.dictionaries.formats import read_gemma_scope, read_saelens
from saekit.dictionaries.formats.detect import detect_format
from saekit.errors import SaekitError

D, WIDTH = 24, 80


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
