"""The Neuronpedia-compatible routes under ``/v1``: tokenize, activation/all, activation/topk-by-token,
steer/completion, explanation search, and graph/generate (Neuronpedia's graph server's ``generate-graph``; only
with graph transcoders), plus ``runs`` and a run's explanations, which the page reads.

Every model call holds the server's model lock, so two requests never share the model's hooks at once.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from fastapi import APIRouter, Request
from torch import Tensor

from saekit.circuits.attribution import AttributionConfig
from saekit.serve import schemas as s
from saekit.serve.engine import Steer, generate, latent_activations, special_ids, steering_direction
from saekit.serve.graphs import GraphRequest, GraphService, build_graph, context_length, slug_of
from saekit.serve.runs import ServedRun
from saekit.serve.security import ApiError, check_name
from saekit.serve.state import ServerState

router = APIRouter(prefix="/v1")


def _state(request: Request) -> ServerState:
    return request.app.state.saekit


def run_named(state: ServerState, name: str, field: str = "source") -> ServedRun:
    check_name(field, name)
    if name not in state.runs:
        raise ApiError(404, f"unknown run {name!r} in {field}; this server serves {', '.join(sorted(state.runs))}")
    return state.runs[name]


def _check_model(run: ServedRun, model: str | None) -> None:
    if model is None:
        return
    check_name("model", model, slash_allowed=True)
    if model != run.model_id:
        raise ApiError(404, f"model {model!r} is not run {run.name!r}'s model, which is {run.model_id!r}")


def _check_latent(run: ServedRun, index: int) -> None:
    if not 0 <= index < run.width:
        raise ApiError(404, f"latent {index} is out of range: run {run.name!r} has {run.width} latents "
                            f"(0-{run.width - 1})")


def _check_count(what: str, count: int, limit: int) -> None:
    if count > limit:
        raise ApiError(413, f"{what} is {count}, over this server's limit of {limit}; ask for fewer")


def _count(body: s.Wire, field: str, what: str, limit: int) -> int:
    """A count the client asked for (over ``limit``: 413), or its default cut to the limit when not given."""
    value = getattr(body, field)
    if field not in body.model_fields_set:
        return min(value, limit)
    _check_count(what, value, limit)
    return value


def _one_model(runs: list[ServedRun]) -> None:
    if len({id(run.loaded) for run in runs}) > 1:
        raise ApiError(400, "the selected runs use different models; select runs of one model")


def _prompt_ids(state: ServerState, run: ServedRun, prompt: str) -> Tensor:
    ids = run.loaded.prompt_ids(prompt)
    if ids.numel() < 2:
        raise ApiError(400, "prompt is empty; send some text")
    _check_count("prompt length in tokens", ids.numel() - 1, state.settings.max_prompt_tokens)
    return ids


def _selected(state: ServerState, names: list[str], model: str | None) -> list[ServedRun]:
    if names:
        runs = [run_named(state, name, "selectedSources") for name in dict.fromkeys(names)]
    else:
        runs = [run for run in state.runs.values() if model is None or run.model_id == model]
        if not runs:
            check_name("model", model or "", slash_allowed=True)
            raise ApiError(404, f"no run serves model {model!r}; GET /v1/runs lists the runs and their models")
    for run in runs:
        _check_model(run, model)
    _one_model(runs)
    return runs


@router.get("/runs")
def list_runs(request: Request) -> dict:
    """The runs this server holds (their names are what ``source`` fields take) and the search method."""
    state = _state(request)
    graph = None if state.graph is None else {**state.graph.summary(),
                                              "maxPromptTokens": state.settings.max_graph_prompt_tokens}
    return {"runs": [run.summary() for run in state.runs.values()], "search": state.index.method,
            "searchNote": state.index.note, "graph": graph}


@router.get("/runs/{name}/explanations")
def run_explanations(name: str, request: Request) -> dict:
    """Every explained latent of the run: ``{"explanations": {"12": "text", ...}}``."""
    run = run_named(_state(request), name, "run")
    return {"explanations": {str(latent): text for latent, text in sorted(run.explanations.items())}}


@router.post("/tokenize", response_model=s.TokenizeResponse)
def tokenize(body: s.TokenizeRequest, request: Request) -> s.TokenizeResponse:
    """The prompt's token ids and strings as the run's model reads them (BOS first unless ``prependBos`` false)."""
    state = _state(request)
    run = run_named(state, body.source) if body.source else _selected(state, [], body.model)[0]
    _check_model(run, body.model)
    ids = run.loaded.prompt_ids(body.text)
    _check_count("prompt length in tokens", ids.numel() - 1, state.settings.max_prompt_tokens)
    prepend = body.prepend_bos is not False
    kept = ids.tolist() if prepend else ids.tolist()[1:]
    return s.TokenizeResponse(tokens=kept, token_strings=run.loaded.token_strings(kept), prepend_bos=prepend)


def _ranked(acts: Tensor, positions: list[int], ignore_bos: bool) -> tuple[Tensor, Tensor]:
    """(score per latent, which latents qualify): active somewhere, and not peaking on BOS if asked."""
    if positions:
        bad = [p for p in positions if not 0 <= p < acts.shape[0]]
        if bad:
            raise ApiError(400, f"sortByTokenIndexes has position {bad[0]}, outside the prompt's {acts.shape[0]} "
                                f"tokens (0-{acts.shape[0] - 1}, BOS is 0)")
        score = acts[positions].sum(0)
    else:
        score = acts.max(0).values
    keep = acts.max(0).values > 0
    if ignore_bos:
        keep &= acts.argmax(0) != 0
    return score, keep


def _feature(run: ServedRun, acts: Tensor, latent: int) -> s.ActivationAllFeature:
    column = acts[:, latent]
    return s.ActivationAllFeature(source=run.name, index=latent, values=column.tolist(), sum_values=float(column.sum()),
                                  max_value=float(column.max()), max_value_index=int(column.argmax()))


@router.post("/activation/all", response_model=s.ActivationAllResponse)
def activation_all(body: s.ActivationAllRequest, request: Request) -> s.ActivationAllResponse:
    """The ``numResults`` latents (over the selected runs) that fire most on the prompt, with every token's value."""
    state = _state(request)
    limit = _count(body, "num_results", "numResults", state.settings.max_latents)
    runs = _selected(state, body.selected_sources, body.model)
    ids = _prompt_ids(state, runs[0], body.prompt)
    with state.lock:
        per_run = [(run, latent_activations(run, ids)) for run in runs]
    candidates = []
    for order, (run, acts) in enumerate(per_run):
        score, keep = _ranked(acts, body.sort_by_token_indexes, body.ignore_bos)
        candidates += [(-float(score[i]), order, int(i), run, acts) for i in torch.nonzero(keep).flatten().tolist()]
    candidates.sort(key=lambda c: c[:3])
    chosen = candidates[:limit]
    return s.ActivationAllResponse(activations=[_feature(run, acts, latent) for _, _, latent, run, acts in chosen],
                                   tokens=runs[0].loaded.token_strings(ids.tolist()))


