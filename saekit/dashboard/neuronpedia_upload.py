"""Write a Neuronpedia upload set: an analysis store's latents as rows of Neuronpedia's tables, laid out as its exports.

Layout of the output directory (one Neuronpedia source; it is what Neuronpedia's exports hold under
``v1/<modelId>/<sourceId>/``, the path its ``/api/admin/import?modelId=...&sourceId=...`` route reads):

* ``release.jsonl`` (table ``SourceRelease``), ``model.jsonl`` (``Model``), ``sourceset.jsonl``
  (``SourceSet``), ``source.jsonl`` (``Source``): one row each;
* ``features/batch-<i>.jsonl.gz``: one ``Neuron`` row per analysed latent, ``features_per_batch`` a file;
* ``activations/batch-<i>.jsonl.gz``: one ``Activation`` row per example of the latents in
  ``features/batch-<i>`` (a batch whose latents have no examples has no file); each row's
  ``modelId``/``layer``/``index`` is its feature's, its ``id`` is unique and the same on every rewrite;
* after ``saekit explain``: ``explanations/batch-<i>.jsonl.gz`` (``Explanation`` rows, ``features_per_batch``
  a file) and ``explanation_type.jsonl`` / ``explanation_model_type.jsonl``: the ``ExplanationType`` and
  ``ExplanationModelType`` rows those refer to, which the instance must hold before the explanations
  are imported (Neuronpedia keeps them in its exports' ``v1/config/``);
* ``README.md``: this note, and what the set was made from.

Every row has exactly the columns listed below, named and typed as in Neuronpedia's Prisma schema
(``apps/webapp/prisma/schema.prisma``); Neuronpedia's importer takes a file's columns from its first
line, so every line of a file has the same ones, with ``[]`` or null where saekit has nothing.
``creatorId``/``authorId`` (``creator_id``) must name a user of the instance. The gzip files carry no
timestamp: the same store and settings give byte-identical files.

Filled from the analysis store: ``Neuron``: the fields of :func:`saekit.dashboard.neuronpedia.neuron_fields`
(see that module's note: density histogram bins are log-spaced, logit fields only at residual-width
sites, else ``[]``), ``sourceSetName``, ``creatorId``, and with ``vectors`` the decoder direction as
``vector`` with ``hasVector`` true and ``vectorDefaultSteerStrength`` the latent's max activation
(without: ``[]``, false, and the schema's default 10). ``Activation``: ``tokens``, ``values`` (rounded
to 4 decimals), ``maxValue``, ``maxValueTokenIndex``, ``minValue``, ``dataIndex`` (the context's row in
the store), ``dataSource`` (the run's corpus, when the store records it); top and quantile examples,
and with ``include_negatives`` also the random contexts where the latent does not fire. ``Explanation``:
the LLM explanation (``typeName`` saekit-llm, ``explanationModelName`` the explainer model), with
``baseline_explanations`` also the token baseline (saekit-baseline, no model); ``notes`` holds saekit's
balanced accuracies (Neuronpedia's scores need its own scorer types, so none are uploaded).
``Model``/``SourceSet``/``SourceRelease``/``Source``: names, ``creatorId``, ``visibility``, the
analysed contexts (``num_prompts``, ``num_tokens_in_prompt``, ``dataset``) and a ``notes`` line naming
the dictionary and fingerprints. ``Model.layers``/``neuronsPerLayer`` are 0 unless given (Neuronpedia
keeps an existing model's row, so they matter only for a model new to the instance).

Not filled (saekit does not compute them): ``Neuron``: ``correlated_neurons_*``, ``correlated_features_*``,
``decoder_weights_dist``, ``umap_*``, ``vectorLabel``; ``Activation``: ``binMin``/``binMax``/``binContains``
(saekit keeps quantile groups, not their bounds), ``lossValues``, ``logitContributions``, ``dfa*``,
``z*Indices``/``zValues``, ``qualifyingTokenIndex``; ``Explanation``: ``embedding``, ``scoreV1``/``scoreV2``,
``umap_*``; ``Source``: ``saelensConfig``/``saelensRelease``/``saelensSaeId``, ``hfRepoId``/``hfFolderId``
(the weights are not uploaded), ``cosSimMatch*``; ``Model.defaultSourceSetName``/``defaultSourceId`` (they
refer to a source set the import creates after the model). Database defaults (``createdAt``...) are left
to the database.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import Tensor
from tqdm.auto import tqdm

from saekit.analysis.store import AnalysisStore
from saekit.dashboard.neuronpedia import (
    activation_fields,
    default_set_name,
    explanations_of,
    model_slug,
    neuron_fields,
    source_id,
)
from saekit.errors import SaekitError
from saekit.io import OutputTarget, atomic_write, write_directory, write_text
from saekit.render import clean_json
from saekit.settings import NON_EMPTY, check_rules, setting

# The columns written, in order: each a field of the schema's model of the same name.
NEURON_COLUMNS = (
    "modelId", "layer", "index", "sourceSetName", "creatorId", "hookName", "maxActApprox", "frac_nonzero",
    "hasVector", "vector", "vectorDefaultSteerStrength", "topkCosSimIndices", "topkCosSimValues",
    "neuron_alignment_indices", "neuron_alignment_values", "neuron_alignment_l1", "pos_str", "pos_values",
    "neg_str", "neg_values", "freq_hist_data_bar_heights", "freq_hist_data_bar_values",
    "logits_hist_data_bar_heights", "logits_hist_data_bar_values",
)
ACTIVATION_COLUMNS = ("id", "modelId", "layer", "index", "creatorId", "dataSource", "dataIndex", "tokens", "values",
                      "maxValue", "maxValueTokenIndex", "minValue")
EXPLANATION_COLUMNS = ("id", "modelId", "layer", "index", "description", "authorId", "typeName",
                       "explanationModelName", "notes")
RELEASE_COLUMNS = ("name", "description", "descriptionShort", "creatorName", "creatorNameShort", "creatorId", "urls",
                   "visibility", "defaultSourceSetName", "defaultSourceId")
MODEL_COLUMNS = ("id", "displayName", "displayNameShort", "creatorId", "owner", "layers", "neuronsPerLayer",
                 "dimension", "instruct", "visibility")
SOURCESET_COLUMNS = ("modelId", "name", "description", "creatorName", "creatorId", "urls", "releaseName",
                     "visibility")
SOURCE_COLUMNS = ("id", "modelId", "setName", "creatorId", "visibility", "num_prompts", "num_tokens_in_prompt",
                  "dataset", "notes")
EXPLANATION_TYPE_COLUMNS = ("name", "displayName", "description", "featured", "creatorName", "creatorId")
EXPLANATION_MODEL_TYPE_COLUMNS = ("name", "displayName", "description", "featured", "creatorName")
# Neuron list columns saekit may have nothing for (non-null in the schema, default []).
_EMPTY_LISTS = ("neuron_alignment_indices", "neuron_alignment_values", "neuron_alignment_l1", "pos_str", "pos_values",
                "neg_str", "neg_values", "logits_hist_data_bar_heights", "logits_hist_data_bar_values")
SCHEMA_DEFAULT_STEER_STRENGTH = 10.0  # Neuron.vectorDefaultSteerStrength's default

README = "README.md"
FEATURES_DIR, ACTIVATIONS_DIR, EXPLANATIONS_DIR = "features", "activations", "explanations"
METADATA_FILES = {"release.jsonl": RELEASE_COLUMNS, "model.jsonl": MODEL_COLUMNS,
                  "sourceset.jsonl": SOURCESET_COLUMNS, "source.jsonl": SOURCE_COLUMNS}
EXPLANATION_TYPE_FILE, EXPLANATION_MODEL_TYPE_FILE = "explanation_type.jsonl", "explanation_model_type.jsonl"
# Everything a write puts at the top level: the directory is replaced whole, so anything else there is refused.
UPLOAD_ENTRIES = frozenset({*METADATA_FILES, FEATURES_DIR, ACTIVATIONS_DIR, EXPLANATIONS_DIR, EXPLANATION_TYPE_FILE,
                            EXPLANATION_MODEL_TYPE_FILE, README})
EXPLAINER_TYPES = {  # explainer -> (displayName, description) of its ExplanationType row
    "llm": ("saekit LLM explainer", "An LLM reads the latent's training examples, activating tokens marked."),
    "baseline": ("saekit token baseline", "No model: the latent's most frequent activating tokens ('fires on: ...')."),
}
VISIBILITIES = ("PUBLIC", "UNLISTED", "PRIVATE")
_NAME = re.compile(r"^[A-Za-z0-9._-]+$")
_HUB_ID = re.compile(r"^([A-Za-z0-9._-]+)/[A-Za-z0-9._-]+$")


def _name(value: Any) -> str | None:
    return None if _NAME.match(str(value)) else "letters, digits, '.', '_' or '-' (it names a path and a database key)"


def _set_name(value: Any) -> str | None:
    # Neuronpedia reads a source id as <layer>-<set name>[__<extra>], so "__" would cut the set name short.
    return _name(value) or ("no '__' (Neuronpedia reads what follows it as extra source info)"
                            if "__" in str(value) else None)


def _visibility(value: Any) -> str | None:
    return None if value in VISIBILITIES else f"one of {', '.join(VISIBILITIES)}"


NAME_RULE = {"check": _name, "invalid": ("", "a/b", "a b")}


@dataclass(frozen=True)
class UploadConfig:
    """The names the upload set gives its rows, and what it includes."""

    model_id: str | None = setting(None, "Neuronpedia modelId (default: a slug of the analysed model's name)",
                                   **NAME_RULE)
    set_name: str | None = setting(None, "Neuronpedia source set; the source id is <layer>-<set name> "
                                         "(default: saekit-<site kind>)",
                                   check=_set_name, invalid=("", "a/b", "res__x"))
    release_name: str | None = setting(None, "SourceRelease name (default: <modelId>-<set name>)", **NAME_RULE)
    creator_id: str = setting("saekit", "Neuronpedia user id recorded as every row's creator/author "
                                        "(must be a user of the instance that imports the set)", **NON_EMPTY)
    creator_name: str = setting("saekit", "creator name shown on the release and the source set", **NON_EMPTY)
    description: str | None = setting(None, "release and source set description (default: names the dictionary "
                                            "and its site)")
    visibility: str = setting("PUBLIC", "visibility of the release, model, source set and source",
                              check=_visibility, invalid=("public", "HIDDEN"))
    features_per_batch: int = setting(1024, "latents per features/batch-<i>.jsonl.gz (and explanations per "
                                            "explanations/batch-<i>); Neuronpedia's own exports use 1024", minimum=1)
    include_negatives: bool = setting(False, "also upload the random contexts where a latent does not fire")
    baseline_explanations: bool = setting(False, "also upload the no-LLM token baseline as an explanation")
    vectors: bool = setting(True, "upload each latent's decoder direction as Neuron.vector (hasVector)")
    model_layers: int = setting(0, "Model.layers (0: from the model's config; used only for a model new to "
                                   "the instance)",
                                minimum=0)
    neurons_per_layer: int = setting(0, "Model.neuronsPerLayer, the MLP width (0: from the model's config)", minimum=0)
    model_dimension: int | None = setting(None, "Model.dimension, d_model (default: the dictionary's input width "
                                                "at a site of residual width)", minimum=1)


@dataclass(frozen=True)
class UploadNames:
    """The keys every row of one upload set shares."""

    model_id: str
    set_name: str
    source_id: str
    release_name: str
    row_prefix: str  # of Activation and Explanation ids: names the store and the source, so ids are unique

    @classmethod
    def of(cls, store: AnalysisStore, config: UploadConfig) -> UploadNames:
        model_id = config.model_id or model_slug(store.manifest["model"])
        set_name = config.set_name or default_set_name(store)
        source = source_id(store, set_name)
        digest = hashlib.sha256(f"{model_id}/{source}/{store.fingerprint}".encode()).hexdigest()[:12]
        return cls(model_id, set_name, source, config.release_name or f"{model_id}-{set_name}", f"saekit-{digest}")


def _select(row: dict[str, Any], columns: tuple[str, ...]) -> dict[str, Any]:
    return {name: row[name] for name in columns}


def neuron_row(store: AnalysisStore, latent: int, decoder_row: Tensor | None, names: UploadNames,
               config: UploadConfig) -> dict[str, Any]:
    """One latent as a ``Neuron`` row: every column of :data:`NEURON_COLUMNS`."""
    fields = neuron_fields(store, latent, decoder_row, names.model_id, names.set_name)
    vector = decoder_row.tolist() if config.vectors and decoder_row is not None else []
    row = {**dict.fromkeys(_EMPTY_LISTS, []), **fields, "sourceSetName": names.set_name,
           "creatorId": config.creator_id, "hasVector": bool(vector), "vector": vector,
           "vectorDefaultSteerStrength": fields["maxActApprox"] if vector else SCHEMA_DEFAULT_STEER_STRENGTH}
    return _select(row, NEURON_COLUMNS)


def _data_source(store: AnalysisStore) -> str | None:
    corpus = (store.manifest.get("context_source") or {}).get("corpus")
    return str(corpus) if corpus is not None else None


def activation_rows(store: AnalysisStore, latent: int, names: UploadNames, config: UploadConfig) -> list[dict]:
    """A latent's examples as ``Activation`` rows, linked to its ``Neuron`` row by modelId/layer/index."""
    examples = [e for e in store.latent_examples(latent) if config.include_negatives or e.kind != "random-negative"]
    data_source = _data_source(store)
    return [_select({"id": f"{names.row_prefix}-{latent}-{n}", "modelId": names.model_id, "layer": names.source_id,
                     "index": str(latent), "creatorId": config.creator_id, "dataSource": data_source,
                     "dataIndex": str(example.context), **activation_fields(store, example)}, ACTIVATION_COLUMNS)
            for n, example in enumerate(examples)]


