"""The table of formats (``formats/table.py``) is the single source of format dispatch: every row is detected from
its own fixtures and read back, every writer's output is detected and read as its own format, the name lists, the
CLI's choices and the "holds no dictionary" line are the table's, and detection keeps its order where files overlap."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import torch

from saekit.cli import build_parser
from saekit.dictionaries import DictionaryConfig, build_dictionary
from saekit.dictionaries.formats import detect, table
from saekit.dictionaries.formats.detect import detect_format, read_dictionaries
from saekit.dictionaries.registry import save_dictionary
from saekit.errors import SaekitError
from saekit.jobs.convert import convert

INTEROP = Path(__file__).resolve().parents[1] / "fixtures" / "interop"
FIXTURES = {  # per format, the paths under INTEROP that its library wrote (scripts/interop/make_fixtures.py)
    "circuit-tracer": ["circuit_tracer/*/transcoders"],
    "gemma-scope": ["gemma_scope/**/params.npz", "gemma_scope/**/params.safetensors"],
    "saelens": ["saelens/*/sae", "saelens/from_saekit/*/sae"],
    "sparsify": ["sparsify/*", "sparsify/*/layers.*"],
    "dictionary-learning": ["dictionary_learning/*", "dictionary_learning/*/trainer_*", "dictionary_learning/*/ae.pt"],
}
MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
D = 8


def _fixtures(name: str) -> list[Path]:
    found = sorted(path for pattern in FIXTURES[name] for path in INTEROP.glob(pattern))
    if name == "gemma-scope":
        found += [path.parent for path in found]  # the file, and the folder holding it
    return found


def _saekit_fixtures(root: Path) -> list[Path]:
    """saekit's own layouts: a saved dictionary, a run, a directory of runs."""
    dictionary = build_dictionary(DictionaryConfig("topk", D, 16, k=2))
    for layer in range(2):
        save_dictionary(root / "runs" / f"run{layer}" / "dictionary", dictionary,
                        {"model": MODEL, "site": f"blocks.{layer}.resid_post"})
    save_dictionary(root / "saved", dictionary, {"model": MODEL, "site": "blocks.0.resid_post"})
    return [root / "saved", root / "runs" / "run0", root / "runs"]


def test_the_name_lists_and_the_cli_choices_are_the_tables():
    names = tuple(fmt.name for fmt in table.FORMATS)
    assert detect.READ_FORMATS == table.READ_FORMATS == names
    assert detect.WRITE_FORMATS == tuple(fmt.name for fmt in table.FORMATS if fmt.write is not None)
    assert detect.CONVERT_TARGETS == (*detect.WRITE_FORMATS, table.NEURONPEDIA)
    [commands] = [action for action in build_parser()._actions if isinstance(action, argparse._SubParsersAction)]
    [to] = [action for action in commands.choices["convert"]._actions if action.dest == "to"]
    assert tuple(to.choices) == detect.CONVERT_TARGETS
    assert set(FIXTURES) | {"saekit"} == set(names)  # a new row needs its fixtures here


@pytest.mark.parametrize("name", [fmt.name for fmt in table.FORMATS])
def test_every_format_is_detected_from_its_own_fixtures_and_read(tmp_path, name):
    paths = _saekit_fixtures(tmp_path) if name == "saekit" else _fixtures(name)
    assert paths, f"no fixtures for {name}"
    assert {path: detect_format(path) for path in paths} == {path: name for path in paths}
    fmt, found = read_dictionaries(paths[0])
    assert fmt == name and found
    prefixed, again = read_dictionaries(f"{name}:{paths[0]}")
    assert prefixed == name and len(again) == len(found)


def _source(name: str) -> tuple[DictionaryConfig, dict]:
    """A dictionary each writer takes: circuit-tracer a ReLU MLP transcoder for layer 0, the others a TopK SAE."""
    if name == "circuit-tracer":
        return (DictionaryConfig("relu", D, 16, d_out=D),
                {"model": MODEL, "site": "blocks.0.mlp_in", "target_site": "blocks.0.mlp_out"})
    return DictionaryConfig("topk", D, 16, k=2), {"model": MODEL, "site": "blocks.0.resid_post"}


@pytest.mark.parametrize("name", table.WRITE_FORMATS)
def test_every_writer_writes_what_its_row_detects_and_reads(tmp_path, name):
    config, source = _source(name)
    torch.manual_seed(0)
    original = build_dictionary(config).eval()
    with torch.no_grad():
        original.b_enc.normal_(0, 0.1)
    save_dictionary(tmp_path / "src", original, source)
    assert convert(tmp_path / "src", name, tmp_path / "out")[:2] == ("saekit", 1)
    assert detect_format(tmp_path / "out") == name
    fmt, [(back, _)] = read_dictionaries(tmp_path / "out")
    assert fmt == name
    x = torch.randn(20, D, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(back(x).reconstruction, original(x).reconstruction, rtol=1e-5, atol=1e-5)


def _touch(folder: Path, *names: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).touch()
    return folder


@pytest.mark.parametrize(("files", "expected"), [
    (("config.yaml", "cfg.json", "sae_weights.safetensors", "config.json", "weights.safetensors"), "circuit-tracer"),
    (("params.safetensors", "config.json", "weights.safetensors", "cfg.json", "sae_weights.safetensors"),
     "gemma-scope"),
    (("cfg.json", "sae_weights.safetensors", "sae.safetensors"), "saelens"),
    (("config.json", "ae.pt", "weights.safetensors"), "dictionary-learning"),
    (("config.json", "weights.safetensors"), "saekit"),
])
def test_detection_keeps_its_order_where_files_overlap(tmp_path, files, expected):
    assert detect_format(_touch(tmp_path / "d", *files)) == expected


def test_a_path_of_no_format_is_one_line_naming_every_row(tmp_path):
    with pytest.raises(SaekitError) as empty:
        detect_format(_touch(tmp_path / "empty"))
    assert "holds no dictionary saekit knows" in str(empty.value)
    assert all(fmt.describe in str(empty.value) for fmt in table.FORMATS)
    (tmp_path / "notes.txt").touch()
    with pytest.raises(SaekitError, match="is a file"):
        detect_format(tmp_path / "notes.txt")
    with pytest.raises(SaekitError, match="unknown format 'nope'; saekit reads circuit-tracer"):
        read_dictionaries(tmp_path / "empty", "nope")
    with pytest.raises(SaekitError, match="unknown target format 'gemma-scope'; saekit writes"):
        convert(tmp_path / "empty", "gemma-scope", tmp_path / "out")
