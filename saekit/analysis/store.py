"""The on-disk analysis store (``RUN_DIR/analysis/``): file names, writing helpers and a reader.

Layout (everything a dashboard needs; no model is loaded to read it):

* ``analysis.json``: format version, model, sites, dictionary shape, tokens/contexts used, settings;
* ``stats.json`` + ``stats.safetensors``: summary (flag rule, counts, density histogram) and per-latent arrays;
* ``geometry.json`` + ``geometry.safetensors``: histograms vs the random baseline, peak analysis, timing;
  per-latent ranked cosines and the 10 nearest neighbours;
* ``logits.safetensors``: top positive/negative token ids and values, logit histograms (when meaningful);
* ``contexts.safetensors``: ``token_ids`` [n_contexts, ctx_len] int32 and ``counted`` (uint8 mask);
* ``examples.safetensors``: the ragged example table (see :class:`ExampleTable`);
* ``tokens.json``: decoded strings of every token id that appears in the contexts or logit lists.

The manifest records ``dictionary_fingerprint`` (of the run's ``dictionary/``) and ``data_fingerprint``
(of the run config's data section); :func:`open_run_store` refuses a store whose dictionary fingerprint
is not the run's current one, so a store copied from another run, or left from before a retrain, is
never paired with the wrong decoder. Stores from before fingerprints (no key) are accepted as they are.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import Tensor

from saekit.analysis.examples import KINDS, ExampleTable
from saekit.dictionaries.base import DictionaryConfig
from saekit.dictionaries.registry import CONFIG_FILE, dictionary_fingerprint
from saekit.errors import SaekitError
from saekit.io import load_tensors, read_json
from saekit.provenance import fingerprint_files, require_same
from saekit.rundir import DICTIONARY_DIR

FORMAT_VERSION = 1
ANALYSIS_DIR = "analysis"
MANIFEST = "analysis.json"
STATS_JSON, STATS_TENSORS = "stats.json", "stats.safetensors"
GEOMETRY_JSON, GEOMETRY_TENSORS = "geometry.json", "geometry.safetensors"
LOGITS_TENSORS = "logits.safetensors"
LAYERS_TENSORS = "layers.safetensors"  # cross-layer dictionaries: decoder norm and logit weights per output layer
CONTEXTS_TENSORS = "contexts.safetensors"
EXAMPLES_TENSORS = "examples.safetensors"
TOKENS_JSON = "tokens.json"
DICTIONARY_FINGERPRINT, DATA_FINGERPRINT = "dictionary_fingerprint", "data_fingerprint"  # manifest keys


@dataclass
class Example:
    """One example of one latent: its context's tokens and the latent's per-token activations."""

    kind: str
    rank: int
    quantile: int
    context: int
    token_ids: list[int]
    counted: list[bool]
    values: list[float]
    max_value: float
    max_index: int


# What the readers of a store take from its manifest without a default (pages, upload sets, circuits).
REQUIRED_KEYS: dict[str, type] = {"model": str, "site": str, "config": dict, "logits": dict}
JSON_TYPES = {str: "a string", dict: "a JSON object"}


def check_manifest(manifest: Any, path: Path) -> dict[str, Any]:
    """The manifest, once it holds every required key with the right type: one line naming the first that is
    not, before a page or an upload set is half written."""
    fix = "the store is damaged or from elsewhere; rerun `saekit analyze`"
    if not isinstance(manifest, dict):
        raise SaekitError(f"analysis manifest {path} is not a JSON object; {fix}")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise SaekitError(f"{path} has format_version {manifest.get('format_version')!r}"
                          f"; this saekit reads {FORMAT_VERSION}; rerun `saekit analyze`")
    for key, kind in REQUIRED_KEYS.items():
        if key not in manifest:
            raise SaekitError(f"analysis manifest {path} has no {key!r}; {fix}")
        if not isinstance(manifest[key], kind):
            raise SaekitError(f"analysis manifest {path} {key!r} must be {JSON_TYPES[kind]}, got "
                              f"{json_type(manifest[key])}; {fix}")
    return manifest


def json_type(value: Any) -> str:
    """How JSON names a value's type (null, not NoneType)."""
    if value is None:
        return "null"
    return {bool: "a boolean", int: "a number", float: "a number", str: "a string", list: "a list",
            dict: "a JSON object"}.get(type(value), type(value).__name__)


