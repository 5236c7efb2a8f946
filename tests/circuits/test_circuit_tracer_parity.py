"""saekit's attribution graph, pruning and scores against circuit-tracer 0.5.0's own, on a fixture circuit-tracer
wrote: its graph of one prompt on the tests' tiny model with the fixture's transcoders, its ``prune_graph`` masks
and its ``compute_graph_scores`` (remade by ``scripts/interop/compare_circuit_tracer_graph.py --fixture``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from saekit.circuits.attribution import AttributionConfig, attribute
from saekit.circuits.graph import graph_scores, prune, to_dense
from saekit.circuits.replacement import ReplacementModel
from saekit.circuits.transcoders import TranscoderSet
from saekit.dictionaries.formats.circuit_tracer import read_circuit_tracer_transcoders

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "circuit_tracer_graph"


@pytest.fixture(scope="module")
def expected() -> tuple[dict, dict]:
    return json.loads((FIXTURE / "graph.json").read_text()), load_file(str(FIXTURE / "graph.safetensors"))


@pytest.fixture(scope="module")
def graphs(tiny_loaded, expected):
    """saekit's graph of the fixture's prompt, with circuit-tracer's BOS convention and with saekit's own."""
    record, _ = expected
    inner = tiny_loaded.model.model
    checksum = [float(inner.embed_tokens.weight.double().sum()), float(inner.layers[0].mlp.gate_proj.weight.double()
                                                                         .sum()),
                float(inner.layers[-1].self_attn.v_proj.weight.double().sum())]
    assert checksum == pytest.approx(record["model_checksum"], rel=1e-9), \
        "the tests' tiny model changed; remake the fixture (compare_circuit_tracer_graph.py --fixture)"
    read = read_circuit_tracer_transcoders(FIXTURE / "transcoders")
    transcoders = TranscoderSet.per_layer({layer: dictionary for layer, (dictionary, _) in enumerate(read)})
    ids = torch.tensor(record["input_ids"])
    assert ids.tolist() == tiny_loaded.prompt_ids(record["prompt"]).tolist()
    replacement = ReplacementModel(tiny_loaded, transcoders, ids)
    made = {bos: attribute(replacement, record["prompt"], AttributionConfig(progress=False, zero_bos_errors=bos))
            for bos in (True, False)}
    return made


def test_the_graph_equals_circuit_tracers(graphs, expected):
    _, ct = expected
    graph = graphs[True]
    assert graph.features.tolist() == ct["active_features"].tolist()
    assert graph.logit_tokens.tolist() == ct["logit_token_ids"].tolist()
    torch.testing.assert_close(graph.activations, ct["activation_values"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(graph.logit_probabilities, ct["logit_probabilities"], atol=1e-6, rtol=1e-5)
    scale = float(ct["adjacency_matrix"].abs().max())
    torch.testing.assert_close(graph.adjacency, ct["adjacency_matrix"], atol=1e-5 * scale, rtol=0)


def test_the_scores_equal_circuit_tracers_compute_graph_scores(graphs, expected):
    record, ct = expected
    wanted = record["scores"]
    on_ct_adjacency = graph_scores(graphs[True].with_adjacency(ct["adjacency_matrix"]))
    assert on_ct_adjacency.replacement == pytest.approx(wanted["replacement"], abs=1e-5)
    assert on_ct_adjacency.completeness == pytest.approx(wanted["completeness"], abs=1e-5)
    own = graphs[True].settings["scores"]  # saekit's own graph, BOS error nodes zeroed as circuit-tracer does
    assert own["replacement"] == pytest.approx(wanted["replacement"], abs=1e-5)
    assert own["completeness"] == pytest.approx(wanted["completeness"], abs=1e-5)
    # With the BOS error nodes kept (saekit's default) more of the input is error: both scores are lower.
    kept = graphs[False].settings["scores"]
    assert kept["replacement"] < wanted["replacement"] - 1e-3 and kept["completeness"] < wanted["completeness"]


def test_pruning_equals_circuit_tracers_prune_graph(graphs, expected):
    record, ct = expected
    thresholds = record["settings"]["node_threshold"], record["settings"]["edge_threshold"]
    for adjacency in (ct["adjacency_matrix"], graphs[True].adjacency):
        pruned = prune(graphs[True].with_adjacency(adjacency), *thresholds)
        assert torch.equal(pruned.node_mask, ct["prune_node_mask"].bool())
        assert torch.equal(to_dense(graphs[True], pruned.edge_mask), ct["prune_edge_mask"].bool())
