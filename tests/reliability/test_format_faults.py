"""Fault injection into dictionary files, generated from files the libraries wrote themselves: no case here is
listed by hand.

The sources are the readable interop fixtures (``tests/fixtures/interop/``: SAELens, sparsify, Gemma Scope 1
and 2, dictionary_learning, circuit-tracer) and saekit's own format (a fixture converted by ``saekit convert``):
of each format, the fewest sources that between them hold every tensor any of its fixtures holds. From each
source, variants are written: for every tensor of every weights file, one NaN, one inf, the tensor cast to int8
(a count such as ``k``: to float32) and the tensor one shorter on its last axis; every weights file truncated;
every size its config states made one larger. ``saekit convert`` and ``saekit import`` must end each the same
way: a non-zero exit, exactly one line on stderr naming the file and the tensor or stated size (no traceback,
nothing on stdout), nothing written at the output, nothing else in tmp_path changed, and no model loaded (the
loaders fail the test). Controls: every source as it is converts, and its import reaches the model loader.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from cli_helpers import run_cli
from safetensors.torch import load_file, save_file

from saekit import cli
from saekit.cli import main
from saekit.dictionaries.formats.detect import read_dictionaries
from saekit.dictionaries.registry import is_cross_layer
from saekit.errors import SaekitError
from saekit.models import loading

INTEROP = Path(__file__).parent.parent / "fixtures" / "interop"
MARKERS = ("cfg.json", "config.json", "config.yaml", "params.npz", "params.safetensors")  # a reader's entry files
WEIGHT_SUFFIXES = (".safetensors", ".npz", ".pt")
REFERENCES = ("expected.safetensors", "saekit.safetensors", "case.json")  # the fixtures' own answers, not read
# The sizes each format's config states (file, key path): each is made one larger in turn.
STATED_SIZES: dict[str, tuple[str, tuple[tuple[str, ...], ...]]] = {
    "saelens": ("cfg.json", (("d_in",), ("d_sae",), ("d_out",))),
    "sparsify": ("cfg.json", (("d_in",), ("num_latents",))),
    "dictionary-learning": ("config.json", (("trainer", "activation_dim"), ("trainer", "dict_size"))),
    "gemma-scope": ("config.json", (("width",),)),
    "saekit": ("config.json", (("dictionary", "d_in"), ("dictionary", "width"), ("dictionary", "d_out"))),
}


# ---- the sources -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Source:
    """A dictionary directory to corrupt: a fixture folder, or (``saekit``) one converted from a fixture."""

    name: str
    fmt: str
    folder: Path  # the fixture folder read (for saekit: the fixture it is converted from)
    relative: Path  # where the folder goes under the test's source root (the path Gemma Scope's sites come from)
    tensors: dict[str, dict[str, tuple[tuple[int, ...], bool]]]  # file -> tensor -> (shape, floating)
    cross_layer: bool = False  # one dictionary over a layer range (a CLT)
    folds: int = 0  # how many conventions its reader folds (its notes)


def _load(file: Path) -> dict[str, torch.Tensor]:
    """The tensors of a weights file as the library wrote them (safetensors, npz or a torch state dict)."""
    if file.suffix == ".npz":
        with np.load(file, allow_pickle=False) as archive:
            return {name: torch.from_numpy(np.array(archive[name])) for name in archive.files}
    if file.suffix == ".pt":
        return torch.load(file, map_location="cpu", weights_only=True)
    return load_file(str(file))


def _save(file: Path, tensors: dict[str, torch.Tensor]) -> None:
    if file.suffix == ".npz":
        np.savez(file, **{name: value.numpy() for name, value in tensors.items()})
    elif file.suffix == ".pt":
        torch.save(tensors, file)
    else:
        save_file({name: value.contiguous() for name, value in tensors.items()}, str(file))


def _layout(tensors: dict[str, torch.Tensor]) -> dict[str, tuple[tuple[int, ...], bool]]:
    return {name: (tuple(value.shape), value.is_floating_point()) for name, value in tensors.items()}


def _weight_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix in WEIGHT_SUFFIXES and p.name not in REFERENCES)


def _read(folder: Path) -> tuple[str, list[tuple[Any, dict[str, Any]]]] | None:
    try:
        return read_dictionaries(folder)
    except SaekitError:  # a fixture of a refusal (a pickled module): nothing to corrupt
        return None


def _relative(folder: Path, fmt: str) -> Path:
    """Gemma Scope's sites come from the repository path: keep it from the release folder down."""
    parts = folder.relative_to(INTEROP).parts
    start = next((i for i, part in enumerate(parts) if part.startswith("gemma-scope-")), len(parts) - 1)
    return Path(*parts[start:]) if fmt == "gemma-scope" else Path(folder.name)