class AnalysisStore:
    """Read-only view of an analysis directory."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        manifest = read_json(self.directory / MANIFEST, "analysis manifest")
        self.manifest: dict[str, Any] = check_manifest(manifest, self.directory / MANIFEST)
        # Identifies this exact store (the manifest holds settings and timings): what a dashboard records.
        self.fingerprint: str = fingerprint_files(self.directory / MANIFEST)
        self.stats_summary: dict[str, Any] = read_json(self.directory / STATS_JSON, "analysis statistics")
        self.stats = load_tensors(self.directory / STATS_TENSORS, "analysis statistics")
        self.geometry_summary: dict[str, Any] = read_json(self.directory / GEOMETRY_JSON, "decoder geometry")
        self.geometry = load_tensors(self.directory / GEOMETRY_TENSORS, "decoder geometry")
        logits_path = self.directory / LOGITS_TENSORS
        self.logits = load_tensors(logits_path, "logit weights") if logits_path.is_file() else None
        layers_path = self.directory / LAYERS_TENSORS
        self.layers = load_tensors(layers_path, "per-layer decoder norms") if layers_path.is_file() else None
        contexts = load_tensors(self.directory / CONTEXTS_TENSORS, "analysis contexts")
        self.token_ids: Tensor = contexts["token_ids"]
        self.counted: Tensor = contexts["counted"].bool()
        self.examples = ExampleTable.from_tensors(load_tensors(self.directory / EXAMPLES_TENSORS, "examples"))
        strings = read_json(self.directory / TOKENS_JSON, "token strings")
        self.strings: dict[int, str] = {int(k): v for k, v in strings.items()}
        self.latent_ids: list[int] = self.stats["latent_ids"].tolist()
        self.position: dict[int, int] = {latent: i for i, latent in enumerate(self.latent_ids)}

    @property
    def dictionary_fingerprint(self) -> str | None:
        """The fingerprint of the dictionary this store was made from; None for stores from older saekit."""
        return self.manifest.get(DICTIONARY_FINGERPRINT)

    def check_shape(self, width: int, d_model: int, against: str, fix: str, directions: bool = False) -> None:
        """Refuse to pair this store with a decoder of ``width`` latents of dimension ``d_model``.

        ``d_model`` is the dictionary's output width, or with ``directions`` the width of its
        ``decoder_directions()`` (what the dashboard gets; they differ for a cross-layer transcoder).
        The fingerprint check catches other dictionaries; this catches older stores without one.
        """
        recorded = self.manifest.get("dictionary") or {}
        store_width = recorded.get("width")
        store_dim = recorded.get("d_out") or recorded.get("d_in")
        if directions:
            store_dim = self.manifest.get("decoder_direction_dim") or store_dim
        fits = (store_width in (None, width) and store_dim in (None, d_model)
                and all(latent < width for latent in self.latent_ids))
        if not fits:
            raise SaekitError(
                f"analysis store {self.directory} does not fit {against} (the store has {store_width or '?'} "
                f"latents of dimension {store_dim or '?'}, that decoder {width} of dimension {d_model}); {fix}")

    def check_pairing(self, decoder: Tensor | None, dictionary_fingerprint: str | None) -> None:
        """Refuse a decoder (``decoder_directions()``) or dictionary fingerprint that is not this store's:
        what a page or upload set built from the store and a dictionary checks before writing anything."""
        fix = "rerun `saekit analyze` on the run it belongs to"
        if dictionary_fingerprint is not None:
            require_same(f"analysis store {self.directory}", self.dictionary_fingerprint, dictionary_fingerprint, fix)
        if decoder is not None:
            self.check_shape(decoder.shape[0], decoder.shape[1], "the decoder given", fix, directions=True)

    def token_string(self, token_id: int) -> str:
        return self.strings.get(int(token_id), f"<{int(token_id)}>")

    def latent_examples(self, latent: int) -> list[Example]:
        table = self.examples
        length = self.token_ids.shape[1]
        out = []
        for row in table.rows(self.position[latent]):
            context = int(table.context[row])
            out.append(Example(
                kind=KINDS[int(table.kind[row])], rank=int(table.rank[row]), quantile=int(table.quantile[row]),
                context=context, token_ids=self.token_ids[context].tolist(), counted=self.counted[context].tolist(),
                values=table.activations(row, length).tolist(), max_value=float(table.max_value[row]),
                max_index=int(table.max_index[row]),
            ))
        return out

    def stat(self, name: str, latent: int) -> float:
        return float(self.stats[name][self.position[latent]])

    def geometry_row(self, latent: int) -> tuple[list[int], list[float]]:
        i = self.position[latent]
        return self.geometry["neighbour_ids"][i].tolist(), self.geometry["neighbour_cosines"][i].tolist()

    @property
    def written_sites(self) -> list[str]:
        """The sites the dictionary writes (several for a cross-layer one)."""
        return self.manifest.get("written_sites") or [self.manifest.get("target_site") or self.manifest["site"]]

    def layer_row(self, latent: int) -> dict[str, list] | None:
        """A cross-layer latent's decoder norm per output layer and its per-layer logit weights; None otherwise."""
        if self.layers is None:
            return None
        i = self.position[latent]
        return {name: self.layers[name][i].tolist() for name in self.layers}

    def logit_row(self, latent: int) -> dict[str, list] | None:
        if self.logits is None:
            return None
        i = self.position[latent]
        return {name: self.logits[name][i].tolist() for name in self.logits}


