"""Time ``DictionaryTrainer.train_step`` on synthetic activations (no model, no cache).

Default shape: the quickstart's TopK dictionary (d_in 576, width 4608, k 32, batches of 2048 tokens).
Each repeat times ``--steps`` steps after ``--warmup-steps`` untimed ones; the report is the median and
the spread (min..max) of tokens/s over ``--repeats`` repeats. A run by hand, not a test:

    .venv/bin/python benchmarks/step.py                       # fp32
    .venv/bin/python benchmarks/step.py --autocast bfloat16   # mixed precision
    .venv/bin/python benchmarks/step.py --architecture batchtopk --json out.json

Timings on a shared machine move with its load: the load average before and after is printed.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import statistics
import time

import torch

from saekit.dictionaries import DictionaryConfig, build_dictionary
from saekit.training.schedule import OptimConfig
from saekit.training.trainer import DictionaryTrainer


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--architecture", default="topk")
    parser.add_argument("--d-in", type=int, default=576)
    parser.add_argument("--width", type=int, default=4608)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--batch", type=int, default=2048)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per repeat")
    parser.add_argument("--warmup-steps", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--autocast", choices=["bfloat16", "float16"], default=None)
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--json", default=None, help="also write the figures to this file")
    return parser.parse_args()


def build_trainer(args: argparse.Namespace, total_steps: int) -> DictionaryTrainer:
    """A trainer for the requested shape; autocast/compile only where this trainer accepts them."""
    torch.manual_seed(0)
    config = DictionaryConfig(architecture=args.architecture, d_in=args.d_in, width=args.width, k=args.k)
    dictionary = build_dictionary(config).to(args.device)
    optim = OptimConfig(batch_size=args.batch, train_tokens=args.batch * total_steps)
    accepted = inspect.signature(DictionaryTrainer).parameters
    extra: dict = {}
    if args.autocast:
        if "autocast_dtype" not in accepted:
            raise SystemExit("this DictionaryTrainer has no autocast_dtype argument")
        extra["autocast_dtype"] = getattr(torch, args.autocast)
    if args.compile:
        if "compile" not in accepted:
            raise SystemExit("this DictionaryTrainer has no compile argument")
        extra["compile"] = True
    return DictionaryTrainer(dictionary, optim, total_steps, **extra)


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    total = args.warmup_steps + args.repeats * args.steps + 1
    trainer = build_trainer(args, total)
    generator = torch.Generator().manual_seed(1)
    # A few distinct batches of unit mean squared norm, as training runs scale their inputs.
    batches = [torch.randn(args.batch, args.d_in, generator=generator).div_(args.d_in**0.5).to(args.device)
               for _ in range(4)]
    load_before = os.getloadavg()
    step = 0
    for _ in range(args.warmup_steps):
        trainer.train_step(batches[step % 4])
        step += 1
    rates = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        for _ in range(args.steps):
            trainer.train_step(batches[step % 4])
            step += 1
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        rates.append(args.steps * args.batch / (time.perf_counter() - start))
    result = {"architecture": args.architecture, "d_in": args.d_in, "width": args.width, "k": args.k,
              "batch": args.batch, "threads": args.threads, "device": args.device, "autocast": args.autocast,
              "compile": args.compile, "median_tokens_per_s": statistics.median(rates),
              "min_tokens_per_s": min(rates), "max_tokens_per_s": max(rates), "repeats_tokens_per_s": rates,
              "load_before": load_before, "load_after": os.getloadavg()}
    print(f"{args.architecture} d={args.d_in} width={args.width} k={args.k} batch={args.batch} "
          f"autocast={args.autocast} compile={args.compile}: median {result['median_tokens_per_s']:,.0f} tokens/s "
          f"(min {min(rates):,.0f}, max {max(rates):,.0f}); load {load_before[0]:.2f} -> {os.getloadavg()[0]:.2f}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(result, handle, indent=1)


if __name__ == "__main__":
    main()
