"""The cross-layer transcoder's training step at the default model's shape: sparse against dense forward.

A CLT over all 30 layers of SmolLM2-135M (d 576) with m latents per layer writes each latent to its
own and every later layer, so its decoder holds m x 465 x 576 weights; a dense decode multiplies
every latent by all of them, the sparse one (``CrossLayerTopK``'s bagged ``embedding_bag``) only the k
active latents per layer. This script times one full step (forward, backward, Adam, decoder
normalisation, through ``DictionaryTrainer``) of each on random activations and prints tokens/s, the
dense one on fewer tokens because it is slow. No anchor trains CLTs from a release (circuit-tracer
loads them; sparsify's CLT is on an unreleased branch), so there is nothing to put beside it here.

    .venv/bin/python benchmarks/crosslayer_step.py [--layers 30 --per-layer 1024 --k 16 --tokens 2048]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from saekit.dictionaries import DictionaryConfig, build_dictionary
from saekit.training.schedule import OptimConfig
from saekit.training.trainer import DictionaryTrainer


def step_rate(layers: int, d: int, per_layer: int, k: int, tokens: int, steps: int, sparse: bool,
              autocast: str) -> dict[str, float]:
    torch.manual_seed(0)
    clt = build_dictionary(DictionaryConfig("clt_topk", d * layers, per_layer * layers, d_out=d * layers, k=k,
                                            layers=layers))
    if not sparse:
        clt.uses_sparse_forward = lambda: False  # the dense forward, for comparison
    trainer = DictionaryTrainer(clt, OptimConfig(autocast=autocast, batch_size=tokens), total_steps=steps + 1)
    x, target = torch.randn(tokens, d * layers), torch.randn(tokens, d * layers)
    trainer.train_step(x, target)  # warm-up: allocations, Adam state
    start = time.perf_counter()
    for _ in range(steps):
        trainer.train_step(x, target, read=False)
    trainer.read_pending()
    seconds = (time.perf_counter() - start) / steps
    return {"seconds_per_step": seconds, "tokens_per_second": tokens / seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=30)
    parser.add_argument("--d", type=int, default=576)
    parser.add_argument("--per-layer", type=int, default=1024)
    parser.add_argument("--k", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=2048)
    parser.add_argument("--dense-tokens", type=int, default=128)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--autocast", default="auto")
    parser.add_argument("--out", type=Path, default=None, help="also write the figures as JSON here")
    args = parser.parse_args()
    shape = dict(layers=args.layers, d=args.d, per_layer=args.per_layer, k=args.k, autocast=args.autocast)
    results = {"shape": shape, "threads": torch.get_num_threads(), "torch": torch.__version__}
    for name, sparse, tokens in (("sparse", True, args.tokens), ("dense", False, args.dense_tokens)):
        figures = step_rate(args.layers, args.d, args.per_layer, args.k, tokens, args.steps, sparse, args.autocast)
        results[name] = {"tokens": tokens, **figures}
        print(f"{name:6s} {tokens:5d} tokens/step: {figures['seconds_per_step']:.2f} s/step, "
              f"{figures['tokens_per_second']:,.0f} tokens/s", flush=True)
    print(f"sparse / dense: {results['sparse']['tokens_per_second'] / results['dense']['tokens_per_second']:.1f}x")
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
