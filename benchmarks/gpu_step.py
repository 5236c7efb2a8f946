"""saekit's full SAE training step on a GPU, beside the shared anchor harness, in one invocation.

For each shape of the shared harness (``/work/shared/bench/anchor_sae_step.py``; batch 4096):

| shape | d | width | k |
|---|---|---|---|
| small | 768 | 32768 | 32 |
| gemma | 2304 | 65536 | 64 |

this times ``DictionaryTrainer.train_step`` (saekit's whole step: the TopK forward, which is sparse,
with an ``embedding_bag`` decode; the loss; backward; the decoder-gradient projection; the one host
copy of the logged scalars with its NaN check; fused Adam, which the trainer picks on a GPU; the
decoder renormalisation and the firing counters) with bf16 autocast, and also in fp32 unless
``--variants`` says otherwise. The inputs are random activations made on the device (a non-zero
mean, an uneven scale per dimension, then scaled to unit mean squared norm as saekit's runs scale
theirs), 8 distinct batches used in rotation. The timing follows the harness: ``--warmup-steps``
untimed steps, then ``--steps`` timed steps between two ``torch.cuda.synchronize()`` calls
(wall clock; CUDA events too).

Then, in the same invocation, it runs the anchor harness as a subprocess, writing into
``--anchor-dir``, reads its ``results.json`` and prints one table per shape: saekit, sparsify, SAELens
and the plain PyTorch reference in tokens/s, each with saekit's ratio to it.

    python3 benchmarks/gpu_step.py --anchor PATH/anchor_sae_step.py --output $OUT/gpu_step.json \\
        --anchor-dir $OUT/anchors                   # on a GPU machine (see benchmarks/README.md)
    .venv/bin/python benchmarks/gpu_step.py --device cpu --smoke   # tiny shapes: exercises the code only

On a CPU only ``--smoke`` runs (the harness's own tiny shapes; no timing value). The harness needs
``sparsify``, ``sae_lens`` and ``schedulefree`` in the interpreter it runs under (``--anchor-python``;
on a CPU the default is ``benchmarks/.sparsify-venv``'s). On a CPU a missing one skips the harness,
with the reason, unless ``--anchor-partial``; on a GPU it runs anyway, since its plain-PyTorch rows
and floors need none of them, and the libraries it could not import are recorded as failures.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import math
import os
import platform
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from saekit.dictionaries import DictionaryConfig, build_dictionary
from saekit.training.schedule import OptimConfig
from saekit.training.trainer import DictionaryTrainer

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"
ANCHOR_CANDIDATES = (REPO / "shared/bench/anchor_sae_step.py", REPO.parent / "shared/bench/anchor_sae_step.py")
SPARSIFY_PYTHON = BENCH_DIR / ".sparsify-venv" / "bin" / "python"
ANCHOR_MODULES = ("sparsify", "sae_lens", "schedulefree")
POOL = 8  # distinct input batches, used in rotation (as the harness does)


@dataclass(frozen=True)
class Shape:
    d: int
    width: int
    k: int
    batch: int


SHAPES = {"small": Shape(768, 32768, 32, 4096), "gemma": Shape(2304, 65536, 64, 4096)}
# The anchor harness's own --smoke sizes, so that both halves of a smoke run agree.
SMOKE_SHAPES = {"small": Shape(64, 512, 8, 128), "gemma": Shape(96, 1024, 16, 128)}
VARIANTS = {"bf16": torch.bfloat16, "fp32": None}


def log(message: str) -> None:
    print(f"[gpu_step] {message}", flush=True)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def input_pool(shape: Shape, device: torch.device, seed: int = 1234) -> list[torch.Tensor]:
    """POOL random batches shaped like residual-stream activations, scaled to unit mean squared norm."""
    generator = torch.Generator(device=device).manual_seed(seed)
    centre = torch.randn(shape.d, device=device, generator=generator)
    spread = 0.1 + 2 * torch.rand(shape.d, device=device, generator=generator)
    pool = [centre + spread * torch.randn(shape.batch, shape.d, device=device, generator=generator)
            for _ in range(POOL)]
    scale = 1 / torch.cat(pool).pow(2).sum(-1).mean().sqrt()
    return [x.mul_(scale) for x in pool]


def time_saekit(name: str, shape: Shape, variant: str, device: torch.device, warmup: int, steps: int,
                pool: list[torch.Tensor]) -> dict[str, Any]:
    """Tokens/s of ``DictionaryTrainer.train_step`` on a fresh TopK dictionary at ``shape``."""
    total = warmup + steps
    torch.manual_seed(0)
    dictionary = build_dictionary(DictionaryConfig(architecture="topk", d_in=shape.d, width=shape.width,
                                                   k=shape.k)).to(device)
    optim = OptimConfig(batch_size=shape.batch, train_tokens=shape.batch * (total + 1))
    trainer = DictionaryTrainer(dictionary, optim, total + 1, autocast_dtype=VARIANTS[variant])
    fvu = []
    for i in range(warmup):
        fvu.append(trainer.train_step(pool[i % POOL])["fvu"])
    synchronize(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        events = [torch.cuda.Event(enable_timing=True) for _ in range(2)]
        events[0].record()
    start = time.perf_counter()
    for i in range(warmup, total):
        fvu.append(trainer.train_step(pool[i % POOL])["fvu"])
    if device.type == "cuda":
        events[1].record()
    synchronize(device)
    wall = time.perf_counter() - start
    result = {
        "name": f"saekit {variant}" + (" autocast" if VARIANTS[variant] is not None else ""), "shape": name,
        **asdict(shape), "warmup_steps": warmup, "steps": steps, "tokens_per_s": shape.batch * steps / wall,
        "step_ms": wall / steps * 1e3, "fvu_first": fvu[0] if fvu else None, "fvu_last": fvu[-1] if fvu else None,
        "fvu_finite": all(math.isfinite(x) for x in fvu),
        "adam": {key: trainer.optimizer.defaults[key] for key in ("fused", "foreach")},
        "sparse_forward": dictionary.uses_sparse_forward(), "lr": trainer.base_lr,
    }
    if device.type == "cuda":
        result["event_step_ms"] = events[0].elapsed_time(events[1]) / steps
        result["peak_mem_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    log(f"{name:6s} {result['name']:20s} {result['step_ms']:9.3f} ms/step  {result['tokens_per_s']:14,.0f} tokens/s"
        f"  fvu {result['fvu_first']:.3g} -> {result['fvu_last']:.3g}  adam {result['adam']}")
    del trainer, dictionary
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return result


# ---- the anchor harness -------------------------------------------------------------------------
def find_anchor(path: Path | None) -> Path | None:
    if path is not None:
        return path if path.is_file() else None
    return next((p for p in ANCHOR_CANDIDATES if p.is_file()), None)


def missing_modules(python: str) -> list[str] | str:
    """Which of ANCHOR_MODULES ``python`` cannot find (or why it cannot be asked)."""
    script = (f"import importlib.util, json\nnames = {list(ANCHOR_MODULES)!r}\n"
              "print(json.dumps([m for m in names if importlib.util.find_spec(m) is None]))")
    try:
        done = subprocess.run([python, "-c", script], capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as err:
        return f"cannot run {python}: {err}"
    if done.returncode != 0:
        return f"{python} failed: {done.stderr.strip()[-300:]}"
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_anchors(args: argparse.Namespace) -> dict[str, Any]:
    """Run the harness into args.anchor_dir; its env, results and errors, or why it did not run."""
    if args.skip_anchors:
        return {"skipped": "--skip-anchors"}
    anchor = find_anchor(args.anchor)
    if anchor is None:
        where = args.anchor or " or ".join(str(p) for p in ANCHOR_CANDIDATES)
        return {"skipped": f"anchor harness not found at {where} (pass --anchor PATH)"}
    python = args.anchor_python or (str(SPARSIFY_PYTHON) if args.device == "cpu" and SPARSIFY_PYTHON.is_file()
                                    else sys.executable)
    missing = missing_modules(python)
    if isinstance(missing, str):
        return {"skipped": missing, "python": python}
    if missing:
        message = f"{python} lacks {', '.join(missing)}"
        if args.device == "cpu" and not args.anchor_partial:
            return {"skipped": f"{message}: the harness needs {', '.join(ANCHOR_MODULES)} in one interpreter "
                               "(pass --anchor-python, or --anchor-partial to run what it can)", "python": python}
        log(f"WARNING: {message}; the harness records the configurations that need them as failures")
    command = [python, str(anchor), str(args.anchor_dir), "--shapes", ",".join(args.shapes),
               "--deadline", str(args.anchor_deadline)]
    if args.anchor_only:
        command += ["--only", args.anchor_only]
    if args.smoke:
        command.append("--smoke")
    log("$ " + " ".join(command))
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(command, env=env)
    found: dict[str, Any] = {"command": command, "python": python, "missing_modules": missing,
                             "returncode": done.returncode}
    results = args.anchor_dir / "results.json"
    if not results.is_file():
        return {**found, "error": f"the harness exited with status {done.returncode} and wrote no results.json"}
    data = json.loads(results.read_text(encoding="utf-8"))
    return {**found, "results_file": str(results), **data}


# ---- the table ----------------------------------------------------------------------------------
def role(name: str) -> str | None:
    """Which of the brief's columns an anchor result stands for (its default configuration), if any."""
    if name.startswith("sparsify default"):
        return "sparsify" if name.endswith("signum") else None
    if name == "saelens fp32":
        return "SAELens"
    if name == "naive-gather bf16-autocast fusedAdam":
        return "plain"
    return None


