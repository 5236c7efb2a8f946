"""``saekit convert``: saekit runs into circuit-tracer, SAELens, sparsify and back, the same function each way;
refusals are one line and write nothing."""

from __future__ import annotations

import pytest
import torch

from saekit.cli import main
from saekit.dictionaries import DictionaryConfig, build_dictionary
from saekit.dictionaries.formats import read_circuit_tracer, read_saelens, read_sparsify
from saekit.dictionaries.formats.detect import detect_format, read_dictionaries
from saekit.dictionaries.registry import save_dictionary

D, WIDTH, LAYERS = 16, 40, 3
MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"


def _randomised(config: DictionaryConfig, seed: int):
    torch.manual_seed(seed)
    dictionary = build_dictionary(config).eval()
    with torch.no_grad():
        dictionary.b_enc.normal_(0, 0.1)
        dictionary.b_dec.normal_(0, 0.5)
        if hasattr(dictionary, "log_threshold"):
            dictionary.log_threshold.uniform_(-4, -2)
    return dictionary


def _runs(root, architecture: str, layers=range(LAYERS), transcoder: bool = True):
    """Saved dictionaries in run directories (``RUN/dictionary``), as ``saekit train --sites`` leaves them."""
    made = {}
    for layer in layers:
        config = DictionaryConfig(architecture, D, WIDTH, d_out=D if transcoder else None, k=5)
        dictionary = _randomised(config, seed=layer)
        site = f"blocks.{layer}.mlp_in" if transcoder else f"blocks.{layer}.resid_post"
        source = {"model": MODEL, "site": site, "target_site": f"blocks.{layer}.mlp_out" if transcoder else None}
        save_dictionary(root / site / "dictionary", dictionary, source)
        made[layer] = dictionary
    return made


def _same(a, b, x) -> None:
    with torch.no_grad():
        out_a, out_b = a(x), b(x)
    assert (out_a.latents > 0).any()
    torch.testing.assert_close(out_b.latents, out_a.latents, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out_b.reconstruction, out_a.reconstruction, rtol=1e-5, atol=1e-5)


def test_transcoder_runs_to_circuit_tracer_to_saekit_and_saelens(tmp_path, capsys):
    originals = _runs(tmp_path / "runs", "jumprelu")
    x = torch.randn(50, D, generator=torch.Generator().manual_seed(0))
    assert main(["convert", str(tmp_path / "runs"), "--to", "circuit-tracer", str(tmp_path / "ct")]) == 0
    assert "3 dictionaries (saekit) written as circuit-tracer" in capsys.readouterr().out
    assert detect_format(tmp_path / "ct") == "circuit-tracer"
    for layer, (dictionary, source) in enumerate(read_circuit_tracer(tmp_path / "ct")):
        assert source["site"] == f"blocks.{layer}.mlp_in" and source["model"] == MODEL
        _same(originals[layer], dictionary, x)
    assert main(["convert", f"circuit-tracer:{tmp_path / 'ct'}", "--to", "saekit", str(tmp_path / "back")]) == 0
    fmt, back = read_dictionaries(tmp_path / "back")
    assert fmt == "saekit" and len(back) == LAYERS
    for dictionary, source in back:
        _same(originals[int(source["site"].split(".")[1])], dictionary, x)
    saes = _runs(tmp_path / "saes", "jumprelu", transcoder=False)
    assert main(["convert", str(tmp_path / "saes"), "--to", "saelens", str(tmp_path / "sl")]) == 0
    for layer in range(LAYERS):
        dictionary, source = read_saelens(tmp_path / "sl" / f"blocks.{layer}.resid_post")
        assert source["site"] == f"blocks.{layer}.resid_post"
        _same(saes[layer], dictionary, x)


def test_clt_run_to_circuit_tracer_and_one_sae_to_saelens_and_sparsify(tmp_path, capsys):
    torch.manual_seed(0)
    clt = _randomised(DictionaryConfig("clt_jumprelu", D * LAYERS, WIDTH * LAYERS, d_out=D * LAYERS,
                                       extra={"layers": LAYERS}), seed=4)
    sites = {"sites": [f"blocks.{i}.mlp_in" for i in range(LAYERS)],
             "target_sites": [f"blocks.{i}.mlp_out" for i in range(LAYERS)]}
    save_dictionary(tmp_path / "clt" / "dictionary", clt, {"model": MODEL, **sites})
    assert main(["convert", str(tmp_path / "clt"), "--to", "circuit-tracer", str(tmp_path / "ct")]) == 0
    [(again, source)] = read_circuit_tracer(tmp_path / "ct")
    _same(clt, again, torch.randn(30, D * LAYERS, generator=torch.Generator().manual_seed(1)))

    topk = _runs(tmp_path / "sae", "topk", layers=[2], transcoder=False)[2]
    x = torch.randn(50, D, generator=torch.Generator().manual_seed(2))
    run = tmp_path / "sae" / "blocks.2.resid_post"
    assert main(["convert", str(run), "--to", "saelens", str(tmp_path / "one")]) == 0
    _same(topk, read_saelens(tmp_path / "one")[0], x)
    assert main(["convert", f"saelens:{tmp_path / 'one'}", "--to", "sparsify", str(tmp_path / "sp")]) == 0
    assert sorted(p.name for p in (tmp_path / "sp").iterdir()) == [".saekit-output.json", "layers.2"]  # hookpoint
    _same(topk, read_sparsify(tmp_path / "sp" / "layers.2")[0], x)
    assert detect_format(tmp_path / "sp") == "sparsify"


@pytest.mark.parametrize(("case", "message"), [
    ("gated-to-sparsify", "sparsify holds TopK dictionaries only"),
    ("missing-layer", "every layer from 0 with none missing"),
    ("empty", "holds no dictionary saekit knows"),
    ("missing", "does not exist"),
    ("misspelt-prefix", "unknown format 'saelen' in saelen:"),
    ("topk-to-circuit-tracer", "ReLU or JumpReLU only"),
    ("topk-transcoder-to-saelens", "SAELens has no topk transcoder"),
])
def test_refusals_are_one_line_and_write_nothing(tmp_path, capsys, case, message):
    (tmp_path / "empty").mkdir()
    if case == "gated-to-sparsify":
        _runs(tmp_path / "src", "gated", layers=[0], transcoder=False)
        argv = [str(tmp_path / "src" / "blocks.0.resid_post"), "--to", "sparsify"]
    elif case == "missing-layer":
        _runs(tmp_path / "src", "jumprelu", layers=[0, 2])
        argv = [str(tmp_path / "src"), "--to", "circuit-tracer"]
    elif case == "topk-to-circuit-tracer":
        _runs(tmp_path / "src", "topk", layers=[0])
        argv = [str(tmp_path / "src"), "--to", "circuit-tracer"]
    elif case == "topk-transcoder-to-saelens":
        _runs(tmp_path / "src", "topk", layers=[0, 1])
        argv = [str(tmp_path / "src"), "--to", "saelens"]
    elif case == "misspelt-prefix":
        argv = [f"saelen:{tmp_path / 'empty'}", "--to", "sparsify"]
    else:
        argv = [str(tmp_path / case), "--to", "saelens"]
    assert main(["convert", *argv, str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]  # no temporary left either
