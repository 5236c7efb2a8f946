"""What an attribution graph will take, in memory and roughly in time, known before the expensive passes.

``saekit attribute`` allocates, for a prompt of S positions (BOS included) with F latent nodes:

- the clean run (held throughout): every layer's attention pattern (heads x S^2), the logits of every
  position, the replaced layers' latents, and per error layer (every replaced MLP, and every MLP
  ``--freeze-unreplaced-mlps`` freezes: its whole clean output is an error node) its errors and MLP inputs;
- the kept forward pass of ``batch_size`` copies and one backward pass through it: per copy the node
  values and their gradients, the latents' pre-activations, two activations per layer and the transient
  of the one layer being computed. The clean attention patterns (heads x S^2 a layer, 4.5 GB at 2,048
  tokens on SmolLM2-135M) are shared by the copies, not copied per copy (``attribution._shared_pattern_mix``),
  so a small ``--batch-size`` bounds this part: it is linear in the batch and in S;
- the adjacency's rows (host memory, held throughout): only latents and logits have inputs, so only their
  F + logits rows are stored, each over N = F + error layers x S + S + logits nodes: (F + logits) x N
  float32, linear in the prompt and in ``--max-feature-nodes``, never N^2;
- pruning them: three more such float32 arrays at once (the masked, normalised rows turned edge scores,
  their sorted copy and its cumulative share); the ablation check after it needs four float64 copies of
  the F x F latent block (its solve).

Each term is counted in bytes from those shapes (the coefficients were measured on CPU with the
profiler's allocation counts; ``tests/circuits/test_attribution_budget.py`` holds them to it), so the
estimate needs only sizes: a lower bound (no latent nodes) before the clean run, the real one once
the clean run has counted the active latents.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace

import torch

from saekit.circuits.transcoders import TranscoderSet
from saekit.errors import SaekitError
from saekit.memory import gigabytes, largest_fitting, memory_budget
from saekit.models.loading import LoadedModel

FLOAT = 4  # the model and transcoders run in float32 for attribution (load_model_for)
PRUNING_COPIES = 3  # float32 (F + logits) x N arrays pruning holds besides the stored rows (see prune)
PRUNING_PER_NODE = 24  # and its per-node vectors (influence, weights, masks; measured)
ABLATION_COPIES = 4  # float64 F x F arrays of the ablation check's solve: the block, I, I - M, its LU


@dataclass(frozen=True)
class AttributionSizes:
    """The shapes an attribution's memory follows."""

    positions: int  # prompt tokens, BOS included
    features: int  # latent nodes (after --max-feature-nodes)
    logits: int  # target logit nodes
    batch_size: int  # targets per backward pass (--batch-size)
    error_layers: int  # the replaced MLPs and the frozen ones: an error node per position each
    latents: int  # the replaced layers' latents, all layers together
    widest_layer: int  # the most latents of one replaced layer
    model_layers: int
    d_model: int
    d_mlp: int
    heads: int
    vocab: int

    @property
    def nodes(self) -> int:
        return self.features + (self.error_layers + 1) * self.positions + self.logits

    @property
    def targets(self) -> int:
        return self.features + self.logits

    @property
    def copies(self) -> int:
        """Copies of the prompt in the kept forward pass: one per target of a backward pass."""
        return max(1, min(self.batch_size, self.targets))

    @property
    def passes(self) -> int:
        return math.ceil(self.targets / self.batch_size)


def sizes_of(loaded: LoadedModel, transcoders: TranscoderSet, positions: int, features: int, logits: int,
             batch_size: int) -> AttributionSizes:
    """The sizes of one attribution. Every MLP is an error layer: the transcoders replace it, or (a partial set
    is refused unless frozen, ``replacement.check_coverage``) its clean output is frozen into error nodes."""
    adapter = loaded.adapter
    widths = [transcoders.width(layer) for layer in transcoders.layers]
    heads = loaded.adapter.query_heads
    return AttributionSizes(positions, features, logits, batch_size, adapter.n_layers, sum(widths),
                            max(widths), adapter.n_layers, adapter.d_model, adapter.d_mlp, heads,
                            int(adapter.unembedding().weight.shape[0]))


