"""The graph on disk: circuit-tracer's schema (ids, links = adjacency entries), the exact safetensors
round trip, and saekit's page in headless Chromium with a prompt and corpus text that carry markup."""

from __future__ import annotations

import html
import json
import re

import pytest
import torch

from saekit.analysis.analyze import AnalysisConfig, analyze_dictionary
from saekit.analysis.examples import ExampleConfig
from saekit.analysis.store import AnalysisStore
from saekit.circuits.attribution import AttributionConfig, attribute
from saekit.circuits.graph import prune
from saekit.circuits.graph_files import GRAPH_METADATA, graph_json, read_graph, write_graph_files
from saekit.circuits.page import FeatureSource
from saekit.circuits.replacement import ReplacementModel
from saekit.circuits.transcoders import TranscoderSet
from saekit.data.contexts import iter_contexts, take_contexts
from saekit.data.corpus import Document
from saekit.dictionaries import DictionaryConfig, build_dictionary
from saekit.errors import SaekitError
from tests.dashboard.test_dashboard_browser import CHROMIUM, dump_dom, title_of, visible_text

MARKUP = "<script>document.title='PWNED'</script><b>x</b>&amp;"
PROMPT = f"Look {MARKUP} at the cat"
CORPUS = [f"Careful: {MARKUP} the cat sat on the mat\nand looked at the cat again.",
          "The cat and the dog sat\ntogether by the warm fire\nin the evening light."] * 4


@pytest.fixture(scope="module")
def built(tiny_loaded, tmp_path_factory):
    torch.manual_seed(0)
    per_layer = {}
    for layer in (0, 1):
        dictionary = build_dictionary(DictionaryConfig("jumprelu", 32, 64, d_out=32)).eval()
        with torch.no_grad():
            dictionary.log_threshold.fill_(-3.0)
        per_layer[layer] = dictionary.requires_grad_(False)
    transcoders = TranscoderSet.per_layer(per_layer)
    ids = tiny_loaded.prompt_ids(PROMPT)
    graph = attribute(ReplacementModel(tiny_loaded, transcoders, ids), PROMPT, AttributionConfig(progress=False))
    pruned = prune(graph, 0.8, 0.98)
    docs = [Document("test", f"doc{i}", text) for i, text in enumerate(CORPUS)]
    contexts = take_contexts(iter_contexts(docs, tiny_loaded.tokenizer, 24, tiny_loaded.bos_token_id,
                                           tiny_loaded.eos_token_id, seed=0), 8)
    config = AnalysisConfig(batch_contexts=4, progress=False,
                            examples=ExampleConfig(top=3, sample_reservoir=4, quantile_groups=2, per_quantile=1,
                                                   negatives=1))
    root = tmp_path_factory.mktemp("graph-store")
    store_dir = analyze_dictionary(tiny_loaded, per_layer[1], {"site": "blocks.1.mlp_in",
                                                               "target_site": "blocks.1.mlp_out"},
                                   contexts, root / "analysis", config)
    sources = {1: FeatureSource(AnalysisStore(store_dir), interpretations={})}
    out = write_graph_files(graph, pruned, root / "graphs", "cat", sources)
    return graph, pruned, out


def test_graph_json_follows_circuit_tracers_schema_and_links_are_adjacency_entries(built, tiny_loaded):
    graph, pruned, out = built
    record = json.loads((out / "cat.json").read_text())
    assert set(record) == {"metadata", "qParams", "nodes", "links"}
    assert record["metadata"]["prompt"] == PROMPT and len(record["metadata"]["prompt_tokens"]) == graph.n_positions
    nodes = {node["node_id"]: node for node in record["nodes"]}
    assert len(nodes) == len(record["nodes"])  # ids are unique
    kinds = [node["feature_type"] for node in record["nodes"]]
    assert kinds.count("embedding") == graph.n_positions and kinds.count("logit") == graph.n_logits
    logit_layer = str(tiny_loaded.adapter.n_layers + 1)
    assert all(n["layer"] == logit_layer and n["ctx_idx"] == graph.n_positions - 1
               for n in record["nodes"] if n["feature_type"] == "logit")
    assert sum(n["is_target_logit"] for n in record["nodes"]) == 1
    assert record["links"] and all(link["source"] in nodes and link["target"] in nodes for link in record["links"])

    def index_of(node_id: str) -> int:
        node = nodes[node_id]
        kind, position = node["feature_type"], node["ctx_idx"]
        if kind == "embedding":
            return graph.token_node(position)
        if kind == "logit":
            return graph.logit_node(graph.logit_tokens.tolist().index(node["feature"]))
        if kind == "mlp reconstruction error":
            return graph.error_node(int(node["layer"]), position)
        layer, latent, _ = (int(v) for v in node_id.split("_"))
        matches = ((graph.features[:, 0] == layer) & (graph.features[:, 1] == position)
                   & (graph.features[:, 2] == latent)).nonzero()
        assert len(matches) == 1
        return int(matches[0])

    for link in record["links"][:200]:
        expected = graph.adjacency[index_of(link["target"]), index_of(link["source"])]
        assert link["weight"] == pytest.approx(float(expected), rel=1e-6, abs=1e-9)
    ends = pruned.node_mask[graph.row_nodes][:, None] & pruned.node_mask[None, :]  # edge_mask: the stored rows'
    kept_edges = int((pruned.edge_mask & ends).sum())
    assert len(record["links"]) == kept_edges < int((graph.adjacency != 0).sum())
    listed = json.loads((out / GRAPH_METADATA).read_text())["graphs"]
    assert [g["slug"] for g in listed] == ["cat"]
    assert graph_json(graph, pruned, "cat") == record  # the file is the function's output


