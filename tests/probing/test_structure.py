"""MDL on latents with a known distribution, and meta-structure FVE on decoder rows built from a few meta-directions
against random rows."""

from __future__ import annotations

import torch

from saekit.probing.structure import StructureSettings, bin_edges, description_lengths, meta_structure, quantise


def test_description_length_of_known_distributions():
    n = 400
    latents = torch.zeros(n, 3)
    on = torch.arange(n) % 2 == 0  # latent 0: on half the time, its values spread evenly over 4 bins of [0, 4]
    latents[on, 0] = torch.tensor([0.5, 1.5, 2.5, 4.0]).repeat(n // 8)
    latents[:, 2] = 2.0  # latent 2: always on, one value; latent 1: never on
    edges = bin_edges(latents.max(0).values, 4)
    bits = description_lengths(latents, edges, chunk=64)
    # H(1/2) + 1/2 * H(uniform over 4) = 1 + 1 = 2 bits; never on: 0; always on at one value: 0
    torch.testing.assert_close(bits, torch.tensor([2.0, 0.0, 0.0]))
    quantised = quantise(latents[:4], edges)
    assert quantised[:, 0].tolist() == [0.5, 0.0, 1.5, 0.0]  # midpoints; an inactive latent stays 0
    assert quantised[:, 2].tolist() == [1.75] * 4  # the top edge belongs to the last bin


def test_meta_structure_explains_rows_built_from_few_meta_directions():
    generator = torch.Generator().manual_seed(0)
    meta_directions = torch.nn.functional.normalize(torch.randn(12, 24, generator=generator), dim=-1)
    codes = torch.zeros(192, 12)
    for row in range(192):  # each row: 2 of the 12 meta-directions, positive weights
        chosen = torch.randperm(12, generator=generator)[:2]
        codes[row, chosen] = 0.5 + torch.rand(2, generator=generator)
    structured = torch.nn.functional.normalize(codes @ meta_directions, dim=-1)
    random_rows = torch.nn.functional.normalize(torch.randn(192, 24, generator=generator), dim=-1)
    settings = StructureSettings(meta_width_ratio=0.25, meta_k=4, meta_steps=100, meta_batch_size=64, meta_lr=2e-2)
    fit = meta_structure(structured, settings)
    control = meta_structure(random_rows, settings)
    assert fit["meta_width"] == 48 and fit["k"] == 4
    assert fit["decoder_fraction_variance_explained"] > 0.9
    assert control["decoder_fraction_variance_explained"] < fit["decoder_fraction_variance_explained"] - 0.2
