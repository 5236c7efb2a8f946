"""Example contexts per latent, chosen while streaming: top-activating, quantile samples, random negatives.

Three running selections, each keeping k contexts per latent with a top-k merge over batches:

* top: the contexts with the largest max activation;
* sample: a uniform reservoir of the contexts where the latent fires (bottom-k of seeded random keys);
  at the end it is sorted by max activation and split into equal-count quantile groups, from each of
  which the lowest-key (random) entries are kept;
* negative: a uniform reservoir of contexts where it never fires (on the counted tokens).

Per-token activations of kept contexts are stored as float16 while streaming (memory
k * width * context_length, independent of the number of tokens) and returned as a ragged table:
trailing zeros are dropped, values are concatenated, ``offsets`` delimit each example.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

KINDS = ("top", "quantile", "random-negative")
FLOAT16_MAX = 65504.0
BLOCK_ELEMENTS = 1 << 24  # bound on the temporary [candidates, latents, tokens] tensors


@dataclass(frozen=True)
class ExampleConfig:
    """How many examples of each kind are kept per latent."""

    top: int = 16
    sample_reservoir: int = 32  # activating contexts sampled uniformly, then stratified by quantile
    quantile_groups: int = 4
    per_quantile: int = 3
    negatives: int = 4
    seed: int = 0


def collector_bytes(width: int, context_length: int, config: ExampleConfig) -> int:
    """What an :class:`ExampleCollector` holds: per kept entry a score and a maximum (float32) and a context
    row (int64), and for the top and sampled entries the context's per-token values (float16)."""
    entries = config.top + config.sample_reservoir + config.negatives
    valued = config.top + config.sample_reservoir
    return width * (16 * entries + 2 * valued * context_length)