def _name(folder: Path) -> str:
    """The fixture's path under interop/, without a Gemma Scope repository path."""
    parts = folder.relative_to(INTEROP).parts
    return "/".join(parts[:next((i for i, p in enumerate(parts) if p.startswith("gemma-scope-")), len(parts))])


def _candidates() -> Iterator[Source]:
    """Every readable fixture, and the saekit dictionary each single-dictionary fixture reads into."""
    for folder in sorted({p.parent for name in MARKERS for p in INTEROP.rglob(name)}):
        read = _read(folder)
        if read is None:
            continue
        fmt, found = read
        folds = sum(len(source.get("notes", [])) for _, source in found)
        cross_layer = any(is_cross_layer(dictionary.config.architecture) for dictionary, _ in found)
        tensors = {file.name: _layout(_load(file)) for file in _weight_files(folder)}
        yield Source(_name(folder), fmt, folder, _relative(folder, fmt), tensors, cross_layer, folds)
        if len(found) == 1:
            state = {"weights.safetensors": _layout(dict(found[0][0].state_dict()))}
            yield Source(f"saekit<-{_name(folder)}", "saekit", folder, Path("saekit"), state, cross_layer)


def _items(source: Source) -> set[tuple[str, str, int]]:
    """What a source holds: (file, tensor, rank) for each of its tensors."""
    return {(file, name, len(shape)) for file, tensors in source.tensors.items()
            for name, (shape, _) in tensors.items()}


def _cover(candidates: list[Source]) -> list[Source]:
    """The fewest sources of each format holding every (file, tensor, rank) any of its fixtures holds, chosen
    greedily; ties go to the one whose reader folds the most conventions (an inf must be reported as an inf before
    a bias fold turns it into a NaN), then to the first by name."""
    chosen: list[Source] = []
    for fmt in sorted({source.fmt for source in candidates}):
        pool = [source for source in candidates if source.fmt == fmt]
        missing = set().union(*map(_items, pool))
        while missing:
            best = min(pool, key=lambda source: (-len(_items(source) & missing), -source.folds, source.name))
            chosen.append(best)
            missing -= _items(best)
    return chosen


SOURCES = {source.name: source for source in _cover(list(_candidates()))}
NATIVE = [source for source in SOURCES.values() if source.fmt == "saekit"]


# ---- the faults ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Fault:
    source: str
    kind: str  # nan, inf, dtype, shape, truncated, config
    file: str  # the weights (or config) file changed
    tensor: str = ""  # the tensor changed, or the config key path joined by "."

    @property
    def id(self) -> str:
        return f"{self.source}:{self.file}:{self.tensor}:{self.kind}"


def _tensor_faults(source: Source) -> Iterator[Fault]:
    for file, tensors in source.tensors.items():
        for name, (shape, floating) in tensors.items():
            kinds = ("nan", "inf", "dtype") if floating else ("dtype",)
            yield from (Fault(source.name, kind, file, name) for kind in kinds)
            if shape:  # one shorter on its last axis (a vector's length, a matrix's columns)
                yield Fault(source.name, "shape", file, name)
        yield Fault(source.name, "truncated", file)


def _config_faults(source: Source, config: dict[str, Any]) -> Iterator[Fault]:
    file, keys = STATED_SIZES.get(source.fmt, ("", ()))
    for path in keys:
        if isinstance(_get(config, path), int):
            yield Fault(source.name, "config", file, ".".join(path))


def _get(data: Any, path: tuple[str, ...]) -> Any:
    for part in path:
        data = data.get(part) if isinstance(data, dict) else None
    return data


