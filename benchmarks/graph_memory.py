"""Peak memory and wall time of an attribution graph by prompt length: saekit (the adjacency stored as its
latents' and logits' rows) beside circuit-tracer, on the same per-layer transcoders of every MLP.

For each prompt length (tokens, BOS included; default 128, 256, 512, 1024, 2048) a fresh process builds one
graph: the clean run, ``attribute`` at the stated ``--max-feature-nodes`` and ``--batch-size``, ``prune``
(circuit-tracer's default thresholds) and the graph files (JSON, safetensors, page). Its peak resident memory
is the kernel's (``os.wait4``'s ``ru_maxrss`` of that child: model and transcoders included, hence the
``after load`` column), its times the worker's own. Beside it: the dense N x N float32 matrix the graph would
be (what saekit allocated before it stored rows), the stored rows, and saekit's own estimate of the peak.

circuit-tracer (``scripts/interop/circuit_tracer_graph_worker.py`` in its venv ``scripts/interop/.ct-venv``)
builds its graph of the same token ids, with the same transcoders exported to its format, the same
``max_feature_nodes`` (it picks latents by influence, saekit by activation) and batch size, then prunes and
scores it; its peak RSS is taken the same way. It keeps a dense N x N adjacency and prunes it in N x N
temporaries, so a length whose N x N float32 matrix, six times over, is more than the memory available is
skipped with a printed line (``--ct-force`` runs it anyway). No venv: its column is skipped, with a line.

The prompt: the repository's README.md then ARCHITECTURE.md (repeated as needed), tokenized and cut to each
length. Transcoders: ``--transcoders RUN`` (per-layer runs of every MLP), else trained here as
``scripts/interop/compare_circuit_tracer_graph.py`` trains them (JumpReLU, ``mlp_in -> mlp_out`` of every
layer, ``--train-tokens`` tokens) under ``--work``, reused on the next run.

Writes ``benchmarks/results/graph-memory-DATE[-LABEL].{json,md}``, the CPU named. Usage::

    .venv/bin/python benchmarks/graph_memory.py                      # default model, 128..2048 tokens
    .venv/bin/python benchmarks/graph_memory.py --model tiny --lengths 64,128 --max-feature-nodes 64 \\
        --train-tokens 4096 --label tiny                             # a one-minute check of the script
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts" / "interop"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import cpu_name  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"
CT_DENSE_COPIES = 6  # circuit-tracer's N x N float32 arrays at its peak (adjacency, normalised, edge scores, ...)
PROMPT_FILES = ("README.md", "ARCHITECTURE.md")
GB, MB = 1024 ** 3, 1024 ** 2


def prompt_ids(tokenizer_ids: Any, length: int) -> list[int]:
    """The first ``length`` ids (BOS first) of the repository's README and ARCHITECTURE text, repeated as needed."""
    text = "\n\n".join((REPO / name).read_text(encoding="utf-8") for name in PROMPT_FILES if (REPO / name).is_file())
    ids = tokenizer_ids(text).tolist()
    while len(ids) < length:
        ids = ids + tokenizer_ids(text).tolist()[1:]  # the BOS once, at the start
    return ids[:length]


def memory_available() -> int:
    """Bytes the kernel says are available now (MemAvailable)."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 0


def peak_rss_so_far() -> int:
    """This process's peak resident set so far, in bytes (Linux reports kilobytes)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def run_child(command: list[str], env: dict[str, str] | None = None) -> tuple[int, int, float]:
    """(exit status, the child's peak RSS in bytes, wall seconds) of one command, its output passed through."""
    started = time.perf_counter()
    child = subprocess.Popen(command, env=env)
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    return child.returncode, usage.ru_maxrss * 1024, time.perf_counter() - started


# ---- the saekit worker: one length, one process ---------------------------------------------------------------

