"""The Neuronpedia upload set: rows with the schema's columns, values from the store, batches, links, whole writes."""

from __future__ import annotations

import errno
import gzip
import json
import shutil
from collections import Counter
from pathlib import Path

import pytest
import torch

from saekit.analysis.store import AnalysisStore
from saekit.dashboard import neuronpedia_upload
from saekit.dashboard.neuronpedia import feature_json, neuron_fields
from saekit.dashboard.neuronpedia_upload import NEURON_COLUMNS, UploadConfig, write_upload_set
from saekit.errors import SaekitError
from saekit.io import OUTPUT_RECORD, TEMP_MARK

EVIL_TOKEN = "</script><script>document.title='PWNED'</script><b>bold</b>&amp;"
BATCH = 50  # 128 latents: batches of 50, 50, 28
MODEL = "fake-llm (test double)"

# Transcribed from Neuronpedia's Prisma schema (hijohnnylin/neuronpedia, apps/webapp/prisma/schema.prisma): each
# model's scalar columns and their types; "?" marks a nullable column, "!" one the database needs a value for
# (no default there; Prisma's cuid() ids are made by Prisma, not by the database).
SCHEMA = {
    "Neuron": {
        "modelId": "String!", "layer": "String!", "index": "String!", "sourceSetName": "String?",
        "creatorId": "String?", "createdAt": "DateTime", "maxActApprox": "Float?", "hasVector": "Boolean",
        "vector": "Float[]", "vectorLabel": "String?", "vectorDefaultSteerStrength": "Float?", "hookName": "String?",
        "topkCosSimIndices": "Int[]", "topkCosSimValues": "Float[]", "neuron_alignment_indices": "Int[]",
        "neuron_alignment_values": "Float[]", "neuron_alignment_l1": "Float[]", "correlated_neurons_indices": "Int[]",
        "correlated_neurons_pearson": "Float[]", "correlated_neurons_l1": "Float[]",
        "correlated_features_indices": "Int[]", "correlated_features_pearson": "Float[]",
        "correlated_features_l1": "Float[]", "neg_str": "String[]", "neg_values": "Float[]", "pos_str": "String[]",
        "pos_values": "Float[]", "frac_nonzero": "Float", "freq_hist_data_bar_heights": "Float[]",
        "freq_hist_data_bar_values": "Float[]", "logits_hist_data_bar_heights": "Float[]",
        "logits_hist_data_bar_values": "Float[]", "decoder_weights_dist": "Float[]", "umap_cluster": "Int?",
        "umap_log_feature_sparsity": "Float?", "umap_x": "Float?", "umap_y": "Float?",
    },
    "Activation": {
        "id": "String!", "tokens": "String[]!", "dataIndex": "String?", "index": "String!", "layer": "String!",
        "modelId": "String!", "dataSource": "String?", "maxValue": "Float!", "maxValueTokenIndex": "Int!",
        "minValue": "Float!", "values": "Float[]!", "dfaValues": "Float[]", "dfaTargetIndex": "Int?",
        "dfaMaxValue": "Float?", "zQIndices": "Int[]", "zKIndices": "Int[]", "zValues": "Float[]",
        "creatorId": "String!", "createdAt": "DateTime", "lossValues": "Float[]", "logitContributions": "String?",
        "binMin": "Float?", "binMax": "Float?", "binContains": "Float?", "qualifyingTokenIndex": "Int?",
    },
    "Explanation": {
        "id": "String!", "modelId": "String!", "layer": "String!", "index": "String!", "description": "String!",
        "authorId": "String!", "triggeredByUserId": "String?", "notes": "String?", "scoreV1": "Float",
        "scoreV2": "Float?", "umap_x": "Float?", "umap_y": "Float?", "umap_cluster": "Int?",
        "umap_log_feature_sparsity": "Float?", "typeName": "String?", "explanationModelName": "String?",
        "createdAt": "DateTime", "updatedAt": "DateTime",
    },
    "Model": {
        "id": "String!", "displayNameShort": "String", "displayName": "String", "creatorId": "String!",
        "tlensId": "String?", "openRouterId": "String?", "dimension": "Int?", "thinking": "Boolean",
        "visibility": "Visibility", "defaultSourceSetName": "String?", "defaultSourceId": "String?",
        "defaultGraphSourceSetName": "String?", "inferenceEnabled": "Boolean", "instruct": "Boolean",
        "layers": "Int!", "neuronsPerLayer": "Int!", "createdAt": "DateTime", "owner": "String!",
        "updatedAt": "DateTime", "website": "String?",
    },
    "Source": {
        "id": "String!", "modelId": "String!", "hasDashboards": "Boolean", "inferenceEnabled": "Boolean",
        "saelensConfig": "Json?", "saelensRelease": "String?", "saelensSaeId": "String?", "hfRepoId": "String?",
        "hfFolderId": "String?", "visibility": "Visibility", "defaultOfModelId": "String?", "setName": "String!",
        "creatorId": "String!", "hasUmap": "Boolean", "hasUmapLogSparsity": "Boolean", "hasUmapClusters": "Boolean",
        "num_prompts": "Int?", "num_tokens_in_prompt": "Int?", "dataset": "String?", "notes": "String?",
        "cosSimMatchModelId": "String?", "cosSimMatchSourceId": "String?", "createdAt": "DateTime",
    },
    "SourceSet": {
        "modelId": "String!", "name": "String!", "hasDashboards": "Boolean", "allowInferenceSearch": "Boolean",
        "visibility": "Visibility", "description": "String!", "type": "String", "creatorName": "String!",
        "urls": "String[]!", "creatorEmail": "String?", "creatorId": "String!", "releaseName": "String?",
        "hasGraphs": "Boolean", "graphEnabled": "Boolean", "similarityMatrixEnabled": "Boolean",
        "defaultOfModelId": "String?", "defaultGraphModelId": "String?", "defaultRange": "Int",
        "defaultShowBreaks": "Boolean", "showDfa": "Boolean", "showCorrelated": "Boolean",
        "showHeadAttribution": "Boolean", "showUmap": "Boolean", "createdAt": "DateTime",
    },
    "SourceRelease": {
        "name": "String!", "visibility": "Visibility", "isNewUi": "Boolean", "featured": "Boolean",
        "description": "String!", "descriptionShort": "String?", "urls": "String[]!", "creatorEmail": "String?",
        "creatorName": "String!", "creatorNameShort": "String?", "creatorId": "String!",
        "defaultSourceSetName": "String?", "defaultSourceId": "String?", "defaultUmapSourceIds": "String[]",
        "createdAt": "DateTime",
    },
    "ExplanationType": {
        "name": "String!", "displayName": "String!", "description": "String!", "featured": "Boolean",
        "isAttention": "Boolean", "explainerModelSettingsId": "String?", "settings": "String?", "url": "String?",
        "creatorName": "String!", "creatorId": "String!", "createdAt": "DateTime", "updatedAt": "DateTime",
    },
    "ExplanationModelType": {
        "name": "String!", "displayName": "String!", "description": "String!", "featured": "Boolean",
        "openRouterModelId": "String?", "url": "String?", "creatorName": "String!", "createdAt": "DateTime",
        "updatedAt": "DateTime",
    },
}
METADATA_TABLES = {"release.jsonl": "SourceRelease", "model.jsonl": "Model", "sourceset.jsonl": "SourceSet",
                   "source.jsonl": "Source"}
