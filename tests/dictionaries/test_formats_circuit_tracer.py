"""circuit-tracer format: saekit transcoders and CLTs round-trip, the written files follow circuit-tracer's
layout and math (written out here from the format), hand-made circuit-tracer files read as that math,
and bad input gives one clear line and writes nothing."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from format_helpers import one_line, pickle_only, refusal
from safetensors.torch import load_file, save_file

from saekit.dictionaries.base import DictionaryConfig
from saekit.dictionaries.formats.circuit_tracer import (
    read_circuit_tracer,
    read_circuit_tracer_clt,
    read_circuit_tracer_transcoders,
    write_circuit_tracer,
    write_circuit_tracer_clt,
    write_circuit_tracer_transcoders,
)
from saekit.dictionaries.registry import build_dictionary
from saekit.errors import SaekitError

D, M, LAYERS = 16, 48, 3
MODEL = "SmolLM2-135M"
FIXTURES = Path(__file__).parent.parent / "fixtures" / "interop" / "circuit_tracer"


def _rel(a, b) -> float:
    a, b = a.detach(), b.detach()
    return float((a - b).norm() / b.norm().clamp_min(1e-12))


def _transcoder(architecture="jumprelu", skip=False, seed=0):
    torch.manual_seed(seed)
    dictionary = build_dictionary(DictionaryConfig(architecture=architecture, d_in=D, width=M, d_out=D,
                                                   extra={"skip_connection": skip})).eval()
    with torch.no_grad():
        dictionary.W_dec.mul_(2.5)
        dictionary.b_enc.normal_(0, 0.1)
        dictionary.b_dec.normal_()
        if architecture == "jumprelu":
            dictionary.log_threshold.uniform_(-3, -1)
            dictionary.calibrated.fill_(1.0)
        if skip:
            dictionary.W_skip.normal_(0, 0.3)
    return dictionary


def _clt(skip=False, seed=0, layers=LAYERS):
    torch.manual_seed(seed)
    clt = build_dictionary(DictionaryConfig(architecture="clt_jumprelu", d_in=layers * D, width=layers * M,
                                            d_out=layers * D, extra={"layers": layers, "skip_connection": skip}))
    clt = clt.eval()
    with torch.no_grad():
        clt.W_dec.mul_(1.7)
        clt.b_enc.normal_(0, 0.1)
        clt.b_dec.normal_()
        clt.log_threshold.uniform_(-3, -1)
        clt.calibrated.fill_(1.0)
        if skip:
            clt.W_skip.normal_(0, 0.3)
    return clt


def _set_sources(layers=LAYERS):
    return [{"model": MODEL, "site": f"blocks.{i}.mlp_in", "target_site": f"blocks.{i}.mlp_out"}
            for i in range(layers)]


def _clt_source(layers=LAYERS):
    return {"model": MODEL, "site": "blocks.0.mlp_in", "target_site": "blocks.0.mlp_out",
            "sites": [f"blocks.{i}.mlp_in" for i in range(layers)],
            "target_sites": [f"blocks.{i}.mlp_out" for i in range(layers)]}


# ---- circuit-tracer's math, written out from the format ------------------------------------------------

def _plt_reference(t, x):
    """PLT: pre = x W_enc^T + b_enc; JumpReLU pre * (pre > threshold) (ReLU without one); out = z W_dec + b_dec
    + x W_skip^T."""
    pre = x @ t["W_enc"].T + t["b_enc"]
    threshold = t.get("activation_function.threshold")
    z = pre * (pre > threshold) if threshold is not None else pre.clamp_min(0)
    out = z @ t["W_dec"] + t["b_dec"]
    if "W_skip" in t:
        out = out + x @ t["W_skip"].T
    return z, out


def _clt_reference(enc, dec, xs):
    """CLT: z_i = JumpReLU(x_i W_enc_i^T + b_enc_i); y_j = b_dec_j + sum_{i<=j} z_i W_dec_i[:, j-i] + x_j W_skip_j."""
    layers = len(xs)
    zs = []
    for i in range(layers):
        pre = xs[i] @ enc[i][f"W_enc_{i}"].T + enc[i][f"b_enc_{i}"]
        zs.append(pre * (pre > enc[i][f"threshold_{i}"]))
    ys = []
    for j in range(layers):
        y = enc[j][f"b_dec_{j}"] + sum(zs[i] @ dec[i][f"W_dec_{i}"][:, j - i] for i in range(j + 1))
        if f"W_skip_{j}" in enc[j]:
            y = y + xs[j] @ enc[j][f"W_skip_{j}"]
        ys.append(y)
    return zs, ys


# ---- per-layer transcoder sets ----------------------------------------------------------------------

@pytest.mark.parametrize(("architecture", "skip"), [("jumprelu", False), ("jumprelu", True), ("relu", True)])
def test_transcoder_set_round_trip(tmp_path, architecture, skip):
    transcoders = [_transcoder(architecture, skip, seed=i) for i in range(LAYERS)]
    write_circuit_tracer_transcoders(tmp_path / "set", transcoders, _set_sources())
    loaded = read_circuit_tracer(tmp_path / "set")
    assert len(loaded) == LAYERS
    x = torch.randn(64, D, generator=torch.Generator().manual_seed(5))
    for i, (original, (dictionary, source)) in enumerate(zip(transcoders, loaded)):
        assert dictionary.config.architecture == architecture and not dictionary.training
        assert (source["model"], source["site"], source["target_site"]) == (MODEL, f"blocks.{i}.mlp_in",
                                                                            f"blocks.{i}.mlp_out")
        with torch.no_grad():
            a, b = original(x), dictionary(x)
        assert torch.equal(a.latents > 0, b.latents > 0)
        assert (a.latents > 0).any()
        assert _rel(b.latents, a.latents) <= 1e-6
        assert _rel(b.reconstruction, a.reconstruction) <= 1e-6


@pytest.mark.parametrize("skip", [False, True])
def test_written_set_follows_the_layout(tmp_path, skip):
    transcoders = [_transcoder("jumprelu", skip, seed=i) for i in range(LAYERS)]
    write_circuit_tracer(tmp_path / "set", transcoders, _set_sources(), scan="saekit-test")
    config = yaml.safe_load((tmp_path / "set" / "config.yaml").read_text())
    assert config == {"model_kind": "transcoder_set", "model_name": MODEL, "feature_input_hook": "mlp.hook_in",
                      "feature_output_hook": "mlp.hook_out", "scan": "saekit-test"}
    assert sorted(p.name for p in (tmp_path / "set").iterdir()) == \
        ["config.yaml"] + [f"layer_{i}.safetensors" for i in range(LAYERS)]
    x = torch.randn(40, D, generator=torch.Generator().manual_seed(2))
    for i, dictionary in enumerate(transcoders):
        t = load_file(str(tmp_path / "set" / f"layer_{i}.safetensors"))
        shapes = {"W_enc": (M, D), "W_dec": (M, D), "b_enc": (M,), "b_dec": (D,), "activation_function.threshold": (M,)}
        if skip:
            shapes["W_skip"] = (D, D)
        assert {k: tuple(v.shape) for k, v in t.items()} == shapes
        assert all(v.dtype == torch.float32 for v in t.values())
        z, out = _plt_reference(t, x)
        with torch.no_grad():
            latents = dictionary.encode(x)
            reconstruction = dictionary.reconstruct(x, latents)
        assert (z > 0).sum() > 0
        assert _rel(latents, z) <= 1e-6
        assert _rel(reconstruction, out) <= 1e-6


def _write_plt_files(directory: Path, hooks=("mlp.hook_in", "mlp.hook_out"), threshold="positive", skip=True,
                     model=MODEL, layers=2, **config_extra) -> list[dict]:
    g = torch.Generator().manual_seed(3)
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for i in range(layers):
        t = {"W_enc": torch.randn(M, D, generator=g) / 4, "W_dec": torch.randn(M, D, generator=g),
             "b_enc": torch.randn(M, generator=g) / 10, "b_dec": torch.randn(D, generator=g)}
        if threshold == "positive":
            t["activation_function.threshold"] = torch.rand(M, generator=g) / 4 + 0.01
        elif threshold == "zero":
            t["activation_function.threshold"] = torch.zeros(M)
        if skip:
            t["W_skip"] = torch.randn(D, D, generator=g) / 5
        save_file(t, str(directory / f"layer_{i}.safetensors"))
        written.append(t)
    config = {"model_kind": "transcoder_set", "model_name": model, "feature_input_hook": hooks[0],
              "feature_output_hook": hooks[1], **config_extra}
    (directory / "config.yaml").write_text(yaml.safe_dump(config))
    return written


@pytest.mark.parametrize(("threshold", "architecture", "model"), [
    ("positive", "jumprelu", MODEL), ("zero", "relu", "google/gemma-2b"), ("none", "relu", "gpt2")])
def test_reader_matches_circuit_tracer_math(tmp_path, threshold, architecture, model):
    written = _write_plt_files(tmp_path / "ct", threshold=threshold, hooks=("mlp.hook_in", "hook_mlp_out"),
                               model=model)
    loaded = read_circuit_tracer_transcoders(tmp_path / "ct")
    x = torch.randn(32, D, generator=torch.Generator().manual_seed(4))
    for i, (t, (dictionary, source)) in enumerate(zip(written, loaded)):
        assert dictionary.config.architecture == architecture
        assert source["target_site"] == f"blocks.{i}.mlp_out" and source["notes"]
        z, out = _plt_reference(t, x)
        with torch.no_grad():
            result = dictionary(x)
        assert _rel(result.latents, z) <= 1e-6
        assert _rel(result.reconstruction, out) <= 1e-6


# ---- cross-layer transcoders ------------------------------------------------------------------------

def test_clt_round_trip(tmp_path):
    clt = _clt()
    write_circuit_tracer(tmp_path / "clt", clt, _clt_source())
    [(loaded, source)] = read_circuit_tracer(tmp_path / "clt")
    assert loaded.config.architecture == "clt_jumprelu" and loaded.layers == LAYERS and not loaded.training
    assert source["sites"] == [f"blocks.{i}.mlp_in" for i in range(LAYERS)]
    assert source["target_sites"] == [f"blocks.{i}.mlp_out" for i in range(LAYERS)]
    assert (source["model"], source["site"], source["target_site"]) == (MODEL, "blocks.0.mlp_in", "blocks.0.mlp_out")
    xs = [torch.randn(50, D, generator=torch.Generator().manual_seed(10 + i)) for i in range(LAYERS)]
    with torch.no_grad():
        a, b = clt(torch.cat(xs, -1)), loaded(torch.cat(xs, -1))
        assert _rel(b.latents, a.latents) <= 1e-6
        assert _rel(b.reconstruction, a.reconstruction) <= 1e-6
        za = [clt.encode_layer(i, xs[i]) for i in range(LAYERS)]
        zb = [loaded.encode_layer(i, xs[i]) for i in range(LAYERS)]
        for j in range(LAYERS):
            assert (za[j] > 0).any()
            assert _rel(zb[j], za[j]) <= 1e-6
            assert _rel(loaded.decode_layer(j, zb, xs[j]), clt.decode_layer(j, za, xs[j])) <= 1e-6


def test_written_clt_follows_the_layout(tmp_path):
    clt = _clt(seed=1)
    write_circuit_tracer_clt(tmp_path / "clt", clt, _clt_source())
    directory = tmp_path / "clt"
    config = yaml.safe_load((directory / "config.yaml").read_text())
    assert config == {"model_kind": "cross_layer_transcoder", "model_name": MODEL,
                      "feature_input_hook": "mlp.hook_in", "feature_output_hook": "mlp.hook_out"}
    assert sorted(p.name for p in directory.iterdir()) == sorted(
        ["config.yaml"] + [f"W_{kind}_{i}.safetensors" for kind in ("enc", "dec") for i in range(LAYERS)])
    enc = [load_file(str(directory / f"W_enc_{i}.safetensors")) for i in range(LAYERS)]
    dec = [load_file(str(directory / f"W_dec_{i}.safetensors")) for i in range(LAYERS)]
    for i in range(LAYERS):
        shapes = {f"W_enc_{i}": (M, D), f"b_enc_{i}": (M,), f"b_dec_{i}": (D,), f"threshold_{i}": (M,)}
        assert {k: tuple(v.shape) for k, v in enc[i].items()} == shapes
        assert {k: tuple(v.shape) for k, v in dec[i].items()} == {f"W_dec_{i}": (M, LAYERS - i, D)}
    xs = [torch.randn(30, D, generator=torch.Generator().manual_seed(20 + i)) for i in range(LAYERS)]
    zs, ys = _clt_reference(enc, dec, xs)
    with torch.no_grad():
        latents = [clt.encode_layer(i, xs[i]) for i in range(LAYERS)]
        for j in range(LAYERS):
            assert (zs[j] > 0).any()
            assert _rel(latents[j], zs[j]) <= 1e-6
            assert _rel(clt.decode_layer(j, latents, xs[j]), ys[j]) <= 1e-6


def _write_clt_files(directory: Path, layers=LAYERS, threshold=True, skip=True, hooks=("mlp.hook_in", "mlp.hook_out")):
    g = torch.Generator().manual_seed(6)
    directory.mkdir(parents=True, exist_ok=True)
    enc, dec = [], []
    for i in range(layers):
        e = {f"W_enc_{i}": torch.randn(M, D, generator=g) / 4, f"b_enc_{i}": torch.randn(M, generator=g) / 10,
             f"b_dec_{i}": torch.randn(D, generator=g)}
        if threshold:
            e[f"threshold_{i}"] = torch.rand(M, generator=g) / 4 + 0.01
        if skip:
            e[f"W_skip_{i}"] = torch.randn(D, D, generator=g) / 5
        w = {f"W_dec_{i}": torch.randn(M, layers - i, D, generator=g)}
        save_file(e, str(directory / f"W_enc_{i}.safetensors"))
        save_file(w, str(directory / f"W_dec_{i}.safetensors"))
        enc.append(e)
        dec.append(w)
    config = {"model_kind": "cross_layer_transcoder", "model_name": MODEL, "feature_input_hook": hooks[0],
              "feature_output_hook": hooks[1]}
    (directory / "config.yaml").write_text(yaml.safe_dump(config))
    return enc, dec


def test_clt_reader_matches_circuit_tracer_math(tmp_path):
    enc, dec = _write_clt_files(tmp_path / "ct")
    clt, source = read_circuit_tracer_clt(tmp_path / "ct")
    assert source["layers"] == f"0-{LAYERS - 1}" and "W_skip_N applied" in source["notes"][0]
    assert clt.W_skip is not None
    xs = [torch.randn(30, D, generator=torch.Generator().manual_seed(30 + i)) for i in range(LAYERS)]
    zs, ys = _clt_reference(enc, dec, xs)
    with torch.no_grad():
        latents = [clt.encode_layer(i, xs[i]) for i in range(LAYERS)]
        result = clt(torch.cat(xs, -1))
    assert _rel(result.latents, torch.cat(zs, -1)) <= 1e-6
    assert _rel(result.reconstruction, torch.cat(ys, -1)) <= 1e-6
    for j in range(LAYERS):
        assert _rel(latents[j], zs[j]) <= 1e-6
        assert _rel(clt.decode_layer(j, latents, xs[j]), ys[j]) <= 1e-6


# ---- anchor fixtures (written by saekit, checked with circuit-tracer's own loaders) -------------------------

def _fixture_dirs():
    return sorted(p for p in FIXTURES.glob("*") if (p / "expected.safetensors").is_file()) if FIXTURES.is_dir() else []


@pytest.mark.parametrize("fixture", _fixture_dirs(), ids=lambda p: p.name)
def test_reader_reproduces_anchor_fixture(fixture):
    expected = load_file(str(fixture / "expected.safetensors"))
    loaded = read_circuit_tracer(fixture / "transcoders")
    with torch.no_grad():
        if len(loaded) == 1 and loaded[0][0].config.architecture.startswith("clt"):
            clt = loaded[0][0]
            xs = [expected[f"inputs_{i}"] for i in range(clt.layers)]
            latents = [clt.encode_layer(i, xs[i]) for i in range(clt.layers)]
            outputs = [clt.decode_layer(j, latents, xs[j]) for j in range(clt.layers)]
        else:
            xs = [expected[f"inputs_{i}"] for i in range(len(loaded))]
            latents = [d.encode(x) for (d, _), x in zip(loaded, xs)]
            outputs = [d.reconstruct(x, z) for (d, _), x, z in zip(loaded, xs, latents)]
    for i, (z, y) in enumerate(zip(latents, outputs)):
        assert _rel(z, expected[f"latents_{i}"]) <= 1e-5
        assert _rel(y, expected[f"reconstruction_{i}"]) <= 1e-5


# ---- refusals -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("change", "needle"), [
    ({"hooks": ("hook_resid_mid", "hook_mlp_out")}, "hook_resid_mid"),
    ({"hooks": ("ln2.hook_normalized", "hook_mlp_out")}, "before its weight"),
    ({"hooks": ("hook_resid_pre", "mlp.hook_out")}, "no saekit site"),
    ({"hooks": ("mlp.hook_in", "hook_resid_post")}, "no saekit site"),
    ({"hooks": ("mlp.hook_in", "hook_mlp_out"), "model": "google/gemma-2-2b"}, "post-MLP norm"),
    ({"hooks": (["mlp.hook_in"], "mlp.hook_out")}, "needs feature_input_hook"),
    ({"transcoders": ["hf://google/gemma-scope-2b-pt-transcoders/layer_0/params.npz"]}, "'transcoders'"),
])
def test_bad_config_is_one_line(tmp_path, change, needle):
    _write_plt_files(tmp_path / "ct", **change)
    assert needle in refusal(read_circuit_tracer, tmp_path / "ct")


def test_bad_files_are_one_line(tmp_path):
    assert "config.yaml not found" in refusal(read_circuit_tracer, _empty(tmp_path / "empty"))
    _write_plt_files(tmp_path / "gap", layers=3)
    (tmp_path / "gap" / "layer_1.safetensors").unlink()
    assert "layer_1.safetensors is missing" in refusal(read_circuit_tracer, tmp_path / "gap")
    written = _write_plt_files(tmp_path / "shape", layers=2)
    save_file({**written[1], "W_enc": torch.zeros(M, D + 1)}, str(tmp_path / "shape" / "layer_1.safetensors"))
    assert "W_enc has shape (48, 17)" in refusal(read_circuit_tracer, tmp_path / "shape")
    written = _write_plt_files(tmp_path / "width", layers=2)
    t = {k: (v[: M // 2] if k in ("W_enc", "W_dec", "b_enc", "activation_function.threshold") else v)
         for k, v in written[1].items()}
    save_file(t, str(tmp_path / "width" / "layer_1.safetensors"))
    assert "d_transcoder" in refusal(read_circuit_tracer, tmp_path / "width")
    written = _write_plt_files(tmp_path / "extra", layers=1)
    save_file({**written[0], "log_thresholds": torch.zeros(M)}, str(tmp_path / "extra" / "layer_0.safetensors"))
    assert "log_thresholds" in refusal(read_circuit_tracer, tmp_path / "extra")
    written = _write_plt_files(tmp_path / "negative", layers=1)
    save_file({**written[0], "activation_function.threshold": -torch.ones(M)},
              str(tmp_path / "negative" / "layer_0.safetensors"))
    assert "positive" in refusal(read_circuit_tracer, tmp_path / "negative")
    _write_plt_files(tmp_path / "corrupt", layers=1)
    (tmp_path / "corrupt" / "layer_0.safetensors").write_bytes(b"\x80\x04not safetensors")
    assert "not safetensors" in refusal(read_circuit_tracer, tmp_path / "corrupt")
    (tmp_path / "yaml").mkdir()
    (tmp_path / "yaml" / "config.yaml").write_text("model_kind: [unclosed\n")
    assert "YAML" in refusal(read_circuit_tracer, tmp_path / "yaml")
    (tmp_path / "kind").mkdir()
    (tmp_path / "kind" / "config.yaml").write_text("model_kind: lorsa\n")
    assert "model_kind" in refusal(read_circuit_tracer, tmp_path / "kind")


def _empty(directory: Path) -> Path:
    directory.mkdir()
    return directory


def test_pickle_is_refused(tmp_path):
    directory = pickle_only(tmp_path / "ct", "config.yaml", "layer_0.pt")
    (directory / "config.yaml").write_text(yaml.safe_dump({
        "model_kind": "transcoder_set", "model_name": MODEL, "feature_input_hook": "mlp.hook_in",
        "feature_output_hook": "mlp.hook_out"}))
    assert "never unpickles" in refusal(read_circuit_tracer, directory)


def test_bad_clt_files_are_one_line(tmp_path):
    _write_clt_files(tmp_path / "relu", threshold=False)
    assert "ReLU CLT" in refusal(read_circuit_tracer, tmp_path / "relu")
    _write_clt_files(tmp_path / "nodec")
    (tmp_path / "nodec" / "W_dec_2.safetensors").unlink()
    assert "W_dec_2.safetensors is missing" in refusal(read_circuit_tracer, tmp_path / "nodec")
    _write_clt_files(tmp_path / "dec")
    save_file({"W_dec_1": torch.zeros(M, LAYERS, D)}, str(tmp_path / "dec" / "W_dec_1.safetensors"))
    assert "W_dec_1 has shape (48, 3, 16)" in refusal(read_circuit_tracer, tmp_path / "dec")
    enc, _ = _write_clt_files(tmp_path / "skip")
    save_file({k: v for k, v in enc[2].items() if k != "W_skip_2"}, str(tmp_path / "skip" / "W_enc_2.safetensors"))
    assert "W_skip_2" in refusal(read_circuit_tracer, tmp_path / "skip")
    _write_clt_files(tmp_path / "hook", hooks=("hook_resid_mid", "hook_mlp_out"))
    assert "hook_resid_mid" in refusal(read_circuit_tracer, tmp_path / "hook")
    directory = pickle_only(tmp_path / "pickled", "config.yaml", "W_enc_0.pt")
    (directory / "config.yaml").write_text(yaml.safe_dump({
        "model_kind": "cross_layer_transcoder", "model_name": MODEL, "feature_input_hook": "mlp.hook_in",
        "feature_output_hook": "mlp.hook_out"}))
    assert "never unpickles" in refusal(read_circuit_tracer, directory)


def _refused_write(tmp_path, write, *args, **kwargs) -> str:
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(SaekitError) as excinfo:
        write(tmp_path / "out", *args, **kwargs)
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    return one_line(excinfo)


def test_writer_refusals_write_nothing(tmp_path):
    topk = build_dictionary(DictionaryConfig(architecture="topk", d_in=D, width=M, d_out=D, k=4))
    assert "ReLU or JumpReLU" in _refused_write(tmp_path, write_circuit_tracer, [topk], model_name=MODEL)
    sae = build_dictionary(DictionaryConfig(architecture="jumprelu", d_in=D, width=M))
    assert "not a transcoder" in _refused_write(tmp_path, write_circuit_tracer, [sae], model_name=MODEL)
    mixed = [_transcoder(skip=True), _transcoder(skip=False)]
    assert "all or none" in _refused_write(tmp_path, write_circuit_tracer, mixed, model_name=MODEL)
    shifted = [{"model": MODEL, "site": "blocks.4.mlp_in", "target_site": "blocks.4.mlp_out"}]
    assert "blocks.i.mlp_in" in _refused_write(tmp_path, write_circuit_tracer, [_transcoder()], shifted)
    resid = [{"model": MODEL, "site": "blocks.0.resid_pre", "target_site": "blocks.0.mlp_out"}]
    assert "resid_pre" in _refused_write(tmp_path, write_circuit_tracer, [_transcoder()], resid)
    assert "model name" in _refused_write(tmp_path, write_circuit_tracer, [_transcoder()])
    clt_topk = build_dictionary(DictionaryConfig(architecture="clt_topk", d_in=2 * D, width=2 * M, d_out=2 * D, k=4,
                                                 extra={"layers": 2}))
    assert "clt_topk" in _refused_write(tmp_path, write_circuit_tracer, clt_topk, model_name=MODEL)
    assert "W_skip_N" in _refused_write(tmp_path, write_circuit_tracer, _clt(skip=True), _clt_source())
    later = {**_clt_source(), "sites": [f"blocks.{i}.mlp_in" for i in range(2, 2 + LAYERS)]}
    assert "blocks.2.mlp_in" in _refused_write(tmp_path, write_circuit_tracer, _clt(), later)
    assert list(tmp_path.iterdir()) == []


def test_rewrite_replaces_the_directory_whole(tmp_path):
    write_circuit_tracer(tmp_path / "out", [_transcoder(seed=i) for i in range(LAYERS)], _set_sources())
    write_circuit_tracer(tmp_path / "out", [_transcoder(seed=9)], _set_sources(1))
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["config.yaml", "layer_0.safetensors"]
    assert len(read_circuit_tracer(tmp_path / "out")) == 1