def merge_bytes(width: int, context_length: int, batch: int, config: ExampleConfig) -> int:
    """The temporaries of one :meth:`ExampleCollector.update`, for its largest selection (k entries): the
    merged scores, rows and maxima of k + batch candidates per latent (64 bytes each, measured), and one
    block of the per-token merge (float32 and float16 copies of the batch's values, the candidates, the
    gathered result: 6 bytes per candidate token, measured; at most ``BLOCK_ELEMENTS`` a block)."""
    candidates = max(config.top, config.sample_reservoir) + batch
    columns = min(width, max(1, BLOCK_ELEMENTS // (candidates * max(context_length, 1))))
    return 64 * width * candidates + 6 * columns * context_length * candidates


def table_bytes(width: int, context_length: int, config: ExampleConfig) -> int:
    """An upper bound on building the example table: the finished table twice (its parts, then their
    concatenation), every top and quantile example at full length (float16 values; 27 bytes of metadata
    per example), and one block of the gathered per-token values with the copies and masks of their
    trimming (12 bytes a value, measured)."""
    quantile = config.quantile_groups * min(config.per_quantile, config.sample_reservoir)
    valued = config.top + quantile
    table = width * (27 * (valued + config.negatives) + 2 * valued * context_length)
    rows = valued + config.negatives
    columns = min(width, max(1, BLOCK_ELEMENTS // (rows * max(context_length, 1))))
    return 2 * table + 12 * columns * rows * context_length


class RunningSelection:
    """Per latent, the k contexts with the best scores so far, with their maxima and per-token payloads."""

    def __init__(self, k: int, width: int, context_length: int, keep_tokens: bool) -> None:
        self.k = k
        self.scores = torch.full((k, width), float("-inf"))
        self.contexts = torch.full((k, width), -1, dtype=torch.long)
        self.maxima = torch.zeros(k, width)
        self.tokens = torch.zeros(k, width, context_length, dtype=torch.float16) if keep_tokens else None

    def update(self, scores: Tensor, context_ids: Tensor, maxima: Tensor, activations: Tensor | None) -> None:
        """``scores``/``maxima`` [batch, width]; ``activations`` [batch, seq, width]; -inf scores never enter."""
        batch = scores.shape[0]
        merged = torch.cat([self.scores, scores]).topk(self.k, dim=0)
        pick = merged.indices
        self.scores = merged.values
        ids = torch.cat([self.contexts, context_ids[:, None].expand(batch, scores.shape[1])])
        self.contexts = ids.gather(0, pick)
        self.maxima = torch.cat([self.maxima, maxima]).gather(0, pick)
        if self.tokens is not None and activations is not None:
            self._update_tokens(pick, activations)

    def _update_tokens(self, pick: Tensor, activations: Tensor) -> None:
        changed = (pick >= self.k).any(0).nonzero().squeeze(1)
        length = self.tokens.shape[2]
        block = max(1, BLOCK_ELEMENTS // ((self.k + activations.shape[0]) * length))
        for start in range(0, len(changed), block):
            cols = changed[start:start + block]
            new = activations[:, :, cols].clamp(max=FLOAT16_MAX).half().permute(0, 2, 1)
            candidates = torch.cat([self.tokens[:, cols], new])
            index = pick[:, cols, None].expand(-1, -1, length)
            self.tokens[:, cols] = candidates.gather(0, index)

    @property
    def valid(self) -> Tensor:
        return torch.isfinite(self.scores)


class ExampleCollector:
    """Feeds each batch of latent activations to the three selections."""

    def __init__(self, width: int, context_length: int, config: ExampleConfig | None = None) -> None:
        self.config = config or ExampleConfig()
        self.context_length = context_length
        self.top = RunningSelection(self.config.top, width, context_length, keep_tokens=True)
        self.sample = RunningSelection(self.config.sample_reservoir, width, context_length, keep_tokens=True)
        self.negative = RunningSelection(self.config.negatives, width, context_length, keep_tokens=False)
        self.generator = torch.Generator().manual_seed(self.config.seed)

    def update(self, activations: Tensor, context_ids: Tensor) -> None:
        """``activations`` [batch, seq, width], zero at positions that do not count; ``context_ids`` [batch]."""
        maxima = activations.amax(1).float()
        active = maxima > 0
        keys = torch.rand(maxima.shape, generator=self.generator)
        minus_inf = torch.tensor(float("-inf"))
        self.top.update(torch.where(active, maxima, minus_inf), context_ids, maxima, activations)
        self.sample.update(torch.where(active, -keys, minus_inf), context_ids, maxima, activations)
        self.negative.update(torch.where(active, minus_inf, -keys), context_ids, maxima, None)

    def table(self, latent_ids: Tensor) -> ExampleTable:
        return build_table(self, latent_ids)


@dataclass
class ExampleTable:
    """Examples sorted by (latent, kind, rank); per-token activations ragged in ``values``/``offsets``."""

    latent: Tensor  # [E] int32 latent id
    context: Tensor  # [E] int32 row of the contexts' token-id table
    kind: Tensor  # [E] uint8 index into KINDS
    rank: Tensor  # [E] int16: top: 0 = highest; quantile: order within its group; negatives: 0..
    quantile: Tensor  # [E] int16 quantile group (0 = lowest activations), -1 for other kinds
    max_value: Tensor  # [E] float32 max activation in the context
    max_index: Tensor  # [E] int16 position of that max
    offsets: Tensor  # [E + 1] int64 into values
    values: Tensor  # [sum of lengths] float16 per-token activations, trailing zeros dropped
    latent_offsets: Tensor  # [latents + 1] int64: examples of the i-th analysed latent are rows [o[i], o[i+1])

    def tensors(self) -> dict[str, Tensor]:
        return dict(vars(self))

    @classmethod
    def from_tensors(cls, tensors: dict[str, Tensor]) -> ExampleTable:
        return cls(**{name: tensors[name] for name in cls.__dataclass_fields__})

    def rows(self, position: int) -> range:
        """Rows of the ``position``-th analysed latent."""
        return range(int(self.latent_offsets[position]), int(self.latent_offsets[position + 1]))

    def activations(self, row: int, context_length: int) -> Tensor:
        """Per-token activations of one example, zero-padded back to the context length (float32)."""
        out = torch.zeros(context_length)
        values = self.values[int(self.offsets[row]):int(self.offsets[row + 1])]
        out[:len(values)] = values.float()
        return out


def _quantile_pick(sample: RunningSelection, groups: int, per_group: int) -> tuple[Tensor, Tensor, Tensor]:
    """Reservoir rows [groups*per_group, width] (-1: the group has no entry), their group and rank in it."""
    count = sample.valid.sum(0)  # [width]
    sort_key = torch.where(sample.valid, sample.maxima, torch.tensor(float("inf")))
    order = sort_key.argsort(dim=0, stable=True)  # ascending activation, invalid last
    keys = (-sample.scores).gather(0, order)  # random keys of the sorted entries
    position = torch.arange(sample.k)[:, None]
    per_group = min(per_group, sample.k)
    picks, group_ids = [], []
    for g in range(groups):
        start, stop = (g * count) // groups, ((g + 1) * count) // groups
        in_group = (position >= start) & (position < stop)
        chosen = torch.where(in_group, keys, torch.tensor(float("inf"))).topk(per_group, dim=0, largest=False)
        picks.append(torch.where(torch.isfinite(chosen.values), order.gather(0, chosen.indices), -1))
        group_ids.append(torch.full_like(chosen.indices, g))
    rows = torch.cat(picks)
    ranks = (torch.arange(rows.shape[0]) % per_group)[:, None].expand_as(rows)
    return rows, torch.cat(group_ids), ranks


@dataclass
class _Pick:
    """Which entries of one selection become examples: rows [m, width] (-1 absent), with kind/rank/group."""

    selection: RunningSelection
    rows: Tensor
    kind: int
    rank: Tensor
    quantile: Tensor


def _block_columns(pick: _Pick, cols: slice, length: int) -> dict[str, Tensor]:
    """Columns of the entries of latents ``cols``, laid out [latents, m] (tokens [latents, m, length])."""
    rows = pick.rows[:, cols]
    safe = rows.clamp_min(0)
    selection = pick.selection
    if selection.tokens is not None:
        tokens = selection.tokens[:, cols].gather(0, safe[:, :, None].expand(-1, -1, length)).permute(1, 0, 2)
    else:  # negatives: never fire on counted tokens, so their values are all zero
        tokens = torch.zeros(rows.shape[1], rows.shape[0], length, dtype=torch.float16)
    return {
        "present": (rows >= 0).T, "context": selection.contexts[:, cols].gather(0, safe).T,
        "kind": torch.full_like(rows, pick.kind).T, "rank": pick.rank[:, cols].T,
        "quantile": pick.quantile[:, cols].T, "max_value": selection.maxima[:, cols].gather(0, safe).T,
        "tokens": tokens,
    }


def _ragged(tokens: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Flatten [n, seq] float16 rows without trailing zeros: values, lengths, position of each row's max."""
    nonzero = tokens != 0
    length = tokens.shape[1]
    last = length - nonzero.flip(1).int().argmax(1)
    lengths = torch.where(nonzero.any(1), last, torch.zeros_like(last))
    keep = torch.arange(length)[None, :] < lengths[:, None]
    return tokens[keep], lengths, tokens.float().argmax(1)


def _picks(collector: ExampleCollector) -> list[_Pick]:
    config = collector.config

    def ranked(selection: RunningSelection, kind: int) -> _Pick:
        rank = torch.arange(selection.k)[:, None].expand_as(selection.scores)
        rows = torch.where(selection.valid, rank, -1)
        return _Pick(selection, rows, kind, rank, torch.full_like(rows, -1))

    q_rows, q_groups, q_ranks = _quantile_pick(collector.sample, config.quantile_groups, config.per_quantile)
    return [ranked(collector.top, 0), _Pick(collector.sample, q_rows, 1, q_ranks, q_groups),
            ranked(collector.negative, 2)]


def build_table(collector: ExampleCollector, latent_ids: Tensor) -> ExampleTable:
    """Assemble the ragged example table, a block of latents at a time (bounded temporary memory)."""
    picks = _picks(collector)
    length = collector.context_length
    width = len(latent_ids)
    per_row = sum(p.rows.shape[0] for p in picks) * max(length, 1)
    block = max(1, BLOCK_ELEMENTS // per_row)
    parts: dict[str, list[Tensor]] = {}
    for start in range(0, width, block):
        cols = slice(start, min(start + block, width))
        blocks = [_block_columns(p, cols, length) for p in picks]
        columns = {name: torch.cat([b[name] for b in blocks], dim=1) for name in blocks[0]}
        present = columns.pop("present")
        values, lengths, max_index = _ragged(columns.pop("tokens")[present])
        entries = {name: column[present] for name, column in columns.items()}
        entries.update(values=values, lengths=lengths, max_index=max_index, per_latent=present.sum(1),
                       latent=latent_ids[cols, None].expand_as(present)[present])
        for name, value in entries.items():
            parts.setdefault(name, []).append(value)
    cat = {name: torch.cat(values) for name, values in parts.items()}
    zero = torch.zeros(1, dtype=torch.long)
    return ExampleTable(
        latent=cat["latent"].int(), context=cat["context"].int(), kind=cat["kind"].to(torch.uint8),
        rank=cat["rank"].short(), quantile=cat["quantile"].short(), max_value=cat["max_value"].float(),
        max_index=cat["max_index"].short(), offsets=torch.cat([zero, cat["lengths"].cumsum(0)]),
        values=cat["values"], latent_offsets=torch.cat([zero, cat["per_latent"].cumsum(0)]),
    )