SCALARS = {"String": str, "Float": (int, float), "Int": int, "Boolean": bool, "Visibility": str}


def _fits(value, kind: str) -> bool:
    base = kind.rstrip("!?")
    if value is None:
        return kind.endswith("?")
    if base.endswith("[]"):
        return isinstance(value, list) and all(_fits(v, base[:-2]) for v in value)
    if base == "Visibility":
        return value in ("PUBLIC", "UNLISTED", "PRIVATE")
    kinds = SCALARS[base]
    return isinstance(value, kinds) and (base == "Boolean" or not isinstance(value, bool))


def check_schema(rows: list[dict], table: str) -> None:
    """Every row: the same columns, each one of the table's, of its type, and every column the database needs."""
    columns = SCHEMA[table]
    required = {name for name, kind in columns.items() if kind.endswith("!")}
    assert rows and all(list(row) == list(rows[0]) for row in rows), table
    assert set(rows[0]) <= set(columns), (table, set(rows[0]) - set(columns))
    assert required <= set(rows[0]), (table, required - set(rows[0]))
    for row in rows:
        for name, value in row.items():
            assert _fits(value, columns[name]), (table, name, value)


def read_rows(path: Path) -> list[dict]:
    data = path.read_bytes()
    if path.suffix == ".gz":
        assert data[4:8] == b"\0\0\0\0"  # gzip MTIME: none, so rewrites are byte-identical
        data = gzip.decompress(data)
    return [json.loads(line) for line in data.decode("utf-8").splitlines()]


