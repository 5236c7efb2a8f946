"""What a dictionary reads and writes, asked of the dictionary: its span and its per-layer encode/decode."""

from __future__ import annotations

import pytest
import torch

from saekit.circuits.transcoders import TranscoderSet
from saekit.dictionaries import ARCHITECTURES, DictionaryConfig, build_dictionary
from saekit.dictionaries.base import Span
from saekit.dictionaries.registry import architectures_over_layers, span_of
from saekit.errors import SaekitError

SINGLE_SITE = [name for name, cls in ARCHITECTURES.items() if cls.SPAN is Span.SINGLE]


def test_every_architecture_states_its_span():
    spans = {name: span_of(name) for name in ARCHITECTURES}
    assert spans.pop("clt_topk") is spans.pop("clt_jumprelu") is Span.CAUSAL
    assert spans.pop("crosscoder") is Span.ACAUSAL
    assert set(spans.values()) == {Span.SINGLE}
    assert architectures_over_layers() == ["clt_topk", "clt_jumprelu", "crosscoder"]
    assert (Span.CAUSAL.needs_target, Span.ACAUSAL.needs_target, Span.SINGLE.needs_target) == (True, False, None)


@pytest.mark.parametrize("name", SINGLE_SITE)
@pytest.mark.parametrize("transcoder", [False, True])
def test_a_single_site_dictionary_is_one_layer_of_itself(name, transcoder):
    torch.manual_seed(0)
    dictionary = build_dictionary(DictionaryConfig(name, 8, 32, d_out=6 if transcoder else None, k=4,
                                                   extra={"skip_connection": transcoder})).eval()
    with torch.no_grad():
        dictionary.b_dec.normal_()
        if transcoder:
            dictionary.W_skip.normal_()
    x = torch.randn(5, 8)
    full = dictionary(x)
    assert (dictionary.layers, dictionary.latents_per_layer, dictionary.writers(0)) == (1, 32, [0])
    latents = dictionary.encode_layer(0, x)
    torch.testing.assert_close(latents, full.latents)
    torch.testing.assert_close(dictionary.decode_layer(0, [latents], x), full.reconstruction)
    assert dictionary.decoder_into(0, 0) is dictionary.W_dec
    assert dictionary.training_metrics(full.latents, full.reconstruction, x[:, :6]) == {}
    with pytest.raises(SaekitError, match=f"single-site {name} has no layer 1"):
        dictionary.encode_layer(1, x)


def _clt_copying(per_layer: dict[int, torch.nn.Module]) -> torch.nn.Module:
    """A 2-layer CLT whose layers are the per-layer transcoders: own decoders copied, cross-layer ones zero."""
    clt = build_dictionary(DictionaryConfig("clt_topk", 16, 24, d_out=16, k=3, layers=2,
                                            extra={"skip_connection": True})).eval()
    with torch.no_grad():
        clt.W_dec.zero_()
        for layer, dictionary in per_layer.items():
            latents, outputs = slice(12 * layer, 12 * layer + 12), slice(8 * layer, 8 * layer + 8)
            clt.W_enc[:, latents] = dictionary.W_enc
            clt.b_enc[latents] = dictionary.b_enc
            clt.b_dec[outputs] = dictionary.b_dec
            clt.W_skip[:, outputs] = dictionary.W_skip
            clt.decoder_into(layer, layer).copy_(dictionary.W_dec)
    return clt.requires_grad_(False)