def test_full_graph_reads_back_exactly_and_a_damaged_file_is_refused(built, tmp_path):
    graph, pruned, out = built
    again, again_pruned = read_graph(out / "cat.safetensors")
    assert torch.equal(again.adjacency, graph.adjacency) and torch.equal(again.features, graph.features)
    assert again.tokens == graph.tokens and again.prompt == PROMPT and again.layers == graph.layers
    assert torch.equal(again_pruned.edge_mask, pruned.edge_mask) and again_pruned.node_threshold == 0.8
    # A second graph in the same directory joins the list; a rewrite of the first replaces its entry.
    for slug in ("cat", "other", "cat"):
        write_graph_files(graph, pruned, tmp_path / "graphs", slug)
    listed = json.loads((tmp_path / "graphs" / GRAPH_METADATA).read_text())["graphs"]
    assert sorted(g["slug"] for g in listed) == ["cat", "other"]
    from safetensors.torch import save_file
    save_file({"adjacency": torch.zeros(2, 2)}, str(tmp_path / "bad.safetensors"))
    with pytest.raises(SaekitError, match="not an attribution graph"):
        read_graph(tmp_path / "bad.safetensors")
    (tmp_path / "file").write_text("x")
    with pytest.raises(SaekitError, match="is a file"):
        write_graph_files(graph, pruned, tmp_path / "file", "cat")


def test_page_shows_example_tokens_with_visible_whitespace(built):
    _, _, out = built
    page = (out / "cat.html").read_text()
    data = json.loads(re.search(r'<script type="application/json" id="graph-data">(.*?)</script>', page, re.S)[1])
    tokens = [t for detail in data["details"].values() for example in detail["examples"] for t in example["tokens"]]
    assert tokens and not any("\n" in t for t in tokens) and any("\u21b5" in t for t in tokens)


@pytest.mark.skipif(CHROMIUM is None, reason="the chromium binary is not installed (apt-get install -y chromium)")
def test_page_renders_nodes_and_details_with_markup_kept_inert(built, tmp_path):
    graph, pruned, out = built
    record = json.loads((out / "cat.json").read_text())
    page = out / "cat.html"
    profile = tmp_path / "profile"
    dom = dump_dom(page, profile)
    assert html.unescape(title_of(dom)) == f"saekit graph: {PROMPT}"  # shown as text; the script never ran
    assert "<pwned" not in dom and "<b>x</b>" not in dom
    drawn = re.findall(r'data-node="([^"]+)"', dom)
    assert sorted(drawn) == sorted(node["node_id"] for node in record["nodes"])
    assert len(re.findall(r'<line [^>]*class="edge"', dom)) > 0
    text = visible_text(dom)
    assert PROMPT in text  # the prompt shown as text, markup and all
    # The target logit is selected on load; a layer-1 latent selected by address shows its examples.
    latent = next(n for n in record["nodes"] if n["feature_type"] == "cross layer transcoder" and n["layer"] == "1")
    selected = dump_dom(page, profile, f"#node={latent['node_id']}")
    details = visible_text(selected.split('id="details"', 1)[1])
    assert "Top examples" in details and "Inputs" in details and "Outputs" in details
    assert "<pwned" not in selected

