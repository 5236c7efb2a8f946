"""``saekit convert``: a dictionary (or a set of them) from any format saekit reads into another.

Sources: any row of the format table (``formats/table.py``): a saekit run, a directory of runs (``--sites``), a
SAELens / sparsify / circuit-tracer / dictionary_learning directory or a Gemma Scope ``params.npz``. Targets and
their layouts (the table's writers, but for ``neuronpedia``):

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
``OUT`` is checked before anything is read (``io.OutputTarget``): it may not be, be inside or hold the
source, nor hold anything but an earlier conversion (``--force`` replaces it anyway). ``SRC`` may be an
``hf:OWNER/REPO[:PATH]`` name, read from the local Hugging Face cache as ``saekit import`` reads it.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from saekit.analysis.store import ANALYSIS_DIR, open_run_store, store_exists
from saekit.autointerp.pipeline import scores_for_dashboard
from saekit.dashboard.neuronpedia_upload import UploadConfig, write_upload_set
from saekit.dictionaries.formats.detect import read_dictionaries
from saekit.dictionaries.formats.table import NEURONPEDIA, writer
from saekit.dictionaries.registry import dictionary_fingerprint, load_dictionary
from saekit.errors import SaekitError
from saekit.io import OutputTarget, write_directory
from saekit.jobs.imported import resolve_source
from saekit.models.loading import load_model_config, model_sizes
from saekit.rundir import DICTIONARY_DIR
from saekit.training.config import load_run_config


def write_neuronpedia(run_dir: Path, out: Path, upload: UploadConfig | None = None, force: bool = False) -> Path:
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
                            dictionary_fingerprint=dictionary_fingerprint(run_dir / DICTIONARY_DIR),
                            force=force, inputs=(run_dir,))


def convert(source: str | Path, to: str, out: str | Path, source_format: str | None = None,
            model_name: str | None = None, upload: UploadConfig | None = None,
            force: bool = False) -> tuple[str, int, Path]:
    """Convert ``source`` into format ``to`` at ``out``; returns (the source's format, dictionaries, out)."""
    if to == NEURONPEDIA:
        return "saekit", 1, write_neuronpedia(Path(source), Path(out), upload, force)
    write = writer(to)  # an unknown target is refused before anything is read
    named, path, given = resolve_source(str(source))
    target = OutputTarget(Path(out), "convert", flag="OUT", inputs=(path,), force=force)
    target.check()  # before reading: a refused target costs nothing
    fmt, found = read_dictionaries(path, source_format or named)
    if not found:
        raise SaekitError(f"{given} holds no dictionary")
    return fmt, len(found), write_directory(target, lambda tmp: write(tmp, found, model_name))