def _position_result(acts: Tensor, position: int, top_k: int, token: str, special: bool) -> s.TopkByTokenResult:
    values, latents = acts[position].topk(min(top_k, acts.shape[1]))
    features = [s.TopkFeature(feature_index=int(i), activation_value=float(v))
                for v, i in zip(values.tolist(), latents.tolist()) if v > 0]
    return s.TopkByTokenResult(token_position=position, token=token, is_special=special, top_features=features)


@router.post("/activation/topk-by-token", response_model=s.TopkByTokenResponse)
def topk_by_token(body: s.TopkByTokenRequest, request: Request) -> s.TopkByTokenResponse:
    """Each token's ``topK`` latents (positive activations only), BOS left out when ``ignoreBos``."""
    state = _state(request)
    top_k = _count(body, "top_k", "topK", state.settings.max_latents)
    run = run_named(state, body.source)
    _check_model(run, body.model)
    ids = _prompt_ids(state, run, body.prompt)
    with state.lock:
        acts = latent_activations(run, ids)
    tokens, special = run.loaded.token_strings(ids.tolist()), special_ids(run.loaded)
    start = 1 if body.ignore_bos else 0
    return s.TopkByTokenResponse(
        results=[_position_result(acts, p, top_k, tokens[p], int(ids[p]) in special)
                 for p in range(start, len(tokens))], tokens=tokens)


def _steers(state: ServerState, body: s.SteerCompletionRequest) -> tuple[ServedRun, dict]:
    """The first feature's run and ``{site: [Steer]}`` of every feature, each checked."""
    by_site: dict = {}
    runs = []
    for feature in body.features:
        run = run_named(state, feature.source, "features.source")
        _check_model(run, feature.model or body.model)
        _check_latent(run, feature.index)
        if not run.can_steer:
            raise ApiError(400, f"run {run.name!r} is cross-layer (it writes {len(run.write_sites)} sites); steer "
                                "with a single-site SAE or transcoder run")
        amount = feature.strength * body.strength_multiplier
        if not math.isfinite(amount):
            raise ApiError(422, "strength x strengthMultiplier is not a finite number; send smaller values")
        direction = steering_direction(run, feature.index, body.normalize_steering)
        by_site.setdefault(run.write_sites[0], []).append(Steer(direction, amount))
        runs.append(run)
    _one_model(runs)
    return runs[0], by_site