def saekit_worker(settings: dict[str, Any], out: Path) -> None:
    """Build, prune and write one graph; record sizes, times and the estimate to ``out`` (JSON)."""
    import torch

    torch.set_num_threads(settings["threads"])
    from saekit.circuits.attribution import AttributionConfig, attribute
    from saekit.circuits.budget import estimate_attribution, sizes_of
    from saekit.circuits.graph import prune
    from saekit.circuits.graph_files import write_graph_files
    from saekit.circuits.replacement import ReplacementModel
    from saekit.circuits.transcoders import load_model_for, load_transcoders
    from saekit.errors import SaekitError

    started = time.perf_counter()
    transcoders = load_transcoders(settings["transcoders"])
    loaded = load_model_for(transcoders)
    ids = torch.tensor(prompt_ids(loaded.prompt_ids, settings["length"]))
    record: dict[str, Any] = {"tokens": len(ids), "input_ids": ids.tolist(),
                              "seconds_load": time.perf_counter() - started, "rss_after_load": peak_rss_so_far()}
    config = AttributionConfig(max_logits=settings["max_logits"], logit_probability=settings["logit_probability"],
                               batch_size=settings["batch_size"], max_feature_nodes=settings["max_feature_nodes"],
                               progress=False, max_memory_gb=settings["max_memory_gb"])
    try:
        started = time.perf_counter()
        replacement = ReplacementModel(loaded, transcoders, ids)
        record["seconds_clean"] = time.perf_counter() - started
        started = time.perf_counter()
        graph = attribute(replacement, loaded.tokenizer.decode(ids[1:].tolist()), config, settings["transcoders"])
        record["seconds_attribute"] = time.perf_counter() - started
        del replacement
        started = time.perf_counter()
        pruned = prune(graph, settings["node_threshold"], settings["edge_threshold"])
        record["seconds_prune"] = time.perf_counter() - started
        started = time.perf_counter()
        with tempfile.TemporaryDirectory() as directory:
            write_graph_files(graph, pruned, directory, "bench")
        record["seconds_files"] = time.perf_counter() - started
    except SaekitError as err:  # saekit's own memory check refused: the record says so
        record["refused"] = str(err)
        out.write_text(json.dumps(record) + "\n")
        return
    estimate = estimate_attribution(sizes_of(loaded, transcoders, len(ids), graph.n_features, graph.n_logits,
                                             settings["batch_size"]))
    record.update({
        "nodes": graph.n_nodes, "latents": graph.n_features, "logits": graph.n_logits, "error_nodes": graph.n_errors,
        "rows_bytes": graph.rows.numel() * graph.rows.element_size(), "dense_bytes": 4 * graph.n_nodes ** 2,
        "estimate_peak_bytes": estimate.peaks("cpu")["cpu"], "estimate_forward_bytes": estimate.forward,
        "estimate_clean_bytes": estimate.clean, "kept_nodes": int(pruned.node_mask.sum()),
        "kept_edges": int(pruned.edge_mask.sum()), "scores": graph.settings["scores"],
        "rss_worker_peak": peak_rss_so_far()})
    out.write_text(json.dumps(record) + "\n")


# ---- the parent ---------------------------------------------------------------------------------------------

def model_and_transcoders(args: argparse.Namespace, work: Path) -> tuple[Path, Path, bool]:
    """The model directory, the transcoder runs (trained here unless given) and whether they were given."""
    from compare_circuit_tracer_graph import make_tiny_model, train_transcoders
    from model_export import export_default_model

    if args.model == "tiny":
        model_dir = make_tiny_model(work / "model", layers=2, hidden=32)  # exactly the tests' tiny model
    elif args.model == "default":
        model_dir = export_default_model(Path("/tmp/ctg/smollm2"))  # shared with compare_circuit_tracer_graph.py
    else:
        model_dir = Path(args.model)
    if args.transcoders is not None:
        return model_dir, args.transcoders, True
    return model_dir, train_transcoders(model_dir, work / "runs", args), False


