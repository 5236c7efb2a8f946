"""SCR's and TPP's parts on pooled features (SAEBench ``scr_and_tpp/main.py``): the attribution probe, each latent's
effect on it, the top-N selection, zero-ablation of the selected latents, and the two scores.

- **Probe** (``train_probe``): SAEBench's torch probe, one linear unit on the mean-pooled raw activations, AdamW
  (lr 1e-3) on BCE plus an L1 penalty (1e-3 x sum |w|), batches of 16, 20 epochs; the epoch with the best test
  accuracy is kept (SAEBench selects on the test split; so does this, for parity).
- **Effect** of latent i on a probe w (``latent_effects``): Δmean_i x (W_dec[i] · w), where Δmean is the mean
  pooled latent over the probe's positive training texts minus over its negatives; SCR takes |effect|, TPP clamps
  Δmean at 0 first (only latents more active on the class count) and keeps the sign.
- **Selection** (``select_top``): the N largest effects among the non-zero ones (fewer if fewer are non-zero).
- **Ablation** (``ablate``): zeroing latents A at every token and keeping the SAE's error term changes each token's
  activation by -Σ_{i∈A} f_i W_dec[i]; mean pooling is linear, so the pooled activation becomes
  pooled_x - pooled_f[:, A] @ W_dec[A], exactly what SAEBench's per-token loop gives over the kept tokens.
- **SCR** (``scr_score``): (A_ablated - A_biased) / (A_oracle - A_biased), 0 when the denominator is under 0.001.
- **TPP** (``tpp_scores``): the drop of class i's probe accuracy when class i's latents are ablated, minus the mean
  drop of the other classes' probes.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from saekit.dictionaries.registry import seeded
from saekit.errors import SaekitError
from saekit.probing.probes import NEGATIVE, POSITIVE, BinaryTask

SCR_DENOMINATOR_FLOOR = 0.001  # SAEBench: a biased probe within this of the oracle scores 0


def probe_accuracy(probe: nn.Linear, x: Tensor, y: Tensor) -> float:
    """Share of rows whose logit sign matches the 0/1 label (SAEBench's ``test_probe_gpu``)."""
    with torch.no_grad():
        predictions = (probe(x.float()).squeeze(-1) > 0).long()
    return float((predictions == y.long()).float().mean())


def train_probe(task: BinaryTask, epochs: int = 20, lr: float = 1e-3, batch_size: int = 16, l1: float = 1e-3,
                seed: int = 42) -> nn.Linear:
    """SAEBench's SCR/TPP probe on ``task``'s features: the epoch with the best test accuracy (seeded)."""
    generator = torch.Generator().manual_seed(seed)
    probe = seeded(seed, nn.Linear, task.train_x.shape[1], 1)
    optimizer = torch.optim.AdamW(probe.parameters(), lr=lr)
    loss_fn = nn.BCEWithLogitsLoss()
    x, y = task.train_x.float(), task.train_y.float()
    best, best_accuracy = copy.deepcopy(probe), -1.0
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=generator)
        for start in range(0, len(x), batch_size):
            rows = order[start:start + batch_size]
            with torch.enable_grad():
                loss = loss_fn(probe(x[rows]).squeeze(-1), y[rows]) + l1 * probe.weight.abs().sum()
                optimizer.zero_grad()
                loss.backward()
            optimizer.step()
        accuracy = probe_accuracy(probe, task.test_x, task.test_y)
        if accuracy > best_accuracy:
            best, best_accuracy = copy.deepcopy(probe), accuracy
    return best.requires_grad_(False)


def latent_effects(latents: Tensor, labels: Tensor, probe_weight: Tensor, decoder: Tensor, scr: bool) -> Tensor:
    """[width] effects of each latent on the probe ``probe_weight`` [d] (see the module docstring); ``latents``
    [n, width] pooled over the probe's training texts, ``labels`` their 0/1 labels, ``decoder`` [width, d]."""
    diff = latents[labels == POSITIVE].float().mean(0) - latents[labels == NEGATIVE].float().mean(0)
    if not scr:
        diff = diff.clamp(min=0.0)
    effects = diff * (decoder.float() @ probe_weight.float().flatten())
    return effects.abs() if scr else effects


def select_top(effects: Tensor, n: int) -> list[int]:
    """The ``n`` latents with the largest effect among the non-zero ones, ascending (fewer if fewer are non-zero)."""
    if n > effects.numel():
        raise SaekitError(f"N = {n} is more than the dictionary's {effects.numel()} latents; use a smaller --n-values")
    count = min(n, int((effects != 0).sum()))
    if count == 0:
        return []
    return sorted(torch.topk(effects, count).indices.tolist())


def ablate(raw: Tensor, latents: Tensor, decoder: Tensor, chosen: list[int]) -> Tensor:
    """Pooled activations with the ``chosen`` latents zero-ablated at every token (the SAE's error kept)."""
    if not chosen:
        return raw
    return raw - latents[:, chosen].float() @ decoder[chosen].float()


def masked_positions_shift(kept: Tensor, context_length: int, latents_of_zero: Tensor) -> Tensor:
    """SAEBench 0.6.0's extra ablation term as a shift of the pooled latents, [n, width]: its ablation also encodes
    each text's zeroed BOS and padding (``context_length - kept`` positions) and subtracts f(0)[A] W_dec[A] at each,
    then divides the sum by the ``kept`` real tokens; added to the pooled latents that ``ablate`` reads, it gives
    SAEBench's ablated activations. ``latents_of_zero``: the dictionary's latents of the zero vector [width]."""
    masked = context_length - kept.double()
    if bool((masked < 1).any()):
        raise SaekitError("a text keeps more tokens than the context length allows; tokenise with the same length")
    return ((masked / kept.double())[:, None] * latents_of_zero.double()[None]).float()


def scr_score(ablated: float, biased: float, oracle: float) -> float:
    """SAEBench's normalised SCR: how much of the gap to the oracle probe the ablation recovered."""
    if oracle - biased < SCR_DENOMINATOR_FLOOR:
        return 0.0
    return (ablated - biased) / (oracle - biased)


def tpp_scores(clean: dict[str, float], ablated: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    """Per ablated class i: intended drop (its own probe), mean unintended drop (the other probes), their
    difference. ``clean[c]``: probe c's test accuracy; ``ablated[i][c]``: probe c's after ablating i's latents."""
    scores = {}
    for label, after in ablated.items():
        intended = clean[label] - after[label]
        others = [clean[c] - after[c] for c in clean if c != label]
        unintended = sum(others) / len(others)
        scores[label] = {"total_metric": intended - unintended, "intended_diff_only": intended,
                         "unintended_diff_only": unintended}
    return scores