def _check_steer_request(state: ServerState, body: s.SteerCompletionRequest) -> int:
    """The seed as an int; every limit and unsupported option refused first."""
    _check_count("number of steering features", len(body.features), state.settings.max_latents)
    _check_count("nCompletionTokens", body.n_completion_tokens, state.settings.max_new_tokens)
    if body.freq_penalty != 0:
        raise ApiError(400, "freqPenalty is not supported (saekit samples without a penalty); send 0")
    if body.stream:
        raise ApiError(400, "stream is not supported; send stream false and read the whole response")
    if body.seed != int(body.seed) or body.seed >= 2**63:
        raise ApiError(422, f"seed {body.seed} is not a whole number below 2^63; send an integer seed")
    return int(body.seed)


@router.post("/steer/completion", response_model=s.SteerCompletionResponse)
def steer_completion(body: s.SteerCompletionRequest, request: Request) -> s.SteerCompletionResponse:
    """The prompt's continuation clean (DEFAULT) and steered (STEERED), sampled with the same seed."""
    state = _state(request)
    seed = _check_steer_request(state, body)
    run, by_site = _steers(state, body)
    _prompt_ids(state, run, body.prompt)
    outputs = []
    for kind in dict.fromkeys(body.types):
        with state.lock:
            text = generate(run.loaded, body.prompt, body.n_completion_tokens, body.temperature, seed,
                            by_site if kind == "STEERED" else None, body.steer_method)
        outputs.append(s.SteerOutput(type=kind, output=text))
    return s.SteerCompletionResponse(outputs=outputs)


def _sources(state: ServerState, names: Iterable[str]) -> set[str]:
    return {run_named(state, name, "selectedSources").name for name in names} or set(state.runs)


@router.post("/explanation/search", response_model=s.SearchResponse)
def explanation_search(body: s.SearchRequest, request: Request) -> s.SearchResponse:
    """Explained latents ranked by how well their explanation matches ``query`` (embedding cosine, or word match)."""
    state = _state(request)
    limit = _count(body, "num_results", "numResults", state.settings.max_latents)
    _check_count("query length in characters", len(body.query), 1000)
    sources = _sources(state, body.selected_sources)
    with state.search_lock:
        hits = state.index.search(body.query, sources, limit)
    return s.SearchResponse(method=state.index.method, results=[
        s.SearchResult(source=h.source, index=h.index, description=h.description, score=h.score) for h in hits])


def _graph_service(state: ServerState, model: str | None) -> GraphService:
    if state.graph is None:
        raise ApiError(404, "this server has no graph transcoders; start it with saekit serve RUN... "
                            "--graph-transcoders PATH (a CLT run or a directory of per-layer transcoder runs)")
    if model is not None:
        check_name("modelId", model, slash_allowed=True)
        if model != state.graph.model_id:
            raise ApiError(404, f"modelId {model!r} is not the graph transcoders' model, which is "
                                f"{state.graph.model_id!r}")
    return state.graph


def _graph_request(state: ServerState, graph: GraphService, body: s.GraphGenerateRequest) -> GraphRequest:
    """The request checked against this server's limits (prompt length in tokens; target logits, at most
    ``--max-latents``, the default cut to it) and options."""
    if body.signed_url is not None:
        raise ApiError(400, "signed_url is not supported (saekit uploads nothing); leave it out and read the graph "
                            "from the response")
    ids = graph.loaded.prompt_ids(body.prompt)
    if ids.numel() < 2 or not body.prompt.strip():  # saekit attribute refuses a blank prompt too
        raise ApiError(400, "prompt is empty; send some text")
    limit = min(state.settings.max_graph_prompt_tokens, (context_length(graph.loaded) or ids.numel()) - 1)
    _check_count("graph prompt length in tokens", ids.numel() - 1, limit)
    max_logits = _count(body, "max_n_logits", "max_n_logits", state.settings.max_latents)
    attribution = AttributionConfig(max_logits=max_logits, logit_probability=body.desired_logit_prob,
                                    batch_size=body.batch_size, max_feature_nodes=body.max_feature_nodes,
                                    progress=False, max_memory_gb=state.settings.graph_max_memory_gb)
    return GraphRequest(body.prompt, slug_of(body.slug_identifier or body.prompt), attribution,
                        body.node_threshold, body.edge_threshold)


@router.post("/graph/generate", response_model=s.GraphGenerateResponse)
def graph_generate(body: s.GraphGenerateRequest, request: Request) -> s.GraphGenerateResponse:
    """The attribution graph of the prompt over the server's transcoders (as ``saekit attribute`` builds it with
    the same settings), pruned, in circuit-tracer's schema, and the address of its page."""
    state = _state(request)
    graph = _graph_service(state, body.model_id)
    wanted = _graph_request(state, graph, body)
    with state.lock:
        built = build_graph(graph, wanted)
    return s.GraphGenerateResponse(key=built.key, slug=built.slug, url=f"/graphs/{built.key}",
                                   graph=s.GraphJson.model_validate(built.record))
