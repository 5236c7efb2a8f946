"""This machine's sustained matrix-product rate at the default model's shapes, in fp32 and bf16: the ceiling.

``benchmarks/throughput.py`` sets each forward's achieved FLOP/s against it. What is timed is
``torch.nn.functional.linear(x, W)`` (what ``nn.Linear`` runs) with ``x`` of ``tokens x in`` (tokens =
contexts per forward x context length, 16 x 128 = 2048 by default) and ``W`` of ``out x in``, at each
matrix of one transformer block of SmolLM2-135M (d 576, 9 query heads and 3 key/value heads of 64,
d_ff 1536, gated MLP) and at the unembedding (d -> vocabulary 49152):

- ``block``: the block's seven products in the order a forward runs them (q, k, v, o, gate, up, down),
  back to back: the ceiling the throughput benchmark divides by (a forward's products, attention
  included, are set against it);
- ``unembedding``: the logits product alone (large output, bandwidth-bound on writing the logits);
- ``shapes``: each product alone.

Each figure is the best of ``--repeats`` timings of at least ``--seconds`` seconds of back-to-back calls,
after a warm-up; GFLOP/s = 2 x tokens x in x out x calls / seconds / 1e9. Threads: torch's (``--threads``).

Run alone: ``.venv/bin/python benchmarks/ceiling.py`` (prints the table; ``--json FILE`` writes it), or
import :func:`measure_ceiling` / :func:`shapes_from_config`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F


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


def shapes_from_config(config: Any) -> ModelShapes:
    """A Hugging Face config's widths (Llama-style names)."""
    n_heads = config.num_attention_heads
    return ModelShapes(d=config.hidden_size, n_heads=n_heads,
                       n_kv_heads=getattr(config, "num_key_value_heads", None) or n_heads,
                       head_dim=getattr(config, "head_dim", None) or config.hidden_size // n_heads,
                       d_ff=config.intermediate_size, vocab=config.vocab_size,
                       gated=getattr(config, "model_type", "llama") not in ("gpt2", "gpt_neox", "opt"))


def _rate(products: list[tuple[torch.Tensor, torch.Tensor]], seconds: float, repeats: int) -> float:
    """Best GFLOP/s over ``repeats`` timings of at least ``seconds`` each of the products in sequence."""
    flops = sum(2 * x.shape[0] * x.shape[1] * w.shape[0] for x, w in products)
    with torch.inference_mode():
        for x, w in products:  # warm-up: first-call allocations, oneDNN primitive creation
            F.linear(x, w)
        start, calls = time.perf_counter(), 0
        while time.perf_counter() - start < min(seconds, 0.2):
            for x, w in products:
                F.linear(x, w)
            calls += 1
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

        def product(n_in: int, n_out: int, dtype: torch.dtype = dtype) -> tuple[torch.Tensor, torch.Tensor]:
            return (torch.randn(tokens, n_in, generator=generator).to(dtype),
                    (torch.randn(n_out, n_in, generator=generator) / n_in ** 0.5).to(dtype))
        block = [product(n_in, n_out) for _, n_in, n_out in shapes.block()]
        entry = {"block": _rate(block, seconds, repeats),
                 "unembedding": _rate([product(shapes.d, shapes.vocab)], seconds, repeats),
                 "shapes": {label: _rate([pair], seconds / 2, repeats)
                            for (label, _, _), pair in zip(shapes.block(), block)}}
        result[name] = entry
    return result


def print_ceiling(result: dict[str, Any]) -> None:
    """The figures as a small table."""
    dtypes = [key for key in ("float32", "bfloat16", "float16") if key in result]
    print(f"matrix-product ceiling, {result['tokens']} tokens x the model's widths, {result['threads']} threads "
          "(GFLOP/s, best of repeats)")
    names = ["block", "unembedding", *result[dtypes[0]]["shapes"]]
    print("  ".join([f"{'product':<12}", *(f"{d:>10}" for d in dtypes)]))
    for name in names:
        cells = [result[d][name] if name in result[d] else result[d]["shapes"][name] for d in dtypes]
        print("  ".join([f"{name:<12}", *(f"{c:>10,.1f}" for c in cells)]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtypes", default="float32,bfloat16", help="comma-separated (default: float32,bfloat16)")
    parser.add_argument("--contexts", type=int, default=16, help="contexts per forward (default: 16)")
    parser.add_argument("--context-length", type=int, default=128, help="tokens per context (default: 128)")
    parser.add_argument("--seconds", type=float, default=1.0, help="seconds per timing (default: 1)")
    parser.add_argument("--repeats", type=int, default=3, help="timings per figure; the best counts (default: 3)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--shapes", type=str, default=None,
                        help="the model's widths as JSON (ModelShapes fields; default: SmolLM2-135M)")
    parser.add_argument("--json", type=Path, default=None, help="also write the result to this JSON file")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    shapes = ModelShapes(**json.loads(args.shapes)) if args.shapes else ModelShapes()
    result = measure_ceiling(shapes, args.contexts * args.context_length, tuple(args.dtypes.split(",")),
                             args.seconds, args.repeats)
    result["cpu_count"] = os.cpu_count()
    print_ceiling(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