def _score_note(scores: dict[str, float | None]) -> str | None:
    known = [f"{scorer} {value:.3f}" for scorer, value in scores.items() if value is not None]
    return f"saekit balanced accuracy: {', '.join(known)}" if known else None


def explanation_rows(latent: int, interpretation: dict[str, Any], names: UploadNames,
                     config: UploadConfig) -> list[dict]:
    """A latent's explanations (from ``autointerp.pipeline.scores_for_dashboard``) as ``Explanation`` rows."""
    texts = [t for t in explanations_of(interpretation) if config.baseline_explanations or t.explainer != "baseline"]
    return [_select({"id": f"{names.row_prefix}-{latent}-e{n}", "modelId": names.model_id, "layer": names.source_id,
                     "index": str(latent), "description": text.description, "authorId": config.creator_id,
                     "typeName": text.type_name, "explanationModelName": text.model,
                     "notes": _score_note(text.scores)}, EXPLANATION_COLUMNS)
            for n, text in enumerate(texts)]


def _description(store: AnalysisStore, config: UploadConfig) -> str:
    if config.description:
        return config.description
    dictionary = store.manifest.get("dictionary") or {}
    target = store.manifest.get("target_site")
    reads = store.manifest["site"] + (f" -> {target}" if target not in (None, store.manifest["site"]) else "")
    return f"saekit {dictionary.get('architecture', 'dictionary')} ({dictionary.get('width', '?')} latents) on {reads}"


