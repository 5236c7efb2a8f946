"""The local replacement model and attribution graph on the tiny model, against independent computations."""

from __future__ import annotations

import pytest
import torch

from saekit.circuits.attribution import AttributionConfig, LatentTarget, LogitTarget, _target_values, attribute
from saekit.circuits.graph import prune
from saekit.circuits.replacement import ReplacementModel
from saekit.circuits.transcoders import TranscoderSet
from saekit.dictionaries import DictionaryConfig, build_dictionary

PROMPT = "The cat sat on the mat because"


def _per_layer(skip: bool = False) -> TranscoderSet:
    torch.manual_seed(0)
    per_layer = {layer: build_dictionary(DictionaryConfig("jumprelu", 32, 96, d_out=32,
                                                          extra={"skip_connection": skip})).eval()
                 for layer in (0, 1)}
    for dictionary in per_layer.values():
        with torch.no_grad():
            dictionary.log_threshold.fill_(-3.0)  # thresholds low enough that many latents fire
            if skip:
                dictionary.W_skip.normal_(0, 0.1)
        dictionary.requires_grad_(False)
    return TranscoderSet.per_layer(per_layer)


def _clt() -> TranscoderSet:
    torch.manual_seed(1)
    clt = build_dictionary(DictionaryConfig("clt_topk", 64, 128, d_out=64, k=6, layers=2))
    return TranscoderSet([([0, 1], clt.eval().requires_grad_(False))])


def _ids(loaded) -> torch.Tensor:
    ids = loaded.tokenizer(PROMPT)["input_ids"]
    bos = loaded.tokenizer.bos_token_id
    return torch.tensor(ids if ids[0] == bos else [bos, *ids])


@pytest.fixture(params=["per_layer", "per_layer_skip", "clt"])
def replacement(request, tiny_loaded):
    transcoders = {"per_layer": _per_layer, "per_layer_skip": lambda: _per_layer(skip=True), "clt": _clt}
    return ReplacementModel(tiny_loaded, transcoders[request.param](), _ids(tiny_loaded))


def test_replacement_model_with_its_error_nodes_reproduces_the_clean_logits(replacement, tiny_loaded):
    with torch.no_grad():
        clean = tiny_loaded.model(input_ids=replacement.clean.input_ids[None]).logits[0]
        output = replacement.forward(*replacement.clean_nodes(2))
    torch.testing.assert_close(output.logits[1], clean, atol=1e-4, rtol=1e-5)
    # The errors are real: without them the logits move.
    embeddings, latents, errors = replacement.clean_nodes(1)
    with torch.no_grad():
        no_error = replacement.forward(embeddings, latents, {k: torch.zeros_like(v) for k, v in errors.items()})
    assert (no_error.logits[0] - clean).abs().max() > 1e-3


def _zeroed(nodes):
    embeddings, latents, errors = nodes
    return (torch.zeros_like(embeddings), {k: torch.zeros_like(v) for k, v in latents.items()},
            {k: torch.zeros_like(v) for k, v in errors.items()})