@dataclass(frozen=True)
class AttributionEstimate:
    """Bytes at the peak of each part, and a rough duration (None where the device's rate was not measured)."""

    sizes: AttributionSizes
    clean: int  # the clean run's tensors (device)
    forward: int  # the kept forward pass and one backward pass (device; freed before pruning)
    adjacency: int  # host: the stored rows, (F + logits) x N float32
    pruning: int  # host: pruning's temporaries
    seconds: float | None = None

    @property
    def ablation(self) -> int:
        """Host: the ablation check's float64 copies of the F x F latent block (after pruning, its temporaries
        freed)."""
        return ABLATION_COPIES * 8 * self.sizes.features ** 2

    def peaks(self, device: torch.device | str) -> dict[str, int]:
        """The peak on each memory pool: one pool on the CPU, host and device apart on an accelerator."""
        device = torch.device(device)
        after = max(self.pruning, self.ablation)
        if device.type == "cpu":
            return {"cpu": self.clean + self.adjacency + max(self.forward, after)}
        return {"cpu": self.adjacency + after, str(device): self.clean + self.forward}

    def describe(self, device: torch.device | str) -> str:
        s = self.sizes
        peaks = ", ".join(f"{gigabytes(n)} on {pool}" for pool, n in self.peaks(device).items())
        timing = "" if self.seconds is None else f"; roughly {_duration(self.seconds)}"
        return (f"attribution: {s.positions} tokens, {s.features} latent nodes, {s.nodes} nodes, {s.passes} "
                f"backward passes at batch size {s.copies}; estimated peak {peaks} (adjacency rows "
                f"{gigabytes(self.adjacency)}, pruning {gigabytes(self.pruning)}, forward and backward "
                f"{gigabytes(self.forward)}, clean run {gigabytes(self.clean)}){timing}")


def _duration(seconds: float) -> str:
    if seconds < 1:
        return "under a second"
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min"


def clean_bytes(s: AttributionSizes) -> int:
    """The clean run: patterns, all positions' logits, the embeddings, two norm scales per layer and the
    final one, the replaced layers' latents, and per error layer (frozen ones too) its errors and MLP inputs."""
    per_position = (s.model_layers * s.heads * s.positions + s.vocab + s.d_model + 2 * s.model_layers + 1
                    + s.latents + 2 * s.error_layers * s.d_model)
    return FLOAT * s.positions * per_position


def forward_bytes(s: AttributionSizes) -> int:
    """The kept forward pass of ``copies`` copies and one backward pass through it."""
    # Each layer's clean pattern is applied to all copies at once (attribution._shared_pattern_mix): the
    # backward pass keeps the clean pattern itself, no copy per copy, so no heads x S^2 term here.
    latents = 3 * s.latents + s.widest_layer  # node, gradient, pre-activation; one layer's gradient in flight
    # embedding and error nodes with their gradients; two activations saved per layer; one layer's transient
    residual = s.d_model * (2 * (1 + s.error_layers) + 2 * s.model_layers + 2)
    transient_mlp = 4 * s.d_mlp  # the one layer whose real MLP runs before its output is replaced
    per_copy = s.positions * (latents + residual + transient_mlp) + 3 * s.vocab  # last logits, grad
    effects = 3 * s.nodes  # a pass's rows of direct effects: per kind, their concatenation, the adjacency rows
    return FLOAT * s.copies * (per_copy + effects)


def forward_flops(s: AttributionSizes) -> int:
    """Multiply-adds x 2 of one copy's forward: projections, attention over the prompt, transcoders, last logits."""
    per_layer = 4 * s.d_model ** 2 + 3 * s.d_model * s.d_mlp + 2 * s.positions * s.d_model
    transcoders = 2 * s.latents * s.d_model  # encode and decode
    return 2 * (s.positions * (s.model_layers * per_layer + transcoders) + s.vocab * s.d_model)


def attribution_seconds(s: AttributionSizes, flops_per_second: float) -> float:
    """The kept forward of ``copies`` copies, and each backward pass through it (input gradients only:
    about one forward), at the rate of a matrix product of the same rows."""
    return s.copies * forward_flops(s) * (1 + s.passes) / flops_per_second


def matmul_rate(s: AttributionSizes, device: torch.device | str, seconds: float = 0.05) -> float:
    """FLOP/s of the device on one of the forward's matrix products (copies x positions rows): the
    clean run's own time is no guide, its single-sequence products run many times slower per FLOP."""
    a = torch.randn(s.copies * s.positions, s.d_model, device=device)
    b = torch.randn(s.d_model, s.d_mlp, device=device)
    synchronize = torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)
    a @ b  # warm-up
    synchronize()
    started, runs = time.perf_counter(), 0
    while time.perf_counter() - started < seconds:
        a @ b
        runs += 1
    synchronize()
    return 2 * a.shape[0] * s.d_model * s.d_mlp * runs / (time.perf_counter() - started)