def batch_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("batch-*.jsonl.gz"), key=lambda p: int(p.name.split("-")[1].split(".")[0]))


def interpretation(text: str, detection: float | None) -> dict:
    """One value of ``autointerp.pipeline.scores_for_dashboard`` (its documented shape)."""
    result = {"balanced_accuracy": detection, "f1": None, "auroc": None, "n": 10}
    return {"explanation": text, "baseline": f"fires on: {text!r}", "model": MODEL,
            "scores": {"llm": {"detection": result, "fuzzing": {**result, "balanced_accuracy": None}},
                       "baseline": {"detection": {**result, "balanced_accuracy": 0.5}}},
            "intruder": None, "errors": []}


@pytest.fixture(scope="module")
def store(site_store_dir) -> AnalysisStore:
    return AnalysisStore(site_store_dir[0])


@pytest.fixture(scope="module")
def decoder(site_store_dir) -> torch.Tensor:
    return site_store_dir[2].decoder_directions().detach()


@pytest.fixture(scope="module")
def interpretations(store) -> dict:
    live = [latent for latent in store.latent_ids if not bool(store.stats["dead"][store.position[latent]])]
    return {live[0]: interpretation("the word the", 0.8), live[1]: interpretation("commas", None),
            live[2]: interpretation("code", 0.65)}


@pytest.fixture(scope="module")
def upload(tmp_path_factory, store, decoder, interpretations) -> Path:
    out = tmp_path_factory.mktemp("upload") / "set"
    config = UploadConfig(model_id="tiny-llama", features_per_batch=BATCH, creator_id="user-1")
    return write_upload_set(store, decoder, out, config, interpretations, progress=False)


def test_every_file_has_the_schema_columns(upload):
    assert sorted(p.name for p in upload.iterdir()) == sorted([
        OUTPUT_RECORD, "README.md", "activations", "explanation_model_type.jsonl", "explanation_type.jsonl",
        "explanations", "features", "model.jsonl", "release.jsonl", "source.jsonl", "sourceset.jsonl"])
    for name, table in METADATA_TABLES.items():
        rows = read_rows(upload / name)
        assert len(rows) == 1
        check_schema(rows, table)
    for directory, table in (("features", "Neuron"), ("activations", "Activation"), ("explanations", "Explanation")):
        for path in batch_files(upload / directory):
            check_schema(read_rows(path), table)
    check_schema(read_rows(upload / "explanation_type.jsonl"), "ExplanationType")
    check_schema(read_rows(upload / "explanation_model_type.jsonl"), "ExplanationModelType")
    assert set(NEURON_COLUMNS) <= set(SCHEMA["Neuron"])


def test_metadata_rows_name_one_source(upload, store):
    release, model, sourceset, source = (read_rows(upload / name)[0] for name in METADATA_TABLES)
    assert source["id"] == "0-saekit-resid_post" and source["setName"] == "saekit-resid_post"
    assert sourceset["name"] == "saekit-resid_post" and sourceset["releaseName"] == release["name"]
    assert release["name"] == "tiny-llama-saekit-resid_post" and release["defaultSourceId"] == source["id"]
    assert model["id"] == source["modelId"] == sourceset["modelId"] == "tiny-llama"
    assert {row["creatorId"] for row in (release, model, sourceset, source)} == {"user-1"}
    assert model["dimension"] == 32 and model["layers"] == 0 and model["owner"] == "unknown"
    assert model["displayName"] == Path(store.manifest["model"]).name  # a local model: its directory's name
    assert source["num_prompts"] == store.manifest["contexts"] == 8
    assert source["num_tokens_in_prompt"] == store.manifest["context_length"]
    assert store.fingerprint in source["notes"] and "topk (128 latents) on blocks.0.resid_post" in source["notes"]


