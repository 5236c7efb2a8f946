"""One optimisation step of a dictionary, with dead-latent tracking; the loop over in-memory data.

``DictionaryTrainer`` owns the optimizer and the per-latent firing statistics. It is used by the
run orchestration (``saekit.training.run``: checkpoints, resume, logs) and directly by code that
trains on in-memory data such as the synthetic feature worlds (:func:`fit_dictionary`).

A step waits for the device once: the firing counters live on the dictionary's device and are
updated there (from the TopK family's sparse latents when it has them), and the logged scalars are
kept as device tensors until one copy to the host, which also serves the NaN check. Adam is the
fused implementation where the device has one; ``autocast_dtype`` runs the forward in mixed
precision (fp32 master weights, moments and losses); ``compile`` compiles the dictionary's forward.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from saekit.dictionaries.base import Dictionary, DictionaryOutput
from saekit.errors import SaekitError
from saekit.training.distributed import ProcessGroup
from saekit.training.schedule import OptimConfig, lr_multiplier, sparsity_multiplier


class NonFiniteLossError(SaekitError):
    """The loss became NaN or infinite."""


# Mixed precision without loss scaling: bfloat16 has fp32's exponent range, float16 would need a GradScaler.
AUTOCAST_DTYPES = (torch.bfloat16,)


def _adam_variant_works(sample: Tensor, options: dict[str, bool]) -> bool:
    """Whether Adam with ``options`` (fused / foreach) steps a parameter like ``sample`` on its device.

    Fused Adam checks its device only at the first step, so constructing it proves nothing: this
    steps a one-element stand-in instead.
    """
    probe = torch.zeros(1, dtype=sample.dtype, device=sample.device, requires_grad=True)
    probe.grad = torch.ones_like(probe)
    try:
        torch.optim.Adam([probe], **options).step()
    except (RuntimeError, NotImplementedError, TypeError, ValueError):
        return False
    return True


def build_adam(parameters: Iterable[nn.Parameter], lr: float, betas: tuple[float, float]) -> torch.optim.Adam:
    """Fused Adam where every parameter's device and dtype support it, else multi-tensor (foreach), else plain.

    The three give the same updates to float tolerance (tests/training/test_trainer_lean.py). A
    checkpoint keeps its optimizer's variant in its param groups; restoring one into this optimizer
    keeps this optimizer's variant (a load_state_dict pre-hook), so a run resumed on other hardware
    still gets the fastest Adam there.
    """
    params = list(parameters)
    samples = {(p.device, p.dtype): p for p in params}.values()
    for options in ({"fused": True}, {"foreach": True}):
        if all(_adam_variant_works(sample, options) for sample in samples):
            break
    else:
        options = {"foreach": False}
    optimizer = torch.optim.Adam(params, lr=lr, betas=betas, **options)
    variant = {key: optimizer.defaults[key] for key in ("fused", "foreach")}

    def keep_variant(_: torch.optim.Optimizer, state: dict[str, Any]) -> dict[str, Any]:
        return {**state, "param_groups": [{**group, **variant} for group in state["param_groups"]]}

    optimizer.register_load_state_dict_pre_hook(keep_variant)
    optimizer.register_load_state_dict_post_hook(_match_state_layouts)
    return optimizer


def _match_state_layouts(optimizer: torch.optim.Optimizer) -> None:
    """Give restored moments their parameter's memory layout (strides).

    A checkpoint stores moments contiguous, but a parameter need not be (the tied initialisation
    makes W_enc a transposed copy of the decoder). Fused Adam walks parameter, gradient and moments
    as flat memory, so a moment laid out differently from its parameter is silently updated at the
    wrong positions: a resumed run then diverged from the uninterrupted one (tests/training/test_run.py).
    """
    for group in optimizer.param_groups:
        for parameter in group["params"]:
            state = optimizer.state.get(parameter, {})
            for key, value in state.items():
                if not isinstance(value, Tensor) or value.shape != parameter.shape:
                    continue  # the step count
                if value.stride() != parameter.stride():
                    state[key] = torch.empty_like(parameter, dtype=value.dtype).copy_(value)


@dataclass
class PendingStep:
    """A step's logged scalars, still on the device, and what the host knows of it."""

    names: list[str]
    loss_names: list[str]
    scalars: Tensor
    index: int  # the step's number before it was taken (the NaN message's)
    fields: dict[str, float] = field(default_factory=dict)

    def record(self, host: dict[str, float]) -> dict[str, float]:
        """The log record: the loss terms, the step's own fields, then fvu/l0/dead and any per-layer figures."""
        record = {name: host[name] for name in self.loss_names}
        record.update({key: value for key, value in self.fields.items() if key != "resampled"})
        record.update(fvu=host["fvu"], l0=host["l0"], dead_fraction=host["dead_fraction"])
        # A cross-layer dictionary's per-layer FVU and L0 (``fvu_layer_0``...), after the usual scalars.
        record.update({name: host[name] for name in self.names if name not in record})
        if "resampled" in self.fields:
            record["resampled"] = self.fields["resampled"]
        return record


