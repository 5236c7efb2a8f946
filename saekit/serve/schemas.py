"""The JSON bodies, named as Neuronpedia's inference server names them (``/v1/...``).

On the wire every field is camelCase (``sortByTokenIndexes``), as Neuronpedia's server writes it; requests may
also spell fields snake_case (``sort_by_token_indexes``), which its older clients send. ``model`` is the
model's name as ``GET /v1/runs`` shows it; ``source`` and ``selectedSources`` name runs by the names the server
printed at startup. Every float must be finite (a NaN strength is a 422 naming the field).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

Finite = Annotated[float, Field(allow_inf_nan=False)]


class Wire(BaseModel):
    """camelCase on the wire, snake_case accepted on input; fields saekit does not use are ignored."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, protected_namespaces=())


class ErrorBody(Wire):
    error: str


class ActivationAllRequest(Wire):
    prompt: str
    model: str | None = None
    source_set: str | None = None
    selected_sources: list[str] = Field(default_factory=list, description="runs to read (none: every run of "
                                        "the model)")
    sort_by_token_indexes: list[int] = Field(default_factory=list, description="rank latents by their summed "
                                             "activation at these positions (none: by their maximum)")
    ignore_bos: bool = Field(True, description="leave out latents whose largest activation is on BOS")
    num_results: int = Field(25, ge=1)


class ActivationAllFeature(Wire):
    source: str
    index: int
    values: list[float]
    sum_values: float
    max_value: float
    max_value_index: int


class ActivationAllResponse(Wire):
    activations: list[ActivationAllFeature]
    tokens: list[str]


class TopkByTokenRequest(Wire):
    prompt: str
    model: str | None = None
    source: str
    top_k: int = Field(5, ge=1)
    ignore_bos: bool = True


class TopkFeature(Wire):
    feature_index: int
    activation_value: float


class TopkByTokenResult(Wire):
    token_position: int
    token: str
    is_special: bool
    top_features: list[TopkFeature]


class TopkByTokenResponse(Wire):
    results: list[TopkByTokenResult]
    tokens: list[str]


class TokenizeRequest(Wire):
    text: str
    model: str | None = None
    source: str | None = Field(None, description="whose model's tokenizer (none: the first run's)")
    prepend_bos: bool | None = None


class TokenizeResponse(Wire):
    tokens: list[int]
    token_strings: list[str]
    prepend_bos: bool


class SteerFeature(Wire):
    model: str | None = None
    source: str
    index: int
    strength: Finite


class SteerCompletionRequest(Wire):
    prompt: str
    model: str | None = None
    steer_method: Literal["SIMPLE_ADDITIVE", "ORTHOGONAL_DECOMP", "PROJECTION_CAP"] = "SIMPLE_ADDITIVE"
    normalize_steering: bool = False
    types: list[Literal["STEERED", "DEFAULT"]] = Field(default_factory=lambda: ["STEERED", "DEFAULT"], min_length=1)
    features: list[SteerFeature] = Field(min_length=1)
    n_completion_tokens: int = Field(16, ge=1)
    temperature: Finite = Field(0.7, ge=0)
    strength_multiplier: Finite = 1.0
    freq_penalty: Finite = Field(0.0, description="accepted for Neuronpedia clients; must be 0 (saekit's sampler "
                                 "has no penalty)")
    seed: Finite = Field(0, ge=0)
    stream: bool = False


class SteerOutput(Wire):
    type: Literal["STEERED", "DEFAULT"]
    output: str = Field(description="the continuation after the prompt (the prompt itself is not repeated)")


class SteerCompletionResponse(Wire):
    outputs: list[SteerOutput]


class SearchRequest(Wire):
    query: str = Field(min_length=1)
    selected_sources: list[str] = Field(default_factory=list)
    num_results: int = Field(20, ge=1)


class SearchResult(Wire):
    source: str
    index: int
    description: str
    score: float


class SearchResponse(Wire):
    method: Literal["embedding", "text"]
    results: list[SearchResult]


class GraphGenerateRequest(Wire):
    """Neuronpedia graph server's ``generate-graph`` body (its snake_case names, or camelCase); the defaults are
    ``saekit attribute``'s, so the same prompt gives the same graph."""

    prompt: str
    model_id: str | None = Field(None, description="the graph transcoders' model as GET /v1/runs names it")
    batch_size: int = Field(32, ge=1, le=4096, description="targets per backward pass (memory grows with it)")
    max_n_logits: int = Field(10, ge=1, description="at most this many output logits as target nodes")
    desired_logit_prob: Finite = Field(0.95, gt=0, le=1, description="target logits: the most probable tokens "
                                       "until they hold this probability")
    node_threshold: Finite = Field(0.8, gt=0, le=1, description="keep the nodes holding this share of the "
                                   "influence on the logits")
    edge_threshold: Finite = Field(0.98, gt=0, le=1, description="keep the edges holding this share of the edge "
                                   "influence")
    max_feature_nodes: int | None = Field(None, ge=1, description="keep only this many latents (largest "
                                          "activations; none: every active one)")
    slug_identifier: str | None = Field(None, max_length=200, description="the graph's slug (lower-cased to "
                                        "letters, digits and dashes; default: from the prompt)")
    signed_url: str | None = Field(None, description="accepted for Neuronpedia clients; must be absent (the graph "
                                   "comes back in the response)")


class Plain(BaseModel):
    """circuit-tracer's graph JSON keeps its own field names (snake_case and ``jsNodeId``) and any key a newer
    writer adds."""

    model_config = ConfigDict(extra="allow")


class GraphNode(Plain):
    node_id: str
    feature: int | None = None
    layer: str
    ctx_idx: int
    feature_type: str
    token_prob: float = 0.0
    is_target_logit: bool = False
    jsNodeId: str  # noqa: N815 (circuit-tracer's name)
    clerp: str = ""
    influence: float | None = None
    activation: float | None = None


class GraphLink(Plain):
    source: str
    target: str
    weight: float


class GraphMetadata(Plain):
    slug: str
    scan: str
    prompt_tokens: list[str]
    prompt: str
    node_threshold: float


class GraphJson(Plain):
    metadata: GraphMetadata
    qParams: dict  # noqa: N815 (circuit-tracer's name)
    nodes: list[GraphNode]
    links: list[GraphLink]


class GraphGenerateResponse(Wire):
    key: str = Field(description="the graph's id on this server (a hash of the request)")
    slug: str
    url: str = Field(description="the graph's page on this server: /graphs/KEY")
    graph: GraphJson = Field(description="the pruned graph in circuit-tracer's schema, as saekit attribute writes "
                             "SLUG.json")
