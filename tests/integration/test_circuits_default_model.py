"""Circuits on the embedded default model: transcoders for all 30 MLPs trained by saekit, the replacement
model reproducing the clean logits, a graph for a fact prompt, its edges summing to their targets, and
the ablation check against the real model."""

from __future__ import annotations

import json

import pytest
import torch

from saekit.circuits.attribution import AttributionConfig, LogitTarget, _target_values
from saekit.circuits.graph_files import read_graph
from saekit.circuits.replacement import ReplacementModel
from saekit.circuits.transcoders import load_transcoders
from saekit.jobs.circuits import GraphJob, attribute_prompt
from saekit.training.config import TrainConfig
from saekit.training.run import train_many

pytestmark = pytest.mark.integration
PROMPT = "The capital of France is"
SLUG = "the-capital-of-france-is"
LAYERS = 30


@pytest.fixture(scope="module")
def transcoder_runs(default_loaded, tmp_path_factory):
    root = tmp_path_factory.mktemp("default-transcoders")
    configs = [TrainConfig.from_flat(dict(
        name=f"blocks.{layer}.mlp_in", site=f"blocks.{layer}.mlp_in", target_site=f"blocks.{layer}.mlp_out",
        architecture="topk", k=16, expansion_factor=2, train_tokens=8192, batch_size=1024, contexts_per_chunk=16,
        shuffle_buffer_tokens=4096, cache_dir=None))  # no cache: 30 sites stream from memory
        for layer in range(LAYERS)]
    train_many(configs, root / "runs", loaded=default_loaded, progress=False)
    return root / "runs"


@pytest.fixture(scope="module")
def graph_dir(transcoder_runs, default_loaded, tmp_path_factory):
    job = GraphJob(AttributionConfig(progress=False, batch_size=64), check_ablations=4)
    return attribute_prompt(transcoder_runs, PROMPT, tmp_path_factory.mktemp("graph"), job, loaded=default_loaded)


def test_replacement_reproduces_the_clean_logits_and_edges_sum_to_their_targets(transcoder_runs, graph_dir,
                                                                                 default_loaded):
    transcoders = load_transcoders(transcoder_runs)
    assert transcoders.layers == list(range(LAYERS))
    ids = default_loaded.prompt_ids(PROMPT)
    replacement = ReplacementModel(default_loaded, transcoders, ids)
    with torch.no_grad():
        clean = default_loaded.model(input_ids=ids[None]).logits[0]
        output = replacement.forward(*replacement.clean_nodes(1))
    torch.testing.assert_close(output.logits[0], clean, atol=1e-3, rtol=1e-4)
    graph, _ = read_graph(graph_dir / f"{SLUG}.safetensors")
    assert graph.input_ids == ids.tolist()
    assert default_loaded.tokenizer.decode([int(graph.logit_tokens[0])]) == " Paris"
    assert graph.n_features > 500  # 16 latents per layer at each of the 5 non-BOS positions
    # The top logit's incoming edges are its value minus its value with every node at zero (the replacement
    # model is linear in its nodes; what is left is the biases' share).
    embeddings, latents, errors = replacement.clean_nodes(1)
    with torch.no_grad():
        zeroed = replacement.forward(torch.zeros_like(embeddings), {k: torch.zeros_like(v) for k, v in latents.items()},
                                     {k: torch.zeros_like(v) for k, v in errors.items()})
    target = [LogitTarget(int(graph.logit_tokens[0]))]
    last = len(ids) - 1
    expected = float(_target_values(output, target, last)[0] - _target_values(zeroed, target, last)[0])
    incoming = float(graph.adjacency[graph.logit_node(0), :graph.logit_node(0)].double().sum())
    assert incoming == pytest.approx(expected, rel=1e-3, abs=1e-2)


def test_attribute_job_writes_the_graph_and_checks_ablations(graph_dir):
    record = json.loads((graph_dir / f"{SLUG}.json").read_text())
    target = next(node for node in record["nodes"] if node["is_target_logit"])
    assert target["layer"] == str(LAYERS + 1) and "Paris" in target["clerp"]
    graph, pruned = read_graph(graph_dir / f"{SLUG}.safetensors")
    assert 0 < int(pruned.node_mask[:graph.n_features].sum()) < graph.n_features
    checks = json.loads((graph_dir / "ablations.json").read_text())["checks"]
    assert len(checks) == 4
    last_layer = [check for check in checks if check["layer"] == LAYERS - 1]
    assert last_layer, "the most influential latents include one at the last layer"
    for check in last_layer:
        # Nothing downstream: the prediction is the direct effect alone, and the real model differs from it only
        # by the final norm's scale, which the graph freezes. Stated tolerance: the measured change within 30% of
        # the predicted one, same sign (2026-12-07, this test's transcoders, 7 such checks on two prompts: at most
        # 19% apart). Latents of early layers reach the logit through 29 frozen attention layers and transcoders
        # trained on 8k tokens; there the linear graph is not held to the real model (signs agreed on 7 of 13).
        assert check["predicted"] == pytest.approx(check["direct"], rel=1e-4, abs=1e-5)
        predicted, measured = check["predicted"][0], check["measured"][0]
        assert abs(measured) > 0.05 and predicted * measured > 0, check
        assert abs(predicted - measured) <= 0.3 * abs(measured), check
    assert "measured change (real model)" in (graph_dir / "report.md").read_text()