def _model_dimension(store: AnalysisStore, config: UploadConfig) -> int | None:
    if config.model_dimension is not None:
        return config.model_dimension
    d_in = (store.manifest.get("dictionary") or {}).get("d_in")
    return None if store.manifest["site"].endswith(".mlp_act") else d_in  # mlp_act is MLP-wide, not d_model


def _display_name(model: str) -> str:
    """A hub id as it is; else the name without saekit's notes or a local path's directories."""
    return model if _HUB_ID.match(model) else model.split(" (")[0].rstrip("/").split("/")[-1] or model


def metadata_rows(store: AnalysisStore, names: UploadNames, config: UploadConfig,
                  dictionary_fingerprint: str | None) -> dict[str, dict[str, Any]]:
    """The one-row files: file name -> its row (``release.jsonl`` ... ``source.jsonl``)."""
    description = _description(store, config)
    hub = _HUB_ID.match(store.manifest["model"])
    creator = {"creatorId": config.creator_id, "visibility": config.visibility}
    rows = {
        "release.jsonl": {"name": names.release_name, "description": description, "descriptionShort": description,
                          "creatorName": config.creator_name, "creatorNameShort": config.creator_name, "urls": [],
                          "defaultSourceSetName": names.set_name, "defaultSourceId": names.source_id, **creator},
        "model.jsonl": {"id": names.model_id, "displayName": _display_name(store.manifest["model"]),
                        "displayNameShort": names.model_id, "owner": hub.group(1) if hub else "unknown",
                        "layers": config.model_layers, "neuronsPerLayer": config.neurons_per_layer,
                        "dimension": _model_dimension(store, config),
                        "instruct": "instruct" in names.model_id or names.model_id.endswith("-it"), **creator},
        "sourceset.jsonl": {"modelId": names.model_id, "name": names.set_name, "description": description,
                            "creatorName": config.creator_name, "urls": [], "releaseName": names.release_name,
                            **creator},
        "source.jsonl": {"id": names.source_id, "modelId": names.model_id, "setName": names.set_name,
                         "num_prompts": store.manifest.get("contexts"),
                         "num_tokens_in_prompt": store.manifest.get("context_length"), "dataset": _data_source(store),
                         "notes": f"{description}; saekit analysis {store.fingerprint}, dictionary "
                                  f"{dictionary_fingerprint or store.dictionary_fingerprint or 'unknown'}", **creator},
    }
    return {name: _select(row, METADATA_FILES[name]) for name, row in rows.items()}


