"""The one table of dictionary formats saekit knows: per format, how a path is recognised, read and written.

Detection tries the rows in the table's order and the first that recognises a path names its format. The order
matters where the files overlap, so the rows stand in it:

- ``circuit-tracer``: ``config.yaml`` (a transcoder set or a CLT); it wins over every other file beside it.
- ``gemma-scope``: ``params.npz``, or Gemma Scope 2's ``params.safetensors`` + ``config.json`` (read only; sites
  from the repository path); named as a file or its folder.
- ``saelens``: ``cfg.json`` + ``sae_weights.safetensors``.
- ``sparsify``: ``cfg.json`` + ``sae.safetensors`` (a hookpoint folder), or a folder of them.
- ``dictionary-learning``: ``config.json`` + ``ae.pt`` (a trainer folder, or a ``trainSAE`` save_dir of
  ``trainer_*`` folders; a checkpoint ``.pt`` named directly); read only, the state dict through
  ``torch.load(weights_only=True)``. Before saekit: both keep a ``config.json``.
- ``saekit``: a run directory (``dictionary/`` inside), a saved dictionary (``config.json`` +
  ``weights.safetensors``), or a directory of runs (``--sites``); last, as any ``config.json`` could be a run's.

``READ_FORMATS``, ``WRITE_FORMATS`` and ``CONVERT_TARGETS`` are the table's names, so a new format is one row.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from saekit.dictionaries.base import Dictionary
from saekit.dictionaries.crosslayer import CrossLayerTranscoder
from saekit.dictionaries.formats import circuit_tracer, dictionary_learning, gemma_scope, saelens, sparsify
from saekit.dictionaries.formats.common import site_layer
from saekit.dictionaries.registry import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    load_dictionary,
    read_sites,
    save_dictionary,
    written_sites,
)
from saekit.errors import SaekitError
from saekit.rundir import DICTIONARY_DIR

Entry = tuple[Dictionary, dict[str, Any]]  # a dictionary and its source (model, sites, notes on conventions)
Found = list[Entry]
Reader = Callable[[Path], Found]
Writer = Callable[[Path, Found, str | None], None]  # (an empty directory OUT, the dictionaries, a model name)

NEURONPEDIA = "neuronpedia"  # a convert target built from a run's analysis, not a dictionary: jobs/convert.py's
_INNER = "one"  # the folder a writer that makes its own directory writes into, before its files move up into OUT


@dataclass(frozen=True)
class Format:
    """One format: its name (``FORMAT:PATH``, ``--to``), its files in a few words, and how to find, read, write it."""

    name: str
    describe: str  # in the line saying a path holds none of the formats
    detect: Callable[[Path], bool]  # whether an existing path (directory or file) holds it
    read: Reader  # every (dictionary, source) the path holds, in layer order
    write: Writer | None = None  # None: saekit reads it only


# ---- detecting and reading ----------------------------------------------------------------------------

def _has(*names: str) -> Callable[[Path], bool]:
    """Whether a directory holds every one of these files (false for a file)."""
    return lambda path: all((path / name).is_file() for name in names)


_is_sparsify = _has(sparsify.CONFIG_FILE, sparsify.WEIGHTS_FILE)
_is_saekit_dictionary = _has(CONFIG_FILE, WEIGHTS_FILE)


def _one(read: Callable[[Path], Entry]) -> Reader:
    """The reader of a format holding one dictionary per path."""
    return lambda path: [read(path)]


def _each(folders: Callable[[Path], list[Path]], read: Callable[[Path], Entry]) -> Reader:
    """The reader of a format holding one dictionary per folder: every folder ``folders`` finds in the path."""
    return lambda path: [read(folder) for folder in folders(path)]


def _sparsify_folders(path: Path) -> list[Path]:
    """A hookpoint folder itself, or the hookpoint folders inside (as sparsify saves them)."""
    return [path] if _is_sparsify(path) else sorted(child for child in path.glob("*") if _is_sparsify(child))


def _is_gemma_scope(path: Path) -> bool:
    if path.is_file():
        return path.suffix == ".npz" or path.name == gemma_scope.PARAMS_SAFETENSORS
    return any((path / name).is_file() for name in (gemma_scope.PARAMS_FILE, gemma_scope.PARAMS_SAFETENSORS))


def _is_dictionary_learning(path: Path) -> bool:
    if path.is_file():
        return path.suffix == ".pt"  # a checkpoint named directly
    return bool(dictionary_learning.dictionary_learning_folders(path))


def _trainer_folders(path: Path) -> list[Path]:
    """dictionary_learning's trainer folders in a directory, else the path itself (a checkpoint ``.pt``)."""
    return (dictionary_learning.dictionary_learning_folders(path) if path.is_dir() else []) or [path]


def _saekit_folders(path: Path) -> list[Path]:
    """The saved dictionaries a saekit path names: itself, its run's, or those of the runs (or dictionaries) inside."""
    if _is_saekit_dictionary(path):
        return [path]
    if _is_saekit_dictionary(path / DICTIONARY_DIR):
        return [path / DICTIONARY_DIR]
    found = []
    for child in sorted(path.glob("*")):
        if _is_saekit_dictionary(child / DICTIONARY_DIR):
            found.append(child / DICTIONARY_DIR)
        elif _is_saekit_dictionary(child):
            found.append(child)
    return found


def _read_saekit(path: Path) -> Found:
    found = _saekit_folders(path)
    if not found:
        raise SaekitError(f"{path} holds no saekit dictionary (config.json + weights.safetensors, or a run)")
    return [load_dictionary(directory) for directory in found]