def estimate_attribution(s: AttributionSizes, flops_per_second: float | None = None) -> AttributionEstimate:
    """The memory of every part (and the time, given the device's rate)."""
    adjacency = FLOAT * s.targets * s.nodes  # the latents' and logits' rows, nothing N x N
    seconds = None if flops_per_second is None else attribution_seconds(s, flops_per_second)
    pruning = PRUNING_COPIES * adjacency + PRUNING_PER_NODE * s.nodes
    return AttributionEstimate(s, clean_bytes(s), forward_bytes(s), adjacency, pruning, seconds)


def _over(estimate: AttributionEstimate, budgets: dict[str, int | None], device: torch.device) -> list[str]:
    """The pools whose peak is over their budget."""
    return [pool for pool, peak in estimate.peaks(device).items()
            if budgets.get(pool) is not None and peak > budgets[pool]]


def _halvings(n: int) -> list[int]:
    out = [n]
    while out[-1] > 1:
        out.append(out[-1] // 2)
    return out


def _fits(s: AttributionSizes, budgets: dict[str, int | None], device: torch.device) -> bool:
    return not _over(estimate_attribution(s), budgets, device)


def _fix(s: AttributionSizes, budgets: dict[str, int | None], device: torch.device) -> str | None:
    """The flags that bring it under budget: a smaller batch keeps the whole graph, fewer latents shrink it,
    and a prompt whose graph does not fit even without latents must be shorter (None: not even a one-token
    prompt at batch size 1 fits, one backward pass at a time)."""
    for batch in _halvings(s.batch_size)[1:]:
        if _fits(replace(s, batch_size=batch), budgets, device):
            return f"lower --batch-size to {batch}"
    for batch in _halvings(s.batch_size):
        at_batch = replace(s, batch_size=batch)
        features = largest_fitting(s.features, lambda n, at=at_batch: _fits(replace(at, features=n), budgets, device))
        if features:
            smaller = f" and --batch-size {batch}" if batch < s.batch_size else ""
            return f"set --max-feature-nodes {features}{smaller}"
    positions = largest_fitting(s.positions, lambda n: _fits(replace(s, positions=n, features=0, batch_size=1),
                                                             budgets, device))
    if positions < 2:  # not even BOS and one token: no flag but the budget helps
        return None
    return f"shorten --prompt to at most {positions} tokens (it has {s.positions} with BOS)"


def attribution_budgets(max_memory_gb: float | None, device: torch.device | str,
                        held: int = 0) -> dict[str, int | None]:
    """Per memory pool: ``--max-memory-gb``, or a share of what is free there now plus ``held``, the
    bytes of the estimate already allocated on ``device`` (the clean run, once it has run)."""
    device = torch.device(device)
    pools = ["cpu"] if device.type == "cpu" else ["cpu", str(device)]
    budgets = {pool: memory_budget(max_memory_gb, pool) for pool in pools}
    if max_memory_gb is None and budgets[pools[-1]] is not None:
        budgets[pools[-1]] += held
    return budgets


def check_attribution_memory(estimate: AttributionEstimate, budgets: dict[str, int | None],
                             device: torch.device | str, lower_bound: bool = False) -> None:
    """One line naming the estimate, the budget and the flag that lowers it, if the peak will not fit."""
    device = torch.device(device)
    over = _over(estimate, budgets, device)
    if not over:
        return
    s, pool = estimate.sizes, over[0]
    need = "at least" if lower_bound else "about"
    fix = _fix(s, budgets, device)
    advice = f"{fix}, or raise --max-memory-gb" if fix else \
        "not even a one-token prompt fits at --batch-size 1 (one backward pass at a time): raise --max-memory-gb"
    raise SaekitError(
        f"attribution would need {need} {gigabytes(estimate.peaks(device)[pool])} on {pool} ({s.nodes} nodes: "
        f"{gigabytes(estimate.adjacency)} of adjacency rows for {s.targets} latents and targets "
        f"(--max-feature-nodes) and {gigabytes(max(estimate.pruning, estimate.ablation))} to prune and check them, "
        f"{gigabytes(estimate.forward)} for the passes at --batch-size {s.copies}, {gigabytes(estimate.clean)} for "
        f"the clean run), over the {gigabytes(budgets[pool])} budget; {advice}")


def check_prompt_memory(loaded: LoadedModel, transcoders: TranscoderSet, positions: int, batch_size: int,
                        max_memory_gb: float | None) -> None:
    """Before the clean run: refuse a prompt whose graph would not fit even without latent nodes."""
    sizes = sizes_of(loaded, transcoders, positions, features=0, logits=1, batch_size=batch_size)
    device = loaded.device
    check_attribution_memory(estimate_attribution(sizes), attribution_budgets(max_memory_gb, device), device,
                             lower_bound=True)