def explanation_type_rows(explanations: list[dict], config: UploadConfig) -> tuple[list[dict], list[dict]]:
    """The ``ExplanationType`` and ``ExplanationModelType`` rows the explanations refer to."""
    types = sorted({row["typeName"] for row in explanations})
    models = sorted({row["explanationModelName"] for row in explanations} - {None})
    type_rows = [{"name": name, "displayName": EXPLAINER_TYPES[name.removeprefix("saekit-")][0],
                  "description": EXPLAINER_TYPES[name.removeprefix("saekit-")][1], "featured": False,
                  "creatorName": config.creator_name, "creatorId": config.creator_id} for name in types]
    model_rows = [{"name": name, "displayName": name, "description": "explainer model of saekit explain",
                   "featured": False, "creatorName": config.creator_name} for name in models]
    return ([_select(r, EXPLANATION_TYPE_COLUMNS) for r in type_rows],
            [_select(r, EXPLANATION_MODEL_TYPE_COLUMNS) for r in model_rows])


def jsonl_bytes(rows: list[dict[str, Any]], compress: bool) -> bytes:
    """One JSON object a line (NaN/inf as null); gzip with no timestamp or name, so equal rows give equal bytes."""
    text = "".join(json.dumps(clean_json(row), ensure_ascii=False, allow_nan=False) + "\n" for row in rows)
    data = text.encode("utf-8")
    return gzip.compress(data, compresslevel=6, mtime=0) if compress else data


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    data = jsonl_bytes(rows, compress=path.suffix == ".gz")
    atomic_write(path, lambda tmp: tmp.write_bytes(data))


