"""Faults in what a user hands saekit: names, model directories, widths, damaged analysis stores, report text.

Each refusal goes through the real command line and ends the same way: a non-zero exit, exactly one line on
stderr naming what is wrong (no traceback, no terminal escape sequence), nothing written, and no model
loaded (the loaders are replaced by ones that fail the test; reading a model's config.json is allowed only
where a check needs the model's widths).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from cli_helpers import run_cli
from provenance_helpers import make_run, snapshot, write_word_corpus

from saekit.analysis.analyze import AnalysisConfig, analyze_run
from saekit.analysis.store import MANIFEST
from saekit.cli import main
from saekit.jobs.quickstart import terminal_report
from saekit.locks import LOCK_FILE
from saekit.models import loading
from saekit.render import markdown_cell, markdown_code, markdown_inline, markdown_table, plain_text
from saekit.training.config import TrainConfig


class _NoLoading:
    """Stands in for a transformers Auto* class: loading anything through it fails the test."""

    @staticmethod
    def from_pretrained(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError(f"model loaded: from_pretrained{args}")


def _forbid_loading(monkeypatch: pytest.MonkeyPatch, *, config_too: bool = True) -> None:
    names = ("AutoModelForCausalLM", "AutoTokenizer") + (("AutoConfig",) if config_too else ())
    for name in names:
        monkeypatch.setattr(loading, name, _NoLoading)


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty current directory, so that a default output path ('runs', '.saekit_cache') is seen too."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def _refusal(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """``saekit ARGV`` in-process, which must refuse: its one stderr line."""
    code, err, out = run_cli(argv, capsys)
    assert code != 0, f"exit code {code}; stderr: {err!r}"
    assert "Traceback" not in err and "\x1b" not in err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].strip(), f"expected one stderr line, got {err!r}"
    assert out == ""
    return lines[0]


def _train_flags(tmp: Path, model: Path) -> list[str]:
    return ["train", "--runs-dir", str(tmp / "runs"), "--cache-dir", str(tmp / "cache"), "--model", str(model)]


# ---- run names: printable characters only ----------------------------------------------------------
BAD_NAMES = [("a\nb", "U+000A"), ("\x1b[31mred\x1b[0m", "U+001B"), ("tab\there", "U+0009"),
             ("line\u2028sep", "U+2028"), ("del\x7f", "U+007F"), ("zero\u200bwidth", "U+200B")]


@pytest.mark.parametrize(("name", "named"), BAD_NAMES)
def test_a_run_name_that_is_not_printable_is_refused(name, named, tiny_model_dir, workdir, monkeypatch, capsys):
    _forbid_loading(monkeypatch)
    line = _refusal([*_train_flags(workdir, tiny_model_dir), f"--name={name}"], capsys)
    assert "name must be printable characters only" in line and named in line, line
    line = _refusal(["quickstart", "--runs-dir", str(workdir / "runs"), "--name", name], capsys)
    assert named in line, line
    config = TrainConfig().to_dict() | {"name": name}
    config["data"]["model"] = str(tiny_model_dir)
    (workdir / "config.json").write_text(json.dumps(config))
    line = _refusal(["train", "--config", str(workdir / "config.json"), "--runs-dir", str(workdir / "runs")], capsys)
    assert named in line, line
    assert _files(workdir) == ["config.json"]
    with pytest.raises(AssertionError, match="model loaded"):  # a printable nested name goes on to the model
        main([*_train_flags(workdir, tiny_model_dir), "--name=sweep/topk é 32"])


# ---- a model directory saekit cannot read without unpickling ------------------------------------------
def test_a_model_directory_without_safetensors_is_refused(tiny_model_dir, workdir, monkeypatch, capsys):
    pickled = workdir / "pickled-model"
    shutil.copytree(tiny_model_dir, pickled)
    for weights in pickled.glob("*.safetensors*"):
        weights.rename(pickled / "pytorch_model.bin")  # its bytes are never read: saekit never unpickles
    _forbid_loading(monkeypatch)
    before = _files(workdir)
    line = _refusal(_train_flags(workdir, pickled), capsys)
    assert line == (f"saekit: error: model directory {pickled} holds no .safetensors weights (only pytorch_model.bin);"
                    " saekit reads safetensors only and never unpickles: convert it, e.g. load it in transformers "
                    "and save_pretrained(DIR, safe_serialization=True)"), line
    assert _files(workdir) == before


# ---- k against the width the model gives -------------------------------------------------------------
@pytest.mark.parametrize(("flags", "k", "width"), [
    (["--site", "blocks.1.resid_post"], 33, "width 32 (expansion_factor 1 x 32, the width of blocks.1.resid_post)"),
    (["--site", "blocks.1.mlp_act"], 65, "width 64 (expansion_factor 1 x 64, the width of blocks.1.mlp_act)"),
    (["--architecture", "clt_topk", "--layers", "0-1", "--site", "blocks.0.mlp_in", "--target-site",
      "blocks.0.mlp_out", "--resample-every", "0"], 33, "32 latents per layer (expansion_factor 1 x 64, the width "
                                                        "of blocks.0.mlp_in, blocks.1.mlp_in, over 2 layers)"),
])
def test_k_above_the_width_from_the_expansion_factor_is_refused_before_the_model_loads(
        flags, k, width, tiny_model_dir, workdir, monkeypatch, capsys):
    _forbid_loading(monkeypatch, config_too=False)  # the widths come from config.json alone
    line = _refusal([*_train_flags(workdir, tiny_model_dir), *flags, "--expansion-factor", "1", "--k", str(k)],
                    capsys)
    assert f"k={k} is more than the {width}; lower k or raise expansion_factor or width" in line, line
    assert _files(workdir) == []
    with pytest.raises(AssertionError, match="model loaded"):  # one less fits, and goes on to load the model
        main([*_train_flags(workdir, tiny_model_dir), *flags, "--expansion-factor", "1", "--k", str(k - 1)])


# ---- a damaged analysis store ----------------------------------------------------------------------
@pytest.fixture
def analysed_run(tmp_path: Path, tiny_model_dir: Path, tiny_loaded) -> Path:
    """A run with its analysis, made from stores of older saekit (no fingerprints) so edits are not caught there."""
    (tmp_path / "corpus").mkdir()
    corpus = write_word_corpus(tmp_path / "corpus")
    run = make_run(tmp_path, "run", tiny_model_dir, corpus, seed=1)
    analyze_run(run, tiny_loaded, AnalysisConfig(tokens=60, latents=4, progress=False))
    path = run / "analysis" / MANIFEST
    manifest = json.loads(path.read_text())
    del manifest["dictionary_fingerprint"], manifest["data_fingerprint"]
    path.write_text(json.dumps(manifest))
    return run


def _unwritten(run: Path) -> dict[str, Any]:
    return {name: data for name, data in snapshot(run).items() if not name.endswith(LOCK_FILE)}


@pytest.mark.parametrize(("key", "value", "expected"), [
    ("site", None, "has no 'site'"), ("model", None, "has no 'model'"), ("site", 5, "'site' must be a string"),
    ("config", [], "'config' must be a JSON object"),
])
def test_an_analysis_manifest_without_a_required_key_is_refused(key, value, expected, analysed_run, monkeypatch,
                                                                capsys):
    path = analysed_run / "analysis" / MANIFEST
    manifest = json.loads(path.read_text())
    if value is None:
        del manifest[key]
    else:
        manifest[key] = value
    path.write_text(json.dumps(manifest))
    before = _unwritten(analysed_run)
    _forbid_loading(monkeypatch)
    line = _refusal(["dashboard", str(analysed_run)], capsys)
    assert f"analysis manifest {path} {expected}" in line and "rerun `saekit analyze`" in line, line
    assert _unwritten(analysed_run) == before


def test_a_dictionary_config_whose_section_is_null_is_refused(analysed_run, monkeypatch, capsys):
    path = analysed_run / "dictionary" / "config.json"
    path.write_text(json.dumps(json.loads(path.read_text()) | {"dictionary": None}))
    before = _unwritten(analysed_run)
    _forbid_loading(monkeypatch)
    line = _refusal(["dashboard", str(analysed_run)], capsys)
    assert f"{path}: 'dictionary' must be a JSON object, got null" in line, line
    assert _unwritten(analysed_run) == before


# ---- what reaches the terminal --------------------------------------------------------------------------
DATA_TEXT = ["open_file_to_block() wouldn't", "<script>x</script> & [a](b) *c* ~d~ `e` _f_", "a\\*b \\ c",
             "https://example.com www.example.com", "# heading", "- item", "1. first", "    code", "a|b",
             "under_score snake_case_name _lead trail_", "&amp; &lt; &#96; as written"]


@pytest.mark.parametrize("text", DATA_TEXT)
def test_plain_text_undoes_exactly_the_markdown_escaping(text):
    assert plain_text(markdown_inline(text)) == text
    assert plain_text(markdown_cell(text)) == text
    assert plain_text(markdown_code(text)) == markdown_code(text)  # a code span is literal already


def test_plain_text_keeps_what_saekit_wrote_itself():
    table = markdown_table(["run", "loss"], [["a_b*", 0.5]])
    assert plain_text(table) == "| run | loss |\n|---|---|\n| a_b* | 0.500 |"
    assert plain_text("**bold** heading & text") == "**bold** heading & text"


def test_the_quickstart_prints_plain_text_and_keeps_the_escapes_in_its_file(tmp_path):
    explanation = "`open_file_to_block()` wouldn\\'t"  # as an LLM wrote it, backslash and all
    report = f"# Report\n\nTop latent: {markdown_inline(explanation)}\n"
    assert "&#96;open_file_to_block()&#96; wouldn&#92;'t" in report
    (tmp_path / "report.md").write_text(report)
    assert terminal_report(tmp_path) == f"# Report\n\nTop latent: {explanation}\n"
    assert (tmp_path / "report.md").read_text() == report