def table_rows(saekit: list[dict[str, Any]], anchors: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per implementation and shape; ratio = saekit bf16 autocast tokens/s / the row's tokens/s."""
    rows = []
    results = [r for r in anchors.get("results", []) if isinstance(r, dict) and r.get("tokens_per_s")]
    for shape in dict.fromkeys(r["shape"] for r in saekit):
        ours = next((r for r in saekit if r["shape"] == shape and r["name"].startswith("saekit bf16")), None)
        base = ours["tokens_per_s"] if ours else None
        theirs = [r for r in results if r["shape"] == shape]
        theirs.sort(key=lambda r: (role(r["name"]) is None, r["name"]))
        for r in [*(r for r in saekit if r["shape"] == shape), *theirs]:
            rows.append({"shape": shape, "implementation": r["name"],
                         "stands_for": "saekit" if r["name"].startswith("saekit") else role(r["name"]),
                         "tokens_per_s": r["tokens_per_s"], "step_ms": r["step_ms"],
                         "saekit_bf16_ratio": base / r["tokens_per_s"] if base else None})
    return rows


def print_table(rows: list[dict[str, Any]]) -> None:
    header = ("shape", "implementation", "column", "ms/step", "tokens/s", "saekit bf16 / it")
    lines = [(r["shape"], r["implementation"], r["stands_for"] or "", f"{r['step_ms']:.3f}",
              f"{r['tokens_per_s']:,.0f}", f"{r['saekit_bf16_ratio']:.2f}x" if r["saekit_bf16_ratio"] else "-")
             for r in rows]
    widths = [max(len(str(x)) for x in column) for column in zip(header, *lines)]
    print()
    for line in (header, tuple("-" * w for w in widths), *lines):
        print("  ".join(str(c).ljust(w) if i < 3 else str(c).rjust(w) for i, (c, w) in enumerate(zip(line, widths))))
    print("\ncolumn: the row stands for saekit / sparsify (its default: bf16 autocast on a GPU, SignSGD + "
          "ScheduleFree) / SAELens (its default, fp32) / plain (bf16, gathered decoder, fused Adam); the other rows "
          "are for context")


# ---- main ---------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda",
                        help="cuda (default); cpu only with --smoke")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny shapes and step counts, to exercise the code paths on a CPU (no timing value)")
    parser.add_argument("--shapes", default="small,gemma", help="comma-separated, of: small, gemma (default: both)")
    parser.add_argument("--variants", default="bf16,fp32",
                        help="saekit precisions, of: bf16 (autocast), fp32 (default: both; bf16 is the ratios' base)")
    parser.add_argument("--warmup-steps", type=int, default=None, help="untimed steps (default: 20; --smoke 2)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default: 100; --smoke 3)")
    parser.add_argument("--output", type=Path, default=None,
                        help="JSON file (default: benchmarks/results/gpu-step-<date>.json; --smoke: a temp dir)")
    parser.add_argument("--anchor", type=Path, default=None,
                        help="the anchor harness (default: shared/bench/anchor_sae_step.py in or beside the repo)")
    parser.add_argument("--anchor-dir", type=Path, default=None,
                        help="where the harness writes results.json (default: <output without .json>-anchors)")
    parser.add_argument("--anchor-python", default=None,
                        help="interpreter for the harness (default: this one; on a CPU the sparsify venv's)")
    parser.add_argument("--anchor-deadline", type=float, default=420.0,
                        help="the harness's --deadline in seconds: configurations left after it are skipped")
    parser.add_argument("--anchor-only", default=None, help="the harness's --only (its configuration names)")
    parser.add_argument("--anchor-partial", action="store_true",
                        help="on a CPU, run the harness even if its interpreter lacks one of its libraries")
    parser.add_argument("--skip-anchors", action="store_true", help="time saekit only")
    args = parser.parse_args(argv)
    if (args.device == "cpu") != args.smoke:
        parser.error("--device cpu runs only with --smoke, and --smoke only on the CPU (the harness's smoke mode "
                     "is CPU-only); benchmarks/step.py times saekit's step at CPU-sized shapes")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no CUDA device here")
    args.shapes = [s for s in args.shapes.split(",") if s]
    args.variants = [v for v in args.variants.split(",") if v]
    if not args.shapes or any(s not in SHAPES for s in args.shapes):
        parser.error(f"--shapes: choose from {', '.join(SHAPES)}")
    if not args.variants or any(v not in VARIANTS for v in args.variants):
        parser.error(f"--variants: choose from {', '.join(VARIANTS)}")
    args.warmup_steps = args.warmup_steps if args.warmup_steps is not None else (2 if args.smoke else 20)
    args.steps = args.steps if args.steps is not None else (3 if args.smoke else 100)
    if args.warmup_steps < 0 or args.steps < 1:
        parser.error("--warmup-steps must be >= 0 and --steps >= 1")
    if args.output is None:
        today = datetime.date.today().isoformat()
        if args.smoke:
            import tempfile

            args.output = Path(tempfile.mkdtemp(prefix="saekit-gpu-step-smoke-")) / f"gpu-step-{today}.json"
        else:
            args.output = RESULTS_DIR / f"gpu-step-{today}.json"
    if args.anchor_dir is None:
        args.anchor_dir = args.output.with_name(args.output.stem + "-anchors")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    shapes = SMOKE_SHAPES if args.smoke else SHAPES
    started = datetime.datetime.now()
    env = {"torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version(),
           "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
           "saekit_from": str(Path(sys.modules[DictionaryTrainer.__module__].__file__).parent.parent)}
    log(f"{env}; shapes {args.shapes}, saekit {args.variants}, {args.warmup_steps} warm-up + {args.steps} timed steps")
    if device.type == "cuda":
        torch.set_float32_matmul_precision("highest")  # saekit's fp32 is true fp32; the harness resets to this too
    saekit = []
    for name in args.shapes:
        pool = input_pool(shapes[name], device)
        for variant in args.variants:
            saekit.append(time_saekit(name, shapes[name], variant, device, args.warmup_steps, args.steps, pool))
        del pool
    saekit_seconds = (datetime.datetime.now() - started).total_seconds()
    if device.type == "cuda":
        torch.cuda.empty_cache()

    anchors = run_anchors(args)
    if "skipped" in anchors:
        log(f"anchor harness skipped: {anchors['skipped']}")
    rows = table_rows(saekit, anchors)
    print_table(rows)
    for error in anchors.get("errors", []):
        print(f"  harness: {error.get('cfg')}: {str(error.get('err'))[:160]}")
    result = {
        "date": started.isoformat(timespec="seconds"), "env": env, "smoke": args.smoke,
        "settings": {"shapes": {name: asdict(shapes[name]) for name in args.shapes}, "variants": args.variants,
                     "warmup_steps": args.warmup_steps, "steps": args.steps, "pool": POOL},
        "saekit_seconds": saekit_seconds, "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "table": rows, "saekit": saekit, "anchors": anchors,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    log(f"wrote {args.output}" + (f" (the harness's own figures: {anchors['results_file']})"
                                  if "results_file" in anchors else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
