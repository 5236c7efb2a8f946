"""Sparse latents for the TopK family: select, differentiate and decode only the active entries.

A TopK forward keeps k of ``width`` latents per token; BatchTopK keeps tokens x k over the whole
batch. Instead of a dense [tokens, width] latent tensor, the forward here keeps the active entries as
flat (row, column, value) triples, grouped by token (rows non-decreasing, ``offsets[t]`` the first
entry of token t), and

- decodes with ``embedding_bag`` (a gather of decoder rows weighted by the values, summed per token),
  whose weight gradient is decoder-shaped and whose value gradient is one dot product per entry;
- gives the selected pre-activations a gradient that reaches the encoder through the active entries
  only (:class:`_SelectedPreactivations`): the encoder's weight gradient, column c =
  sum over entries e of latent c of g_e * (x_e - b_pre), is itself an ``embedding_bag`` over the
  centred inputs, with the entries grouped by latent.

Encoder gradient, sparse (above) against dense (autograd through top-k: the gradient scattered into
[tokens, width], then ``x.T @ grad`` and ``grad @ W_enc.T`` for the centring), measured on the 2-core
CPU this was written on (torch 2.13, fp32, 2 threads; backward only, median of 7):

    tokens  d    width  k     dense    sparse
    2048    576  4608   32    ~180 ms  8 ms
    2048    576  4608   128   ~140 ms  13 ms
    2048    576  4608   512   ~180 ms  53 ms
    2048    576  4608   1152  ~160 ms  144 ms
    2048    576  4608   2304  ~130 ms  475 ms
    256     768  32768  32    ~160 ms  43 ms   (mostly zeroing the [width, d] gradient)
    1024    768  32768  32    ~770 ms  49 ms

The sparse form grows with the active entries, the dense one with tokens x width: they cross near a
quarter of the latents active, far above any useful k, so the TopK family decodes and differentiates
sparsely below that share (``TopKDictionary.SPARSE_MAX_ACTIVE_SHARE``) and densely above it.

The pre-activations themselves are still computed densely (without autograd): choosing the top k
needs all of them. Only the selection and everything after it is sparse.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable


@dataclass(eq=False)
class SparseLatents:
    """The active latents of a batch as flat (row, column, value) triples, grouped by token.

    ``values`` may hold zeros (a selected pre-activation that was negative, after ReLU); they decode
    to nothing and do not count as firing. ``shape`` is the shape the dense latents would have
    (leading token dims..., width); rows index the flattened leading dims.
    """

    values: Tensor  # [n] active values (carry the gradient)
    rows: Tensor  # [n] token of each entry, non-decreasing
    columns: Tensor  # [n] latent of each entry
    offsets: Tensor  # [tokens] index of each token's first entry (embedding_bag's offsets)
    shape: torch.Size

    @property
    def tokens(self) -> int:
        return self.offsets.shape[0]

    @property
    def width(self) -> int:
        return self.shape[-1]

    def dense(self) -> Tensor:
        """The dense latents (differentiable in the values); only for callers that need them."""
        flat = self.values.new_zeros(self.tokens * self.width)
        flat = flat.scatter(0, self.rows * self.width + self.columns, self.values)
        return flat.view(self.shape)

    def firing(self) -> Tensor:
        """Per latent, the number of tokens on which it is positive (long, [width]); no host sync."""
        counts = torch.zeros(self.width, dtype=torch.long, device=self.values.device)
        return counts.index_add_(0, self.columns, (self.values.detach() > 0).long())

    def mean_l0(self) -> Tensor:
        """Mean over tokens of the number of positive latents (a float32 scalar, as the dense mean)."""
        return (self.values.detach() > 0).sum().float() / max(self.tokens, 1)

    def decode(self, weight: Tensor) -> Tensor:
        """sum over a token's entries of value * weight[column], shaped (leading dims..., weight's width).

        ``embedding_bag`` is not autocast on CPU and needs the values in the weight's dtype; decoding in
        the (fp32) weight's dtype also keeps the reconstruction, and so the losses, in fp32.
        """
        decoded = F.embedding_bag(self.columns, weight, self.offsets, mode="sum",
                                  per_sample_weights=self.values.to(weight.dtype))
        return decoded.view(*self.shape[:-1], weight.shape[-1])


def top_k_per_token(pre: Tensor, k: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The k largest pre-activations of each row of ``pre`` [tokens, width]: (selected, rows, columns, offsets).

    ``selected`` holds the raw pre-activations (before ReLU), without gradient.
    """
    tokens = pre.shape[0]
    top, columns = torch.topk(pre, k, dim=-1, sorted=False)
    rows = torch.arange(tokens, device=pre.device).repeat_interleave(k)
    offsets = torch.arange(0, tokens * k, k, device=pre.device)
    return top.reshape(-1), rows, columns.reshape(-1), offsets


