"""One optimisation step of a dictionary, with dead-latent tracking; the loop over in-memory data.

``DictionaryTrainer`` owns the optimizer and the per-latent firing statistics. It is used by the
run orchestration (``saekit.training.run``: checkpoints, resume, logs) and directly by code that
trains on in-memory data such as the synthetic feature worlds (:func:`fit_dictionary`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator

import torch
from torch import Tensor
from tqdm.auto import tqdm

from saekit.dictionaries.base import Dictionary
from saekit.errors import SaekitError
from saekit.training.schedule import OptimConfig, lr_multiplier, sparsity_multiplier


class NonFiniteLossError(SaekitError):
    """The loss became NaN or infinite."""


class DictionaryTrainer:
    """Adam with warmup/decay, decoder-norm constraint, L1 warmup, and dead-latent tracking."""

    def __init__(self, dictionary: Dictionary, config: OptimConfig, total_steps: int) -> None:
        self.dictionary = dictionary
        self.config = config
        self.total_steps = total_steps
        self.base_lr = config.resolved_lr(dictionary.config.width)
        self.optimizer = torch.optim.Adam(dictionary.parameters(), lr=self.base_lr, betas=config.betas)
        width = dictionary.config.width
        self.step = 0
        self.tokens_seen = 0
        # Tokens since each latent last fired: the dead-latent criterion over a token window.
        self.tokens_since_fired = torch.zeros(width, dtype=torch.long)
        self.fire_counts = torch.zeros(width, dtype=torch.long)

    def dead_mask(self) -> Tensor:
        return self.tokens_since_fired >= self.config.dead_window_tokens

    def train_step(self, x: Tensor, target: Tensor | None = None) -> dict[str, float]:
        """One step on a batch of (scaled) activations; returns the logged scalars."""
        cfg = self.config
        lr = self.base_lr * lr_multiplier(self.step, self.total_steps, cfg.warmup_steps, cfg.decay_fraction)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        sparsity_scale = sparsity_multiplier(self.step, self.total_steps, cfg.sparsity_warmup_fraction)
        output = self.dictionary(x, target, sparsity_scale=sparsity_scale, dead_mask=self.dead_mask())
        loss = output.losses["loss"]
        if not math.isfinite(loss.item()):
            raise NonFiniteLossError(f"loss became {loss.item()} at step {self.step}")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.normalize_decoder:
            self.dictionary.remove_parallel_decoder_gradient()
        self.optimizer.step()
        if cfg.normalize_decoder:
            self.dictionary.normalize_decoder()
        return self._record(x, target, output.latents.detach(), output.reconstruction.detach(),
                            output.losses, lr, sparsity_scale)

    def _record(self, x: Tensor, target: Tensor | None, latents: Tensor, reconstruction: Tensor,
                losses: dict[str, Tensor], lr: float, sparsity_scale: float) -> dict[str, float]:
        n_tokens = latents.shape[0]
        fired = (latents > 0).sum(0).cpu()
        self.fire_counts += fired
        self.tokens_since_fired += n_tokens
        self.tokens_since_fired[fired > 0] = 0
        self.step += 1
        self.tokens_seen += n_tokens
        target = x if target is None else target
        residual_variance = (reconstruction - target).pow(2).sum()
        total_variance = (target - target.mean(0)).pow(2).sum()
        record = {name: value.item() for name, value in losses.items()}
        record.update(
            step=self.step, tokens=self.tokens_seen, lr=lr, sparsity_scale=sparsity_scale,
            fvu=(residual_variance / total_variance).item(),
            l0=(latents > 0).sum(-1).float().mean().item(),
            dead_fraction=self.dead_mask().float().mean().item(),
        )
        return record


def fit_dictionary(
    dictionary: Dictionary, batches: Iterable[Tensor | tuple[Tensor, Tensor]], total_steps: int,
    config: OptimConfig | None = None, progress: bool = False,
) -> list[dict[str, float]]:
    """Train on in-memory batches (x or (x, target)) for ``total_steps``; returns the per-step log."""
    trainer = DictionaryTrainer(dictionary, config or OptimConfig(), total_steps)
    log = []
    iterator: Iterator = iter(batches)
    for _ in tqdm(range(total_steps), disable=not progress, desc="training"):
        batch = next(iterator)
        x, target = (batch, None) if isinstance(batch, Tensor) else batch
        log.append(trainer.train_step(x, target))
    return log
