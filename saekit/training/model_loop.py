"""The model in the training loop: whole contexts, the clean pass once per step, the spliced pass with gradients.

The objectives of :mod:`saekit.training.objectives` that score the model's own loss (``kl``, ``e2e_ds``, the
KL fine-tune tail) need, at every step, the clean model's next-token distributions and the distributions
with every dictionary of the step spliced in. Per step (:func:`model_step`):

1. :func:`context_batches` draws the step's contexts (seeded, in the corpus order the activation source
   reads, from context ``step x contexts_per_step``, so a resumed run draws exactly the contexts it would
   have) and runs the model once without gradients: the logits, the activations at every run's sites
   (BOS dropped, in the activation source's layout) and at the downstream sites.
2. Each run's dictionary encodes those clean activations (teacher forcing: what ``mse`` training reads),
   and its reconstruction replaces the sites it writes, every run's at once, in one forward of the model
   whose weights are frozen; BOS keeps its clean activation, as in the evaluation's splice. That forward
   starts at the first block a write changes: the clean pass recorded what the blocks before it return
   (:func:`saekit.models.hooks.recording_prefix`), and nothing before that block differs. At one site
   this is exactly the spliced model; for several sites (runs trained together, a cross-layer run) each
   dictionary reads the clean model's activations rather than the spliced model's own.
3. One backward of the summed loss (each run's own terms, the MSE weighted for the phase, plus the shared
   KL and downstream terms) reaches every dictionary through the layers after its sites; then each trainer
   finishes its step (decoder constraint, counters, Adam).

Every position but BOS is trained on and spliced (the outlier rule of activation training does not apply:
the evaluation splices outliers too). Under ``torchrun`` (data-parallel) each process runs its share of the
contexts; see :func:`context_batches`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from saekit.activations.source import contexts_for, load_split
from saekit.activations.spec import DataConfig
from saekit.data.contexts import take_contexts
from saekit.models.hooks import Prefix, recording_prefix, resumed_at, run_with_hooks
from saekit.models.loading import LoadedModel
from saekit.training.config import TrainConfig
from saekit.training.distributed import ProcessGroup
from saekit.training.objectives import ObjectiveWeights, downstream_mse, next_token_kl
from saekit.training.splicing import keep_bos

if TYPE_CHECKING:  # run.py drives the loop and imports this module
    from saekit.training.run import RunState


@dataclass
class ContextBatch:
    """One step's contexts and the clean model's view of them."""

    input_ids: Tensor  # [contexts, seq]
    activations: dict[str, Tensor]  # site -> [contexts * (seq - 1), width]: every non-BOS position, context-major
    logits: Tensor  # [contexts, seq, vocab]
    downstream: dict[str, Tensor]  # downstream site -> [contexts, seq, width]
    prefix: Prefix  # the clean model's state before the first block the spliced pass changes

    @property
    def tokens(self) -> int:
        """The step's tokens: of every process's contexts under torchrun (the activations are gathered)."""
        return next(iter(self.activations.values())).shape[0]


def contexts_per_step(batch_tokens: int, context_length: int) -> int:
    """Whole contexts per step: ``batch_tokens`` non-BOS tokens, rounded up to contexts."""
    return max(1, math.ceil(batch_tokens / (context_length - 1)))


def step_contexts(loaded: LoadedModel, data: DataConfig, batch_tokens: int, seed: int,
                  first_step: int) -> Iterator[Tensor]:
    """Each step's whole contexts from the training split, in ``seed``'s order, from step ``first_step`` on (the
    contexts of the steps before it are drawn and dropped: tokenizing only, no forward), so a resume is exact."""
    per_step = contexts_per_step(batch_tokens, data.context_length)
    contexts = contexts_for(loaded, load_split(data).train, data, seed)
    for _ in range(first_step * per_step):
        next(contexts)
    while True:
        yield take_contexts(contexts, per_step)


def context_batches(loaded: LoadedModel, config: TrainConfig, sites: Sequence[str], written: Sequence[str],
                    first_step: int, device: str, group: ProcessGroup | None = None) -> Iterator[ContextBatch]:
    """The clean passes of the steps from ``first_step`` on; ``written`` are the sites the spliced passes write.

    Data-parallel under torchrun, each process runs the model on its own share of every step's contexts and the
    clean activations are gathered, so every trainer sees the whole step's batch (and steps on its own rows:
    those of its own contexts) as in activation training."""
    downstream = config.loss.downstream_sites
    resume = first_changed_layer(loaded, [*written, *downstream])
    for input_ids in step_contexts(loaded, config.data, config.optim.batch_size, config.data.seed, first_step):
        if group is not None:
            input_ids = input_ids[group.local_rows(input_ids.shape[0])]
        batch = clean_pass(loaded, input_ids.to(device), sites, downstream, resume)
        if group is not None:
            batch.activations = group.gather_rows(batch.activations)
        yield batch


def first_changed_layer(loaded: LoadedModel, sites: Sequence[str]) -> int:
    """The first block a spliced pass writing (or reading, downstream) ``sites`` must run."""
    return min(loaded.adapter.site(name).layer for name in sites)


@torch.no_grad()
def clean_pass(loaded: LoadedModel, input_ids: Tensor, sites: Sequence[str],
               downstream: Sequence[str], resume_layer: int = 0) -> ContextBatch:
    """The clean forward: logits, the sites' activations, and what the blocks before ``resume_layer`` return."""
    adapter = loaded.adapter
    wanted = [adapter.site(name) for name in (*sites, *downstream)]
    with recording_prefix(adapter, resume_layer) as prefix:
        logits, captured = run_with_hooks(adapter, input_ids, observe=wanted)
    by_name = {site.name: value for site, value in captured.items()}
    activations = {name: by_name[name][:, 1:].reshape(-1, by_name[name].shape[-1]).float() for name in sites}
    return ContextBatch(input_ids, activations, logits, {name: by_name[name] for name in downstream}, prefix)


