"""``saekit convert``: a dictionary (or a set of them) from any format saekit reads into another.

Sources: a saekit run, a directory of runs (``--sites``), a SAELens / sparsify / circuit-tracer
directory or a Gemma Scope ``params.npz`` (``formats/detect.py``). Targets and their layouts:

- ``saekit``: the saved-dictionary layout (``config.json`` + ``weights.safetensors``); several
  dictionaries go to ``OUT/<site>/``. (A dictionary without a run's data settings; ``saekit train``
  makes runs.)
- ``saelens``: ``OUT`` for one SAE, ``OUT/<site>/`` for several.
- ``sparsify``: ``OUT/<hookpoint>/`` per dictionary (``layers.14``, ``layers.14.mlp``), as sparsify saves.
- ``circuit-tracer``: ``OUT`` holds the transcoder set (every layer from 0, MLP in -> MLP out) or the CLT.
- ``neuronpedia``: an upload set (release, model, source set and source records; features, activations
  and explanations as ``batch-<i>.jsonl.gz``) built from a run's analysis (``saekit analyze``) and its
  autointerp results if any (``saekit/dashboard/neuronpedia_upload.py``); the source must be one run
  (an imported dictionary's run too).

The output appears whole or not at all: everything is written to a temporary directory first, and
a dictionary the target cannot hold (a gated SAE into sparsify's TopK-only format) fails before then.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from saekit.analysis.store import ANALYSIS_DIR, open_run_store, store_exists
from saekit.autointerp.pipeline import scores_for_dashboard
from saekit.dashboard.neuronpedia_upload import UploadConfig, write_upload_set
from saekit.dictionaries.base import Dictionary
from saekit.dictionaries.crosslayer import CrossLayerTranscoder
from saekit.dictionaries.formats import write_circuit_tracer, write_saelens, write_sparsify
from saekit.dictionaries.formats.detect import CONVERT_TARGETS, read_dictionaries
from saekit.dictionaries.formats.sparsify import site_hookpoint
from saekit.dictionaries.registry import (
    dictionary_fingerprint,
    load_dictionary,
    read_sites,
    save_dictionary,
    written_sites,
)
from saekit.errors import SaekitError
from saekit.io import replace_directory
from saekit.models.loading import load_model_config, model_sizes
from saekit.models.sites import parse_site
from saekit.training.run import DICTIONARY_DIR, load_run_config

Found = list[tuple[Dictionary, dict[str, Any]]]


def _name(source: dict[str, Any], index: int) -> str:
    """A folder name for one of several dictionaries: the site it writes (or reads)."""
    sites = written_sites(source) if (source.get("target_site") or source.get("site")) else []
    return sites[0] if len(sites) == 1 else f"dictionary_{index}"


def _layer(source: dict[str, Any]) -> int:
    reads = read_sites(source) if source.get("site") or source.get("sites") else []
    if len(reads) != 1:
        raise SaekitError("circuit-tracer takes per-layer transcoders (one site each) or one CLT")
    return parse_site(reads[0]).layer


def _lift(inner: Path) -> None:
    """Move a writer's directory's files up into its parent (the writers make their own directory)."""
    for child in inner.iterdir():
        child.replace(inner.parent / child.name)
    inner.rmdir()


def _write_saekit(out: Path, found: Found) -> None:
    if len(found) == 1:
        save_dictionary(out, *found[0])
        return
    for index, (dictionary, source) in enumerate(found):
        save_dictionary(out / _name(source, index), dictionary, source)


def _write_saelens(out: Path, found: Found) -> None:
    if len(found) == 1:
        _lift(write_saelens(out / "sae", *found[0]))
        return
    for index, (dictionary, source) in enumerate(found):
        write_saelens(out / _name(source, index), dictionary, source)


def _write_sparsify(out: Path, found: Found) -> None:
    for dictionary, source in found:
        write_sparsify(out / site_hookpoint(source.get("target_site") or source.get("site")), dictionary, source)


def _write_circuit_tracer(out: Path, found: Found, model_name: str | None) -> None:
    if len(found) == 1 and isinstance(found[0][0], CrossLayerTranscoder) and found[0][0].layers > 1:
        write_circuit_tracer(out / "set", found[0][0], found[0][1], model_name=model_name)
    else:
        ordered = sorted(found, key=lambda item: _layer(item[1]))
        layers = [_layer(source) for _, source in ordered]
        if layers != list(range(len(layers))):
            raise SaekitError(f"circuit-tracer needs a transcoder for every layer from 0 with none missing; these "
                              f"replace layers {layers}")
        write_circuit_tracer(out / "set", [d for d, _ in ordered], [s for _, s in ordered], model_name=model_name)
    _lift(out / "set")


def write_neuronpedia(run_dir: Path, out: Path, upload: UploadConfig | None = None) -> Path:
    """A run's Neuronpedia upload set, from its analysis store, decoder and explanations."""
    if not (run_dir / DICTIONARY_DIR).is_dir() or not store_exists(run_dir / ANALYSIS_DIR):
        raise SaekitError(f"a Neuronpedia upload set is built from a run's analysis, and {run_dir} has none; run "
                          f"`saekit analyze {run_dir}` (or `saekit explain` for explanations too) first")
    store = open_run_store(run_dir)
    dictionary, _ = load_dictionary(run_dir / DICTIONARY_DIR)
    sizes = model_sizes(load_model_config(load_run_config(run_dir).data.model))  # the config file alone, no weights
    upload = upload or UploadConfig()
    upload = replace(upload, model_layers=upload.model_layers or sizes.layers,
                     neurons_per_layer=upload.neurons_per_layer or sizes.d_mlp,
                     model_dimension=upload.model_dimension or sizes.d_model)
    return write_upload_set(store, dictionary.decoder_directions().detach(), out, upload,
                            interpretations=scores_for_dashboard(run_dir),
                            dictionary_fingerprint=dictionary_fingerprint(run_dir / DICTIONARY_DIR))


def convert(source: str | Path, to: str, out: str | Path, source_format: str | None = None,
            model_name: str | None = None, upload: UploadConfig | None = None) -> tuple[str, int, Path]:
    """Convert ``source`` into format ``to`` at ``out``; returns (the source's format, dictionaries, out)."""
    if to not in CONVERT_TARGETS:
        raise SaekitError(f"unknown target format {to!r}; saekit writes {', '.join(CONVERT_TARGETS)}")
    if to == "neuronpedia":
        return "saekit", 1, write_neuronpedia(Path(source), Path(out), upload)
    fmt, found = read_dictionaries(source, source_format)
    if not found:
        raise SaekitError(f"{source} holds no dictionary")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise SaekitError(f"{out} is a file; give a directory to write to")

    def build(tmp: Path) -> None:
        if to == "saekit":
            _write_saekit(tmp, found)
        elif to == "saelens":
            _write_saelens(tmp, found)
        elif to == "sparsify":
            _write_sparsify(tmp, found)
        else:
            _write_circuit_tracer(tmp, found, model_name)
    return fmt, len(found), replace_directory(out, build)
