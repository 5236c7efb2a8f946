"""A working subgraph of an attribution graph: the pinned nodes, their supernodes and labels, in the shape
Neuronpedia's graph viewer keeps in a graph JSON's ``qParams`` and saves as a subgraph.

The shapes follow Neuronpedia's webapp (``CltVisState``, ``SaveSubgraphRequestSchema``) and circuit-tracer's
frontend (``graph_models.QParams``):

- ``pinnedIds``: a list of node ids (``node_id``). The comma-separated string of a viewer's address is read too.
- ``supernodes``: a list of ``[name, node id, node id, ...]``; a node is in one supernode at most. As in
  Neuronpedia, a member that is not pinned is kept but not shown.
- ``clerps``: a list of ``[feature id, label]``. The key is Neuronpedia's ``featureId`` of the node, which is
  not its node id: ``{layer}_{feature}_{ctx_idx}`` (a latent's ``feature`` is circuit-tracer's Cantor number,
  a token's its position), with ``_mlp__err_idx_{tokens - ctx_idx}`` appended for an error node.
- ``clickedId``: the selected node id, or "".
- ``linkType``: ``input``, ``output``, ``either`` or ``both``.

circuit-tracer's own local viewer differs on one key: it ``JSON.parse``s ``qParams.clerps`` (a string keyed by
the feature number), so ``graph_files.merge_subgraph`` writes ``clerps`` only when there are labels.

A subgraph file (``SLUG.subgraph.json``, what saekit's page downloads) holds these keys and the graph's
``slug``; a whole graph JSON is read for its ``qParams``. Reading checks shapes; ``check_subgraph`` checks the
ids against a graph's nodes. Every refusal is one line naming the file, what is wrong and how to fix it.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from saekit.errors import SaekitError

SUBGRAPH_SUFFIX = ".subgraph.json"
LINK_TYPES = ("input", "output", "either", "both")
DEFAULT_LINK_TYPE = "both"  # what saekit's graph JSON and Neuronpedia's blank state say
STATE_KEYS = ("pinnedIds", "supernodes", "clerps", "clickedId", "linkType")
# Keys Neuronpedia's saved subgraphs and graph qParams carry that saekit keeps no state for: accepted, ignored.
IGNORED_KEYS = ("modelId", "displayName", "sg_pos", "hiddenIds", "pruningThreshold", "densityThreshold",
                "overwriteId")
FIX = "download it again from the graph page"


@dataclass(frozen=True)
class Subgraph:
    """Pinned node ids in pinning order, supernodes as (name, *member ids), labels by feature id."""

    pinned: tuple[str, ...] = ()
    supernodes: tuple[tuple[str, ...], ...] = ()
    clerps: tuple[tuple[str, str], ...] = ()
    clicked: str = ""
    link_type: str = DEFAULT_LINK_TYPE
    slug: str | None = None

    def q_params(self) -> dict[str, Any]:
        """The state as a graph JSON's ``qParams`` entries."""
        return {"pinnedIds": list(self.pinned), "supernodes": [list(s) for s in self.supernodes],
                "clerps": [list(c) for c in self.clerps], "clickedId": self.clicked, "linkType": self.link_type}

    def file_json(self) -> dict[str, Any]:
        """The subgraph file: the graph's slug, then the state."""
        return {"slug": self.slug, **self.q_params()}

    def node_ids(self) -> set[str]:
        """Every node id the state names."""
        members = {node for supernode in self.supernodes for node in supernode[1:]}
        return set(self.pinned) | members | ({self.clicked} if self.clicked else set())


def clerp_key(node: dict[str, Any], n_tokens: int) -> str:
    """Neuronpedia's ``featureId`` of a node record: the key its ``clerps`` (labels) are stored under."""
    key = f"{node['layer']}_{node['feature']}_{node['ctx_idx']}"
    kind = str(node.get("feature_type", ""))
    if "error" in kind:  # Neuronpedia's formatCLTGraphData: error nodes count their position from the end
        key += f"_{'attn' if 'lorsa' in kind else 'mlp'}__err_idx_{n_tokens - int(node['ctx_idx'])}"
    return key


def clerp_keys(record: dict[str, Any]) -> dict[str, str]:
    """Each node id of a graph JSON and its label key."""
    n_tokens = len(record["metadata"]["prompt_tokens"])
    return {node["node_id"]: clerp_key(node, n_tokens) for node in record["nodes"]}


