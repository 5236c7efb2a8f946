"""SAEBench's masked-position ablation term (``--saebench-masked-positions``) on the tiny run, against SAEBench's
procedure written out per token here: pad every text to the context length, zero BOS and padding, encode every
position, swap in the decode of the ablated latents, and divide the sum by the real tokens."""

from __future__ import annotations

import torch

from saekit.models.hooks import capture
from saekit.probing.ablation import ablate
from saekit.probing.pooling import pooled_activations, tokenize
from saekit.probing.scr_tpp import RemovalSettings, _with_masked_positions, scr_run
from saekit.probing.sparse_probing import ProbeSettings, load_probe_inputs

from .test_sparse_probing import labelled_rows

CONTEXT = 12


def _saebench_per_token(inputs, rows: list[torch.Tensor], chosen: list[int]) -> torch.Tensor:
    """[n, d] pooled ablated activations as SAEBench's ``ablated_precomputed_activations`` computes them."""
    ids = torch.full((len(rows), CONTEXT), inputs.loaded.bos_token_id, dtype=torch.long)
    mask = torch.zeros((len(rows), CONTEXT), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, :len(row)], mask[i, :len(row)] = row, 1
    with torch.no_grad():
        site = inputs.loaded.adapter.site(inputs.site)
        acts = capture(inputs.loaded.adapter, ids, [site], attention_mask=mask)[site].float()
        real = mask.bool()
        real[:, 0] = False
        acts = acts * real[..., None]  # SAEBench zeroes BOS and padding before the SAE sees them
        latents = inputs.dictionary.encode(acts.reshape(-1, acts.shape[-1]))
        ablated_latents = latents.clone()
        ablated_latents[:, chosen] = 0
        change = inputs.dictionary.decode(ablated_latents) - inputs.dictionary.decode(latents)
        ablated = acts + change.reshape(acts.shape)  # at every position, the zeroed ones included
    return ablated.sum(1) / real.sum(1, keepdim=True)


def test_the_shifted_latents_give_saebench_per_token_ablation(probe_run_dir, tiny_loaded):
    inputs = load_probe_inputs(probe_run_dir, tiny_loaded)
    of_zero = inputs.dictionary.encode(torch.zeros(1, inputs.dictionary.config.d_in))[0]
    assert int((of_zero != 0).sum()) > 0  # a TopK SAE's latents of the zero vector: the term is not empty
    texts = [row["text"] for row in labelled_rows(6)]
    texts[0] = " ".join([texts[0]] * 6)  # one text longer than the context: cut to CONTEXT tokens
    rows = tokenize(inputs.loaded, texts, CONTEXT)
    assert len(rows[0]) == CONTEXT and len(rows[1]) < CONTEXT
    pooled = pooled_activations(inputs.loaded, inputs.site, rows, {"sae": inputs.dictionary.encode})
    chosen = sorted(set(torch.nonzero(of_zero).flatten().tolist()[:2]) | {0, 5})
    theirs = _saebench_per_token(inputs, rows, chosen)
    shifted = _with_masked_positions(pooled["sae"], rows, inputs, CONTEXT)
    ours = ablate(pooled["raw"], shifted, inputs.dictionary.W_dec.detach().float(), chosen)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-4)
    as_is = ablate(pooled["raw"], pooled["sae"], inputs.dictionary.W_dec.detach().float(), chosen)
    assert float((as_is - theirs).abs().max()) > 1e-3  # without the term saekit differs from SAEBench here


def test_scr_with_the_term_changes_only_the_ablated_accuracies(probe_run_dir, tiny_loaded):
    probe = ProbeSettings(context_length=CONTEXT, train_per_class=12, test_per_class=8)
    runs = {flag: scr_run(probe_run_dir, probe_settings=probe, loaded=tiny_loaded,
                          settings=RemovalSettings(n_values=(2, 20, 100), probe_epochs=10, probe_lr=0.1,
                                                   saebench_masked_positions=flag)) for flag in (False, True)}
    assert runs[True].settings["saebench_masked_positions"] is True
    assert runs[True].clean_accuracy == runs[False].clean_accuracy  # probes and clean data untouched
    assert runs[True].details["selected"] == runs[False].details["selected"]  # effects read the training split
    with_term, as_is = runs[True].details["ablated_accuracy"], runs[False].details["ablated_accuracy"]
    # N = 100 of the 128 latents takes in the latents that fire on the zero vector: one text's verdict moves
    assert with_term["dir1_100"] != as_is["dir1_100"]
    assert with_term["dir1_2"] == as_is["dir1_2"]  # the top 2 here do not fire on zero
