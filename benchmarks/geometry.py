"""Decoder geometry at scale: saekit's blocked top-k cosines vs the dense n x n similarity matrix.

For each width n (decoder rows of dimension d, random unit vectors: the cost does not depend on
the values) this measures, each in a fresh subprocess so that peak memory is its own:

* saekit: ``saekit.analysis.geometry.nearest_cosines`` for all rows, top 100 per row (what
  ``saekit analyze`` computes: max, 10th and 100th cosine and the neighbour lists);
* dense: the way it is usually written in notebooks, ``W @ W.T`` then ``topk`` per row, which holds
  the whole n x n float32 matrix (skipped where that matrix alone would not fit in ``--dense-max-gb``).

Both give the same top-100 values; the script checks that on the widths where both run.
Prints a table (seconds and peak resident memory per width) and writes the JSON beside it.

    .venv/bin/python benchmarks/geometry.py                       # widths 4608, 16384, 65536; d = 576
    .venv/bin/python benchmarks/geometry.py --widths 4608 --d 576  # quick check
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

K = 100


def _measure(method: str, n: int, d: int, threads: int) -> dict[str, float]:
    import torch

    from saekit.analysis.geometry import nearest_cosines, random_unit_vectors

    torch.set_num_threads(threads)
    directions = random_unit_vectors(n, d, seed=0)
    started = time.perf_counter()
    if method == "saekit":
        values = nearest_cosines(directions, k=K).values
    else:
        similarity = directions @ directions.T
        similarity.fill_diagonal_(float("-inf"))
        values = similarity.topk(K, dim=1).values
    seconds = time.perf_counter() - started
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"seconds": seconds, "peak_rss_mb": peak_mb, "checksum": float(values[:, [0, 9, 99]].double().sum())}


def _run(method: str, n: int, d: int, threads: int) -> dict[str, float]:
    command = [sys.executable, __file__, "--worker", method, "--widths", str(n), "--d", str(d),
               "--threads", str(threads)]
    out = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--widths", default="4608,16384,65536")
    parser.add_argument("--d", type=int, default=576, help="decoder row dimension (SmolLM2-135M: 576)")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--dense-max-gb", type=float, default=8.0,
                        help="skip the dense method where its n x n float32 matrix exceeds this")
    parser.add_argument("--output", type=Path, default=Path("benchmarks/results/geometry.json"))
    parser.add_argument("--worker", choices=("saekit", "dense"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    widths = [int(w) for w in args.widths.split(",")]
    if args.worker:
        print(json.dumps(_measure(args.worker, widths[0], args.d, args.threads)))
        return 0
    rows = []
    for n in widths:
        row: dict[str, object] = {"width": n, "d": args.d, "saekit": _run("saekit", n, args.d, args.threads)}
        dense_gb = n * n * 4 / 2**30
        row["dense"] = (_run("dense", n, args.d, args.threads) if dense_gb <= args.dense_max_gb
                        else {"skipped": f"the n x n matrix alone needs {dense_gb:.1f} GB"})
        if "checksum" in row["dense"]:
            row["same_result"] = abs(row["dense"]["checksum"] - row["saekit"]["checksum"]) < 1e-3 * n
        rows.append(row)
        print(json.dumps(row), flush=True)
    print(f"\ntop-{K} decoder cosines for every row, d = {args.d}, {args.threads} threads")
    print("| width | saekit s | saekit peak MB | dense s | dense peak MB | same top-100 |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        s, dense = row["saekit"], row["dense"]
        dense_cells = (f"{dense['seconds']:.1f} | {dense['peak_rss_mb']:.0f}" if "seconds" in dense
                       else f"- | {dense['skipped']}")
        print(f"| {row['width']} | {s['seconds']:.1f} | {s['peak_rss_mb']:.0f} | {dense_cells} | "
              f"{row.get('same_result', '-')} |")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps({"threads": args.threads, "k": K, "rows": rows}, indent=2) + "\n")
    print(f"\nwritten: {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
