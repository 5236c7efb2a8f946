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
        # Firing since the last resampling (its density criterion) and since the last density snapshot.
        self.resample_window = torch.zeros(width, dtype=torch.long)
        self.resample_window_tokens = 0
        self.snapshot_window = torch.zeros(width, dtype=torch.long)
        self.snapshot_window_tokens = 0
        # The rare-latent experiment's held-out latents (never resampled), chosen at the first resampling.
        self.holdout_mask = torch.zeros(width, dtype=torch.bool)
        self.holdout_chosen = False
        self.resampled_total = 0

    COUNTER_TENSORS = ("tokens_since_fired", "fire_counts", "resample_window", "snapshot_window", "holdout_mask")
    COUNTER_SCALARS = ("step", "tokens_seen", "resample_window_tokens", "snapshot_window_tokens", "holdout_chosen",
                       "resampled_total")

    def state_tensors(self) -> dict[str, Tensor]:
        return {name: getattr(self, name) for name in self.COUNTER_TENSORS}

    def state_scalars(self) -> dict[str, int | bool]:
        return {name: getattr(self, name) for name in self.COUNTER_SCALARS}

    def load_state(self, tensors: dict[str, Tensor], scalars: dict[str, int | bool]) -> None:
        for name in self.COUNTER_TENSORS:
            setattr(self, name, tensors[name].clone())
        for name in self.COUNTER_SCALARS:
            setattr(self, name, scalars[name])

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
        record = self._record(x, target, output.latents.detach(), output.reconstruction.detach(),
                              output.losses, lr, sparsity_scale)
        if cfg.resample_every and self.step % cfg.resample_every == 0 and self.step < self.total_steps:
            record["resampled"] = self.resample(x, target)
        return record

    def resample_candidates(self) -> Tensor:
        density = self.resample_window.double() / max(self.resample_window_tokens, 1)
        return self.dead_mask() | (density <= self.config.resample_density_threshold)

    @torch.no_grad()
    def resample(self, x: Tensor, target: Tensor | None) -> int:
        """Point dead/rare latents at inputs the dictionary reconstructs worst; returns how many.

        Decoder rows become the normalised residual errors of inputs sampled with probability
        proportional to their squared error; encoder columns the matching normalised inputs, scaled
        to 0.2x the mean norm of live encoder columns; their biases, architecture-specific parameters
        (``Dictionary.reset_latent_parameters``) and Adam moments are reset.
        """
        candidates = self.resample_candidates()
        if not self.holdout_chosen and candidates.any() and self.config.resample_holdout_fraction > 0:
            self._choose_holdout(candidates)
        chosen = candidates & ~self.holdout_mask
        self.resample_window.zero_()
        self.resample_window_tokens = 0
        count = int(chosen.sum())
        if count == 0:
            return 0
        target = x if target is None else target
        error = target - self.dictionary(x, target).reconstruction
        generator = torch.Generator().manual_seed(self.config.seed * 1_000_003 + self.step)
        weights = error.pow(2).sum(-1).double().cpu()
        rows = torch.multinomial(weights / weights.sum(), count, replacement=True, generator=generator)
        self._reinitialise(chosen.to(x.device), x[rows], error[rows])
        self.tokens_since_fired[chosen] = 0
        self.resampled_total += count
        return count

    def _choose_holdout(self, candidates: Tensor) -> None:
        indices = candidates.nonzero().flatten()
        generator = torch.Generator().manual_seed(self.config.seed + 17)
        keep = int(round(len(indices) * self.config.resample_holdout_fraction))
        self.holdout_mask[indices[torch.randperm(len(indices), generator=generator)[:keep]]] = True
        self.holdout_chosen = True

    def _reinitialise(self, chosen: Tensor, inputs: Tensor, errors: Tensor) -> None:
        dictionary = self.dictionary
        alive_norm = dictionary.W_enc[:, ~chosen].norm(dim=0).mean() if (~chosen).any() else 1.0
        dictionary.W_dec[chosen] = errors / errors.norm(dim=-1, keepdim=True).clamp_min(1e-8)
        encoder = inputs / inputs.norm(dim=-1, keepdim=True).clamp_min(1e-8)
        dictionary.W_enc[:, chosen] = (encoder * 0.2 * alive_norm).T.to(dictionary.W_enc.dtype)
        dictionary.b_enc[chosen] = 0.0
        # Architecture-specific state (gate scales, thresholds) is reset by the dictionary itself.
        reset = [(dictionary.W_dec, (chosen,)), (dictionary.W_enc, (slice(None), chosen)),
                 (dictionary.b_enc, (chosen,)), *dictionary.reset_latent_parameters(chosen)]
        for parameter, index in reset:
            for moment in self.optimizer.state.get(parameter, {}).values():
                if moment.shape == parameter.shape:
                    moment[index] = 0.0

    def density_snapshot(self) -> dict[str, object]:
        """Per-latent firing density since the last snapshot (histogram + held-out latents), then reset."""
        tokens = max(self.snapshot_window_tokens, 1)
        density = self.snapshot_window.double() / tokens
        log_density = density.clamp_min(1e-10).log10()
        edges = torch.arange(-10.0, 0.5, 0.5, dtype=torch.float64)
        histogram = torch.histogram(log_density, edges)[0].long().tolist()
        snapshot = {
            "step": self.step, "window_tokens": self.snapshot_window_tokens,
            "dead_in_window": int((self.snapshot_window == 0).sum()),
            "log10_density_histogram": {"edges": edges.tolist(), "counts": histogram,
                                        "note": "latents that never fired in the window are counted at -10"},
            "resampled_total": self.resampled_total,
        }
        if self.holdout_mask.any():
            held = self.holdout_mask.nonzero().flatten()
            snapshot["holdout"] = {"latents": held.tolist(), "density": density[held].tolist()}
        self.snapshot_window.zero_()
        self.snapshot_window_tokens = 0
        return snapshot

    def _record(self, x: Tensor, target: Tensor | None, latents: Tensor, reconstruction: Tensor,
                losses: dict[str, Tensor], lr: float, sparsity_scale: float) -> dict[str, float]:
        n_tokens = latents.shape[0]
        fired = (latents > 0).sum(0).cpu()
        self.fire_counts += fired
        self.resample_window += fired
        self.snapshot_window += fired
        self.resample_window_tokens += n_tokens
        self.snapshot_window_tokens += n_tokens
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