def circuit_tracer(args: argparse.Namespace, model_dir: Path, run: Path, work: Path) -> tuple[Path, Path] | None:
    """circuit-tracer's interpreter and the transcoders exported to its format; None (a line printed) without
    its venv."""
    if args.skip_ct:
        print("circuit-tracer: skipped (--skip-ct)", flush=True)
        return None
    if not args.ct_python.exists():
        print(f"circuit-tracer: skipped, no venv at {args.ct_python.parent.parent} (make it as "
              "scripts/interop/compare_circuit_tracer_graph.py's docstring says)", flush=True)
        return None
    from compare_circuit_tracer_graph import ct_python, export_transcoders

    from saekit.circuits.transcoders import load_transcoders

    ct_dir = work / "ct" / "saekit-tc"
    if not ct_dir.is_dir():  # written whole or not at all: one there is complete
        export_transcoders(load_transcoders(run), str(model_dir), ct_dir)
    return ct_python(args.ct_python, work), ct_dir


def run_saekit(args: argparse.Namespace, run: Path, length: int, work: Path) -> dict[str, Any]:
    """One length in a fresh saekit process: its record and its peak RSS."""
    settings = {"transcoders": str(run), "length": length, "threads": args.threads, "batch_size": args.batch_size,
                "max_feature_nodes": args.max_feature_nodes, "max_logits": args.max_logits,
                "logit_probability": args.logit_probability, "node_threshold": args.node_threshold,
                "edge_threshold": args.edge_threshold, "max_memory_gb": args.max_memory_gb}
    out = work / f"saekit-{length}.json"
    out.unlink(missing_ok=True)
    status, peak, wall = run_child([sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(settings),
                                    "--worker-out", str(out)])
    record = json.loads(out.read_text()) if out.is_file() else {}
    record.update({"status": status, "peak_rss": peak, "wall_seconds": wall})
    return record


def run_ct(args: argparse.Namespace, ct: tuple[Path, Path], model_dir: Path, ids: list[int], nodes: int | None,
           work: Path) -> dict[str, Any]:
    """circuit-tracer's graph of the same ids in its venv: its peak RSS and times, or why it was skipped."""
    from compare_circuit_tracer_graph import WORKER

    need = CT_DENSE_COPIES * 4 * nodes ** 2 if nodes else 0
    if need > memory_available() and not args.ct_force:
        line = (f"skipped: its dense {nodes} x {nodes} float32 adjacency and pruning (~{need / GB:.1f} GB) are more "
                f"than the {memory_available() / GB:.1f} GB available (--ct-force runs it)")
        print(f"circuit-tracer at {len(ids)} tokens: {line}", flush=True)
        return {"skipped": line}
    python, ct_dir = ct
    out = work / f"ct-{len(ids)}"
    out.mkdir(parents=True, exist_ok=True)
    settings = {"input_ids": ids, "max_n_logits": args.max_logits, "desired_logit_prob": args.logit_probability,
                "batch_size": args.ct_batch_size or args.batch_size, "max_feature_nodes": args.max_feature_nodes,
                "node_threshold": args.node_threshold, "edge_threshold": args.edge_threshold}
    (out / "input.json").write_text(json.dumps(settings) + "\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONWARNINGS": "ignore"}
    command = [str(python), str(WORKER), "--model", str(model_dir), "--transcoders", str(ct_dir),
               "--input", str(out / "input.json"), "--out", str(out), "--threads", str(args.threads)]
    status, peak, wall = run_child(command, env)
    record: dict[str, Any] = {"status": status, "peak_rss": peak, "wall_seconds": wall}
    if status == 0 and (out / "graph.json").is_file():
        info = json.loads((out / "graph.json").read_text())
        record.update({key: info.get(key) for key in ("seconds_build", "seconds_attribute", "n_active_features",
                                                      "adjacency_shape", "scores", "versions")})
    (out / "graph.safetensors").unlink(missing_ok=True)  # its dense matrices: gigabytes of disk at length
    return record


def _mb(n: float | None) -> str:
    return "-" if n is None else f"{n / MB:,.1f}"


def _seconds(n: float | None) -> str:
    return "-" if n is None else f"{n:.1f}"