def top_k_over_batch(pre: Tensor, count: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The ``count`` largest entries of all of ``pre`` [tokens, width], grouped by token (as above).

    Entries are sorted by flat position so that each token's entries are contiguous (what
    ``embedding_bag``'s offsets need); a token may get none (an empty bag decodes to zero).
    """
    tokens, width = pre.shape
    top, flat = torch.topk(pre.reshape(-1), count, sorted=False)
    flat, order = flat.sort()
    rows = torch.div(flat, width, rounding_mode="floor")
    offsets = torch.searchsorted(rows, torch.arange(tokens, device=pre.device))
    return top[order], rows, flat - rows * width, offsets


def top_k_over_batch_bounded(pre: Tensor, count: int, per_token: int) -> tuple[Tensor, Tensor, Tensor, Tensor] | None:
    """:func:`top_k_over_batch` from each token's ``per_token`` largest entries, or None when that is not enough.

    On the CPU a top-k over one flat row runs on one thread: at 2048 x 4608 entries and 65536 kept it
    measured ~150 ms, against ~45 ms for a per-token top-128 (parallel over tokens) and a top-k of the
    candidates. The result is the same set (ties aside) unless some token had all of its candidates
    kept: it might have had more, so the caller retries with more candidates. The check reads the
    device (free on the CPU, where this is used).
    """
    tokens, width = pre.shape
    candidates, candidate_columns = torch.topk(pre, per_token, dim=-1, sorted=False)
    top, position = torch.topk(candidates.reshape(-1), count, sorted=False)
    rows = torch.div(position, per_token, rounding_mode="floor")
    if torch.bincount(rows, minlength=tokens).max() >= per_token:
        return None
    flat, order = (rows * width + candidate_columns.reshape(-1)[position]).sort()
    rows = torch.div(flat, width, rounding_mode="floor")
    offsets = torch.searchsorted(rows, torch.arange(tokens, device=pre.device))
    return top[order], rows, flat - rows * width, offsets


def selected_preactivations(selected: Tensor, x: Tensor, b_pre: Tensor, W_enc: Tensor, b_enc: Tensor,
                            rows: Tensor, columns: Tensor, offsets: Tensor) -> Tensor:
    """``selected`` (pre-activations at the entries, computed without autograd) with their gradient.

    The value is ``selected`` itself; the gradient is that of (x[row] - b_pre) @ W_enc[:, column] +
    b_enc[column] for each entry, computed from the entries alone (see the module docstring).
    """
    return _SelectedPreactivations.apply(selected, x, b_pre, W_enc, b_enc, rows, columns, offsets)


class _SelectedPreactivations(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, selected: Tensor, x: Tensor, b_pre: Tensor, W_enc: Tensor, b_enc: Tensor,
                rows: Tensor, columns: Tensor, offsets: Tensor) -> Tensor:
        ctx.save_for_backward(x, b_pre, W_enc, rows, columns, offsets)
        ctx.width, ctx.b_enc_dtype = b_enc.shape[0], b_enc.dtype
        return selected.clone()

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        x, b_pre, W_enc, rows, columns, offsets = ctx.saved_tensors
        _, need_x, need_b_pre, need_W_enc, need_b_enc = ctx.needs_input_grad[:5]
        # Under autocast the incoming gradient is in the low precision; the parameters are fp32.
        grad = grad.to(W_enc.dtype)
        grad_b_enc = None
        if need_b_enc or need_b_pre:
            grad_b_enc = torch.zeros(ctx.width, dtype=grad.dtype, device=grad.device).index_add_(0, columns, grad)
        grad_W_enc = None
        if need_W_enc:
            grad_W_enc = _encoder_weight_gradient(grad, x - b_pre, rows, columns, ctx.width).to(W_enc.dtype)
        # d/dx of each entry is the encoder column: per token, the gradient-weighted sum of its columns.
        grad_x = None
        if need_x:
            grad_x = F.embedding_bag(columns, W_enc.t().contiguous(), offsets, mode="sum", per_sample_weights=grad)
            grad_x = grad_x.to(x.dtype)
        # b_pre is subtracted from every token: its gradient is minus the sum of the tokens', which
        # is W_enc times the per-latent gradient sums (no per-token work).
        grad_b_pre = None if not need_b_pre else -(W_enc @ grad_b_enc).to(b_pre.dtype)
        grad_b_enc = None if not need_b_enc else grad_b_enc.to(ctx.b_enc_dtype)
        return None, grad_x, grad_b_pre, grad_W_enc, grad_b_enc, None, None, None


def _encoder_weight_gradient(grad: Tensor, centred: Tensor, rows: Tensor, columns: Tensor, width: int) -> Tensor:
    """[d, width]: column c = sum over entries e with columns[e] = c of grad[e] * centred[rows[e]].

    That is ``embedding_bag`` with the centred inputs as the table and the entries grouped by latent
    (bags = latents, offsets from the sorted columns): no [entries, d] tensor is materialised.
    """
    by_latent, order = columns.sort(stable=True)  # a fixed summation order: runs repeat bit for bit
    starts = torch.searchsorted(by_latent, torch.arange(width, device=columns.device))
    table = centred.to(grad.dtype)
    return F.embedding_bag(rows[order], table, starts, mode="sum", per_sample_weights=grad[order]).t()
