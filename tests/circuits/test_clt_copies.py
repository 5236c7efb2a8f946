"""A cross-layer transcoder whose layers are exact copies of per-layer transcoders (no cross-layer decoder terms)
must splice in exactly as those transcoders do, jointly: the same logits, the same per-layer reconstruction FVU,
and the same local replacement model. Run with per-layer training scales folded in (c_in != c_out, different per
layer), the path suspected in the CLT's spliced-FVU blow-up."""

from __future__ import annotations

import pytest
import torch

from saekit.circuits.replacement import ReplacementModel
from saekit.circuits.transcoders import TranscoderSet
from saekit.dictionaries import DictionaryConfig, build_dictionary
from saekit.evaluation.splice import measured_splice_targets
from saekit.models.sites import parse_site
from saekit.training.splicing import spliced_context

D, M, LAYERS = 32, 48, 2
C_IN, C_OUT = [2.0, 0.5], [3.0, 0.25]  # training scales: x_train = c_in x, target_train = c_out target


def _per_layer() -> list:
    torch.manual_seed(3)
    made = []
    for _ in range(LAYERS):
        dictionary = build_dictionary(DictionaryConfig("jumprelu", D, M, d_out=D,
                                                       extra={"skip_connection": True})).eval()
        with torch.no_grad():
            dictionary.log_threshold.uniform_(-3.0, -1.0)
            dictionary.b_enc.normal_(0, 0.1)
            dictionary.b_dec.normal_(0, 0.1)
            dictionary.W_skip.normal_(0, 0.1)
        made.append(dictionary.requires_grad_(False))
    return made


def _clt_copy(per_layer: list):
    """A 2-layer CLT holding each per-layer transcoder in its own layer; layer 0's decoders into layer 1 zero."""
    clt = build_dictionary(DictionaryConfig("clt_jumprelu", D * LAYERS, M * LAYERS, d_out=D * LAYERS, layers=LAYERS,
                                            extra={"skip_connection": True})).eval()
    with torch.no_grad():
        clt.W_dec.zero_()
        clt.W_skip.zero_()
        for layer, source in enumerate(per_layer):
            latents, outputs = clt.layer_slice(layer, M), clt.layer_slice(layer, D)
            clt.W_enc[:, latents] = source.W_enc
            clt.b_enc[latents] = source.b_enc
            clt.log_threshold[latents] = source.log_threshold
            clt.decoder_into(layer, layer).copy_(source.W_dec)
            clt.b_dec[outputs] = source.b_dec
            clt.W_skip[:, outputs] = source.W_skip
    return clt.requires_grad_(False)


def _folded(per_layer: list, clt):
    for layer, dictionary in enumerate(per_layer):
        dictionary.fold_input_scale(C_IN[layer], C_OUT[layer])
    clt.fold_input_scale(C_IN, C_OUT)
    return per_layer, clt


def _sites(kind: str) -> list:
    return [parse_site(f"blocks.{layer}.mlp_{kind}") for layer in range(LAYERS)]


def _spliced(loaded, targets, input_ids):
    with torch.no_grad(), spliced_context(loaded, targets, input_ids=input_ids):
        return loaded.model(input_ids=input_ids, use_cache=False).logits


@pytest.mark.parametrize("fold", [False, True], ids=["raw", "folded-per-layer-scales"])
def test_a_clt_of_per_layer_copies_splices_as_the_per_layer_transcoders(tiny_loaded, fold):
    per_layer = _per_layer()
    clt = _clt_copy(per_layer)
    if fold:
        per_layer, clt = _folded(per_layer, clt)
    reads, writes = _sites("in"), _sites("out")
    separate = [target for layer, dictionary in enumerate(per_layer)
                for target in measured_splice_targets(dictionary, [reads[layer]], [writes[layer]], [None], None)]
    joint = measured_splice_targets(clt, reads, writes, [None] * LAYERS, None)
    input_ids = torch.randint(0, 1000, (2, 12), generator=torch.Generator().manual_seed(0))
    expected = _spliced(tiny_loaded, separate, input_ids)
    got = _spliced(tiny_loaded, joint, input_ids)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    clean = tiny_loaded.model(input_ids=input_ids, use_cache=False).logits
    assert float((expected - clean).abs().max()) > 1e-2  # the splice does something
    for mine, theirs in zip(joint, separate):  # the same spliced per-layer FVU, layer by layer
        assert mine.metrics.result().fvu == pytest.approx(theirs.metrics.result().fvu, rel=1e-5)


def test_a_clt_of_per_layer_copies_gives_the_per_layer_replacement_model(tiny_loaded):
    per_layer, clt = _folded(*(lambda made: (made, _clt_copy(made)))(_per_layer()))
    ids = torch.tensor([tiny_loaded.tokenizer.bos_token_id, 451, 3020, 284, 253, 7403])
    separate = ReplacementModel(tiny_loaded, TranscoderSet.per_layer(dict(enumerate(per_layer))), ids)
    joint = ReplacementModel(tiny_loaded, TranscoderSet([(list(range(LAYERS)), clt)]), ids)
    for layer in range(LAYERS):
        # The CLT's latents carry one reference scale, the per-layer ones their own c_out: same up to that factor.
        reference = float(torch.tensor(C_OUT, dtype=torch.float64).log().mean().exp())
        torch.testing.assert_close(joint.clean.latents[layer] * reference / C_OUT[layer],
                                   separate.clean.latents[layer], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(joint.clean.errors[layer], separate.clean.errors[layer], atol=1e-5, rtol=1e-5)