def _stated_config(source: Source) -> dict[str, Any]:
    """The config a source states its sizes in (saekit's: the one the conversion writes, from the dictionary)."""
    if source.fmt == "saekit":
        [(dictionary, _)] = read_dictionaries(source.folder)[1]
        return {"dictionary": dictionary.config.to_dict()}
    file = source.folder / STATED_SIZES[source.fmt][0] if source.fmt in STATED_SIZES else None
    return json.loads(file.read_text()) if file is not None and file.is_file() else {}


FAULTS = [fault for source in SOURCES.values()
          for fault in (*_tensor_faults(source), *_config_faults(source, _stated_config(source)))]


# ---- writing a variant -----------------------------------------------------------------------------
def _one(value: torch.Tensor, fill: float) -> torch.Tensor:
    changed = value.contiguous().clone()  # a torch-saved tensor may keep a transposed layout
    changed.view(-1)[0] = fill
    return changed


def _faulty(value: torch.Tensor, fault: Fault) -> torch.Tensor:
    if fault.kind == "nan":
        return _one(value, float("nan"))
    if fault.kind == "inf":
        return _one(value, float("inf"))
    if fault.kind == "dtype":
        return value.to(torch.int8) if value.is_floating_point() else value.to(torch.float32)
    return value[..., :-1].clone()


