"""``hf:OWNER/REPO[:PATH]`` names, in huggingface_hub's own cache layout with the network off: ``convert`` takes
them, a PATH cannot leave the snapshot, and a download that stopped midway is named as such."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
import torch

from saekit.cli import main
from saekit.dictionaries import DictionaryConfig, build_dictionary
from saekit.dictionaries.formats import read_saelens
from saekit.dictionaries.registry import save_dictionary

REVISION = "0123456789abcdef0123456789abcdef01234567"


def _saelens_files(root: Path) -> Path:
    """A SAELens SAE on disk, written by saekit's own writer."""
    torch.manual_seed(0)
    dictionary = build_dictionary(DictionaryConfig("topk", 16, 40, k=5)).eval()
    save_dictionary(root / "run" / "dictionary", dictionary, {"model": "default", "site": "blocks.1.resid_post",
                                                              "target_site": None})
    assert main(["convert", str(root / "run"), "--to", "saelens", str(root / "saelens")]) == 0
    return root / "saelens"


def _cache(root: Path, files: Path, subpath: str, drop: str | None = None) -> Path:
    """The hub cache as huggingface_hub lays it out: blobs by hash, the snapshot's files linking to them.

    ``drop`` names a file whose download stopped: its blob is still ``.incomplete`` and its link dangles."""
    cache = root / "hub"
    repo = cache / "models--someone--tiny-saes"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(REVISION)
    (repo / "blobs").mkdir()
    target = repo / "snapshots" / REVISION / subpath
    target.mkdir(parents=True)
    for item in files.iterdir():
        data = item.read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        blob = repo / "blobs" / (digest + (".incomplete" if item.name == drop else ""))
        blob.write_bytes(data[: len(data) // 2] if item.name == drop else data)
        (target / item.name).symlink_to(os.path.relpath(repo / "blobs" / digest, target))
    return cache


@pytest.fixture
def offline(monkeypatch):
    def use(cache: Path) -> None:
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        monkeypatch.setenv("HF_HUB_CACHE", str(cache))
        from huggingface_hub import constants

        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
        monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return use


def test_convert_reads_a_hub_name_from_the_cache(tmp_path, offline):
    files = _saelens_files(tmp_path)
    offline(_cache(tmp_path, files, "layer_1/topk"))
    assert main(["convert", "hf:someone/tiny-saes:layer_1/topk", "--to", "saekit", str(tmp_path / "out")]) == 0
    x = torch.randn(20, 16, generator=torch.Generator().manual_seed(1))
    original, _ = read_saelens(files)
    from saekit.dictionaries.registry import load_dictionary

    converted, _ = load_dictionary(tmp_path / "out")
    with torch.no_grad():
        torch.testing.assert_close(converted(x).reconstruction, original(x).reconstruction)


@pytest.mark.parametrize("command", ["convert", "import"])
def test_a_path_cannot_climb_out_of_the_snapshot(tmp_path, offline, capsys, command):
    files = _saelens_files(tmp_path)
    cache = _cache(tmp_path, files, "layer_1/topk")
    offline(cache)
    # snapshots/<rev>/../../.. is the cache itself; one more climbs to a folder the user never named as a hub repo.
    outside = cache.parent / "elsewhere"
    outside.mkdir()
    for item in files.iterdir():
        (outside / item.name).write_bytes(item.read_bytes())
    name = "hf:someone/tiny-saes:../../../../elsewhere"
    argv = ["convert", name, "--to", "saekit", str(tmp_path / "out")] if command == "convert" else \
        ["import", name, "--runs-dir", str(tmp_path / "imports")]
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "may not hold '..'" in err, err
    assert not (tmp_path / "out").exists() and not (tmp_path / "imports").exists()


def test_a_half_downloaded_snapshot_is_named_as_one(tmp_path, offline, capsys):
    files = _saelens_files(tmp_path)
    offline(_cache(tmp_path, files, "layer_1/topk", drop="sae_weights.safetensors"))
    assert main(["import", "hf:someone/tiny-saes:layer_1/topk", "--runs-dir", str(tmp_path / "imports")]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "is only partly downloaded (1 files missing, 1 incomplete" in err, err
    assert "hf download someone/tiny-saes --include 'layer_1/topk/*'" in err
    assert not (tmp_path / "imports").exists()


def test_an_import_name_must_be_printable(tmp_path, capsys):
    """``saekit import --name`` becomes a directory and is printed: an escape sequence is refused, as for runs."""
    files = _saelens_files(tmp_path)
    assert main(["import", str(files), "--name", "evil\x1b[2J", "--runs-dir", str(tmp_path / "imports")]) == 1
    err = capsys.readouterr().err.strip()
    assert err == r"saekit: error: --name: printable characters only, not U+001B, got 'evil\x1b[2J'"
    assert not (tmp_path / "imports").exists()
