"""This machine's sustained matrix-product rate at a model's shapes (the ceiling a forward is measured against).

What is timed is ``torch.nn.functional.linear(x, W)`` (what ``nn.Linear`` runs) with ``x`` of ``tokens x in``
and ``W`` of ``out x in``, at each matrix of one transformer block (q, k, v, o, the MLP's two or three) and at
the unembedding. The block's products back to back, in the order a forward runs them, give the ceiling a
forward's achieved FLOP/s (:mod:`saekit.models.flops`) is divided by: what the machine's matmul kernels
sustain at exactly these shapes, so the fraction says how much of the forward goes to work that is not a
large matrix product (attention, norms, rotary embeddings, elementwise work, Python). Each figure is the best
of ``repeats`` timings of at least ``seconds`` of back-to-back calls after a warm-up; GFLOP/s = 2 x tokens x in
x out x calls / seconds / 1e9, at torch's current thread count. ``benchmarks/ceiling.py`` prints the table;
the quickstart records the forward's fraction in its ``throughput.json`` and report.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PretrainedConfig

from saekit.models.flops import forward_flops_per_token, is_gated_mlp


@dataclass(frozen=True)
class ModelShapes:
    """The widths a dense decoder's matrix products have (the defaults: SmolLM2-135M)."""

    d: int = 576
    n_heads: int = 9
    n_kv_heads: int = 3
    head_dim: int = 64
    d_ff: int = 1536
    vocab: int = 49152
    gated: bool = True

    def block(self) -> list[tuple[str, int, int]]:
        """(name, in, out) of one block's products, in forward order."""
        q, kv = self.n_heads * self.head_dim, self.n_kv_heads * self.head_dim
        mlp = [("gate", self.d, self.d_ff)] if self.gated else []
        return [("q", self.d, q), ("k", self.d, kv), ("v", self.d, kv), ("o", q, self.d), *mlp,
                ("up", self.d, self.d_ff), ("down", self.d_ff, self.d)]


def shapes_from_config(model_or_config: nn.Module | PretrainedConfig) -> ModelShapes:
    """A Hugging Face model's (or config's) widths (Llama-style names; the MLP's gating from the architecture
    table)."""
    config = model_or_config if isinstance(model_or_config, PretrainedConfig) else model_or_config.config
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    d, n_heads = config.hidden_size, config.num_attention_heads
    d_ff = getattr(config, "intermediate_size", None) or getattr(config, "n_inner", None) or 4 * d  # GPT-2's names
    return ModelShapes(d=d, n_heads=n_heads, n_kv_heads=getattr(config, "num_key_value_heads", None) or n_heads,
                       head_dim=getattr(config, "head_dim", None) or d // n_heads, d_ff=d_ff,
                       vocab=config.vocab_size, gated=is_gated_mlp(config))


def _rate(products: list[tuple[torch.Tensor, torch.Tensor]], seconds: float, repeats: int) -> float:
    """Best GFLOP/s over ``repeats`` timings of at least ``seconds`` each of the products in sequence."""
    flops = sum(2 * x.shape[0] * x.shape[1] * w.shape[0] for x, w in products)
    with torch.inference_mode():
        for x, w in products:  # warm-up: first-call allocations, oneDNN primitive creation
            F.linear(x, w)
        start = time.perf_counter()
        while time.perf_counter() - start < min(seconds, 0.2):
            for x, w in products:
                F.linear(x, w)
        best = 0.0
        for _ in range(repeats):
            start, calls = time.perf_counter(), 0
            while True:
                for x, w in products:
                    F.linear(x, w)
                calls += 1
                elapsed = time.perf_counter() - start
                if elapsed >= seconds:
                    break
            best = max(best, flops * calls / elapsed / 1e9)
    return best


def _products(pairs: list[tuple[int, int]], tokens: int, dtype: torch.dtype,
              generator: torch.Generator) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(torch.randn(tokens, n_in, generator=generator).to(dtype),
             (torch.randn(n_out, n_in, generator=generator) / n_in ** 0.5).to(dtype)) for n_in, n_out in pairs]


def block_rate(shapes: ModelShapes, tokens: int, dtype: str, seconds: float = 0.5, repeats: int = 3) -> float:
    """GFLOP/s of one block's products back to back, in ``dtype``: the ceiling."""
    generator = torch.Generator().manual_seed(0)
    block = _products([(n_in, n_out) for _, n_in, n_out in shapes.block()], tokens, getattr(torch, dtype), generator)
    return _rate(block, seconds, repeats)


def measure_ceiling(shapes: ModelShapes | None = None, tokens: int = 16 * 128,
                    dtypes: tuple[str, ...] = ("float32", "bfloat16"), seconds: float = 1.0,
                    repeats: int = 3) -> dict[str, Any]:
    """{dtype: {"block", "unembedding": GFLOP/s, "shapes": {name: GFLOP/s}}} plus the settings."""
    shapes = shapes or ModelShapes()
    generator = torch.Generator().manual_seed(0)
    result: dict[str, Any] = {"tokens": tokens, "model_shapes": asdict(shapes), "threads": torch.get_num_threads(),
                              "seconds": seconds, "repeats": repeats}
    for name in dtypes:
        dtype = getattr(torch, name)
        block = _products([(n_in, n_out) for _, n_in, n_out in shapes.block()], tokens, dtype, generator)
        result[name] = {"block": _rate(block, seconds, repeats),
                        "unembedding": _rate(_products([(shapes.d, shapes.vocab)], tokens, dtype, generator),
                                             seconds, repeats),
                        "shapes": {label: _rate([pair], seconds / 2, repeats)
                                   for (label, _, _), pair in zip(shapes.block(), block)}}
    return result


def forward_against_ceiling(model: nn.Module, context_length: int, through_layer: int, dtype: str,
                            tokens_per_s: float, tokens: int = 16 * 128, seconds: float = 0.5) -> dict[str, Any]:
    """A forward's achieved GFLOP/s to ``through_layer`` (blocks 0..it, no unembedding) at ``tokens_per_s``, and
    its fraction of the block-product ceiling measured now in ``dtype`` (about ``6 x seconds`` of timing)."""
    flops = forward_flops_per_token(model, context_length, through_layer=through_layer, unembedding=False).total
    achieved = flops * tokens_per_s / 1e9
    ceiling = block_rate(shapes_from_config(model), tokens, dtype, seconds)
    return {"flops_per_token": flops, "gflops_per_s": achieved, "ceiling_gflops_per_s": ceiling,
            "ceiling_fraction": achieved / ceiling if ceiling > 0 else None, "ceiling_dtype": dtype,
            "ceiling_tokens": tokens, "ceiling_threads": torch.get_num_threads(), "through_layer": through_layer,
            "note": "FLOPs of the matrix products of the blocks run (saekit.models.flops); the ceiling is this "
                    "machine's rate on one block's products back to back at the model's shapes "
                    "(saekit.models.ceiling), measured after training"}