def test_features_hold_the_store_values(upload, store, decoder):
    files = batch_files(upload / "features")
    assert [p.name for p in files] == ["batch-0.jsonl.gz", "batch-1.jsonl.gz", "batch-2.jsonl.gz"]
    batches = [read_rows(p) for p in files]
    assert [len(rows) for rows in batches] == [50, 50, 28]
    rows = [row for rows in batches for row in rows]
    assert [row["index"] for row in rows] == [str(latent) for latent in store.latent_ids]
    assert len(store.latent_ids) == 128
    for row in rows:
        latent = int(row["index"])
        assert row["modelId"] == "tiny-llama" and row["layer"] == "0-saekit-resid_post"
        assert row["sourceSetName"] == "saekit-resid_post" and row["hookName"] == "blocks.0.hook_resid_post"
        assert row["maxActApprox"] == store.stat("max_activation", latent)
        assert row["frac_nonzero"] == store.stat("density", latent)
        assert row["hasVector"] and row["vector"] == decoder[latent].float().tolist()
        assert row["vectorDefaultSteerStrength"] == row["maxActApprox"]
        assert row["topkCosSimIndices"][0] == latent and row["topkCosSimValues"][0] == 1.0
        assert row["neuron_alignment_indices"][0] == int(decoder[latent].abs().argmax())
        assert len(row["pos_str"]) == len(row["pos_values"]) > 0
    live = [row for row in rows if row["frac_nonzero"] > 0]
    assert live and all(sum(row["freq_hist_data_bar_heights"]) > 0 for row in live)


def test_features_share_the_dashboard_fields(upload, store, decoder):
    """One mechanism: every Neuron field the dashboard's JSON has, the upload row has with the same value."""
    rows = {int(row["index"]): row for path in batch_files(upload / "features") for row in read_rows(path)}
    for latent in store.latent_ids[:10]:
        dashboard = json.loads(json.dumps(feature_json(store, latent, decoder[latent].float(), "tiny-llama")))
        shared = neuron_fields(store, latent, decoder[latent].float(), "tiny-llama")
        assert set(shared) <= set(NEURON_COLUMNS)
        for key in shared:
            assert rows[latent][key] == dashboard[key], key


def test_activations_are_the_store_examples_linked_to_their_features(upload, store):
    features = {(row["modelId"], row["layer"], row["index"]) for path in batch_files(upload / "features")
                for row in read_rows(path)}
    rows = []
    for path in batch_files(upload / "activations"):
        batch = read_rows(path)
        feature_batch = {row["index"] for row in read_rows(upload / "features" / path.name)}
        assert {row["index"] for row in batch} <= feature_batch  # activations/batch-i: features/batch-i's latents
        rows += batch
    assert len({row["id"] for row in rows}) == len(rows)
    assert {(row["modelId"], row["layer"], row["index"]) for row in rows} <= features
    by_latent: dict[int, list[dict]] = {}
    for row in rows:
        by_latent.setdefault(int(row["index"]), []).append(row)
    expected_total = 0
    for latent in store.latent_ids:
        examples = [e for e in store.latent_examples(latent) if e.kind != "random-negative"]
        expected_total += len(examples)
        got = by_latent.get(latent, [])
        assert len(got) == len(examples), latent
        for row, example in zip(got, examples):
            assert row["tokens"] == [store.token_string(t) for t in example.token_ids]
            assert max(abs(a - b) for a, b in zip(row["values"], example.values)) <= 5.1e-5
            assert row["maxValue"] == max(row["values"]) == row["values"][row["maxValueTokenIndex"]]
            assert row["maxValueTokenIndex"] == example.max_index and row["minValue"] == min(row["values"])
            assert abs(row["maxValue"] - example.max_value) <= 1e-2 * max(1.0, example.max_value)
            assert row["dataIndex"] == str(example.context) and row["creatorId"] == "user-1"
    assert len(rows) == expected_total > 0
    assert any(EVIL_TOKEN in row["tokens"] for row in rows)  # markup stays data in JSON