@dataclass
class StepForward:
    """One step's forward, before its backward: what :meth:`DictionaryTrainer.finish_step` needs of it."""

    output: DictionaryOutput
    x: Tensor  # the global batch (scaled), which resampling reads
    target: Tensor | None
    local_x: Tensor  # this rank's rows
    local_target: Tensor | None
    n_tokens: int
    lr: float
    sparsity_scale: float

    def weighted_loss(self, mse_weight: float) -> Tensor:
        """The dictionary's loss with its reconstruction term weighted by ``mse_weight`` (a phase's MSE weight)."""
        losses = self.output.losses
        if mse_weight == 1.0 or "reconstruction" not in losses:
            return losses["loss"]
        return losses["loss"] + (mse_weight - 1.0) * losses["reconstruction"]


class DictionaryTrainer:
    """Adam with warmup/decay, decoder-norm constraint, L1 warmup, and dead-latent tracking.

    ``autocast_dtype`` (only ``torch.bfloat16``; None = fp32): the forward runs under
    ``torch.autocast`` on the input's device type; weights, Adam moments, the loss terms and the logged
    metrics stay fp32. ``compile``: the dictionary's forward goes through ``torch.compile`` (the
    first step falls back to eager, with a warning, where compiling fails on this machine).
    """

    def __init__(self, dictionary: Dictionary, config: OptimConfig, total_steps: int, *,
                 autocast_dtype: torch.dtype | None = None, compile: bool = False,
                 group: ProcessGroup | None = None) -> None:
        if autocast_dtype is not None and autocast_dtype not in AUTOCAST_DTYPES:
            raise SaekitError(f"autocast dtype {autocast_dtype} is not supported: use torch.bfloat16 or none "
                              "(float16 would need loss scaling)")
        self.dictionary = dictionary
        self.config = config
        self.total_steps = total_steps
        self.autocast_dtype = autocast_dtype
        # Data-parallel: each rank steps on its slice of the global batch, the group keeps ranks identical.
        self.group = group if group is not None and group.data_parallel and group.world_size > 1 else None
        self.base_lr = config.resolved_lr(dictionary.config.width)
        self.optimizer = build_adam(dictionary.parameters(), self.base_lr, config.betas)
        self._compiled, self._compile_proven = (_compile_forward(dictionary) if compile else None), False
        width = dictionary.config.width
        device = dictionary.W_dec.device
        self.step = 0
        self.tokens_seen = 0
        # The counters live on the dictionary's device, so updating them never waits for it.
        # Tokens since each latent last fired: the dead-latent criterion over a token window.
        self.tokens_since_fired = torch.zeros(width, dtype=torch.long, device=device)
        self.fire_counts = torch.zeros(width, dtype=torch.long, device=device)
        # Firing since the last resampling (its density criterion) and since the last density snapshot.
        self.resample_window = torch.zeros(width, dtype=torch.long, device=device)
        self.resample_window_tokens = 0
        self.snapshot_window = torch.zeros(width, dtype=torch.long, device=device)
        self.snapshot_window_tokens = 0
        # The rare-latent experiment's held-out latents (never resampled), chosen at the first resampling.
        self.holdout_mask = torch.zeros(width, dtype=torch.bool, device=device)
        self.holdout_chosen = False
        self.resampled_total = 0
        self._pending: list[PendingStep] = []  # steps taken with read=False, their scalars not yet read

    COUNTER_TENSORS = ("tokens_since_fired", "fire_counts", "resample_window", "snapshot_window", "holdout_mask")
    COUNTER_SCALARS = ("step", "tokens_seen", "resample_window_tokens", "snapshot_window_tokens", "holdout_chosen",
                       "resampled_total")

    def state_tensors(self) -> dict[str, Tensor]:
        """The counters on the CPU (what a checkpoint stores)."""
        return {name: getattr(self, name).cpu() for name in self.COUNTER_TENSORS}

    def state_scalars(self) -> dict[str, int | bool]:
        return {name: getattr(self, name) for name in self.COUNTER_SCALARS}

    def load_state(self, tensors: dict[str, Tensor], scalars: dict[str, int | bool]) -> None:
        """Restore counters saved by :meth:`state_tensors` / :meth:`state_scalars`, onto the dictionary's device."""
        device = self.dictionary.W_dec.device
        for name in self.COUNTER_TENSORS:
            setattr(self, name, tensors[name].to(device, copy=True))
        for name in self.COUNTER_SCALARS:
            setattr(self, name, scalars[name])

    def dead_mask(self) -> Tensor:
        return self.tokens_since_fired >= self.config.dead_window_tokens

    def train_step(self, x: Tensor, target: Tensor | None = None, *, read: bool = True) -> dict[str, float] | None:
        """One step on a batch of (scaled) activations; returns the logged scalars (``read=False``: None).

        With ``read`` this step's scalars are read from the device in one copy, after the backward and
        before the optimizer step, so a NaN or infinite loss raises
        :class:`NonFiniteLossError` with the weights, the Adam state and the counters as they were
        before this step. ``read=False`` queues this step's scalars on the device instead (no wait for
        it); :meth:`read_pending` reads the queue, and a non-finite loss found there means the steps
        since have run on it: the caller must not checkpoint them (the run loop reads before saving).

        It is :meth:`forward`, the backward of its loss, then :meth:`finish_step`; the model-loss objectives
        (``saekit.training.model_loop``) put their terms, and one backward for several dictionaries, between.
        """
        forward = self.forward(x, target)
        self.optimizer.zero_grad(set_to_none=True)
        forward.output.losses["loss"].backward()
        return self.finish_step(forward, read=read)

    def forward(self, x: Tensor, target: Tensor | None = None) -> StepForward:
        """This step's learning rate set and the dictionary's forward (with its graph) on this rank's rows."""
        cfg = self.config
        lr = self.base_lr * lr_multiplier(self.step, self.total_steps, cfg.warmup_steps, cfg.decay_fraction)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        sparsity_scale = sparsity_multiplier(self.step, self.total_steps, cfg.sparsity_warmup_fraction)
        local_x, local_target = self._local(x), None if target is None else self._local(target)
        with self._precision(local_x):
            output = self._forward(local_x, local_target, sparsity_scale=sparsity_scale, dead_mask=self.dead_mask())
        # n_tokens is the global batch's: every rank counts the same tokens
        return StepForward(output, x, target, local_x, local_target, x.numel() // x.shape[-1], lr, sparsity_scale)

    def finish_step(self, forward: StepForward, read: bool = True) -> dict[str, float] | None:
        """After the backward: average and project the gradients, log, step Adam, count firing, resample."""
        cfg, output = self.config, forward.output
        if self.group is not None:  # the mean of equal shards' mean losses is the global mean loss
            self.group.average([p.grad for p in self.dictionary.parameters() if p.grad is not None])
        if cfg.normalize_decoder:
            self.dictionary.remove_parallel_decoder_gradient()
        fired, since_fired = self._firing(output, forward.n_tokens)
        names, values = self._scalars(forward.local_x, forward.local_target, output, since_fired)
        scalars = torch.stack([v.to(self._host_dtype()) for v in values])
        if self.group is not None:
            self.group.average([scalars])
        pending = PendingStep(names, list(output.losses), scalars, self.step)
        host = self._read([pending])[0] if read else None
        self.optimizer.step()
        if cfg.normalize_decoder:
            self.dictionary.normalize_decoder()
        if self.group is not None:  # running estimates (BatchTopK's threshold) seen from each rank's shard
            self.group.average([b for b in self.dictionary.buffers() if b.is_floating_point()])
        self._count(fired, since_fired, forward.n_tokens)
        pending.fields = dict(step=self.step, tokens=self.tokens_seen, lr=forward.lr,
                              sparsity_scale=forward.sparsity_scale)
        if cfg.resample_every and self.step % cfg.resample_every == 0 and self.step < self.total_steps:
            pending.fields["resampled"] = self.resample(forward.x, forward.target)
        if host is None:
            self._pending.append(pending)
            return None
        return pending.record(host)

    def read_pending(self) -> list[dict[str, float]]:
        """The records of the steps queued with ``read=False``, read from the device in one copy."""
        records = [step.record(host) for step, host in zip(self._pending, self._read(self._pending))]
        self._pending = []
        return records

    def _read(self, steps: list[PendingStep]) -> list[dict[str, float]]:
        """Each step's scalars by name, one device-to-host copy for all; the first non-finite loss raises."""
        if not steps:
            return []
        flat = torch.cat([step.scalars for step in steps]).tolist()
        hosts, offset = [], 0
        for step in steps:
            host = dict(zip(step.names, flat[offset:offset + len(step.names)]))
            offset += len(step.names)
            if not math.isfinite(host["loss"]):
                raise NonFiniteLossError(f"loss became {host['loss']} at step {step.index}")
            hosts.append(host)
        return hosts

    def _local(self, batch: Tensor) -> Tensor:
        """This rank's rows of a global batch (all of it in one process)."""
        return batch if self.group is None else batch[self.group.local_rows(batch.shape[0])]

    def _precision(self, x: Tensor) -> contextlib.AbstractContextManager:
        """The forward's autocast context (a no-op without ``autocast_dtype``)."""
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=x.device.type, dtype=self.autocast_dtype)

    def _forward(self, x: Tensor, target: Tensor | None, **kwargs: Any) -> DictionaryOutput:
        """The dictionary's forward, compiled when asked and compiling works here."""
        if self._compiled is not None:
            try:
                output = self._compiled(x, target, **kwargs)
            except SaekitError:
                raise
            except Exception as err:  # no compiler, an op dynamo cannot trace...: eager is always correct
                if self._compile_proven:
                    raise
                warnings.warn(f"torch.compile failed ({type(err).__name__}: {str(err)[:200]}); training eagerly",
                              stacklevel=3)
                self._compiled = None
            else:
                self._compile_proven = True
                return output
        return self.dictionary(x, target, **kwargs)

    def _host_dtype(self) -> torch.dtype:
        # float64 holds every fp32 value exactly, so the record equals per-value .item(); MPS has no float64.
        return torch.float32 if self.dictionary.W_dec.device.type == "mps" else torch.float64

    def resample_candidates(self) -> Tensor:
        # The density in float64 on the CPU (MPS has no float64); resampling is rare, the copy is cheap.
        density = self.resample_window.cpu().double() / max(self.resample_window_tokens, 1)
        rare = (density <= self.config.resample_density_threshold).to(self.tokens_since_fired.device)
        return self.dead_mask() | rare

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
        # The permutation comes from a CPU generator, so the choice is the same on every device.
        order = torch.randperm(len(indices), generator=generator)[:keep].to(indices.device)
        self.holdout_mask[indices[order]] = True
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
        window, holdout = self.snapshot_window.cpu(), self.holdout_mask.cpu()  # torch.histogram is CPU-only
        density = window.double() / tokens
        log_density = density.clamp_min(1e-10).log10()
        edges = torch.arange(-10.0, 0.5, 0.5, dtype=torch.float64)
        histogram = torch.histogram(log_density, edges)[0].long().tolist()
        snapshot = {
            "step": self.step, "window_tokens": self.snapshot_window_tokens,
            "dead_in_window": int((window == 0).sum()),
            "log10_density_histogram": {"edges": edges.tolist(), "counts": histogram,
                                        "note": "latents that never fired in the window are counted at -10"},
            "resampled_total": self.resampled_total,
        }
        if holdout.any():
            held = holdout.nonzero().flatten()
            snapshot["holdout"] = {"latents": held.tolist(), "density": density[held].tolist()}
        self.snapshot_window.zero_()
        self.snapshot_window_tokens = 0
        return snapshot

    def _firing(self, output: DictionaryOutput, n_tokens: int) -> tuple[Tensor, Tensor]:
        """This batch's firing per latent and the tokens-since-fired it leads to (device tensors, not yet kept).

        From the sparse latents when the forward has them (an ``index_add_`` over the active entries),
        else from the dense latents; never a host sync.
        """
        fired = output.firing()
        if fired.device != self.tokens_since_fired.device:  # the dictionary moved after the trainer was built
            for name in self.COUNTER_TENSORS:
                setattr(self, name, getattr(self, name).to(fired.device))
        if self.group is not None:
            self.group.sum([fired])
        since_fired = torch.where(fired > 0, 0, self.tokens_since_fired + n_tokens)
        return fired, since_fired

    def _count(self, fired: Tensor, since_fired: Tensor, n_tokens: int) -> None:
        """Keep a step's firing (after its loss was found finite)."""
        self.fire_counts += fired
        self.resample_window += fired
        self.snapshot_window += fired
        self.tokens_since_fired.copy_(since_fired)
        self.resample_window_tokens += n_tokens
        self.snapshot_window_tokens += n_tokens
        self.step += 1
        self.tokens_seen += n_tokens

    def _scalars(self, x: Tensor, target: Tensor | None, output: DictionaryOutput,
                 since_fired: Tensor) -> tuple[list[str], list[Tensor]]:
        """The logged scalars as device tensors: the loss terms, fvu, l0, and the dead fraction after this step."""
        target = x if target is None else target
        reconstruction = output.reconstruction.detach()
        residual_variance = (reconstruction - target).pow(2).sum()
        total_variance = (target - target.mean(0)).pow(2).sum()
        dead = (since_fired >= self.config.dead_window_tokens).float().mean()
        names = [*output.losses, "fvu", "l0", "dead_fraction"]
        values = [*(value.detach() for value in output.losses.values()), residual_variance / total_variance,
                  output.mean_l0(), dead]
        latents = output.sparse if output.sparse is not None else output.latents
        own = self.dictionary.training_metrics(latents, reconstruction, target)
        names, values = names + list(own), values + list(own.values())
        return names, values


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


def _compile_forward(dictionary: Dictionary) -> Callable[..., DictionaryOutput] | None:
    """``torch.compile`` of the dictionary (sharing its parameters), or None where compile is unavailable."""
    try:
        return torch.compile(dictionary)
    except (RuntimeError, ImportError) as err:  # e.g. a Python version dynamo does not support
        warnings.warn(f"torch.compile is not available ({err}); training eagerly", stacklevel=3)
        return None