def store_exists(directory: str | Path) -> bool:
    directory = Path(directory)
    names = (MANIFEST, STATS_JSON, STATS_TENSORS, GEOMETRY_JSON, GEOMETRY_TENSORS, CONTEXTS_TENSORS, EXAMPLES_TENSORS,
             TOKENS_JSON)
    return all((directory / name).is_file() for name in names)


def analyze_fix(run_dir: str | Path) -> str:
    """The advice every stale-store message ends with."""
    return f"rerun `saekit analyze {run_dir}`"


def open_run_store(run_dir: str | Path) -> AnalysisStore:
    """Open ``RUN_DIR/analysis``, refusing (one line) a store made from another dictionary than the run's.

    The fingerprint is compared from the manifest alone, before the store's tensors are read; a store
    without one (older saekit) is accepted, then checked against the decoder's shape.
    """
    run_dir = Path(run_dir)
    directory = run_dir / ANALYSIS_DIR
    dictionary_dir = run_dir / DICTIONARY_DIR
    manifest = read_json(directory / MANIFEST, "analysis manifest")
    recorded = manifest.get(DICTIONARY_FINGERPRINT) if isinstance(manifest, dict) else None
    require_same(f"analysis store {directory}", recorded, dictionary_fingerprint(dictionary_dir),
                 analyze_fix(run_dir))
    store = AnalysisStore(directory)
    meta = read_json(dictionary_dir / CONFIG_FILE, "dictionary config")
    section = meta.get("dictionary", {}) if isinstance(meta, dict) else {}
    if not isinstance(section, dict):  # DictionaryConfig.from_dict would fail on it with an AttributeError
        raise SaekitError(f"{dictionary_dir / CONFIG_FILE}: 'dictionary' must be a JSON object, got "
                          f"{json_type(section)}; the run's dictionary is damaged: retrain or re-import it")
    config = DictionaryConfig.from_dict(section)
    store.check_shape(config.width, config.output_dim, f"the dictionary in {dictionary_dir}", analyze_fix(run_dir))
    return store