def test_explanations_refer_to_their_features_and_types(upload, interpretations):
    rows = [row for path in batch_files(upload / "explanations") for row in read_rows(path)]
    assert [int(row["index"]) for row in rows] == list(interpretations)  # the LLM's only, by default
    for row in rows:
        given = interpretations[int(row["index"])]
        assert row["description"] == given["explanation"] and row["typeName"] == "saekit-llm"
        assert row["explanationModelName"] == MODEL and row["authorId"] == "user-1"
        assert row["layer"] == "0-saekit-resid_post" and row["modelId"] == "tiny-llama"
    notes = [row["notes"] for row in rows]
    assert notes == ["saekit balanced accuracy: detection 0.800", None, "saekit balanced accuracy: detection 0.650"]
    assert [row["name"] for row in read_rows(upload / "explanation_type.jsonl")] == ["saekit-llm"]
    assert [row["name"] for row in read_rows(upload / "explanation_model_type.jsonl")] == [MODEL]


def test_settings_change_names_batches_and_contents(tmp_path, store, interpretations):
    config = UploadConfig(model_id="m", set_name="my-set", features_per_batch=2, include_negatives=True,
                          baseline_explanations=True, vectors=False, model_layers=2, neurons_per_layer=64)
    out = write_upload_set(store, None, tmp_path / "set", config, interpretations, progress=False)
    features = [row for path in batch_files(out / "features") for row in read_rows(path)]
    assert len(batch_files(out / "features")) == 64 and len(features) == 128
    assert {row["layer"] for row in features} == {"0-my-set"}
    assert all(not row["hasVector"] and row["vector"] == [] and row["vectorDefaultSteerStrength"] == 10.0
               for row in features)
    assert all(row["neuron_alignment_indices"] == [] for row in features)  # no decoder: [] as the schema defaults
    activations = [row for path in batch_files(out / "activations") for row in read_rows(path)]
    assert len(activations) == sum(len(store.latent_examples(latent)) for latent in store.latent_ids)
    assert any(row["maxValue"] == 0 for row in activations)  # the negatives are there
    explanation_files = batch_files(out / "explanations")
    assert [len(read_rows(p)) for p in explanation_files] == [2, 2, 2]
    types = Counter(row["typeName"] for p in explanation_files for row in read_rows(p))
    assert types == {"saekit-llm": 3, "saekit-baseline": 3}
    baseline = [row for p in explanation_files for row in read_rows(p) if row["typeName"] == "saekit-baseline"]
    assert all(row["explanationModelName"] is None for row in baseline)
    model = read_rows(out / "model.jsonl")[0]
    assert (model["layers"], model["neuronsPerLayer"]) == (2, 64)
    assert read_rows(out / "source.jsonl")[0]["id"] == "0-my-set"


