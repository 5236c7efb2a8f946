"""Which format a directory holds, and reading any of them: the one entry point for imported dictionaries.

A directory is named by its files (or by a prefix such as ``saelens:PATH``):

- ``saekit``: a run directory (``dictionary/`` inside), a saved dictionary (``config.json`` with a
  saekit ``format_version`` + ``weights.safetensors``), or a directory of runs (``--sites``).
- ``saelens``: ``cfg.json`` + ``sae_weights.safetensors``.
- ``sparsify``: ``cfg.json`` + ``sae.safetensors`` (a hookpoint folder), or a folder of them.
- ``circuit-tracer``: ``config.yaml`` (a transcoder set or a CLT).
- ``gemma-scope``: ``params.npz``, or Gemma Scope 2's ``params.safetensors`` + ``config.json`` (read only; sites
  from the repository path).
- ``dictionary-learning``: ``config.json`` + ``ae.pt`` (a trainer folder, or a ``trainSAE`` save_dir of
  ``trainer_*`` folders; a checkpoint ``.pt`` named directly); read only, the state dict through
  ``torch.load(weights_only=True)``.

``read_dictionaries`` returns one (dictionary, source) per dictionary found, in layer order.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from saekit.dictionaries.base import Dictionary
from saekit.dictionaries.formats import circuit_tracer, dictionary_learning, gemma_scope, saelens, sparsify
from saekit.dictionaries.registry import CONFIG_FILE, WEIGHTS_FILE, load_dictionary
from saekit.errors import SaekitError

WRITE_FORMATS = ("saekit", "saelens", "sparsify", "circuit-tracer")
READ_FORMATS = (*WRITE_FORMATS, "gemma-scope", "dictionary-learning")
CONVERT_TARGETS = (*WRITE_FORMATS, "neuronpedia")  # saekit convert --to: the formats, or an upload set of a run
RUN_DICTIONARY = "dictionary"  # a run directory's dictionary folder (saekit.training.run.DICTIONARY_DIR)


def _is_saekit_dictionary(path: Path) -> bool:
    return (path / CONFIG_FILE).is_file() and (path / WEIGHTS_FILE).is_file()


def _is_sparsify(path: Path) -> bool:
    return (path / sparsify.CONFIG_FILE).is_file() and (path / sparsify.WEIGHTS_FILE).is_file()


def _saekit_dictionaries(path: Path) -> list[Path]:
    """The saved dictionaries a saekit path names: itself, its run's, or those of the runs (or dictionaries) inside."""
    if _is_saekit_dictionary(path):
        return [path]
    if _is_saekit_dictionary(path / RUN_DICTIONARY):
        return [path / RUN_DICTIONARY]
    found = []
    for child in sorted(path.glob("*")):
        if _is_saekit_dictionary(child / RUN_DICTIONARY):
            found.append(child / RUN_DICTIONARY)
        elif _is_saekit_dictionary(child):
            found.append(child)
    return found


def split_prefix(name: str) -> tuple[str | None, Path]:
    """``saelens:PATH`` -> ("saelens", PATH); a plain path -> (None, PATH).

    ``WORD:PATH`` where WORD is no format, PATH exists and the name as a whole does not, is a misspelt
    prefix (``saelen:dir``): refused naming the formats, rather than reported as a missing path."""
    prefix, _, rest = name.partition(":")
    if rest and prefix in READ_FORMATS:
        return prefix, Path(rest)
    if rest and re.fullmatch(r"[A-Za-z][\w-]+", prefix) and Path(rest).exists() and not Path(name).exists():
        raise SaekitError(f"unknown format {prefix!r} in {name}; name one of {', '.join(READ_FORMATS)} "
                          "(or hf:REPO[:PATH]), or leave the prefix out to detect it")
    return None, Path(name)


def detect_format(path: Path) -> str:
    """The format a directory holds; one line naming what was looked for if none."""
    if not path.exists():
        raise SaekitError(f"{path} does not exist; give a run directory or a dictionary directory")
    if path.is_file() and (path.suffix == ".npz" or path.name == gemma_scope.PARAMS_SAFETENSORS):
        return "gemma-scope"
    if path.is_file() and path.suffix == ".pt":
        return "dictionary-learning"
    if not path.is_dir():
        raise SaekitError(f"{path} is a file; give the directory that holds the dictionary's files")
    if (path / circuit_tracer.CONFIG_FILE).is_file():
        return "circuit-tracer"
    if (path / gemma_scope.PARAMS_FILE).is_file() or (path / gemma_scope.PARAMS_SAFETENSORS).is_file():
        return "gemma-scope"
    if (path / saelens.CONFIG_FILE).is_file() and (path / saelens.WEIGHTS_FILE).is_file():
        return "saelens"
    if _is_sparsify(path) or any(_is_sparsify(child) for child in path.glob("*")):
        return "sparsify"
    if dictionary_learning.dictionary_learning_folders(path):
        return "dictionary-learning"
    if _saekit_dictionaries(path):
        return "saekit"
    raise SaekitError(f"{path} holds no dictionary saekit knows (a saekit run, SAELens cfg.json + "
                      "sae_weights.safetensors, sparsify cfg.json + sae.safetensors, circuit-tracer config.yaml, "
                      "dictionary_learning config.json + ae.pt); "
                      "name the format with a prefix such as saelens:PATH if the files are renamed")


def read_dictionaries(name: str | Path, fmt: str | None = None) -> tuple[str, list[tuple[Dictionary, dict[str, Any]]]]:
    """The format and every (dictionary, source) a path holds; ``fmt`` (or a ``FORMAT:`` prefix) skips detection."""
    prefix, path = split_prefix(str(name))
    fmt = fmt or prefix or detect_format(path)
    if fmt not in READ_FORMATS:
        raise SaekitError(f"unknown format {fmt!r}; saekit reads {', '.join(READ_FORMATS)}")
    if fmt == "saekit":
        found = _saekit_dictionaries(path)
        if not found:
            raise SaekitError(f"{path} holds no saekit dictionary (config.json + weights.safetensors, or a run)")
        return fmt, [load_dictionary(directory) for directory in found]
    if fmt == "saelens":
        return fmt, [saelens.read_saelens(path)]
    if fmt == "sparsify":
        folders = [path] if _is_sparsify(path) else sorted(child for child in path.glob("*") if _is_sparsify(child))
        return fmt, [sparsify.read_sparsify(folder) for folder in folders]
    if fmt == "gemma-scope":
        return fmt, [gemma_scope.read_gemma_scope(path)]
    if fmt == "dictionary-learning":
        folders = dictionary_learning.dictionary_learning_folders(path) if path.is_dir() else []
        return fmt, [dictionary_learning.read_dictionary_learning(folder) for folder in folders or [path]]
    return fmt, circuit_tracer.read_circuit_tracer(path)