def spliced_pass(loaded: LoadedModel, input_ids: Tensor, writes: dict[str, Tensor],
                 downstream: Sequence[str], prefix: Prefix | None = None) -> tuple[Tensor, dict[str, Tensor]]:
    """The logits (and downstream activations) with ``writes[site]`` [contexts, seq - 1, width] at each site's
    non-BOS positions; differentiable with respect to the written values. With the clean pass's ``prefix``
    the blocks before its layer are not run again."""
    adapter = loaded.adapter

    def replacing(value: Tensor):
        return keep_bos(lambda _: value)  # BOS keeps the model's own activation, as every splice does
    replace = {adapter.site(name): replacing(value) for name, value in writes.items()}
    with resumed_at(adapter, prefix or Prefix(0)):
        logits, captured = run_with_hooks(adapter, input_ids, replace=replace,
                                          observe=[adapter.site(name) for name in downstream])
    return logits, {site.name: value for site, value in captured.items()}


def model_terms(loaded: LoadedModel, batch: ContextBatch, writes: dict[str, Tensor], weights: ObjectiveWeights,
                downstream: Sequence[str]) -> dict[str, Tensor]:
    """The model-loss terms of one step (unweighted): ``kl``, and ``downstream`` where the phase weighs it."""
    logits, spliced = spliced_pass(loaded, batch.input_ids, writes, downstream if weights.downstream else (),
                                   batch.prefix)
    terms = {"kl": next_token_kl(batch.logits, logits)}
    if weights.downstream:
        terms["downstream"] = downstream_mse(spliced, batch.downstream).mean
    return terms


def unscaled_writes(config: TrainConfig, reconstruction: Tensor, scale: float | list[float],
                    contexts: int) -> dict[str, Tensor]:
    """A run's (scaled) reconstruction [tokens, layers x width] as raw activations per written site."""
    sites = config.output_sites
    scales = scale if isinstance(scale, list) else [scale]
    parts = reconstruction.float().chunk(len(sites), dim=-1)
    return {site: (part / factor).reshape(contexts, -1, part.shape[-1])
            for site, part, factor in zip(sites, parts, scales)}


def model_step(states: Sequence[RunState], batch: ContextBatch, *, loaded: LoadedModel) -> int:
    """One step of every run on one batch of contexts (scalars left on the device); returns the tokens."""
    config = states[0].config
    weights = config.loss.weights_at(states[0].trainer.step, config.total_steps)
    contexts = batch.input_ids.shape[0]
    activations = states[0].on_device(batch.activations)
    forwards = [state.trainer.forward(*state.scaled_inputs(activations)) for state in states]
    writes: dict[str, Tensor] = {}
    for state, forward in zip(states, forwards):
        writes.update(unscaled_writes(state.config, forward.output.reconstruction, state.scaling.output_scale,
                                      contexts))
    terms = model_terms(loaded, batch, writes, weights, config.loss.downstream_sites)
    shared = weights.kl * terms["kl"] + weights.downstream * terms.get("downstream", terms["kl"].new_zeros(()))
    own = [forward.weighted_loss(weights.mse) for forward in forwards]
    for state in states:
        state.trainer.optimizer.zero_grad(set_to_none=True)
    (torch.stack(own).sum() + shared).backward()  # the shared terms once: their gradient reaches every dictionary
    for state, forward, loss in zip(states, forwards, own):
        forward.output.losses.update({name: value.detach() for name, value in terms.items()})
        forward.output.losses["loss"] = (loss + shared).detach()  # this run's terms and the shared ones
        state.trainer.finish_step(forward, read=False)
        state.record_batch(activations)
    return batch.tokens
