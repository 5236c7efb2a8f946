"""Learning-rate and sparsity-penalty schedules as pure functions of the step."""

from __future__ import annotations

from dataclasses import dataclass

from saekit.models.precision import autocast_name
from saekit.settings import SEED, setting


@dataclass
class OptimConfig:
    """The ``optim`` section of a run config: how long, how fast, and how dead latents are handled."""

    train_tokens: int = setting(200_000, "training tokens (steps = train_tokens // batch_size)", minimum=1)
    batch_size: int = setting(2048, "tokens per training step", minimum=1)
    shuffle_buffer_tokens: int = setting(65_536, "tokens in the seeded shuffle buffer between chunks and batches",
                                         minimum=1)
    lr: float | None = setting(None, "Adam learning rate (none: 2e-4 / sqrt(width / 2^14), as sparsify does)",
                                above=0)
    betas: tuple[float, float] = setting((0.9, 0.999), "Adam betas, as BETA1,BETA2", minimum=0, below=1)
    warmup_steps: int = setting(20, "linear learning-rate warmup steps", minimum=0)
    decay_fraction: float = setting(0.2, "linear decay to zero over this last fraction of training", minimum=0,
                                   maximum=1)
    sparsity_warmup_fraction: float = setting(0.05, "the sparsity penalty ramps up over this first fraction",
                                             minimum=0, maximum=1)
    dead_window_tokens: int = setting(100_000, "a latent that has not fired for this many tokens is dead",
                                      minimum=1)
    normalize_decoder: bool = setting(True, "keep decoder rows unit-norm after every step")
    resample_every: int = setting(0, "steps between resamplings of dead (and rare) latents; 0 = never", minimum=0)
    resample_density_threshold: float = setting(0.0, "also resample latents firing on at most this share of tokens",
                                                 minimum=0, maximum=1)
    resample_holdout_fraction: float = setting(
        0.0, "the rare-latent experiment: this share of resampling candidates is never resampled",
        minimum=0, below=1)
    seed: int = setting(0, "seed of the initialisation, the batch shuffle and resampling", **SEED)
    autocast: str = setting("auto", "mixed precision of the dictionary step: auto (bfloat16 where the device "
                            "multiplies in it: GPUs with bf16, CPUs with AMX or AVX512-BF16), bfloat16 or none "
                            "(float32); weights, Adam moments and losses stay float32", check=autocast_name,
                            invalid=("float16", "fp32"))

    @property
    def total_steps(self) -> int:
        return self.train_tokens // self.batch_size

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
