"""Decoder geometry: each latent's nearest decoder directions by cosine, against a random baseline.

For every decoder row we keep the ``top_k`` largest cosine similarities to the *other* rows with a
blocked matrix product and a running top-k per row, so memory is O(row_block * col_block + rows * k),
never n^2. From these come the max cosine (nearest neighbour), the 10th and 100th largest, and the
nearest-neighbour lists. The baseline draws random unit vectors of the same shape [n, d]; its rows
are i.i.d., so computing it for a subset of rows (against all n) samples the same distribution.
:func:`peak_analysis` asks whether the latents under a histogram peak share one nearest neighbour.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from saekit.errors import SaekitError

RANKS = (1, 10, 100)  # the cosine ranks reported per latent: max, 10th and 100th largest
HISTOGRAM_EDGES = torch.linspace(-1.0, 1.0, 201)  # 0.01-wide bins over every possible cosine


@dataclass
class GeometryConfig:
    """How the nearest-direction search is blocked and how the baseline and peak are chosen."""

    top_k: int = 100  # cosines kept per row (at least the largest rank in RANKS)
    neighbours: int = 10  # nearest-neighbour list length per latent
    row_block: int = 512
    col_block: int = 16_384
    baseline_rows: int | None = 8192  # rows of the random baseline computed (None: all n)
    seed: int = 0
    peak_range: tuple[float, float] | None = None  # None: the modal bin of the max-cos histogram
    peak_tail: float = 0.05  # with no range, bins outside the [tail, 1 - tail] quantiles are ignored


@dataclass
class NearestCosines:
    """For each requested row, its ``k`` largest cosines to other rows (descending) and their row ids."""

    values: Tensor  # [rows, k] float32
    indices: Tensor  # [rows, k] int64

    def rank(self, r: int) -> Tensor:
        """The r-th largest cosine per row (1-based); NaN where fewer than r other rows exist."""
        if r <= self.values.shape[1]:
            return self.values[:, r - 1].clone()
        return torch.full((self.values.shape[0],), float("nan"))


def unit_rows(matrix: Tensor) -> Tensor:
    matrix = matrix.detach().float()
    return matrix / matrix.norm(dim=1, keepdim=True).clamp_min(1e-12)


def random_unit_vectors(n: int, d: int, seed: int) -> Tensor:
    generator = torch.Generator().manual_seed(seed)
    return unit_rows(torch.randn(n, d, generator=generator))


def _merge(values: Tensor, indices: Tensor, new_values: Tensor, new_indices: Tensor, k: int) -> tuple[Tensor, Tensor]:
    if values.shape[1] == 0:
        return new_values, new_indices
    merged_values = torch.cat([values, new_values], dim=1)
    merged_indices = torch.cat([indices, new_indices], dim=1)
    top = merged_values.topk(min(k, merged_values.shape[1]), dim=1)
    return top.values, merged_indices.gather(1, top.indices)


def _row_block_top(unit: Tensor, row_ids: Tensor, k: int, col_block: int) -> tuple[Tensor, Tensor]:
    rows = unit[row_ids]
    values = torch.empty(len(row_ids), 0)
    indices = torch.empty(len(row_ids), 0, dtype=torch.long)
    local = torch.arange(len(row_ids))
    for start in range(0, unit.shape[0], col_block):
        stop = min(start + col_block, unit.shape[0])
        sims = rows @ unit[start:stop].T
        inside = (row_ids >= start) & (row_ids < stop)  # a row never counts itself
        sims[local[inside], row_ids[inside] - start] = float("-inf")
        block = sims.topk(min(k, stop - start), dim=1)
        values, indices = _merge(values, indices, block.values, block.indices + start, k)
    return values, indices


def _symmetric_top(unit: Tensor, k: int, block: int, progress: bool, desc: str) -> NearestCosines:
    """All rows at once using symmetry: each block pair (i <= j) is multiplied once and feeds both sides."""
    n = unit.shape[0]
    values = torch.full((n, k), float("-inf"))
    indices = torch.zeros(n, k, dtype=torch.long)
    starts = range(0, n, block)
    pairs = [(i, j) for i in starts for j in starts if j >= i]

    def update(rows: slice, sims: Tensor, offset: int) -> None:
        top = sims.topk(min(k, sims.shape[1]), dim=1)
        values[rows], indices[rows] = _merge(values[rows], indices[rows], top.values, top.indices + offset, k)

    for i, j in tqdm(pairs, desc=desc, unit="block", disable=not progress):
        sims = unit[i:i + block] @ unit[j:j + block].T
        if i == j:
            sims.fill_diagonal_(float("-inf"))  # a row never counts itself
        update(slice(i, i + block), sims, j)
        if i != j:
            update(slice(j, j + block), sims.T.contiguous(), i)
    return NearestCosines(values, indices)


def nearest_cosines(
    directions: Tensor, rows: Sequence[int] | Tensor | None = None, k: int = 100,
    row_block: int = 512, col_block: int = 16_384, progress: bool = False, desc: str = "decoder geometry",
) -> NearestCosines:
    """The ``k`` largest cosines of each row in ``rows`` (default all) to every other row of ``directions``.

    With all rows requested the symmetric schedule (square blocks of ``col_block // 4``) halves the products.
    """
    n = directions.shape[0]
    if n < 2:
        raise SaekitError(f"decoder geometry needs at least 2 directions, got {n}")
    unit = unit_rows(directions)
    row_ids = torch.arange(n) if rows is None else torch.as_tensor(rows, dtype=torch.long)
    k = min(k, n - 1)
    if torch.equal(row_ids, torch.arange(n)):
        return _symmetric_top(unit, k, max(1, col_block // 4), progress, desc)
    parts = []
    for start in tqdm(range(0, len(row_ids), row_block), desc=desc, unit="block", disable=not progress):
        parts.append(_row_block_top(unit, row_ids[start:start + row_block], k, col_block))
    values = torch.cat([p[0] for p in parts]) if parts else torch.empty(0, k)
    indices = torch.cat([p[1] for p in parts]) if parts else torch.empty(0, k, dtype=torch.long)
    return NearestCosines(values, indices)


def cosine_histogram(values: Tensor) -> list[int]:
    finite = values[torch.isfinite(values)]
    return torch.histogram(finite.clamp(-1.0, 1.0), bins=HISTOGRAM_EDGES).hist.long().tolist()


def _modal_range(max_cos: Tensor, tail: float) -> tuple[float, float]:
    """The edges of the most populated 0.01 bin, ignoring bins outside the [tail, 1-tail] quantiles."""
    finite = max_cos[torch.isfinite(max_cos)].float()
    low, high = torch.quantile(finite, torch.tensor([tail, 1.0 - tail])).tolist()
    counts = torch.histogram(finite.clamp(-1.0, 1.0), bins=HISTOGRAM_EDGES).hist
    centres = (HISTOGRAM_EDGES[:-1] + HISTOGRAM_EDGES[1:]) / 2
    counts[(centres < low) | (centres > high)] = -1
    best = int(counts.argmax())
    return float(HISTOGRAM_EDGES[best]), float(HISTOGRAM_EDGES[best + 1])


def peak_analysis(
    max_cos: Tensor, nearest: Tensor, latent_ids: Tensor, value_range: tuple[float, float] | None = None,
    tail: float = 0.05, top: int = 5,
) -> dict[str, Any]:
    """Do the latents whose max cosine lies in ``value_range`` (default: the modal bin) share a neighbour?"""
    low, high = value_range if value_range is not None else _modal_range(max_cos, tail)
    members = (max_cos >= low) & (max_cos < high)
    result: dict[str, Any] = {
        "range": [low, high], "range_source": "given" if value_range is not None else
        f"modal 0.01 bin of the max-cos histogram within its [{tail}, {1 - tail}] quantiles",
        "latents_in_peak": int(members.sum()),
    }
    if not bool(members.any()):
        return {**result, "most_common_neighbour": None, "share": 0.0, "top_neighbours": []}
    ids, counts = torch.unique(nearest[members], return_counts=True)
    order = counts.argsort(descending=True)[:top]
    total = int(members.sum())
    top_list = [{"latent": int(ids[i]), "count": int(counts[i]), "share": float(counts[i]) / total,
                 "share_of_analysed_latents": float((nearest == ids[i]).sum()) / len(nearest)} for i in order]
    return {**result, "most_common_neighbour": top_list[0]["latent"], "share": top_list[0]["share"],
            "top_neighbours": top_list, "example_members": latent_ids[members][:20].tolist()}


@dataclass
class GeometryResult:
    """Per analysed latent: ranked cosines and neighbours; plus the baseline and the summary."""

    latent_ids: Tensor
    ranked: dict[int, Tensor]  # rank -> [rows] cosine
    neighbour_ids: Tensor  # [rows, neighbours]
    neighbour_cosines: Tensor  # [rows, neighbours]
    summary: dict[str, Any]

    def tensors(self) -> dict[str, Tensor]:
        out = {"latent_ids": self.latent_ids, "neighbour_ids": self.neighbour_ids,
               "neighbour_cosines": self.neighbour_cosines}
        out.update({f"cos_rank_{r}": v for r, v in self.ranked.items()})
        return out


def _rank_summary(nearest: NearestCosines) -> dict[str, Any]:
    out = {}
    for r in RANKS:
        values = nearest.rank(r)
        finite = values[torch.isfinite(values)]
        out[f"rank_{r}"] = {
            "histogram": cosine_histogram(values),
            "mean": float(finite.mean()) if len(finite) else None,
            "median": float(finite.median()) if len(finite) else None,
        }
    return out


def decoder_geometry(
    decoder: Tensor, latent_ids: Tensor | None = None, config: GeometryConfig | None = None, progress: bool = False,
) -> GeometryResult:
    """Nearest decoder directions of ``latent_ids`` (default all) among all rows, and a random baseline."""
    config = config or GeometryConfig()
    n, d = decoder.shape
    latent_ids = torch.arange(n) if latent_ids is None else latent_ids.long()
    k = max(config.top_k, config.neighbours, max(RANKS))
    started = time.perf_counter()
    found = nearest_cosines(decoder, latent_ids, k, config.row_block, config.col_block, progress)
    seconds = time.perf_counter() - started
    baseline_rows = n if config.baseline_rows is None else min(n, config.baseline_rows)
    started = time.perf_counter()
    baseline = nearest_cosines(random_unit_vectors(n, d, config.seed), torch.arange(baseline_rows), k,
                               config.row_block, config.col_block, progress, "random baseline")
    baseline_seconds = time.perf_counter() - started
    max_cos = found.rank(1)
    nearest = found.indices[:, 0]
    summary = {
        "shape": [n, d], "latents_analysed": len(latent_ids), "ranks": list(RANKS),
        "histogram_edges": HISTOGRAM_EDGES.tolist(),
        "decoder": _rank_summary(found),
        "random_baseline": {"rows": baseline_rows, "seed": config.seed, **_rank_summary(baseline),
                            "description": f"{n} random unit vectors in {d} dimensions (Gaussian, normalised); "
                                           f"statistics of {baseline_rows} of their rows against all {n}",
                            "typical_overlap_1_over_sqrt_d": d ** -0.5},
        "peak": peak_analysis(max_cos, nearest, latent_ids, config.peak_range, config.peak_tail),
        "seconds": {"decoder": seconds, "baseline": baseline_seconds},
        "config": asdict(config),
    }
    m = min(config.neighbours, found.indices.shape[1])
    return GeometryResult(latent_ids, {r: found.rank(r) for r in RANKS}, found.indices[:, :m].clone(),
                          found.values[:, :m].clone(), summary)
