"""Where the splice hurts: per-token increases in next-token loss, by token and with their contexts."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from saekit.render import markdown_inline, markdown_table


@dataclass(frozen=True)
class TokenDamageRow:
    """One predicted token: how often it was predicted and its NLL increase, mean and total (nats)."""

    token: str
    token_id: int
    count: int
    mean_delta_nats: float
    total_delta_nats: float


@dataclass(frozen=True)
class WorstPosition:
    """One of the single worst predictions: its NLL increase, the text before it, and the token."""

    delta_nats: float
    context: str
    token: str


@dataclass(frozen=True)
class TokenDamage:
    """Where the splice hurts (:func:`token_damage`); its fields, in order, are the keys of ``token_damage`` in
    ``metrics.json``."""

    tokens_by_mean_increase: tuple[TokenDamageRow, ...]
    tokens_by_total_increase: tuple[TokenDamageRow, ...]
    worst_positions: tuple[WorstPosition, ...]
    note: str


def _text(tokenizer: Any, ids: Tensor) -> str:
    return tokenizer.decode(ids.tolist(), skip_special_tokens=True)


def token_damage(contexts: Tensor, delta: Tensor, tokenizer: Any, top: int = 15, min_count: int = 3,
                 window: int = 12) -> TokenDamage:
    """Aggregate ``delta`` ([contexts, seq-2], NLL increase predicting token t+2) by predicted token.

    Returns the tokens with the largest mean increase (seen at least ``min_count`` times), the
    tokens contributing most to the total increase, and the single worst positions with the text
    that preceded them.
    """
    targets = contexts[:, 2:].reshape(-1)
    flat = delta.reshape(-1).double()
    vocab = int(targets.max()) + 1
    total = torch.zeros(vocab, dtype=torch.float64).index_add_(0, targets, flat)
    count = torch.zeros(vocab, dtype=torch.float64).index_add_(0, targets, torch.ones_like(flat))
    mean = torch.where(count >= min_count, total / count.clamp_min(1), torch.full_like(total, -float("inf")))

    def rows(order: Tensor) -> tuple[TokenDamageRow, ...]:
        return tuple(TokenDamageRow(token=tokenizer.decode([int(t)]), token_id=int(t), count=int(count[t]),
                                    mean_delta_nats=float(total[t] / count[t]), total_delta_nats=float(total[t]))
                     for t in order if count[t] > 0)

    worst = []
    for flat_index in flat.topk(min(top, flat.numel())).indices.tolist():
        row, column = divmod(flat_index, delta.shape[1])
        position = column + 2  # the predicted token's position in the context
        worst.append(WorstPosition(delta_nats=float(flat[flat_index]),
                                   context=_text(tokenizer, contexts[row, max(1, position - window):position]),
                                   token=tokenizer.decode([int(contexts[row, position])])))
    return TokenDamage(
        tokens_by_mean_increase=rows(mean.topk(min(top, vocab)).indices),
        tokens_by_total_increase=rows(total.topk(min(top, vocab)).indices),
        worst_positions=tuple(worst),
        note=f"delta = NLL(spliced) - NLL(clean) of the actual next token; tokens seen >= {min_count} times",
    )


def damage_markdown(damage: TokenDamage, rows: int = 8) -> str:
    """The tokens hurt most in total, and the worst single predictions with their contexts.

    Tokens and contexts are corpus text: shown through ``repr`` (whitespace visible) and escaped by
    :mod:`saekit.render`, so markup in the corpus stays text in the report.
    """
    table = markdown_table(
        ["token", "count", "mean ΔNLL", "total ΔNLL"],
        [(repr(r.token), r.count, f"{r.mean_delta_nats:.3f}", f"{r.total_delta_nats:.2f}")
         for r in damage.tokens_by_total_increase[:rows]])
    lines = [table, "", "Worst single predictions (context → token):", ""]
    lines += [f"- {w.delta_nats:+.2f} nats: …{markdown_inline(repr(w.context))} → {markdown_inline(repr(w.token))}"
              for w in damage.worst_positions[:rows]]
    return "\n".join(lines)
