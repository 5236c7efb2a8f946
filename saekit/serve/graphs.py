"""Attribution graphs for typed prompts: the transcoder set ``saekit serve --graph-transcoders`` holds, and the
graphs it builds, each written as ``saekit attribute`` writes it into a directory the server owns.

The graph is the one ``saekit attribute`` builds with the same settings (same circuits code: the replacement
model, :func:`attribute`, :func:`prune`, :func:`write_graph_files`), minus the ablation checks and the report.
Every graph's directory is named by a hash of its request, never by anything the request spells, and lives in
a temporary directory removed when the server stops; the newest ``KEPT_GRAPHS`` are kept (an identical request
is answered from them). The transcoders' path and the model's path never reach a client: the graph names the
transcoders by their directory's name and the model as ``GET /v1/runs`` does. Callers hold the model lock.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import tempfile
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from saekit.analysis.store import ANALYSIS_DIR, open_run_store, store_exists
from saekit.autointerp.pipeline import scores_for_dashboard
from saekit.circuits.attribution import AttributionConfig, attribute
from saekit.circuits.budget import check_prompt_memory
from saekit.circuits.graph import prune
from saekit.circuits.graph_files import write_graph_files
from saekit.circuits.page import FeatureSource
from saekit.circuits.replacement import ReplacementModel, check_coverage
from saekit.circuits.transcoders import (
    TranscoderSet,
    check_fits,
    load_model_for,
    load_transcoders,
    transcoder_run_dirs,
)
from saekit.errors import SaekitError
from saekit.io import read_json
from saekit.models.loading import LoadedModel
from saekit.models.sites import parse_site
from saekit.serve.runs import model_id, model_key
from saekit.serve.security import ApiError
from saekit.training.config import load_run_config

KEPT_GRAPHS = 32  # each holds the dense adjacency (safetensors) besides the JSON and the page
KEY_PATTERN = re.compile(r"[0-9a-f]{32}")
# The CLI flags budget.py's refusal names, as the request fields (or server flag) that do the same here.
FLAG_FIELDS = {"--batch-size": "batch_size", "--max-feature-nodes": "max_feature_nodes",
               "shorten --prompt": "shorten the prompt", "--max-memory-gb": "the server's --graph-max-memory-gb"}


@dataclass(frozen=True)
class GraphRequest:
    """What one graph depends on: the prompt and the settings ``saekit attribute`` takes for them."""

    prompt: str
    slug: str
    attribution: AttributionConfig
    node_threshold: float
    edge_threshold: float

    def key(self) -> str:
        """The graph's directory name: a hash of everything that decides the graph (and its slug)."""
        text = json.dumps([self.prompt, self.slug, repr(self.attribution), self.node_threshold, self.edge_threshold])
        return hashlib.sha256(text.encode()).hexdigest()[:32]


@dataclass
class BuiltGraph:
    key: str
    slug: str
    record: dict[str, Any]  # circuit-tracer's graph JSON, as written to SLUG.json


@dataclass
class GraphService:
    """The transcoders (covering every MLP), their float32 model, the analysis stores describing the latents,
    and the graphs built so far."""

    name: str  # the transcoders as clients see them: their directory's name
    model_id: str
    model_key: tuple  # served runs whose model has this key share the loaded copy (runs.model_key)
    transcoders: TranscoderSet
    loaded: LoadedModel
    sources: dict[int, FeatureSource]
    root: tempfile.TemporaryDirectory = field(repr=False)
    built: OrderedDict[str, str] = field(default_factory=OrderedDict)  # key -> slug, oldest first

    def page_html(self, key: str) -> str | None:
        """The page of a graph built here (``key`` a hash this server gave out), else None. Read without the
        model lock (a page must not wait for another graph), so a graph evicted meanwhile is simply not found."""
        slug = self.built.get(key) if KEY_PATTERN.fullmatch(key) else None
        if slug is None:
            return None
        try:
            return (Path(self.root.name) / key / f"{slug}.html").read_text(encoding="utf-8")
        except OSError:
            return None

    def summary(self) -> dict[str, Any]:
        """What ``GET /v1/runs`` says about the graph transcoders (no file paths)."""
        return {"transcoders": self.name, "model": self.model_id, "layers": self.transcoders.layers}


