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

Run alone: ``.venv/bin/python benchmarks/ceiling.py`` (prints the table; ``--json FILE`` writes it). The
measurement itself is ``saekit.models.ceiling`` (the quickstart records its forward against it too).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

import torch

from saekit.models.ceiling import ModelShapes, measure_ceiling


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
