"""Every architecture recovers planted features from synthetic superposition data.

The world: 256 random unit feature directions in 64 dimensions; each fires independently with
probability 2.5% (about 6.4 per token) with a magnitude uniform in [0, 1]; inputs are scaled to unit
mean squared norm, as training runs scale real activations. A 512-latent dictionary of each
architecture is trained with ``fit_dictionary`` (Adam, lr 3e-3, 400 steps of 256 tokens: short
enough for a shared CPU) and must find the features: the mean over true features of the largest
cosine similarity to any decoder row has to clear 0.8, where the untrained dictionary sits near 0.37.
Sparsity settings are chosen for comparable L0s of about 7-14 (true L0 6.4; ReLU sits highest because
its L1 shrinkage costs recovery when pushed sparser: l1 0.5 gives L0 11 but recovery 0.85, FVU 0.57).
Matryoshka gets a first prefix of 384 latents (1.5x the planted features): this world has no
hierarchy to nest, and its default prefixes (the smallest 32 latents must reconstruct 256 unrelated
features alone, so they learn mixtures) reach 0.70 in these 400 steps and 0.81 after 1200; with
[384, 128] it reaches 0.85, with [256, 256] 0.82 (BatchTopK 0.86).
"""

from __future__ import annotations

import pytest
import torch

from saekit.dictionaries import DictionaryConfig, build_dictionary
from saekit.training.schedule import OptimConfig
from saekit.training.trainer import fit_dictionary

D, N_FEATURES, WIDTH, P_FIRE = 64, 256, 512, 0.025
STEPS, BATCH, LR = 400, 256, 3e-3

SETTINGS = {  # architecture -> DictionaryConfig keyword arguments
    "relu": {"l1_coefficient": 0.4},
    "gated": {"l1_coefficient": 0.6},
    "gated_rescale": {"l1_coefficient": 0.4},
    "topk": {"k": 8, "extra": {"aux_k": 32}},
    "batchtopk": {"k": 8, "extra": {"aux_k": 32}},
    "jumprelu": {"l0_coefficient": 0.015},
    "matryoshka_batchtopk": {"k": 8, "extra": {"aux_k": 32, "group_sizes": [384, 128]}},
    # The cross-layer architectures at one layer (test_dict_crosslayer.py plants features over two).
    "clt_topk": {"k": 8, "extra": {"aux_k": 32}},
    "clt_jumprelu": {"l0_coefficient": 0.015},
    "crosscoder": {"l1_coefficient": 0.4},
}


@pytest.fixture(scope="module")
def world() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(1234)
    features = torch.nn.functional.normalize(torch.randn(N_FEATURES, D, generator=generator), dim=1)
    n = 40_960 + 8_192
    firing = torch.rand(n, N_FEATURES, generator=generator) < P_FIRE
    x = (torch.rand(n, N_FEATURES, generator=generator) * firing) @ features
    x = x / x.pow(2).sum(-1).mean().sqrt()
    return {"features": features, "train": x[:40_960], "eval": x[40_960:]}


def _batches(x: torch.Tensor, seed: int = 1):
    generator = torch.Generator().manual_seed(seed)
    while True:
        for chunk in torch.randperm(len(x), generator=generator).split(BATCH):
            if len(chunk) == BATCH:
                yield x[chunk]


def mean_max_cosine(features: torch.Tensor, decoder: torch.Tensor) -> float:
    return (features @ torch.nn.functional.normalize(decoder.detach(), dim=1).T).max(1).values.mean().item()


@torch.no_grad()
def _evaluate(dictionary, x: torch.Tensor) -> tuple[float, float]:
    output = dictionary.eval()(x)
    l0 = (output.latents > 0).sum(-1).float().mean().item()
    fvu = ((output.reconstruction - x).pow(2).sum() / (x - x.mean(0)).pow(2).sum()).item()
    return l0, fvu


@pytest.mark.parametrize("name", sorted(SETTINGS))
def test_architecture_recovers_planted_features(name, world):
    torch.manual_seed(0)
    dictionary = build_dictionary(DictionaryConfig(name, D, WIDTH, **SETTINGS[name]))
    random_baseline = mean_max_cosine(world["features"], dictionary.W_dec)
    with torch.no_grad():  # as training runs do: the decoder bias starts at the data mean
        dictionary.b_dec.copy_(world["train"].mean(0))
    fit_dictionary(dictionary, _batches(world["train"]), STEPS,
                   OptimConfig(lr=LR, dead_window_tokens=20 * BATCH))
    recovered = mean_max_cosine(world["features"], dictionary.W_dec)
    l0, fvu = _evaluate(dictionary, world["eval"])
    assert random_baseline < 0.45
    assert recovered > 0.8, f"{name}: mean max cosine {recovered:.3f} (random {random_baseline:.3f})"
    assert 4 < l0 < 16 and fvu < 0.4, f"{name}: L0 {l0:.1f}, FVU {fvu:.3f}"