# ---- writing ------------------------------------------------------------------------------------------

def _folder_name(source: dict[str, Any], index: int) -> str:
    """A folder name for one of several dictionaries: the site it writes (or reads)."""
    sites = written_sites(source) if (source.get("target_site") or source.get("site")) else []
    return sites[0] if len(sites) == 1 else f"dictionary_{index}"


def _lift(inner: Path) -> None:
    """Move a writer's directory's files up into its parent (the writers make their own directory)."""
    for child in inner.iterdir():
        child.replace(inner.parent / child.name)
    inner.rmdir()


def _here_or_per_site(write_one: Callable[[Path, Dictionary, dict[str, Any]], object]) -> Writer:
    """The saekit and SAELens layouts: one dictionary straight into OUT, several into ``OUT/<site>/``."""
    def write(out: Path, found: Found, model_name: str | None) -> None:
        if len(found) == 1:
            write_one(out / _INNER, *found[0])
            _lift(out / _INNER)
            return
        for index, (dictionary, source) in enumerate(found):
            write_one(out / _folder_name(source, index), dictionary, source)
    return write


def _write_sparsify(out: Path, found: Found, model_name: str | None) -> None:
    """``OUT/<hookpoint>/`` per dictionary (``layers.14``, ``layers.14.mlp``), as sparsify saves."""
    for dictionary, source in found:
        hookpoint = sparsify.site_hookpoint(source.get("target_site") or source.get("site"))
        sparsify.write_sparsify(out / hookpoint, dictionary, source)


def _layer(source: dict[str, Any]) -> int:
    reads = read_sites(source) if source.get("site") or source.get("sites") else []
    if len(reads) != 1:
        raise SaekitError("circuit-tracer takes per-layer transcoders (one site each) or one CLT")
    return site_layer(reads[0])


def _every_layer(found: Found) -> Found:
    """Per-layer transcoders in layer order, refused unless they cover every layer from 0."""
    ordered = sorted(found, key=lambda item: _layer(item[1]))
    layers = [_layer(source) for _, source in ordered]
    if layers != list(range(len(layers))):
        raise SaekitError(f"circuit-tracer needs a transcoder for every layer from 0 with none missing; these "
                          f"replace layers {layers}")
    return ordered


def _write_circuit_tracer(out: Path, found: Found, model_name: str | None) -> None:
    """OUT holds the transcoder set (every layer from 0, MLP in -> MLP out) or the CLT."""
    if len(found) == 1 and isinstance(found[0][0], CrossLayerTranscoder) and found[0][0].layers > 1:
        circuit_tracer.write_circuit_tracer(out / _INNER, found[0][0], found[0][1], model_name=model_name)
    else:
        ordered = _every_layer(found)
        circuit_tracer.write_circuit_tracer(out / _INNER, [d for d, _ in ordered], [s for _, s in ordered],
                                            model_name=model_name)
    _lift(out / _INNER)


# ---- the table ----------------------------------------------------------------------------------------

FORMATS: tuple[Format, ...] = (  # in detection order (the module docstring says why)
    Format("circuit-tracer", f"circuit-tracer {circuit_tracer.CONFIG_FILE}", _has(circuit_tracer.CONFIG_FILE),
           circuit_tracer.read_circuit_tracer, _write_circuit_tracer),
    Format("gemma-scope", f"Gemma Scope {gemma_scope.PARAMS_FILE} or {gemma_scope.PARAMS_SAFETENSORS}",
           _is_gemma_scope, _one(gemma_scope.read_gemma_scope)),
    Format("saelens", f"SAELens {saelens.CONFIG_FILE} + {saelens.WEIGHTS_FILE}",
           _has(saelens.CONFIG_FILE, saelens.WEIGHTS_FILE), _one(saelens.read_saelens),
           _here_or_per_site(saelens.write_saelens)),
    Format("sparsify", f"sparsify {sparsify.CONFIG_FILE} + {sparsify.WEIGHTS_FILE}",
           lambda path: bool(_sparsify_folders(path)), _each(_sparsify_folders, sparsify.read_sparsify),
           _write_sparsify),
    Format("dictionary-learning",
           f"dictionary_learning {dictionary_learning.CONFIG_FILE} + {dictionary_learning.WEIGHTS_FILE}",
           _is_dictionary_learning, _each(_trainer_folders, dictionary_learning.read_dictionary_learning)),
    Format("saekit", f"a saekit run or {CONFIG_FILE} + {WEIGHTS_FILE}", lambda path: bool(_saekit_folders(path)),
           _read_saekit, _here_or_per_site(save_dictionary)),
)
_BY_NAME = {fmt.name: fmt for fmt in FORMATS}
READ_FORMATS = tuple(_BY_NAME)
WRITE_FORMATS = tuple(fmt.name for fmt in FORMATS if fmt.write is not None)
CONVERT_TARGETS = (*WRITE_FORMATS, NEURONPEDIA)  # saekit convert --to: the formats, or an upload set of a run


def reader(name: str) -> Reader:
    """The reader of the format called ``name``; one line naming the formats if there is none."""
    if name not in _BY_NAME:
        raise SaekitError(f"unknown format {name!r}; saekit reads {', '.join(READ_FORMATS)}")
    return _BY_NAME[name].read


def writer(name: str) -> Writer:
    """The writer of the format called ``name``; one line naming the targets if saekit writes none by that name."""
    write = _BY_NAME[name].write if name in _BY_NAME else None
    if write is None:
        raise SaekitError(f"unknown target format {name!r}; saekit writes {', '.join(CONVERT_TARGETS)}")
    return write