def _batches(items: list, size: int) -> list[list]:
    return [items[start:start + size] for start in range(0, len(items), size)]


def _readme(store: AnalysisStore, names: UploadNames, counts: dict[str, int]) -> str:
    width = (store.manifest.get("dictionary") or {}).get("width", "?")
    made = "\n".join(f"- {key}: {value}" for key, value in {
        "modelId": names.model_id, "source id (layer)": names.source_id, "source set": names.set_name,
        "release": names.release_name, "analysis store": f"{store.directory} ({store.fingerprint})",
        "latents": f"{counts['features']} analysed of {width}", "activations": counts["activations"],
        "explanations": counts["explanations"]}.items())
    return f"# Neuronpedia upload set\n\n{made}\n\n{__doc__}"


def _write_set(out: Path, store: AnalysisStore, decoder: Tensor | None, names: UploadNames, config: UploadConfig,
               interpretations: dict[int, dict[str, Any]], dictionary_fingerprint: str | None, progress: bool) -> None:
    write = _write_jsonl
    for name, row in metadata_rows(store, names, config, dictionary_fingerprint).items():
        write(out / name, [row])
    counts = {"features": 0, "activations": 0, "explanations": 0}
    explanations: list[dict] = []
    batches = _batches(store.latent_ids, config.features_per_batch)
    for i, latents in enumerate(tqdm(batches, desc="neuronpedia batches", unit="batch", disable=not progress)):
        features = [neuron_row(store, latent, decoder[latent].detach().float() if decoder is not None else None,
                               names, config) for latent in latents]
        write(out / FEATURES_DIR / f"batch-{i}.jsonl.gz", features)
        activations = [row for latent in latents for row in activation_rows(store, latent, names, config)]
        if activations:  # Neuronpedia's importer reads a file's columns from its first line: no empty files
            write(out / ACTIVATIONS_DIR / f"batch-{i}.jsonl.gz", activations)
        explanations += [row for latent in latents if latent in interpretations
                         for row in explanation_rows(latent, interpretations[latent], names, config)]
        counts["features"] += len(features)
        counts["activations"] += len(activations)
    for i, rows in enumerate(_batches(explanations, config.features_per_batch)):
        write(out / EXPLANATIONS_DIR / f"batch-{i}.jsonl.gz", rows)
    if explanations:
        types, models = explanation_type_rows(explanations, config)
        write(out / EXPLANATION_TYPE_FILE, types)
        if models:
            write(out / EXPLANATION_MODEL_TYPE_FILE, models)
    counts["explanations"] = len(explanations)
    write_text(out / README, _readme(store, names, counts))