def slug_of(text: str) -> str:
    """A slug for the graph's metadata and file names: lower-case letters, digits and dashes only
    (``saekit attribute``'s rule)."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:40] or "prompt"


def _layers_text(layers: list[int]) -> str:
    return ", ".join(map(str, layers))


def check_covers_every_mlp(path: Path, transcoders: TranscoderSet, n_layers: int) -> None:
    """One line when the set leaves an MLP unreplaced: a graph needs every MLP replaced (none frozen here)."""
    missing = check_coverage(transcoders, n_layers, freeze_unreplaced=True)
    if missing:
        raise SaekitError(f"--graph-transcoders {path} replaces the MLPs of layers "
                          f"{_layers_text(transcoders.layers)} but not of layers {_layers_text(missing)} of the "
                          f"model's {n_layers}; give a CLT run or a directory of per-layer transcoder runs covering "
                          "every MLP")


def _run_layers(manifest: dict[str, Any]) -> list[int]:
    return [parse_site(site).layer for site in manifest.get("sites") or [manifest["site"]]]


def feature_sources(path: Path, transcoders: TranscoderSet) -> dict[int, FeatureSource]:
    """Per model layer, the analysis store and explanations describing its latents (as ``saekit attribute``
    finds them), without dashboard links: the page is served from the server's directory, not the run's."""
    sources: dict[int, FeatureSource] = {}
    for run in transcoder_run_dirs(path):
        if not store_exists(run / ANALYSIS_DIR):
            continue
        store = open_run_store(run)
        interpretations = scores_for_dashboard(run)
        for index, layer in enumerate(_run_layers(store.manifest)):
            if layer in transcoders.layers:
                offset = index * transcoders.width(layer)  # a store over several layers: their latents in order
                sources[layer] = FeatureSource(store, offset, interpretations, None)
    return sources


def load_graph_service(path: str | Path) -> GraphService:
    """The transcoders at ``path`` and their model (float32, on the device their runs name), refused in one
    line unless they replace every MLP of it."""
    path = Path(path)
    device = _device_of(path)
    transcoders = load_transcoders(path, device)
    loaded = load_model_for(transcoders, device)
    adapter = loaded.adapter
    check_covers_every_mlp(path, transcoders, adapter.n_layers)
    check_fits(transcoders, adapter.n_layers, adapter.d_model)
    assert transcoders.data is not None  # load_model_for refused a set recording no model
    data = replace(transcoders.data, model_dtype="float32")
    return GraphService(path.resolve().name, model_id(data.model), model_key(data, device), transcoders, loaded,
                        feature_sources(path, transcoders), tempfile.TemporaryDirectory(prefix="saekit-graphs-"))


def _device_of(path: Path) -> str:
    """The device the transcoder runs were configured for (as served runs use their own)."""
    runs = transcoder_run_dirs(path)
    return load_run_config(runs[0]).run.device if runs else "cpu"


def context_length(loaded: LoadedModel) -> int | None:
    context = getattr(loaded.model.config.get_text_config(), "max_position_embeddings", None)
    return None if context is None else int(context)


def api_line(err: SaekitError) -> str:
    """A circuits refusal in the API's terms: its CLI flags named as the request fields that do the same."""
    message = str(err).splitlines()[0]
    for flag, name in FLAG_FIELDS.items():
        message = message.replace(flag, name)
    return message


def _refusal(err: SaekitError) -> ApiError:
    """budget.py's refusals are a request too large for this server (413); any other circuits error is a 400."""
    status = 413 if str(err).startswith("attribution would need") else 400
    return ApiError(status, api_line(err))


def _written(service: GraphService, key: str, slug: str) -> BuiltGraph:
    return BuiltGraph(key, slug, read_json(Path(service.root.name) / key / f"{slug}.json", "graph JSON"))


def _remember(service: GraphService, key: str, slug: str) -> None:
    """Record a new graph; the oldest beyond ``KEPT_GRAPHS`` leave the disk."""
    service.built[key] = slug
    while len(service.built) > KEPT_GRAPHS:
        old, _ = service.built.popitem(last=False)
        shutil.rmtree(Path(service.root.name) / old, ignore_errors=True)


def build_graph(service: GraphService, request: GraphRequest) -> BuiltGraph:
    """The pruned graph of ``request.prompt`` written to the server's directory (or the one already there).

    Checked before the clean run: the graph's memory with no latent nodes against the request's
    ``max_memory_gb`` (None: 90% of what is free); once the active latents are known, :func:`attribute`
    checks it again."""
    key = request.key()
    if key in service.built:
        service.built.move_to_end(key)
        return _written(service, key, service.built[key])
    loaded, transcoders = service.loaded, service.transcoders
    ids = loaded.prompt_ids(request.prompt)
    config = request.attribution
    try:
        check_prompt_memory(loaded, transcoders, len(ids), config.batch_size, config.max_memory_gb)
        replacement = ReplacementModel(loaded, transcoders, ids, freeze_unreplaced=False)
        graph = attribute(replacement, request.prompt, config, service.name)
    except SaekitError as err:
        raise _refusal(err) from err
    graph.model = service.model_id  # the model's name, never its path
    pruned = prune(graph, request.node_threshold, request.edge_threshold)
    write_graph_files(graph, pruned, Path(service.root.name) / key, request.slug, service.sources)
    _remember(service, key, request.slug)
    return _written(service, key, request.slug)