def test_each_target_is_the_sum_of_its_incoming_edges_plus_the_biases(replacement):
    graph = attribute(replacement, PROMPT, AttributionConfig(progress=False, batch_size=5))
    assert graph.n_features > 10 and graph.n_logits >= 1
    nodes = replacement.clean_nodes(1)
    last = len(graph.input_ids) - 1
    checks = [(graph.logit_node(0), LogitTarget(int(graph.logit_tokens[0])))]
    for row in (0, graph.n_features // 2, graph.n_features - 1):
        checks.append((row, LatentTarget(*map(int, graph.features[row]))))
    with torch.no_grad():
        for row, target in checks:
            # Linear in the nodes: the target at the clean values minus the target with every node at 0.
            full = _target_values(replacement.forward(*nodes), [target], last)
            biases_only = _target_values(replacement.forward(*_zeroed(nodes)), [target], last)
            # float32 sums of many edges of both signs: the tolerance scales with their total size
            size = float(graph.adjacency[row].abs().sum())
            assert float(graph.adjacency[row].sum()) == pytest.approx(float(full - biases_only), abs=1e-5 * size + 1e-6)


def test_an_edge_is_what_perturbing_its_source_does_to_its_target(replacement):
    graph = attribute(replacement, PROMPT, AttributionConfig(progress=False))
    target_row = graph.n_features - 1  # the latest feature: upstream edges from earlier layers
    sources = graph.adjacency[target_row, :graph.n_features].abs()
    source = int(sources.argmax())
    assert sources[source] > 0
    layer, position, latent = map(int, graph.features[source])
    target = LatentTarget(*map(int, graph.features[target_row]))
    last = len(graph.input_ids) - 1
    embeddings, latents, errors = replacement.clean_nodes(1)
    with torch.no_grad():
        before = _target_values(replacement.forward(embeddings, latents, errors), [target], last)
        latents[layer][0, position, latent] = 0.0  # remove the source (its direct effect, frozen model)
        after = _target_values(replacement.forward(embeddings, latents, errors), [target], last)
    assert float(before - after) == pytest.approx(float(graph.adjacency[target_row, source]), rel=1e-4, abs=1e-6)
    # Causality: no edge from a later position or from a feature's own or later layer.
    for row in range(graph.n_features):
        into = graph.adjacency[row, :graph.n_features]
        later = (graph.features[:, 1] > graph.features[row, 1]) | (graph.features[:, 0] >= graph.features[row, 0])
        assert into[later].abs().sum() == 0


def test_pruning_keeps_the_influential_nodes_and_all_logits(replacement):
    graph = attribute(replacement, PROMPT, AttributionConfig(progress=False))
    pruned = prune(graph, node_threshold=0.5, edge_threshold=0.9)
    logits = slice(graph.logit_node(0), graph.n_nodes)
    assert pruned.node_mask[logits].all() and pruned.node_mask.sum() < graph.n_nodes
    kept = pruned.node_mask[:graph.n_features + graph.n_errors]
    influence = pruned.influence[:graph.n_features + graph.n_errors]
    assert influence[kept].min() >= influence[~kept].max()  # kept by influence, largest first
    ends = pruned.node_mask[graph.row_nodes][:, None] & pruned.node_mask[None, :]  # edge_mask: the stored rows'
    assert not (pruned.edge_mask & ~ends).any()


def test_an_intervention_free_forward_is_the_clean_model_and_an_ablation_moves_the_logits(tiny_loaded):
    from saekit.circuits.interventions import Intervention, intervened_logits, predicted_ablation

    transcoders = _per_layer()
    ids = _ids(tiny_loaded)
    with torch.no_grad():
        clean = tiny_loaded.model(input_ids=ids[None]).logits[0]
    torch.testing.assert_close(intervened_logits(tiny_loaded, transcoders, ids, []), clean)
    replacement = ReplacementModel(tiny_loaded, transcoders, ids)
    graph = attribute(replacement, PROMPT, AttributionConfig(progress=False))
    # A last-layer latent at the last position reaches the logits only directly: the graph's prediction of
    # its ablation is its direct effect (in the frozen model; the real model's final norm also rescales).
    last_layer = (graph.features[:, 0] == 1) & (graph.features[:, 1] == len(ids) - 1)
    feature = int(last_layer.nonzero()[0])
    layer, position, latent = map(int, graph.features[feature])
    torch.testing.assert_close(predicted_ablation(graph, feature).float(),
                               -graph.adjacency[graph.logit_node(0):, feature])
    # Ablating it in the real model = taking its decoded contribution out of that MLP output by hand.
    value = float(graph.activations[feature])
    row = transcoders.dictionary_of(layer).W_dec[latent]

    def remove(module, args, out):
        out = out.clone()
        out[:, position] -= value * row
        return out
    handle = tiny_loaded.adapter.mlp(layer).register_forward_hook(remove)
    with torch.no_grad():
        by_hand = tiny_loaded.model(input_ids=ids[None]).logits[0]
    handle.remove()
    ablation = [Intervention(layer, latent, "ablate", position=position)]
    ablated = intervened_logits(tiny_loaded, transcoders, ids, ablation)
    torch.testing.assert_close(ablated, by_hand, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ablated[:-1], clean[:-1])  # causal: earlier positions untouched
    assert (ablated[-1] - clean[-1]).abs().max() > 1e-3
    # Scaling by 2 adds the contribution once more: the same change, the other way.
    doubled = intervened_logits(tiny_loaded, transcoders, ids, [Intervention(layer, latent, "scale", 2.0, position)])
    assert float((doubled[-1] - clean[-1]).abs().max()) > 1e-3


def test_interventions_parse_and_refuse_bad_input():
    from saekit.circuits.interventions import Intervention, check_interventions
    from saekit.errors import SaekitError

    assert Intervention.parse("1:7@3=clamp:2.5") == Intervention(1, 7, "clamp", 2.5, 3)
    assert Intervention.parse("0:4=ablate") == Intervention(0, 4, "ablate")
    for bad in ("1:7=clamp", "x:1=ablate", "1:2=boost:3"):
        with pytest.raises(SaekitError, match="LAYER:LATENT"):
            Intervention.parse(bad)
    with pytest.raises(SaekitError, match="out of range"):
        check_interventions(_per_layer(), [Intervention(0, 500, "ablate")])
    with pytest.raises(SaekitError, match="replace layers 0-1"):
        check_interventions(_per_layer(), [Intervention(5, 1, "ablate")])