def _strings(value: Any, where: str, what: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise SaekitError(f"{where}: {what} must be a list of strings, not {json.dumps(value)[:80]}; {FIX}")
    return value


def _pinned(value: Any, where: str) -> tuple[str, ...]:
    if isinstance(value, str):  # a viewer address's form: "id,id,id"
        value = [part for part in value.split(",") if part]
    return tuple(dict.fromkeys(_strings(value, where, "pinnedIds")))  # a repeated pin is still one pin


def _supernodes(value: Any, where: str) -> tuple[tuple[str, ...], ...]:
    if not isinstance(value, list):
        raise SaekitError(f"{where}: supernodes must be a list of [name, node id, ...] lists; {FIX}")
    owner: dict[str, str] = {}
    for entry in value:
        if not isinstance(entry, list) or len(entry) < 2 or not all(isinstance(item, str) for item in entry):
            raise SaekitError(f"{where}: the supernode {json.dumps(entry)[:80]} is not [name, node id, ...] (a "
                              f"name and at least one node id, all strings); {FIX}")
        for node in entry[1:]:
            if node in owner:  # a viewer puts a node in one group only; a second would be ambiguous
                raise SaekitError(f"{where}: node {node} is in the supernodes {owner[node]!r} and {entry[0]!r}; "
                                  "a node belongs to one supernode, so remove it from one of them")
            owner[node] = entry[0]
    return tuple(tuple(entry) for entry in value)


def _clerps(value: Any, where: str) -> tuple[tuple[str, str], ...]:
    if isinstance(value, str):  # circuit-tracer's own frontend keeps them JSON-encoded
        try:
            value = json.loads(value) if value else []
        except json.JSONDecodeError:
            raise SaekitError(f"{where}: clerps is a string that is not JSON; give a list of [feature id, "
                              f"label] pairs; {FIX}") from None
    if not isinstance(value, list) or not all(isinstance(pair, list) and len(pair) == 2
                                              and all(isinstance(item, str) for item in pair) for pair in value):
        raise SaekitError(f"{where}: clerps must be a list of [feature id, label] pairs of strings; {FIX}")
    counts = Counter(pair[0] for pair in value)
    repeated = sorted(key for key, count in counts.items() if count > 1)
    if repeated:
        raise SaekitError(f"{where}: clerps gives {', '.join(repeated[:3])} more than one label; keep one pair per "
                          "feature id")
    return tuple((key, label) for key, label in value)


def parse_subgraph(raw: Any, where: str) -> Subgraph:
    """A subgraph from a subgraph file's (or a graph JSON's) parsed JSON; shapes checked, ids not yet."""
    if isinstance(raw, dict) and "qParams" in raw and "nodes" in raw:  # a whole graph JSON: its saved state
        slug = (raw.get("metadata") or {}).get("slug")
        q_params = raw["qParams"] if isinstance(raw["qParams"], dict) else {}
        raw = {**{key: q_params[key] for key in STATE_KEYS if key in q_params}, "slug": slug}  # viewers keep more
    if not isinstance(raw, dict):
        raise SaekitError(f"{where} is not a subgraph (a JSON object with pinnedIds, supernodes, clerps); {FIX}")
    unknown = sorted(set(raw) - {"slug", *STATE_KEYS, *IGNORED_KEYS})
    if unknown:
        raise SaekitError(f"{where}: unknown key {unknown[0]!r}; a subgraph has slug, "
                          f"{', '.join(STATE_KEYS)} (Neuronpedia's names, case-sensitive)")
    slug, clicked = raw.get("slug"), raw.get("clickedId") or ""
    link_type = raw.get("linkType") or DEFAULT_LINK_TYPE
    if slug is not None and not isinstance(slug, str):
        raise SaekitError(f"{where}: slug must be a string; {FIX}")
    if not isinstance(clicked, str):
        raise SaekitError(f"{where}: clickedId must be a node id string; {FIX}")
    if link_type not in LINK_TYPES:
        raise SaekitError(f"{where}: linkType {json.dumps(link_type)[:40]} is not one of {', '.join(LINK_TYPES)}")
    return Subgraph(_pinned(raw.get("pinnedIds") or [], where), _supernodes(raw.get("supernodes") or [], where),
                    _clerps(raw.get("clerps") or [], where), clicked, link_type, slug)


def read_subgraph(path: str | Path) -> Subgraph:
    """A subgraph file (or a graph JSON, for its ``qParams``), its shapes checked."""
    path = Path(path)
    if not path.is_file():
        raise SaekitError(f"subgraph file not found: {path}; give the {SUBGRAPH_SUFFIX} file the graph page "
                          "downloaded")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise SaekitError(f"subgraph file {path} is not JSON ({str(err).splitlines()[0]}); {FIX}") from err
    return parse_subgraph(raw, f"subgraph file {path}")


def unknown_ids(subgraph: Subgraph, record: dict[str, Any]) -> tuple[list[str], list[str]]:
    """The node ids and the label keys the subgraph names that the graph JSON ``record`` does not have."""
    keys = clerp_keys(record)
    nodes = sorted(subgraph.node_ids() - set(keys))
    labels = sorted({key for key, _ in subgraph.clerps} - set(keys.values()))
    return nodes, labels


def check_subgraph(subgraph: Subgraph, record: dict[str, Any], where: str) -> None:
    """Refuse a subgraph made on another graph: another slug, or ids this graph's nodes do not have."""
    slug = record["metadata"].get("slug")
    if subgraph.slug is not None and subgraph.slug != slug:
        raise SaekitError(f"{where} is the subgraph of graph {subgraph.slug!r}, not {slug!r}; give that graph's "
                          f"file, or delete its slug line to apply it anyway")
    nodes, labels = unknown_ids(subgraph, record)
    if nodes:
        raise SaekitError(f"{where} names node{'s' if len(nodes) > 1 else ''} {', '.join(nodes[:5])} that graph "
                          f"{slug!r} does not have (pruned, or another prompt or transcoders); pin again on its "
                          "page and download, or remove them from the file")
    if labels:
        raise SaekitError(f"{where} labels {', '.join(labels[:5])}, no node's feature id in graph {slug!r} (clerps "
                          "keys are Neuronpedia's featureId, LAYER_FEATURE_POSITION, not node ids); label the nodes "
                          "again on its page and download, or remove those pairs")


def without_unknown(subgraph: Subgraph, record: dict[str, Any]) -> tuple[Subgraph, list[str]]:
    """The subgraph less what the graph does not have (the page's lenient load), and what was dropped."""
    nodes, labels = unknown_ids(subgraph, record)
    gone = set(nodes)
    supernodes = tuple(kept for kept in ((s[0], *(n for n in s[1:] if n not in gone)) for s in subgraph.supernodes)
                       if len(kept) > 1)
    kept = Subgraph(tuple(n for n in subgraph.pinned if n not in gone), supernodes,
                    tuple(c for c in subgraph.clerps if c[0] not in labels),
                    "" if subgraph.clicked in gone else subgraph.clicked, subgraph.link_type, subgraph.slug)
    return kept, nodes + labels