def markdown(result: dict[str, Any]) -> str:
    """The table: per length, saekit's sizes, peak and times beside circuit-tracer's."""
    setup = result["setup"]
    lines = [f"# Attribution graph memory by prompt length ({setup['date']})", "",
             f"Machine: {setup['cpu']}, {setup['cpus']} CPUs, {setup['threads']} threads, torch {setup['torch']}. "
             f"Model `{setup['model']}` ({setup['n_layers']} layers), per-layer transcoders of every MLP "
             f"`{setup['transcoders']}` (width {setup['width']}"
             + (f", trained on {setup['train_tokens']} tokens" if setup.get("train_tokens") else "") + "). "
             f"`--max-feature-nodes {setup['max_feature_nodes']}`, `--batch-size {setup['batch_size']}` "
             f"(circuit-tracer batch size {setup['ct_batch_size']}), at most {setup['max_logits']} logits. "
             "Peak RSS: the kernel's maximum resident set of the process that built the graph (model and "
             "transcoders included; saekit's after loading them in its own column). Dense N x N: the float32 "
             "matrix saekit held before it stored rows; rows: what it stores now.", "",
             f"Command: `{setup['command']}`", "",
             "| tokens | nodes | latents | dense N x N MiB | rows MiB | saekit estimate (beyond the model) MiB | "
             "saekit after load MiB | saekit peak RSS MiB | saekit attribute s | prune s | files s | "
             "circuit-tracer peak RSS MiB | circuit-tracer attribute s |",
             "|" + "---|" * 13]
    for row in result["lengths"]:
        s, c = row["saekit"], row.get("circuit_tracer") or {}
        if s.get("refused") or s.get("status"):
            saekit_cells = [f"refused: {s['refused']}" if s.get("refused") else f"failed (exit {s.get('status')})"]
            saekit_cells += ["-"] * 9
        else:
            saekit_cells = [str(s["nodes"]), str(s["latents"]), _mb(s["dense_bytes"]), _mb(s["rows_bytes"]),
                            _mb(s["estimate_peak_bytes"]), _mb(s["rss_after_load"]), _mb(s["peak_rss"]),
                            _seconds(s["seconds_attribute"]), _seconds(s["seconds_prune"]),
                            _seconds(s["seconds_files"])]
        if not c:
            ct_cells = ["not run", "-"]
        elif c.get("skipped"):
            ct_cells = ["skipped", "-"]
        elif c.get("status"):
            ct_cells = [f"failed (exit {c['status']}, peak {_mb(c['peak_rss'])})", "-"]
        else:
            ct_cells = [_mb(c["peak_rss"]), _seconds(c.get("seconds_attribute"))]
        lines.append("| " + " | ".join([str(row["tokens"]), *saekit_cells, *ct_cells]) + " |")
    notes = [n for n in result.get("notes", []) if n]
    if notes:
        lines += ["", *[f"- {note}" for note in notes]]
    return "\n".join(lines) + "\n"


