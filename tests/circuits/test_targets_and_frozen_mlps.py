"""Targets beyond the top logits (a token, a logit difference, a latent, several at once), the one-line refusals
of bad targets, and transcoder sets that leave MLPs unreplaced (refused, or traced with them frozen)."""

from __future__ import annotations

import pytest
import torch

from saekit.circuits.attribution import AttributionConfig, attribute
from saekit.circuits.replacement import ReplacementModel
from saekit.circuits.targets import (
    LatentTarget,
    LogitDifference,
    LogitTarget,
    check_positions,
    parse_latent,
    parse_targets,
)
from saekit.circuits.transcoders import TranscoderSet
from saekit.errors import SaekitError
from tests.circuits.test_attribution import PROMPT, _ids, _per_layer, _zeroed

CONFIG = AttributionConfig(progress=False)
SMALL = AttributionConfig(progress=False, max_feature_nodes=40)  # the same 40 latents in every graph: fast


@pytest.fixture(scope="module")
def replacement(tiny_loaded):
    return ReplacementModel(tiny_loaded, _per_layer(), _ids(tiny_loaded))


@pytest.fixture(scope="module")
def top(replacement):
    return attribute(replacement, PROMPT, SMALL)


def test_a_difference_is_the_difference_of_its_tokens_rows_and_several_targets_share_a_graph(replacement, top):
    first, second = (int(t) for t in top.logit_tokens[:2])
    latent = LatentTarget(*map(int, top.features[top.n_features - 1]))
    graph = attribute(replacement, PROMPT, SMALL, targets=[LogitTarget(first), LogitTarget(second),
                                                            LogitDifference(first, second), latent])
    assert graph.n_logits == 4 and graph.n_features == top.n_features
    rows = graph.adjacency[graph.logit_node(0):, :graph.logit_node(0)]  # sources: the two graphs share them
    # logit_a - logit_b = (logit_a - mean) - (logit_b - mean): each edge into the difference is the difference
    # (float32 sums of different terms: to 1e-5 of the largest edge)
    torch.testing.assert_close(rows[2], rows[0] - rows[1], atol=1e-5 * float(rows[:2].abs().max()), rtol=0)
    sources = slice(0, top.logit_node(0))
    torch.testing.assert_close(rows[0], top.adjacency[top.logit_node(0), sources])  # a token: its top-logit row
    torch.testing.assert_close(rows[3], top.adjacency[top.n_features - 1, sources])  # a latent: its feature row
    probabilities = replacement.clean.logits[-1].softmax(-1)
    assert graph.logit_probabilities.tolist() == pytest.approx([float(probabilities[first]),
                                                                float(probabilities[second]), 1.0, 1.0])
    labels = [record["label"] for record in graph.settings["targets"]]
    assert labels[2] == f"{labels[0]} - {labels[1]}" and labels[3] == f"L{latent.layer}#{latent.latent}@" \
        f"{latent.position}"


def test_bad_targets_are_one_line(tiny_loaded):
    transcoders, tokenizer = _per_layer(), tiny_loaded.tokenizer
    assert parse_targets((" Paris",), (" Paris| London",), (), tokenizer) == [
        LogitTarget(tokenizer(" Paris", add_special_tokens=False)["input_ids"][0]),
        LogitDifference(*(tokenizer(t, add_special_tokens=False)["input_ids"][0] for t in (" Paris", " London")))]
    cases = [(lambda: parse_targets((" Parisianisms",), (), (), tokenizer), "--target-token ' Parisianisms' is 3 "
              "tokens (' Paris', 'ian', 'isms')"),
             (lambda: parse_targets((), (" Paris London",), (), tokenizer), "write POSITIVE|NEGATIVE"),
             (lambda: parse_latent("5:3@2", transcoders), "layer 5 has no transcoder"),
             (lambda: parse_latent("1:96@2", transcoders), "layer 1 has 96 latents (0-95)"),
             (lambda: parse_latent("1:3", transcoders), "write LAYER:LATENT@POSITION"),
             (lambda: check_positions([LatentTarget(1, 9, 3)], 9), "the position must be 1-8"),
             (lambda: check_positions([LatentTarget(1, 0, 3)], 9), "BOS has no latents")]
    for call, message in cases:
        with pytest.raises(SaekitError) as error:
            call()
        assert message in str(error.value) and "\n" not in str(error.value)


def test_unreplaced_mlps_are_refused_or_frozen_as_error_nodes(tiny_loaded):
    only_first = TranscoderSet.per_layer({0: _per_layer().dictionary_of(0)})
    ids = _ids(tiny_loaded)
    with pytest.raises(SaekitError, match=r"not of layers 1, .*--freeze-unreplaced-mlps"):
        ReplacementModel(tiny_loaded, only_first, ids)
    replacement = ReplacementModel(tiny_loaded, only_first, ids, freeze_unreplaced=True)
    assert replacement.frozen_layers == [1] and replacement.error_layers == [0, 1]
    with torch.no_grad():
        clean = tiny_loaded.model(input_ids=ids[None]).logits[0]
        nodes = replacement.clean_nodes(1)
        output = replacement.forward(*nodes)
        zeroed = replacement.forward(*_zeroed(nodes))
    torch.testing.assert_close(output.logits[0], clean, atol=1e-4, rtol=1e-5)
    # The frozen MLP's clean output is layer 1's error node: all of it, and it is what the MLP gave.
    mlp_out = {}
    handle = tiny_loaded.adapter.mlp(1).register_forward_hook(lambda m, a, o: mlp_out.setdefault(1, o[0]))
    with torch.no_grad():
        tiny_loaded.model(input_ids=ids[None])
    handle.remove()
    torch.testing.assert_close(replacement.clean.errors[1], mlp_out[1])
    graph = attribute(replacement, PROMPT, CONFIG)
    assert graph.layers == [0, 1] and graph.settings["frozen_mlp_layers"] == [1]
    assert int(graph.features[:, 0].max()) == 0  # no latents at the frozen layer
    # Still linear: the top logit's incoming edges are its value minus its value with every node at zero.
    target = LogitTarget(int(graph.logit_tokens[0]))
    row = graph.adjacency[graph.logit_node(0)]
    expected = float(target.value(output, 0, -1) - target.value(zeroed, 0, -1))
    assert float(row.sum()) == pytest.approx(expected, abs=1e-5 * float(row.abs().sum()) + 1e-6)
    # ... and the layer-1 error nodes carry edges (the frozen MLP is counted as error in the scores).
    assert float(row[graph.error_node(1, len(ids) - 1)].abs()) > 0