def test_rewrites_are_byte_identical(tmp_path, store, decoder, upload, interpretations):
    config = UploadConfig(model_id="tiny-llama", features_per_batch=BATCH, creator_id="user-1")
    again = write_upload_set(store, decoder, tmp_path / "again", config, interpretations, progress=False)
    files = sorted(p.relative_to(upload) for p in upload.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    for name in files:
        assert (upload / name).read_bytes() == (again / name).read_bytes(), name


def _failing_after(count: int, real):
    calls = []

    def write(path, rows):
        calls.append(path)
        if len(calls) > count:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real(path, rows)
    return write


def test_a_failed_write_leaves_no_partial_directory(tmp_path, store, decoder, monkeypatch):
    config = UploadConfig(features_per_batch=BATCH)
    real = neuronpedia_upload._write_jsonl
    monkeypatch.setattr(neuronpedia_upload, "_write_jsonl", _failing_after(6, real))  # fails at features/batch-1
    with pytest.raises(SaekitError, match=r"^cannot write .*fresh: no space left on the disk \(.*batch-1"):
        write_upload_set(store, decoder, tmp_path / "fresh", config, progress=False)
    assert list(tmp_path.iterdir()) == []  # neither the set nor its temporary

    monkeypatch.setattr(neuronpedia_upload, "_write_jsonl", real)
    previous = write_upload_set(store, decoder, tmp_path / "kept", UploadConfig(features_per_batch=64),
                                progress=False)
    before = {p: p.read_bytes() for p in previous.rglob("*") if p.is_file()}
    monkeypatch.setattr(neuronpedia_upload, "_write_jsonl", _failing_after(6, real))
    with pytest.raises(SaekitError, match="no space left on the disk"):
        write_upload_set(store, decoder, previous, config, progress=False)
    assert {p: p.read_bytes() for p in previous.rglob("*") if p.is_file()} == before
    assert not [p for p in tmp_path.iterdir() if TEMP_MARK in p.name]


def test_bad_inputs_are_refused_in_one_line(tmp_path, store, decoder):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(SaekitError, match="notes.txt"):
        write_upload_set(store, decoder, foreign, progress=False)
    assert (foreign / "notes.txt").read_text() == "mine"
    with pytest.raises(SaekitError, match="does not fit the decoder given"):
        write_upload_set(store, decoder[:, :16], tmp_path / "a", progress=False)
    with pytest.raises(SaekitError, match="features_per_batch"):
        write_upload_set(store, decoder, tmp_path / "b", UploadConfig(features_per_batch=0), progress=False)
    for bad in ("a/b", "res__x"):
        with pytest.raises(SaekitError, match="set_name"):
            write_upload_set(store, decoder, tmp_path / "c", UploadConfig(set_name=bad), progress=False)
    copy = tmp_path / "store"
    shutil.copytree(store.directory, copy)
    manifest = json.loads((copy / "analysis.json").read_text())
    (copy / "analysis.json").write_text(json.dumps({**manifest, "dictionary_fingerprint": "made-from-this"}))
    with pytest.raises(SaekitError, match="other inputs"):
        write_upload_set(copy, decoder, tmp_path / "d", dictionary_fingerprint="not-this", progress=False)
    assert not any((tmp_path / name).exists() for name in "abcd")


def test_from_a_run_directory(tmp_path, tiny_model_dir, tiny_loaded):
    """The wiring `saekit convert RUN --to neuronpedia` uses: the run's store, decoder, fingerprint, model sizes."""
    from provenance_helpers import make_run, write_word_corpus

    from saekit.analysis.analyze import AnalysisConfig, analyze_run
    from saekit.analysis.store import open_run_store
    from saekit.dictionaries.registry import dictionary_fingerprint, load_dictionary
    from saekit.models.loading import load_model_config

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    run = make_run(tmp_path, "run", tiny_model_dir, write_word_corpus(corpus, stride=5), seed=2)
    analyze_run(run, tiny_loaded, AnalysisConfig(tokens=60, latents=8, progress=False))
    store = open_run_store(run)
    dictionary, _ = load_dictionary(run / "dictionary")
    sizes = load_model_config(str(tiny_model_dir))
    config = UploadConfig(model_layers=sizes.num_hidden_layers, neurons_per_layer=sizes.intermediate_size,
                          model_dimension=sizes.hidden_size)
    out = write_upload_set(store, dictionary.decoder_directions().detach(), tmp_path / "np", config,
                           dictionary_fingerprint=dictionary_fingerprint(run / "dictionary"), progress=False)
    features = read_rows(out / "features" / "batch-0.jsonl.gz")
    assert [row["index"] for row in features] == [str(latent) for latent in store.latent_ids] and len(features) == 8
    assert {row["layer"] for row in features} == {"1-saekit-resid_post"}
    model = read_rows(out / "model.jsonl")[0]
    assert (model["layers"], model["neuronsPerLayer"], model["dimension"]) == (2, 64, 32)
    assert read_rows(out / "source.jsonl")[0]["dataset"] == str(corpus)
    activations = [row for path in batch_files(out / "activations") for row in read_rows(path)]
    assert activations and {row["dataSource"] for row in activations} == {str(corpus)}