def write_upload_set(
    store: str | Path | AnalysisStore, decoder: Tensor | None, out_dir: str | Path, config: UploadConfig | None = None,
    interpretations: dict[int, dict[str, Any]] | None = None, dictionary_fingerprint: str | None = None,
    progress: bool = True, force: bool = False, inputs: tuple[Path, ...] = (),
) -> Path:
    """Write the upload set of ``store`` into ``out_dir`` (replacing an earlier one whole); returns ``out_dir``.

    ``decoder`` (the dictionary's ``decoder_directions()``, [width, d]) adds the neuron-alignment fields
    and, with ``config.vectors``, the vectors; it must fit the store. ``interpretations`` (latent ->
    ``autointerp.pipeline.scores_for_dashboard``'s value) adds the explanations. ``dictionary_fingerprint``
    (of the decoder's dictionary) is checked against the one the store recorded. ``out_dir`` may not
    hold anything but an earlier upload set (``force`` replaces it anyway), nor the store or ``inputs``.
    """
    config = config or UploadConfig()
    check_rules(config, "neuronpedia upload settings")
    store = store if isinstance(store, AnalysisStore) else AnalysisStore(store)
    store.check_pairing(decoder, dictionary_fingerprint)
    if not store.latent_ids:
        raise SaekitError(f"analysis store {store.directory} holds no latents; rerun `saekit analyze` with latents")
    names = UploadNames.of(store, config)
    out_dir = Path(out_dir)
    target = OutputTarget(out_dir, "neuronpedia upload set", flag="OUT", inputs=(store.directory, *inputs),
                          entries=UPLOAD_ENTRIES, force=force)
    return write_directory(target, lambda tmp: _write_set(tmp, store, decoder, names, config, interpretations or {},
                                                          dictionary_fingerprint, progress))