def test_a_clt_made_of_per_layer_transcoders_replaces_the_mlps_exactly_as_they_do():
    torch.manual_seed(1)
    per_layer = {}
    for layer in (0, 1):
        dictionary = build_dictionary(DictionaryConfig("topk", 8, 12, d_out=8, k=3,
                                                       extra={"skip_connection": True})).eval()
        with torch.no_grad():
            dictionary.b_dec.normal_()
            dictionary.W_skip.normal_(0, 0.1)
        per_layer[layer] = dictionary.requires_grad_(False)
    separate = TranscoderSet.per_layer(per_layer)
    joint = TranscoderSet([([0, 1], _clt_copying(per_layer))])
    assert (separate.writers(1), joint.writers(1)) == ([1], [0, 1])
    x = {layer: torch.randn(4, 8) for layer in (0, 1)}
    latents = {layer: separate.encode(layer, x[layer]) for layer in (0, 1)}
    for layer in (0, 1):
        torch.testing.assert_close(joint.encode(layer, x[layer]), latents[layer])
        torch.testing.assert_close(joint.pre_activations(layer, x[layer]), separate.pre_activations(layer, x[layer]))
        torch.testing.assert_close(joint.decode(layer, latents, x[layer]), separate.decode(layer, latents, x[layer]))
    assert not joint.decoder(0, 1).any()  # layer 0's latents write nothing into layer 1: the copies are exact


def test_a_set_may_mix_a_clt_with_per_layer_transcoders_and_refuses_overlaps():
    torch.manual_seed(2)
    clt = build_dictionary(DictionaryConfig("clt_jumprelu", 16, 24, d_out=16, layers=2)).eval()
    single = build_dictionary(DictionaryConfig("jumprelu", 8, 10, d_out=8)).eval()
    mixed = TranscoderSet([([0, 1], clt), ([2], single)])
    assert mixed.layers == [0, 1, 2]
    assert [mixed.writers(layer) for layer in mixed.layers] == [[0], [0, 1], [2]]
    assert [mixed.width(layer) for layer in mixed.layers] == [12, 12, 10]
    x = torch.randn(3, 8)
    z = {0: mixed.encode(0, x), 1: mixed.encode(1, x)}
    expected = clt.b_dec[8:] + z[0] @ clt.decoder_block(0)[:, 8:] + z[1] @ clt.decoder_block(1)
    torch.testing.assert_close(mixed.decode(1, z, x), expected)
    with pytest.raises(SaekitError, match="two transcoders replace the MLP of layer 1"):
        TranscoderSet([([0, 1], clt), ([1], single)])
    with pytest.raises(SaekitError, match="over 2 layers cannot replace the 1 MLPs of layers \\[3\\]"):
        TranscoderSet([([3], clt)])


def test_a_clt_layer_reads_its_own_input_slice_and_refuses_layers_it_lacks():
    torch.manual_seed(3)
    clt = build_dictionary(DictionaryConfig("clt_topk", 12, 18, d_out=12, k=2, layers=3)).eval()
    x = torch.randn(4, 12)
    pre = clt.pre_activations(x)
    for layer in range(3):
        torch.testing.assert_close(clt.layer_pre_activations(layer, x[:, 4 * layer:4 * layer + 4]),
                                   pre[:, 6 * layer:6 * layer + 6])
    assert clt.writers(2) == [0, 1, 2]
    with pytest.raises(SaekitError, match="spans layers 0..2 of its range, not 3"):
        clt.encode_layer(3, x[:, :4])
    with pytest.raises(SaekitError, match="layer 2's latents do not write to layer 1"):
        clt.decoder_into(2, 1)
    with torch.no_grad():
        clt.b_enc.fill_(10.0)  # every kept pre-activation positive: exactly k fire per layer
    output = clt(x, x)
    metrics = clt.training_metrics(output.latents, output.reconstruction, x)
    assert sorted(metrics) == [f"{kind}_layer_{j}" for kind in ("fvu", "l0") for j in range(3)]
    assert all(float(metrics[f"l0_layer_{j}"]) == 2.0 for j in range(3))  # k per layer, every token


def test_a_crosscoder_has_no_per_layer_encoder():
    crosscoder = build_dictionary(DictionaryConfig("crosscoder", 8, 6, layers=2))
    with pytest.raises(SaekitError, match="crosscoder's latents read every layer of its range together"):
        crosscoder.encode_layer(0, torch.randn(2, 4))
