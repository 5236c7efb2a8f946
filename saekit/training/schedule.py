"""Learning-rate and sparsity-penalty schedules as pure functions of the step."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class OptimConfig:
    """Optimizer and schedule settings shared by every training entry point."""

    lr: float | None = None  # None: scale with width, 2e-4 / sqrt(width / 2**14), as sparsify does
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = 20
    decay_fraction: float = 0.2  # linear decay to zero over this last fraction of training
    sparsity_warmup_fraction: float = 0.05  # L1/sparsity penalty ramps up over this first fraction
    dead_window_tokens: int = 100_000  # a latent that has not fired for this many tokens is dead
    normalize_decoder: bool = True
    resample_every: int = 0  # steps between resamplings of dead/rare latents; 0 = never
    resample_density_threshold: float = 0.0  # also resample latents firing on <= this fraction of tokens
    resample_holdout_fraction: float = 0.0  # rare-latent experiment: this share of candidates is never resampled
    seed: int = 0

    def resolved_lr(self, width: int) -> float:
        return self.lr if self.lr is not None else 2e-4 / (width / 2**14) ** 0.5


def lr_multiplier(step: int, total_steps: int, warmup_steps: int, decay_fraction: float) -> float:
    """Linear warmup, constant, then linear decay to zero over the final ``decay_fraction``."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    decay_steps = int(total_steps * decay_fraction)
    decay_start = total_steps - decay_steps
    if decay_steps > 0 and step >= decay_start:
        return max(0.0, (total_steps - step) / decay_steps)
    return 1.0


def sparsity_multiplier(step: int, total_steps: int, warmup_fraction: float) -> float:
    """Ramp the sparsity penalty from 0 to 1 so early training is not crushed into dead latents."""
    warmup_steps = int(total_steps * warmup_fraction)
    return 1.0 if warmup_steps == 0 else min(1.0, (step + 1) / warmup_steps)