def _corrupt(folder: Path, fault: Fault) -> None:
    target = folder / fault.file
    if fault.kind == "truncated":
        data = target.read_bytes()
        target.write_bytes(data[: len(data) // 2])
    elif fault.kind == "config":
        config = json.loads(target.read_text())
        path = tuple(fault.tensor.split("."))
        parent = _get(config, path[:-1]) if len(path) > 1 else config
        parent[path[-1]] += 1
        target.write_text(json.dumps(config))
    else:
        tensors = _load(target)
        tensors[fault.tensor] = _faulty(tensors[fault.tensor], fault)
        _save(target, tensors)


@pytest.fixture(scope="module")
def native_dirs(tmp_path_factory) -> dict[str, Path]:
    """saekit dictionaries converted from their fixtures by the CLI (saekit's own format, as written)."""
    root = tmp_path_factory.mktemp("native")
    made = {}
    for index, source in enumerate(NATIVE):
        assert main(["convert", str(source.folder), "--to", "saekit", str(root / str(index))]) == 0
        made[source.name] = root / str(index)
    return made


def _place(source: Source, root: Path, native_dirs: dict[str, Path]) -> Path:
    """A copy of the source's files under ``root`` (their reference outputs left behind); returns the folder."""
    folder = root / source.relative
    folder.mkdir(parents=True)
    origin = native_dirs[source.name] if source.fmt == "saekit" else source.folder
    for file in origin.iterdir():
        if file.is_file() and file.name not in REFERENCES:
            shutil.copyfile(file, folder / file.name)
    return folder


# ---- running the CLI -------------------------------------------------------------------------------
class _NoLoading:
    """Stands in for transformers' Auto* classes: any attempt to load a model or its config fails the test."""

    @staticmethod
    def from_pretrained(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError(f"model loaded: from_pretrained{args}")


@pytest.fixture(autouse=True, scope="module")
def one_parser():
    """Every case parses with the same (real) parser: building it is most of a case's time (~40 of ~60 ms)."""
    parser = cli.build_parser()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(cli, "build_parser", lambda: parser)
        yield


@pytest.fixture(autouse=True)
def no_model_loads(monkeypatch):
    for name in ("AutoModelForCausalLM", "AutoTokenizer", "AutoConfig"):
        monkeypatch.setattr(loading, name, _NoLoading)


# The model import is told (a hub id: nothing local to check, nothing fetched: the loaders are replaced).
MODEL = "saekit-tests/no-such-model"


def _commands(folder: Path, tmp: Path) -> dict[str, tuple[list[str], Path]]:
    """Each command's argv and the output it would write."""
    return {"convert": (["convert", str(folder), "--to", "saekit", str(tmp / "out")], tmp / "out"),
            "import": (["import", str(folder), "--runs-dir", str(tmp / "runs"), "--model", MODEL], tmp / "runs")}


def _snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(root.rglob("*"))}


def _expected(fault: Fault, folder: Path) -> list[str]:
    """Patterns the one line must match (paths under tmp_path written <tmp>): the file, the tensor (or the stated
    size), and the fault's own values."""
    file = re.escape(fault.file if fault.kind == "config" else f"/{fault.file}")  # a weights file by its path
    if fault.kind == "truncated":
        return [file]
    if fault.kind == "config":  # the value stated: as key=value beside the shapes, or in a rule's "got ..."
        value = _get(json.loads((folder / fault.file).read_text()), tuple(fault.tensor.split(".")))
        return [file, rf"\b{value}\b"]
    value = _load(folder / fault.file)[fault.tensor]
    tensor = re.escape(fault.tensor)
    if fault.kind == "nan":
        return [file, rf"\({tensor}\)", rf"1 NaN and 0 infinite of {value.numel()} in {tensor}\b"]
    if fault.kind == "inf":  # reported as the file holds it, before any bias fold could make it a NaN
        return [file, rf"\({tensor}\)", rf"0 NaN and 1 infinite of {value.numel()} in {tensor}\b"]
    if fault.kind == "dtype":
        return [file, rf"\b{tensor} has dtype {str(value.dtype).removeprefix('torch.')}\b"]
    return [file, rf"\b{tensor}\b", "has shape"]


@pytest.mark.parametrize("command", ["convert", "import"])
@pytest.mark.parametrize("fault", FAULTS, ids=lambda fault: fault.id)
def test_a_damaged_dictionary_is_one_line_and_writes_nothing(fault, command, native_dirs, tmp_path,
                                                             monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # a default output path would be seen too
    folder = _place(SOURCES[fault.source], tmp_path / "src", native_dirs)
    _corrupt(folder, fault)
    argv, out = _commands(folder, tmp_path)[command]
    before = _snapshot(tmp_path)
    code, err, stdout = run_cli(argv, capsys)
    assert code != 0 and stdout == "", f"exit {code}; stdout {stdout!r}"
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1, f"expected one stderr line, got {err!r}"
    said = lines[0].replace(str(tmp_path), "<tmp>")  # so that no number or name is found in the path
    for pattern in _expected(fault, folder):
        assert re.search(pattern, said), f"{pattern!r} not in {said!r}"
    assert not out.exists() and _snapshot(tmp_path) == before


def test_the_faults_cover_every_format_and_every_tensor():
    """The generator reaches every reader, and every tensor of every source gets every fault that applies."""
    assert {source.fmt for source in SOURCES.values()} == {"saelens", "sparsify", "gemma-scope", "dictionary-learning",
                                                           "circuit-tracer", "saekit"}
    for source in SOURCES.values():
        for file, tensors in source.tensors.items():
            kinds = {(f.tensor, f.kind) for f in FAULTS if f.source == source.name and f.file == file}
            for name, (shape, floating) in tensors.items():
                wanted = {"nan", "inf", "dtype"} if floating else {"dtype"}
                assert {kind for tensor, kind in kinds if tensor == name} == wanted | ({"shape"} if shape else set())
            assert ("", "truncated") in kinds
    stated = {source.fmt for source in SOURCES.values() if any(f.kind == "config" and f.source == source.name
                                                                 for f in FAULTS)}
    assert stated == set(STATED_SIZES)


@pytest.mark.parametrize("name", sorted(SOURCES))
def test_without_a_fault_convert_writes(name, native_dirs, tmp_path, monkeypatch, capsys):
    """The control for convert: every source as it is converts, so each refusal above is its fault's."""
    monkeypatch.chdir(tmp_path)
    argv, out = _commands(_place(SOURCES[name], tmp_path / "src", native_dirs), tmp_path)["convert"]
    code, err, _ = run_cli(argv, capsys)
    assert code == 0 and err == "" and out.is_dir()


@pytest.mark.parametrize("name", sorted(SOURCES))
def test_without_a_fault_import_reaches_the_model(name, native_dirs, tmp_path, monkeypatch, capsys):
    """The control for import: every source as it is gets as far as the model's config, so each refusal above
    is its fault's."""
    monkeypatch.chdir(tmp_path)
    argv, _ = _commands(_place(SOURCES[name], tmp_path / "src", native_dirs), tmp_path)["import"]
    with pytest.raises(AssertionError, match="model loaded"):
        main(argv)
