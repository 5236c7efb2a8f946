"""Bounded loopback load test of ``saekit serve``: N client threads for T seconds of mixed activation, search
and steering requests against a real uvicorn server on 127.0.0.1, every answer checked against saekit's offline
value (encoder activations to 1e-5, clean continuation equal to ``saekit generate``'s at the same seed).

    python benchmarks/serve_load.py RUN [--clients 20] [--seconds 60]

Prints requests, errors, mismatches, p50/p99 latency per kind and the server process's RSS before, during (sampled
every 5 s) and after; ``--json PATH`` also writes them (with the CPU) as JSON. Exits 1 on any error or mismatch.
Loopback only: the server binds 127.0.0.1 on a free port.
"""

from __future__ import annotations

import argparse
import json
import resource
import socket
import statistics
import sys
import threading
import time
from pathlib import Path

import httpx
import torch
import uvicorn
from bench_common import cpu_name

from saekit.evaluation.generation import side_by_side
from saekit.models.hooks import capture
from saekit.serve.app import app_for_runs
from saekit.serve.settings import ServeSettings

PROMPTS = ["The cat sat on the mat.", "In the beginning God created", "def add(a, b): return a + b",
           "Prices rose 3% in 2024."]
QUERIES = ["numbers", "code", "the start of a sentence"]


def rss_mb() -> float:
    """Resident memory of this process (the server runs in it), from /proc, in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def offline(run, prompt: str) -> torch.Tensor:
    ids = run.loaded.prompt_ids(prompt)
    site = run.read_sites[0]
    with torch.no_grad():
        return run.dictionary.encode(capture(run.loaded.adapter, ids[None], [site])[site].float())[0]


class Load:
    """The expected values and the per-kind latencies and failures of one load run."""

    def __init__(self, url: str, run) -> None:
        self.url, self.run = url, run
        self.expected = {p: offline(run, p) for p in PROMPTS}
        self.clean = {seed: side_by_side(run.loaded, [], [PROMPTS[1]], 8, 0.8, seed)[0].clean for seed in range(4)}
        self.latency: dict[str, list[float]] = {"activation": [], "search": [], "steer": []}
        self.errors: list[str] = []
        self.mismatches: list[str] = []
        self.lock = threading.Lock()

    def activation(self, client: httpx.Client, i: int) -> None:
        prompt = PROMPTS[i % len(PROMPTS)]
        body = client.post("/v1/activation/all", json={"prompt": prompt, "selectedSources": [self.run.name],
                                                      "ignoreBos": False, "numResults": 8}).json()
        if not all(torch.allclose(torch.tensor(f["values"]), self.expected[prompt][:, f["index"]], atol=1e-5)
                   for f in body["activations"]):
            self.mismatches.append(f"activation {prompt!r}")

    def search(self, client: httpx.Client, i: int) -> None:
        client.post("/v1/explanation/search", json={"query": QUERIES[i % len(QUERIES)], "numResults": 5}).json()

    def steer(self, client: httpx.Client, i: int) -> None:
        seed = i % 4
        body = client.post("/v1/steer/completion", json={
            "prompt": PROMPTS[1], "types": ["DEFAULT", "STEERED"], "nCompletionTokens": 8, "temperature": 0.8,
            "seed": seed, "features": [{"source": self.run.name, "index": i % self.run.width, "strength": 8.0}]}).json()
        if body["outputs"][0]["output"] != self.clean[seed]:
            self.mismatches.append(f"steer seed {seed}")

    def client_loop(self, deadline: float, offset: int) -> None:
        kinds = ["activation", "activation", "search", "steer"]
        with httpx.Client(base_url=self.url, timeout=120) as client:
            i = offset
            while time.monotonic() < deadline:
                kind = kinds[i % len(kinds)]
                started = time.perf_counter()
                try:
                    getattr(self, kind)(client, i)
                except Exception as err:  # noqa: BLE001 - every failure is counted and reported
                    with self.lock:
                        self.errors.append(f"{kind}: {type(err).__name__}: {err}")
                with self.lock:
                    self.latency[kind].append(time.perf_counter() - started)
                i += 1


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--json", type=Path, default=None, help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    app = app_for_runs([args.run], ServeSettings(max_latents=64, max_new_tokens=64))
    run = next(iter(app.state.saekit.runs.values()))
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    load = Load(f"http://127.0.0.1:{port}", run)
    before = rss_mb()
    deadline = time.monotonic() + args.seconds
    samples: list[float] = []
    sampler = threading.Thread(target=_sample_rss, args=(deadline, samples), daemon=True)
    sampler.start()
    clients = [threading.Thread(target=load.client_loop, args=(deadline, n)) for n in range(args.clients)]
    for client in clients:
        client.start()
    for client in clients:
        client.join()
    after = rss_mb()
    server.should_exit = True
    thread.join(timeout=10)
    print(f"{args.clients} clients, {args.seconds:g} s: {sum(map(len, load.latency.values()))} requests, "
          f"{len(load.errors)} errors, {len(load.mismatches)} mismatched answers")
    for kind, values in load.latency.items():
        if values:
            print(f"  {kind}: {len(values)} requests, p50 {1000 * _percentile(values, 50):.1f} ms, "
                  f"p99 {1000 * _percentile(values, 99):.1f} ms")
    print(f"  server RSS: {before:.0f} MiB before, {after:.0f} MiB after; during: "
          + ", ".join(f"{value:.0f}" for value in samples))
    for line in (load.errors + load.mismatches)[:5]:
        print("  " + line)
    if args.json:
        args.json.write_text(json.dumps({
            "cpu": cpu_name(), "run": str(args.run), "clients": args.clients, "seconds": args.seconds,
            "requests": sum(map(len, load.latency.values())), "errors": load.errors, "mismatches": load.mismatches,
            "latency_ms": {kind: {"requests": len(v), "p50": 1000 * _percentile(v, 50),
                                  "p99": 1000 * _percentile(v, 99)} for kind, v in load.latency.items() if v},
            "rss_mib": {"before": before, "during": samples, "after": after}}, indent=2) + "\n")
    return 1 if load.errors or load.mismatches else 0


def _sample_rss(deadline: float, samples: list[float]) -> None:
    while time.monotonic() < deadline:
        time.sleep(5.0)
        samples.append(rss_mb())



if __name__ == "__main__":
    sys.exit(main())