def main() -> None:
    """Parse arguments; per length a saekit process and a circuit-tracer one; write the results."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="default", help="default, tiny (the tests' tiny model), or a local HF "
                        "Llama directory")
    parser.add_argument("--lengths", default="128,256,512,1024,2048", help="prompt lengths in tokens, BOS included")
    parser.add_argument("--transcoders", type=Path, default=None, help="per-layer transcoder runs of every MLP "
                        "(default: train them under --work)")
    parser.add_argument("--max-feature-nodes", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=4, help="saekit's targets per backward pass")
    parser.add_argument("--ct-batch-size", type=int, default=None, help="circuit-tracer's (default: --batch-size)")
    parser.add_argument("--max-logits", type=int, default=10)
    parser.add_argument("--logit-probability", type=float, default=0.95)
    parser.add_argument("--node-threshold", type=float, default=0.8)
    parser.add_argument("--edge-threshold", type=float, default=0.98)
    parser.add_argument("--max-memory-gb", type=float, default=None, help="saekit's budget (default: 90%% free)")
    parser.add_argument("--train-tokens", type=int, default=16384, help="tokens per transcoder when training")
    parser.add_argument("--train-batch-size", type=int, default=256)
    parser.add_argument("--context-length", type=int, default=128)
    parser.add_argument("--expansion-factor", type=int, default=2)
    parser.add_argument("--train-arg", action="append", default=[], help="extra `saekit train` argument (repeat)")
    parser.add_argument("--ct-python", type=Path, default=REPO / "scripts" / "interop" / ".ct-venv" / "bin" / "python")
    parser.add_argument("--skip-ct", action="store_true", help="saekit only")
    parser.add_argument("--ct-force", action="store_true", help="run circuit-tracer even where it will not fit")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--work", type=Path, default=None, help="work directory (default /tmp/graph-memory/MODEL)")
    parser.add_argument("--label", default=None, help="results name: graph-memory-DATE-LABEL.{json,md}")
    parser.add_argument("--no-write", action="store_true", help="print the table only")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--worker-out", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        saekit_worker(json.loads(args.worker), args.worker_out)
        return
    lengths = [int(n) for n in args.lengths.split(",") if n.strip()]
    work = args.work or Path("/tmp/graph-memory") / (args.model if args.model in ("tiny", "default")
                                                     else Path(args.model).name)
    work.mkdir(parents=True, exist_ok=True)
    import torch

    started = time.perf_counter()
    model_dir, run, given = model_and_transcoders(args, work)
    seconds_setup = time.perf_counter() - started
    ct = circuit_tracer(args, model_dir, run, work)
    rows = []
    for length in lengths:
        print(f"saekit at {length} tokens ...", flush=True)
        saekit = run_saekit(args, run, length, work)
        print(f"  peak RSS {_mb(saekit['peak_rss'])} MiB, {saekit['wall_seconds']:.1f} s"
              + (f"; refused: {saekit['refused']}" if saekit.get("refused") else ""), flush=True)
        row: dict[str, Any] = {"tokens": length, "saekit": {k: v for k, v in saekit.items() if k != "input_ids"}}
        if ct is not None and saekit.get("input_ids"):
            print(f"circuit-tracer at {length} tokens ...", flush=True)
            row["circuit_tracer"] = run_ct(args, ct, model_dir, saekit["input_ids"], saekit.get("nodes"), work)
        rows.append(row)
    from saekit.circuits.transcoders import load_transcoders
    from saekit.training.config import load_run_config

    transcoders = load_transcoders(run)
    run_dirs = sorted(d for d in Path(run).iterdir() if (d / "dictionary").is_dir())
    date = datetime.date.today().isoformat()
    result = {
        "setup": {"date": date, "cpu": cpu_name(), "cpus": os.cpu_count(), "threads": args.threads,
                  "host": f"{platform.machine()} {platform.system()}", "torch": torch.__version__,
                  "model": str(model_dir), "n_layers": len(transcoders.layers), "transcoders": str(run),
                  "transcoders_given": given, "width": transcoders.width(transcoders.layers[0]),
                  "train_tokens": load_run_config(run_dirs[0]).optim.train_tokens if run_dirs else None,
                  "max_feature_nodes": args.max_feature_nodes, "batch_size": args.batch_size,
                  "ct_batch_size": args.ct_batch_size or args.batch_size, "max_logits": args.max_logits,
                  "seconds_setup": seconds_setup,
                  "command": shlex.join([".venv/bin/python", "benchmarks/graph_memory.py", *sys.argv[1:]])},
        "lengths": rows,
        "notes": [None if ct is not None else "circuit-tracer not run (no venv, or --skip-ct)"],
    }
    table = markdown(result)
    print(table)
    if not args.no_write:
        RESULTS.mkdir(parents=True, exist_ok=True)
        name = f"graph-memory-{date}" + (f"-{args.label}" if args.label else "")
        (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
        (RESULTS / f"{name}.md").write_text(table)
        print(f"wrote {RESULTS / name}.json and .md")


if __name__ == "__main__":
    main()
