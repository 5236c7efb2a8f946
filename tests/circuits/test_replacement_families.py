"""The local replacement model of every architecture family in the table, on tiny random models.

Per family: at its clean point (latents, errors and token embeddings at their clean values) the
replacement model reproduces the real model's logits; it is linear in its nodes (norms, attention
patterns and any logit softcap frozen); and each attribution target is the sum of its incoming edges
plus the biases. A family the replacement model cannot handle is refused in one line, before any work.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from family_models import D_MODEL, FAMILIES, tiny_loaded, tiny_model

from saekit.circuits.attribution import AttributionConfig, LatentTarget, LogitTarget, _target_values, attribute
from saekit.circuits.replacement import ReplacementModel
from saekit.circuits.transcoders import TranscoderSet
from saekit.dictionaries import DictionaryConfig, build_dictionary
from saekit.errors import SaekitError
from saekit.models.architecture import LAYOUTS, ArchitectureAdapter, replacement_families, replacement_layout

PROMPT = "The cat sat on the mat because"


def _per_layer() -> TranscoderSet:
    torch.manual_seed(0)
    per_layer = {layer: build_dictionary(DictionaryConfig("jumprelu", D_MODEL, 96, d_out=D_MODEL)).eval()
                 for layer in (0, 1)}
    for dictionary in per_layer.values():
        with torch.no_grad():
            dictionary.log_threshold.fill_(-3.0)  # thresholds low enough that many latents fire
        dictionary.requires_grad_(False)
    return TranscoderSet.per_layer(per_layer)


def _clt() -> TranscoderSet:
    torch.manual_seed(1)
    clt = build_dictionary(DictionaryConfig("clt_topk", 2 * D_MODEL, 128, d_out=2 * D_MODEL, k=6, layers=2))
    return TranscoderSet([([0, 1], clt.eval().requires_grad_(False))])


def _ids(loaded) -> torch.Tensor:
    ids = loaded.tokenizer(PROMPT)["input_ids"]
    bos = loaded.tokenizer.bos_token_id
    return torch.tensor(ids if ids[0] == bos else [bos, *ids])


@pytest.fixture(scope="module")
def family_loaded(default_tokenizer):
    cache = {}

    def get(family: str):
        if family not in cache:
            cache[family] = tiny_loaded(family, default_tokenizer)
        return cache[family]
    return get


CASES = [(family, "per_layer") for family in FAMILIES] + [("gpt2", "clt"), ("gemma2", "clt")]


@pytest.fixture(params=CASES, ids=[f"{family}-{kind}" for family, kind in CASES])
def case(request, family_loaded):
    family, kind = request.param
    loaded = family_loaded(family)
    return loaded, ReplacementModel(loaded, {"per_layer": _per_layer, "clt": _clt}[kind](), _ids(loaded))


def _zeroed(nodes):
    embeddings, latents, errors = nodes
    return (torch.zeros_like(embeddings), {k: torch.zeros_like(v) for k, v in latents.items()},
            {k: torch.zeros_like(v) for k, v in errors.items()})


def _flat(output) -> torch.Tensor:
    return torch.cat([output.logits.flatten(), *(v.flatten() for v in output.pre_activations.values())])


def test_the_clean_point_reproduces_the_model_logits(case):
    loaded, replacement = case
    implementation = loaded.model.config._attn_implementation
    with torch.no_grad():
        clean = loaded.model(input_ids=replacement.clean.input_ids[None]).logits[0]
        output = replacement.forward(*replacement.clean_nodes(2))
        last = replacement.forward(*replacement.clean_nodes(1), last_logits_only=True)
    torch.testing.assert_close(output.logits[0], clean, atol=1e-5, rtol=0)
    torch.testing.assert_close(output.logits[1], clean, atol=1e-5, rtol=0)
    torch.testing.assert_close(last.logits[0, -1], clean[-1], atol=1e-5, rtol=0)
    torch.testing.assert_close(replacement.clean.logits, clean, atol=1e-5, rtol=0)  # eager against sdpa
    assert loaded.model.config._attn_implementation == implementation  # eager only for the clean run
    # The errors are real: without them the logits move.
    embeddings, latents, errors = replacement.clean_nodes(1)
    with torch.no_grad():
        no_error = replacement.forward(embeddings, latents, {k: torch.zeros_like(v) for k, v in errors.items()})
    assert (no_error.logits[0] - clean).abs().max() > 1e-3


def test_the_replacement_model_is_linear_in_its_nodes(case):
    """f(a + b) - f(0) = (f(a) - f(0)) + (f(b) - f(0)): every norm, pattern and softcap is frozen."""
    _, replacement = case
    nodes = replacement.clean_nodes(1)
    torch.manual_seed(2)
    embeddings, latents, errors = nodes
    other = (torch.randn_like(embeddings) * embeddings.std(), {k: torch.rand_like(v) for k, v in latents.items()},
             {k: torch.randn_like(v) * v.std() for k, v in errors.items()})
    both = (embeddings + other[0], {k: v + other[1][k] for k, v in latents.items()},
            {k: v + other[2][k] for k, v in errors.items()})
    with torch.no_grad():
        base = _flat(replacement.forward(*_zeroed(nodes)))
        a, b, ab = (_flat(replacement.forward(*n)) - base for n in (nodes, other, both))
    assert (a + b).abs().max() > 1e-2
    torch.testing.assert_close(ab, a + b, atol=1e-4 * float((a.abs() + b.abs()).max()), rtol=1e-4)


def test_each_target_is_the_sum_of_its_incoming_edges_plus_the_biases(case):
    _, replacement = case
    graph = attribute(replacement, PROMPT, AttributionConfig(progress=False, batch_size=5))
    assert graph.n_features > 10 and graph.n_logits >= 1
    nodes = replacement.clean_nodes(1)
    last = len(graph.input_ids) - 1
    checks = [(graph.logit_node(0), LogitTarget(int(graph.logit_tokens[0])))]
    for row in (0, graph.n_features // 2, graph.n_features - 1):
        checks.append((row, LatentTarget(*map(int, graph.features[row]))))
    with torch.no_grad():
        for row, target in checks:
            full = _target_values(replacement.forward(*nodes), [target], last)
            biases_only = _target_values(replacement.forward(*_zeroed(nodes)), [target], last)
            size = float(graph.adjacency[row].abs().sum())
            assert float(graph.adjacency[row].sum()) == pytest.approx(float(full - biases_only), abs=1e-5 * size + 1e-6)


def test_gemma2_softcaps_are_on_and_the_logit_softcap_is_restored(family_loaded):
    loaded = family_loaded("gemma2")
    config = loaded.model.config
    assert (config.attn_logit_softcapping, config.final_logit_softcapping) == (1.0, 0.5)
    replacement = ReplacementModel(loaded, _per_layer(), _ids(loaded))
    assert replacement.logit_softcap == 0.5
    with torch.no_grad():
        replacement.forward(*replacement.clean_nodes(1))
        raw = loaded.adapter.unembedding()(loaded.model.model(input_ids=_ids(loaded)[None]).last_hidden_state)
    assert config.final_logit_softcapping == 0.5
    assert raw.abs().max() > 1.0 > 0.5 >= replacement.clean.logits.abs().max()  # the cap changes these logits


def test_a_family_the_replacement_model_cannot_handle_is_refused_in_one_line(family_loaded, monkeypatch):
    # Not in the table at all: the adapter refuses it as soon as the model is wrapped.
    with pytest.raises(SaekitError, match=r"architecture 'opt' is not supported yet; supported: .*gpt2.*llama"):
        ArchitectureAdapter(tiny_model("opt"))
    with pytest.raises(SaekitError) as refused:
        replacement_layout("opt")
    message = str(refused.value)
    assert "\n" not in message and "'opt'" in message
    assert message.endswith("supported: " + ", ".join(replacement_families()))
    assert {"llama", "gpt2", "gpt_neox", "gemma2"} <= set(replacement_families())
    # In the table but marked unsupported by the replacement model: refused before the clean run.
    loaded = family_loaded("llama")
    monkeypatch.setitem(LAYOUTS, "llama", replace(LAYOUTS["llama"], replacement=False))
    calls = []
    handle = loaded.model.register_forward_pre_hook(lambda *args: calls.append(1))
    try:
        with pytest.raises(SaekitError, match=r"^attribution graphs do not support the 'llama' architecture yet; "
                                              r"supported: .*gpt2"):
            ReplacementModel(loaded, _per_layer(), _ids(loaded))
    finally:
        handle.remove()
    assert calls == []


def test_an_intervention_free_forward_is_the_clean_model_for_every_family(family_loaded):
    from saekit.circuits.interventions import intervened_logits

    transcoders = _per_layer()
    for family in FAMILIES:
        loaded = family_loaded(family)
        ids = _ids(loaded)
        with torch.no_grad():
            clean = loaded.model(input_ids=ids[None]).logits[0]
        torch.testing.assert_close(intervened_logits(loaded, transcoders, ids, []), clean)
