"""Throughput of saekit's default recipe on this CPU, side by side with SAELens and sparsify, against the ceiling.

One run prints one table (the CPU named) with these sections; ``benchmarks/README.md`` says exactly what
each row times:

1. activations fp32 / bf16 (the default model, SmolLM2-135M-Instruct; contexts of 128 tokens from the
   default corpus, 16 per forward): saekit's hooked ``capture`` to ``blocks.14.resid_post`` and its
   ``ActivationSource.chunk``; SAELens's ``HookedProxyLM`` and (fp32) ``HookedTransformer``
   ``run_with_cache(..., stop_at_layer=15)``; sparsify's own forward (its ``Trainer`` runs the whole base
   model with a hook on the layer). Plus, unless ``--skip-all-layers``, one pass reading all 30 layers.
2. saekit's forward variants, each against a base in the same section: eager attention, ``torch.compile``
   of the decoder blocks, 8 / 32 contexts per forward, one thread fewer.
3. the model-in-the-loop KL step (``saekit.training.model_loop``) and an ``mse`` step with its forward,
   against their arithmetic floors.
4. SAE training steps on cached activations: saekit fp32 and bf16 autocast, SAELens, sparsify.

Each forward's achieved GFLOP/s (``saekit.models.flops``, the blocks it actually runs) is set against this
machine's matmul ceiling at the model's shapes (``benchmarks/ceiling.py``, run in its own process).

Fairness. Inside one process, saekit's hooked capture, a HookedProxyLM-style forward (``model(ids)`` with a
stopping hook, ``use_cache`` default), the same with ``use_cache=False``, and capture under
``torch.inference_mode`` all run at the same rate (about 1,050 tokens/s to block 14, fp32, 16 x 128 contexts,
AMD EPYC, 2 threads), and ``ActivationSource.chunk`` runs at the rate of bare capture on the same contexts.
So the 0.78x "gap" to ``HookedProxyLM`` that earlier versions of this script reported is not in saekit's
forward path: it came from measuring saekit in this (long-lived, busy) process and SAELens afterwards in a
fresh worker, each library's repeats back to back. Now every timed configuration ("arm") runs in a fresh
worker process with the same harness (the same contexts handed over as safetensors, the same batches, the
same thread count, the same exported model directory, one warm-up forward), the arms of a section are
started one after the other and their repeats interleaved with the order rotated each repeat (A B C,
B C A, ...), and the table gives the median and the min-max of the repeats.

SAELens and sparsify live in their own venvs, ``benchmarks/.saelens-venv`` and
``benchmarks/.sparsify-venv`` (git-ignored), built by ``--setup`` the same way: ``pip install
torch==<pin>`` first (after a dry run that stops if pip would fetch a CUDA build), then ``pip install
-c benchmarks/constraints.txt sae-lens`` (or ``eai-sparsify``), so the pinned CPU torch is kept. Every
process reads only safetensors and JSON (no pickle).

Run it from the repository root with saekit's venv (it is not part of the tests or CI):

    .venv/bin/python benchmarks/throughput.py --setup      # first time: builds both venvs
    .venv/bin/python benchmarks/throughput.py              # later runs (all sections)
    .venv/bin/python benchmarks/throughput.py --tokens 2048 --steps 2 --repeats 1 --skip-all-layers \\
        --loop-steps 1 --ceiling-seconds 0.2               # a quick check of the script
    .venv/bin/python benchmarks/throughput.py --skip-saelens --skip-sparsify        # saekit only
    .venv/bin/python benchmarks/throughput.py --device cuda   # on a GPU: runs benchmarks/gpu_step.py

It writes the same figures as JSON to ``benchmarks/results/throughput-<date>.json``. Timings are only
meaningful on an otherwise idle machine; the load average is recorded with them.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import gc
import json
import math
import os
import platform
import select
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from bench_common import (
    MESSAGE_MARK,
    cpu_name,
    package_version,
    prefixed_log,
    repeat_contexts,
    serve_arm,
    step_rates,
    timed,
    timed_batches,
    warmup_batch,
)
from ceiling import print_ceiling
from safetensors.torch import load_file
from torch import Tensor

from saekit.activations.source import ActivationSource, ActivationSpec, contexts_for, load_split, token_mask
from saekit.data.contexts import take_contexts
from saekit.dictionaries.registry import build_dictionary
from saekit.io import save_tensors, write_json
from saekit.jobs.quickstart import QUICKSTART
from saekit.models.ceiling import shapes_from_config
from saekit.models.flops import forward_flops_per_token
from saekit.models.hooks import capture
from saekit.models.loading import DEFAULT_MODEL_DESCRIPTION, LoadedModel, load_model
from saekit.training.config import TrainConfig
from saekit.training.model_loop import clean_pass, contexts_per_step, first_changed_layer, model_step
from saekit.training.run import InputScaling, RunState
from saekit.training.trainer import DictionaryTrainer

log = prefixed_log("saekit")

BENCH_DIR = Path(__file__).resolve().parent
CONSTRAINTS = BENCH_DIR / "constraints.txt"
RESULTS_DIR = BENCH_DIR / "results"






def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None




# ---- the comparison venvs ----------------------------------------------------------------------
@dataclass(frozen=True)
class Venv:
    """One comparison library's venv: where it lives, what --setup installs, what must import there."""

    label: str  # as printed
    path: Path
    requirement: str  # what pip installs (under constraints.txt) after the pinned torch
    modules: tuple[str, ...]  # must import for the venv to count as working
    distributions: tuple[str, ...]  # versions recorded
    worker: Path

    @property
    def python(self) -> Path:
        return self.path / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


SAELENS = Venv("SAELens", BENCH_DIR / ".saelens-venv", "sae-lens", ("sae_lens", "transformer_lens"),
               ("sae-lens", "transformer-lens", "transformers"), BENCH_DIR / "saelens_worker.py")
SPARSIFY = Venv("sparsify", BENCH_DIR / ".sparsify-venv", "eai-sparsify", ("sparsify", "schedulefree"),
                ("eai-sparsify", "schedulefree", "transformers"), BENCH_DIR / "sparsify_worker.py")


def torch_pin() -> str:
    """The ``torch==X`` line of constraints.txt (one source for the pin)."""
    for line in CONSTRAINTS.read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if line.replace(" ", "").startswith("torch=="):
            return line.replace(" ", "")
    raise SystemExit(f"{CONSTRAINTS} has no torch==VERSION line")


def probe_venv(venv: Venv) -> dict[str, Any] | None:
    """Versions inside ``venv``, or None when it is missing or its library does not import."""
    if not venv.python.is_file():
        return None
    script = (f"import json, torch, importlib.metadata as m\nimport {', '.join(venv.modules)}\n"
              "print(json.dumps({'torch': torch.__version__, 'cuda': torch.version.cuda,"
              f" **{{name: m.version(name) for name in {list(venv.distributions)!r}}},"
              " 'nvidia': sorted(d.metadata['Name'] for d in m.distributions()"
              " if (d.metadata['Name'] or '').lower().startswith(('nvidia-', 'triton')))}))")
    # sparsify prints a notice on import (no Triton on CPU): the JSON is the last line
    done = subprocess.run([str(venv.python), "-c", script], capture_output=True, text=True)
    if done.returncode != 0:
        return None
    return json.loads(done.stdout.strip().splitlines()[-1])


def cuda_packages(pip: list[str], requirement: str) -> list[str]:
    """What ``pip install requirement`` would pull in that belongs to a CUDA build (a dry run)."""
    done = subprocess.run([*pip, "--dry-run", "--quiet", "--report", "-", requirement],
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"pip cannot install {requirement}:\n{done.stderr.strip()}")
    report = json.loads(done.stdout)
    found = []
    for item in report.get("install", []):
        name, release = item["metadata"]["name"], item["metadata"]["version"]
        if name.lower().startswith(("nvidia-", "triton")) or (name.lower() == "torch" and "+cu" in release):
            found.append(f"{name}=={release}")
    return found


def setup_venv(venv: Venv) -> dict[str, Any]:
    """Create ``venv`` with the pinned torch first, then its library under the constraints.

    A dry run of the torch install comes first: if pip would fetch a CUDA build (nvidia-* wheels), the
    setup stops before downloading gigabytes; point pip at a CPU wheel (--find-links or PyTorch's CPU
    index in PIP_EXTRA_INDEX_URL) and rerun. Afterwards :func:`check_venv` checks the torch it got.
    """
    found = probe_venv(venv)
    if found is not None:
        log(f"{venv.label} venv already set up: {found}")
        return found
    if not venv.python.is_file():
        command = [sys.executable, "-m", "venv", str(venv.path)]
        log("$ " + " ".join(command))
        if subprocess.run(command).returncode != 0:
            raise SystemExit(f"could not create {venv.path}")
    pip = [str(venv.python), "-m", "pip", "install", "--disable-pip-version-check"]
    cuda = cuda_packages(pip, torch_pin())
    if cuda:
        raise SystemExit(f"pip would install a CUDA torch build here ({', '.join(cuda)}); make a CPU wheel of "
                         f"{torch_pin()} available to pip and rerun --setup")
    for command in ([*pip, torch_pin()], [*pip, "-c", str(CONSTRAINTS), venv.requirement]):
        log("$ " + " ".join(command))
        if subprocess.run(command).returncode != 0:
            raise SystemExit(f"setting up {venv.path} failed at: {' '.join(command)}")
    found = probe_venv(venv)
    if found is None:
        raise SystemExit(f"{venv.path} was built but {', '.join(venv.modules)} do not import in it; "
                         "delete it and retry --setup")
    log(f"{venv.label} venv ready: {found}")
    return found


def check_venv(venv: Venv, found: dict[str, Any]) -> None:
    pinned = torch_pin().split("==", 1)[1]
    if not found["torch"].split("+")[0] == pinned:
        log(f"WARNING: the {venv.label} venv has torch {found['torch']}, not the pinned {pinned}")
    if found["cuda"] or found["nvidia"]:
        log(f"WARNING: the {venv.label} venv has a CUDA torch build ({found['cuda']}, {found['nvidia']}); "
            "delete it and rerun --setup")


# ---- what one run measures ----------------------------------------------------------------------
def contexts_for_tokens(tokens: int, context_length: int, per_batch: int) -> int:
    """Contexts needed for ``tokens`` tokens, rounded up to whole model batches (at least one)."""
    return max(1, math.ceil(math.ceil(tokens / context_length) / per_batch)) * per_batch


@dataclass(frozen=True)
class Plan:
    """Sizes of one run, derived from the flags and the quickstart recipe."""

    steps: int
    repeats: int
    warmup_steps: int
    threads: int
    chunks_per_repeat: int
    config: TrainConfig  # the quickstart, with contexts_per_chunk cut down for small --tokens
    loop_steps: int = 3

    @property
    def context_length(self) -> int:
        return self.config.data.context_length

    @property
    def tokens_per_repeat(self) -> int:
        return self.chunks_per_repeat * self.config.data.contexts_per_chunk * self.context_length

    @staticmethod
    def build(args: argparse.Namespace) -> Plan:
        # the 8 / 16 / 32 contexts-per-forward variants need each repeat's contexts in whole batches of 32
        per_batch = max((QUICKSTART.run.model_batch_contexts, *(VARIANT_BATCHES if not args.skip_variants else ())))
        contexts = contexts_for_tokens(args.tokens, QUICKSTART.data.context_length, per_batch)
        per_chunk = min(QUICKSTART.data.contexts_per_chunk, contexts)
        config = QUICKSTART.updated(contexts_per_chunk=per_chunk).validate()
        return Plan(steps=args.steps, repeats=args.repeats, warmup_steps=args.warmup_steps,
                    threads=args.threads or available_cores(), chunks_per_repeat=math.ceil(contexts / per_chunk),
                    config=config, loop_steps=args.loop_steps)


def chunks_for_training(spec: ActivationSpec, loaded: LoadedModel, plan: Plan) -> list[Tensor]:
    """``ActivationSource.chunk`` 0 .. repeats x chunks_per_repeat at the SAE site, the chunks the generation arms
    time (untimed here: the training data, as much as earlier versions of this script trained on)."""
    source = ActivationSource(spec, cache_root=None, load=lambda: loaded,
                              model_batch_contexts=plan.config.run.model_batch_contexts)
    return [source.chunk(i)[plan.config.site] for i in range(1 + plan.repeats * plan.chunks_per_repeat)]


def training_data(chunks: list[Tensor], config: TrainConfig) -> Tensor:
    """The generated activations at ``config.site``, scaled to unit mean squared norm as a run scales them
    (``InputScaling``), shuffled once with the run's seed."""
    data = torch.cat(chunks)
    data = data * InputScaling.estimate({config.site: data}, config).input_scale
    generator = torch.Generator().manual_seed(config.optim.seed)
    return data[torch.randperm(data.shape[0], generator=generator)].contiguous()


def measure_training(data: Tensor, plan: Plan, autocast_dtype: torch.dtype | None = None) -> dict[str, Any]:
    """saekit tokens/s of ``DictionaryTrainer.train_step`` on the quickstart's TopK dictionary.

    ``autocast_dtype``: None for fp32, ``torch.bfloat16`` for the trainer's mixed precision (the forward
    under autocast; weights, Adam moments and losses fp32). Each call trains a fresh dictionary.
    """
    config = plan.config
    batch = config.optim.batch_size
    n_batches = data.shape[0] // batch
    if n_batches < 1:
        raise SystemExit(f"only {data.shape[0]} activation rows for a batch of {batch}; raise --tokens")
    batches = [data[i * batch:(i + 1) * batch] for i in range(n_batches)]
    torch.manual_seed(config.optim.seed)
    dictionary = build_dictionary(config.dictionary.build_config(data.shape[1], None))
    optim = config.optim
    total = max(config.total_steps, plan.warmup_steps + plan.repeats * plan.steps)
    trainer = DictionaryTrainer(dictionary, optim, total, autocast_dtype=autocast_dtype)

    def run(count: int, first: int) -> None:
        for i in range(first, first + count):
            trainer.train_step(batches[i % n_batches])

    rates = step_rates(run, plan.warmup_steps, plan.steps, plan.repeats, batch, log, indent="  ")
    return {"tokens_per_s": statistics.median(rates), "repeats_tokens_per_s": rates,
            "autocast_dtype": None if autocast_dtype is None else str(autocast_dtype).removeprefix("torch."),
            "adam": {key: trainer.optimizer.defaults[key] for key in ("fused", "foreach")},
            "dictionary": dictionary.config.to_dict(), "lr": trainer.base_lr, "batch_size": batch,
            "training_rows": data.shape[0]}


# ---- hand-off to the workers --------------------------------------------------------------------
def export_model(loaded: LoadedModel, directory: Path) -> None:
    """The loaded (dequantized) model as a plain Hugging Face directory the worker's transformers reads.

    ``save_pretrained`` refuses GGUF-loaded models, so the config is written without its quantization
    entry and the weights with saekit's safetensors writer (the tied output matrix left out).
    """
    model = loaded.model
    config = copy.deepcopy(model.config)
    config.architectures = [type(model).__name__]
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.save_pretrained(directory)
    loaded.tokenizer.save_pretrained(directory)
    state = model.state_dict()
    tied = getattr(config, "tie_word_embeddings", False)
    weights = {name: tensor for name, tensor in state.items() if not (tied and name == "lm_head.weight")}
    save_tensors(directory / "model.safetensors", weights, metadata={"format": "pt"})


def same_contexts(loaded: LoadedModel, spec: ActivationSpec, plan: Plan) -> tuple[Tensor, Tensor]:
    """The token contexts of chunk 0's first model batch (warm-up) and of the timed chunks."""
    per_chunk, per_batch = spec.data.contexts_per_chunk, plan.config.run.model_batch_contexts
    timed_contexts = plan.repeats * plan.chunks_per_repeat * per_chunk
    data = spec.data
    contexts = take_contexts(contexts_for(loaded, load_split(data).train, data, data.seed), per_chunk + timed_contexts)
    return contexts[:per_batch], contexts[per_chunk:]



def write_handoff(handoff: Path, loaded: LoadedModel, spec: ActivationSpec, plan: Plan, train: Tensor, lr: float,
                  first_chunk_rows: Tensor, *, all_layers: bool) -> None:
    """The directory every worker reads: settings.json, data.safetensors and the model as a Hugging Face directory.

    ``train`` is the very tensor saekit's training steps were cut from, so every library trains on the
    same batches in the same order; ``tokens`` are the contexts every generation arm runs.
    """
    site = plan.config.site
    adapter = loaded.adapter
    warmup_tokens, tokens = same_contexts(loaded, spec, plan)
    reference = capture(adapter, warmup_tokens, [adapter.site(site)])[adapter.site(site)]
    keep = token_mask({site: reference}, spec.data.exclude_bos, spec.data.outlier_norm_factor)
    rows = reference[keep]
    if not torch.allclose(rows, first_chunk_rows[:rows.shape[0]], rtol=1e-4, atol=1e-4):
        raise SystemExit("the contexts rebuilt for the workers do not give saekit's chunk 0; not comparing")
    log(f"writing the model for the workers to {handoff}")
    export_model(loaded, handoff)
    settings = {
        "d_in": train.shape[1], "width": plan.config.dictionary.expansion_factor * train.shape[1],
        "k": plan.config.dictionary.k, "batch_size": plan.config.optim.batch_size, "lr": lr,
        "lr_warmup_steps": plan.config.optim.warmup_steps, "steps": plan.steps, "warmup_steps": plan.warmup_steps,
        "repeats": plan.repeats, "threads": plan.threads, "seed": plan.config.optim.seed,
        "layer": adapter.site(site).layer, "n_layers": adapter.n_layers, "context_length": plan.context_length,
        "model_batch_contexts": plan.config.run.model_batch_contexts, "generation": True,
        "all_layers": all_layers, "site": site, "contexts_per_chunk": plan.config.data.contexts_per_chunk,
        "chunks_per_repeat": plan.chunks_per_repeat, "loop_steps": plan.loop_steps,
    }
    save_tensors(handoff / "data.safetensors",
                 {"train": train, "warmup_tokens": warmup_tokens, "tokens": tokens, "reference": reference})
    write_json(handoff / "settings.json", settings)


WORKER_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "WANDB_MODE": "disabled",
              "PYTHONWARNINGS": "ignore::DeprecationWarning"}


def run_training_worker(venv: Venv, handoff: Path) -> dict[str, Any]:
    """Run ``venv``'s worker's training measurement on the hand-off directory; its results, or an error entry."""
    output = handoff / f"{venv.worker.stem}.json"
    log(f"running {venv.worker.name} (training) in {venv.path}")
    done = subprocess.run([str(venv.python), str(venv.worker), str(handoff), str(output)],
                          env={**os.environ, **WORKER_ENV})
    if done.returncode != 0 or not output.is_file():
        return {"error": f"the {venv.label} worker exited with status {done.returncode} (its output is above)"}
    return json.loads(output.read_text(encoding="utf-8"))


# ---- arms: each timed configuration in a fresh worker process, repeats interleaved -------------------------
VARIANT_BATCHES = (8, 32)  # contexts per forward beside the default 16
COMPILE_LIMIT_S = 120.0  # a compiled arm whose warm-up (the compilation) takes longer is recorded as skipped
PREPARE_TIMEOUT_S = 900.0  # load + warm-up of one arm, then it is killed
REPEAT_TIMEOUT_S = 1800.0


@dataclass(frozen=True)
class Arm:
    """One timed configuration: which worker runs it and what it is told (``spec``, handed over as JSON)."""

    key: str  # unique within the run (the JSON's key)
    section: str  # the table's section; the arms of one section are interleaved
    library: str  # saekit, SAELens or sparsify
    label: str  # as printed
    dtype: str  # float32 / bfloat16
    spec: dict[str, Any]
    flops_per_token: float | None = None  # model FLOPs per token through the model (saekit.models.flops)
    reference: str | None = None  # the arm this one's ratio is taken against (same section)
    ratio_note: str = ""


def worker_command(arm: Arm, handoff: Path) -> list[str]:
    """The command line of ``arm``'s worker process."""
    spec = json.dumps(arm.spec)
    if arm.library == "saekit":
        return [sys.executable, str(Path(__file__).resolve()), "--serve-arm", str(handoff), spec]
    venv = SAELENS if arm.library == "SAELens" else SPARSIFY
    return [str(venv.python), str(venv.worker), "--serve", str(handoff), spec]


class ArmProcess:
    """A running arm worker: its messages (``bench_common.MESSAGE_MARK`` lines) read with a deadline, the rest of
    its output relayed."""

    def __init__(self, arm: Arm, handoff: Path) -> None:
        self.arm = arm
        self.process = subprocess.Popen(worker_command(arm, handoff), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        env={**os.environ, **WORKER_ENV}, bufsize=0)
        self.buffer = b""

    def _line(self, deadline: float) -> str:
        assert self.process.stdout is not None
        while b"\n" not in self.buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("no answer in time")
            ready, _, _ = select.select([self.process.stdout], [], [], remaining)
            if not ready:
                continue
            data = os.read(self.process.stdout.fileno(), 65536)
            if not data:
                raise RuntimeError(f"the worker exited (status {self.process.wait()}; its output is above)")
            self.buffer += data
        line, self.buffer = self.buffer.split(b"\n", 1)
        return line.decode("utf-8", errors="replace")

    def message(self, timeout: float) -> dict[str, Any]:
        """The worker's next message, relaying whatever else it prints; raises on exit or timeout."""
        deadline = time.monotonic() + timeout
        while True:
            line = self._line(deadline)
            if line.startswith(MESSAGE_MARK):
                return json.loads(line[len(MESSAGE_MARK):])
            print(line, flush=True)

    def request(self, repeat: int, timeout: float) -> dict[str, Any]:
        assert self.process.stdin is not None
        self.process.stdin.write((json.dumps({"repeat": repeat}) + "\n").encode())
        self.process.stdin.flush()
        return self.message(timeout)

    def close(self) -> None:
        """Ask the worker to quit; kill it (this process's own child) if it does not."""
        try:
            if self.process.stdin is not None and self.process.poll() is None:
                self.process.stdin.write(b'{"quit": true}\n')
                self.process.stdin.close()
            self.process.wait(timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            self.process.kill()
            self.process.wait()
        if self.process.stdout is not None:
            rest = self.buffer + self.process.stdout.read()
            for line in rest.decode("utf-8", errors="replace").splitlines():
                if not line.startswith(MESSAGE_MARK):
                    print(line, flush=True)


def summary(rates: list[float]) -> dict[str, Any]:
    """Median, spread and every repeat of a list of tokens/s."""
    return {"tokens_per_s": statistics.median(rates), "repeats_tokens_per_s": rates, "min": min(rates),
            "max": max(rates), "spread": (max(rates) - min(rates)) / statistics.median(rates)}


def run_section(arms: list[Arm], handoff: Path, repeats: int) -> dict[str, dict[str, Any]]:
    """Start each arm's worker (one after the other: loading and warm-up do not overlap), then run the timed
    repeats interleaved, the order rotated each repeat (A B C, B C A, C A B, ...); {arm key: its figures}."""
    results: dict[str, dict[str, Any]] = {}
    live: list[ArmProcess] = []
    try:
        for arm in arms:
            log(f"  starting {arm.label} ({arm.library}, {arm.dtype})")
            process = ArmProcess(arm, handoff)
            try:
                info = process.message(PREPARE_TIMEOUT_S)
            except (TimeoutError, RuntimeError) as err:
                info = {"ready": False, "error": f"{type(err).__name__}: {err}"}
            results[arm.key] = {"info": info}
            if info.get("ready"):
                live.append(process)
            else:
                results[arm.key]["error"] = info.get("error", "not ready")
                log(f"  {arm.label}: not measured: {results[arm.key]['error'].splitlines()[0]}")
                process.close()
        rates: dict[str, list[float]] = {process.arm.key: [] for process in live}
        for r in range(repeats):
            order = live[r % len(live):] + live[:r % len(live)] if live else []
            for process in order:
                key = process.arm.key
                if "error" in results[key]:
                    continue
                try:
                    reply = process.request(r, REPEAT_TIMEOUT_S)
                except (TimeoutError, RuntimeError) as err:
                    reply = {"error": f"{type(err).__name__}: {err}"}
                if "error" in reply:
                    results[key]["error"] = reply["error"]
                    log(f"  {process.arm.label}: repeat {r + 1} failed: {reply['error'].splitlines()[0]}")
                    continue
                rates[key].append(reply["tokens_per_s"])
                results[key].setdefault("repeats", []).append(reply)
                log(f"  repeat {r + 1}/{repeats} {process.arm.label} ({process.arm.library}, {process.arm.dtype}): "
                    f"{reply['tokens_per_s']:,.0f} tokens/s")
        for key, values in rates.items():
            if values and "error" not in results[key]:
                results[key].update(summary(values))
    finally:
        for process in live:
            process.close()
    return results


# ---- saekit's side of an arm (this script run with --serve-arm) -----------------------------------------
def compile_blocks(loaded: LoadedModel) -> str:
    """``torch.compile`` (default mode) each decoder block's ``forward`` in place.

    The blocks' ``forward`` methods are compiled rather than the model object, so saekit's hooks (on the
    blocks' outputs, called by ``nn.Module.__call__`` around ``forward``) stay in eager Python and the
    stopping hook still ends the forward after the site's block.
    """
    blocks = [loaded.adapter.block(i) for i in range(loaded.adapter.n_layers)]
    for block in blocks:
        block.forward = torch.compile(block.forward)
    return f"torch.compile(block.forward) for each of the {len(blocks)} decoder blocks (mode default)"


def prepare_saekit_arm(handoff: Path, arm: dict[str, Any]) -> tuple[dict[str, Any], Any]:
    """Load, vary and warm up saekit's model for ``arm``; (info, run(repeat)). See :func:`plan_arms` for kinds."""
    settings = json.loads((handoff / "settings.json").read_text(encoding="utf-8"))
    torch.set_num_threads(arm.get("threads") or settings["threads"])
    data = load_file(str(handoff / "data.safetensors"))
    dtype = arm.get("dtype", "float32")
    per_batch = arm.get("batch") or settings["model_batch_contexts"]
    started = time.perf_counter()
    # the exported directory: the very weights the other libraries load (saekit's GGUF dequantized once)
    loaded = load_model(str(handoff), dtype=getattr(torch, dtype))
    info: dict[str, Any] = {"threads": torch.get_num_threads(), "load_seconds": time.perf_counter() - started,
                            "batch": per_batch, "dtype": dtype, "versions": {
                                "saekit": package_version("saekit"), "torch": torch.__version__,
                                "transformers": package_version("transformers")}}
    if arm.get("attn"):
        loaded.model.set_attn_implementation(arm["attn"])
    info["attn_implementation"] = loaded.model.config._attn_implementation
    if arm.get("compile"):
        info["compiled"] = compile_blocks(loaded)
    adapter, site = loaded.adapter, settings["site"]
    kind = arm["kind"]
    if kind in ("kl_step", "mse_step"):
        return model_loop_arm(loaded, settings, data, arm, info)
    if kind == "chunk":
        config = QUICKSTART.updated(contexts_per_chunk=settings["contexts_per_chunk"], model_dtype=dtype).validate()
        source = ActivationSource(config.activation_spec(), cache_root=None, load=lambda: loaded,
                                  model_batch_contexts=per_batch)
        info["warmup_seconds"] = timed(lambda: source.chunk(0))
        per_repeat = settings["chunks_per_repeat"]
        tokens = per_repeat * settings["contexts_per_chunk"] * settings["context_length"]

        def run_chunks(repeat: int) -> dict[str, Any]:
            first = 1 + repeat * per_repeat
            seconds = timed(lambda: [source.chunk(i) for i in range(first, first + per_repeat)])
            return {"tokens_per_s": tokens / seconds, "seconds": seconds, "tokens": tokens}
        return info, run_chunks
    sites = ([adapter.site(site)] if arm.get("sites", "single") == "single"
             else [adapter.site(f"blocks.{i}.resid_post") for i in range(adapter.n_layers)])

    def forward(batch: Tensor) -> None:
        captured = capture(adapter, batch, sites)
        for value in captured.values():  # copied out, as SAELens's ActivationsStore copies into its buffer
            value.to(torch.float32, copy=True)
    info["warmup_seconds"] = timed(lambda: forward(warmup_batch(data["warmup_tokens"], per_batch)))
    if arm.get("compile") and info["warmup_seconds"] > COMPILE_LIMIT_S:
        raise RuntimeError(f"compilation (the warm-up forward) took {info['warmup_seconds']:.0f} s, over the "
                           f"{COMPILE_LIMIT_S:.0f} s limit; skipped")
    return info, lambda repeat: timed_batches(forward, repeat_contexts(data["tokens"], repeat, settings["repeats"]),
                                              per_batch)


def model_loop_arm(loaded: LoadedModel, settings: dict[str, Any], data: dict[str, Tensor], arm: dict[str, Any],
                   info: dict[str, Any]) -> tuple[dict[str, Any], Any]:
    """The model-in-the-loop KL step, or an mse step with its own forward, on the quickstart's TopK dictionary.

    ``kl_step``: :func:`saekit.training.model_loop.clean_pass` (the whole model, no gradients, recording the
    blocks before the site's) then :func:`~saekit.training.model_loop.model_step` (the dictionary's forward, the
    spliced pass from the site's block, KL, one backward through the blocks after the site, Adam). ``mse_step``:
    ``capture`` to the site on the same number of contexts, BOS dropped, then ``RunState.step`` on the first
    ``batch_size`` rows (the forward covers 17 x 127 rows for 2048 trained: the few surplus rows are counted
    as work, not as tokens). Both leave their logged scalars on the device (``read=False``, as the run loop
    does) and read them once at the end of each repeat.
    """
    kind, site = arm["kind"], settings["site"]
    config = QUICKSTART.updated(objective="kl" if kind == "kl_step" else "mse",
                                model_dtype=arm.get("dtype", "float32")).validate()
    adapter = loaded.adapter
    per_step = contexts_per_step(config.optim.batch_size, settings["context_length"])
    contexts = data["tokens"]
    first = capture(adapter, contexts[:per_step], [adapter.site(site)])[adapter.site(site)]
    state = RunState(config, {site: first[:, 1:].reshape(-1, first.shape[-1]).float()})
    resume = first_changed_layer(loaded, [site])
    info.update(contexts_per_step=per_step, objective=config.loss.objective, resume_layer=resume)

    def step(index: int) -> int:
        ids = contexts[torch.arange(index * per_step, (index + 1) * per_step) % contexts.shape[0]]
        if kind == "kl_step":
            return model_step([state], clean_pass(loaded, ids, [site], (), resume), loaded=loaded)
        value = capture(adapter, ids, [adapter.site(site)])[adapter.site(site)]
        rows = value[:, 1:].reshape(-1, value.shape[-1]).float()[:config.optim.batch_size]
        state.step({site: rows}, read=False)
        return rows.shape[0]
    info["warmup_seconds"] = timed(lambda: (step(0), state.trainer.read_pending()))
    steps = settings["loop_steps"]

    def run(repeat: int) -> dict[str, Any]:
        started = time.perf_counter()
        tokens = sum(step(1 + repeat * steps + i) for i in range(steps))
        state.trainer.read_pending()
        seconds = time.perf_counter() - started
        return {"tokens_per_s": tokens / seconds, "seconds": seconds, "tokens": tokens, "steps": steps}
    return info, run


# ---- what runs: the arms of each section -------------------------------------------------------------
def plan_arms(args: argparse.Namespace, plan: Plan, model_config: Any, layer: int) -> list[Arm]:
    """Every arm of this run, section by section (a section's arms are interleaved with each other)."""
    T = plan.context_length
    to_site = forward_flops_per_token(model_config, T, through_layer=layer).total
    all_blocks = forward_flops_per_token(model_config, T, unembedding=False).total
    saelens, sparsify = not args.skip_saelens, not args.skip_sparsify and not args.skip_sparsify_forward
    arms: list[Arm] = []
    single = {"sites": "single"}
    for dtype, section, skip in (("float32", "activations fp32", False),
                                 ("bfloat16", "activations bf16", args.skip_bf16_model)):
        if skip:
            continue
        d = dtype[:4].replace("floa", "fp32").replace("bflo", "bf16")
        ref = f"saekit-capture-{d}"
        note = "saekit capture / this (per FLOP where the layers differ)"
        arms.append(Arm(ref, section, "saekit", "capture to block 14 (hooks, stop)", dtype,
                        {"kind": "capture", "dtype": dtype, **single}, to_site))
        arms.append(Arm(f"saekit-chunk-{d}", section, "saekit", "ActivationSource.chunk (no cache)", dtype,
                        {"kind": "chunk", "dtype": dtype}, to_site, ref, note))
        if saelens:
            arms.append(Arm(f"saelens-proxy-{d}", section, "SAELens", "HookedProxyLM run_with_cache, stop 15",
                            dtype, {"kind": "proxy", "dtype": dtype, **single}, to_site, ref, note))
            if dtype == "float32":
                arms.append(Arm(f"saelens-ht-{d}", section, "SAELens", "HookedTransformer run_with_cache, stop 15",
                                dtype, {"kind": "hooked_transformer", "dtype": dtype, **single}, to_site, ref, note))
        if sparsify:
            arms.append(Arm(f"sparsify-forward-{d}", section, "sparsify", "Trainer's forward: AutoModel, 30 blocks",
                            dtype, {"kind": "forward", "dtype": dtype}, all_blocks, ref, note))
    if not args.skip_all_layers:
        section, every = "activations fp32, all layers", {"sites": "all"}
        ref = "saekit-capture-all"
        note = "saekit capture / this"
        arms.append(Arm(ref, section, "saekit", "capture, 30 sites, one pass", "float32",
                        {"kind": "capture", "dtype": "float32", **every}, all_blocks))
        if saelens:
            arms.append(Arm("saelens-proxy-all", section, "SAELens", "HookedProxyLM, 30 hooks", "float32",
                            {"kind": "proxy", "dtype": "float32", **every}, all_blocks, ref, note))
            arms.append(Arm("saelens-ht-all", section, "SAELens", "HookedTransformer, 30 hooks", "float32",
                            {"kind": "hooked_transformer", "dtype": "float32", **every}, all_blocks, ref, note))
    if not args.skip_variants:
        for dtype in args.variant_dtypes.split(","):
            d = dtype[:4].replace("floa", "fp32").replace("bflo", "bf16")
            section, base = f"saekit variants {d}", {"kind": "capture", "dtype": dtype, **single}
            ref, note = f"variant-base-{d}", "this / base (above 1: the change helps)"
            arms.append(Arm(ref, section, "saekit", f"base: sdpa, not compiled, 16 ctx, {plan.threads} threads",
                            dtype, base, to_site))
            variants = [("eager", "attn eager", {"attn": "eager"})]
            if not args.skip_compile:
                variants.append(("compile", "torch.compile of the blocks", {"compile": True}))
            variants += [(f"batch{b}", f"{b} contexts per forward", {"batch": b}) for b in VARIANT_BATCHES]
            if plan.threads > 1:
                variants.append(("threads", f"{plan.threads - 1} threads", {"threads": plan.threads - 1}))
            for name, label, change in variants:
                arms.append(Arm(f"variant-{name}-{d}", section, "saekit", label, dtype, {**base, **change}, to_site,
                                ref, note))
    if not args.skip_model_loop:
        for dtype in args.loop_dtypes.split(","):
            d = dtype[:4].replace("floa", "fp32").replace("bflo", "bf16")
            section = f"model-in-the-loop step {d}"
            arms.append(Arm(f"loop-kl-{d}", section, "saekit", "kl step (clean pass + model_step)", dtype,
                            {"kind": "kl_step", "dtype": dtype}, None, None, "floor / this (1.0: at the floor)"))
            arms.append(Arm(f"loop-mse-{d}", section, "saekit", "mse step + its forward to block 14", dtype,
                            {"kind": "mse_step", "dtype": dtype}, None, None, "floor / this (1.0: at the floor)"))
    return arms


def step_floor_flops(model_config: Any, plan: Plan, layer: int, kind: str) -> dict[str, float]:
    """FLOPs per trained token a model-loop step must do, by part (saekit.models.flops; matrix products only).

    ``kl_step``: the clean whole forward (every block and the unembedding), the spliced forward of the blocks
    after the site and the unembedding, and the backward through them with no weight gradients: the input
    gradient of each weight product (1x its forward) and of attention's two products (2x: both operands are
    activations); plus the dictionary: encoder forward and weight gradient (2 x 2 d width), the TopK decoder
    forward and its gradients (about 3 x 2 k d). ``mse_step``: the forward to the site and the dictionary.
    Model FLOPs are per token through the model; the step trains on every position but BOS (127 of 128).
    """
    T, cfg = plan.context_length, plan.config
    d, width, k = model_config.hidden_size, cfg.dictionary.expansion_factor * model_config.hidden_size, cfg.dictionary.k
    per_trained = T / (T - 1)
    sae = 2 * 2 * d * width + 3 * 2 * k * d
    if kind == "mse_step":
        return {"forward_to_site": forward_flops_per_token(model_config, T, through_layer=layer).total * per_trained,
                "dictionary": float(sae)}
    clean = forward_flops_per_token(model_config, T)
    suffix = forward_flops_per_token(model_config, T, from_layer=layer + 1)
    return {"clean_forward": clean.total * per_trained, "spliced_forward": suffix.total * per_trained,
            "backward": (suffix.weights + 2 * suffix.attention) * per_trained, "dictionary": float(sae)}


def floor_tokens_per_s(parts: dict[str, float], ceiling: dict[str, Any] | None, dtype: str) -> float | None:
    """Tokens/s if every FLOP of ``parts`` ran at the ceiling's block rate in ``dtype``."""
    if not ceiling or dtype not in ceiling:
        return None
    return ceiling[dtype]["block"] * 1e9 / sum(parts.values())


# ---- report -------------------------------------------------------------------------------------
def rate_of(entry: Any) -> float | None:
    return entry.get("tokens_per_s") if isinstance(entry, dict) else None


def why_missing(entry: Any) -> str:
    if isinstance(entry, dict) and "error" in entry:
        return entry["error"].splitlines()[0]
    return "not measured"


def ratio(ours: float | None, theirs: float | None) -> float | None:
    return ours / theirs if ours and theirs else None


def arm_rows(arms: list[Arm], measured: dict[str, dict[str, Any]], ceiling: dict[str, Any] | None,
             model_config: Any, plan: Plan, layer: int) -> list[dict[str, Any]]:
    """The table's rows for the arms: tokens/s, spread, GFLOP/s, fraction of the ceiling, ratio."""
    rows = []
    for arm in arms:
        entry = measured.get(arm.key, {})
        rate = rate_of(entry)
        row: dict[str, Any] = {"section": arm.section, "key": arm.key, "library": arm.library, "what": arm.label,
                               "dtype": arm.dtype, "tokens_per_s": rate, "min": entry.get("min"),
                               "max": entry.get("max"), "gflops": None, "ceiling_fraction": None, "ratio": None,
                               "ratio_means": arm.ratio_note or None, "note": None if rate else why_missing(entry)}
        ceiling_rate = (ceiling or {}).get(arm.dtype, {}).get("block")
        if arm.flops_per_token and rate:
            row["flops_per_token"] = arm.flops_per_token
            row["gflops"] = rate * arm.flops_per_token / 1e9
            row["ceiling_fraction"] = row["gflops"] / ceiling_rate if ceiling_rate else None
        if arm.reference and rate:
            ref_arm = next(a for a in arms if a.key == arm.reference)
            ref_rate = rate_of(measured.get(arm.reference, {}))
            if ref_rate:
                if arm.library == "saekit" and arm.section.startswith("saekit variants"):
                    row["ratio"] = rate / ref_rate  # the variant over its base
                else:  # saekit's over this library's, per FLOP (the same as per token where the layers agree)
                    row["ratio"] = ratio(ref_rate * ref_arm.flops_per_token, rate * arm.flops_per_token)
        if arm.spec.get("kind") in ("kl_step", "mse_step"):
            parts = step_floor_flops(model_config, plan, layer, arm.spec["kind"])
            floor = floor_tokens_per_s(parts, ceiling, arm.dtype)
            row.update(floor_flops_per_token=parts, floor_tokens_per_s=floor)
            if rate:
                row["gflops"] = rate * sum(parts.values()) / 1e9
                row["ceiling_fraction"] = row["gflops"] / ceiling_rate if ceiling_rate else None
                row["ratio"] = ratio(rate, floor)
        rows.append(row)
    return rows


def training_rows(saekit: dict[str, Any], others: dict[str, dict[str, Any] | None], plan: Plan) -> list[dict[str, Any]]:
    """Rows for the SAE training steps on cached activations (saekit in-process, the others in their venvs)."""
    cfg = plan.config
    section = f"SAE training step (TopK k={cfg.dictionary.k}, {cfg.dictionary.expansion_factor}x, " \
              f"batch {cfg.optim.batch_size})"
    ours = rate_of(saekit.get("training"))
    rows = []
    for library, what, dtype, entry in (
            ("saekit", "train_step", "float32", saekit.get("training")),
            ("saekit", "train_step, bf16 autocast", "bfloat16", saekit.get("training_bf16")),
            ("SAELens", "SAETrainer.step", "float32", (others.get("SAELens") or {}).get("training")),
            ("sparsify", "Trainer step (SignSGD)", "float32", (others.get("sparsify") or {}).get("training"))):
        if entry is None and library != "saekit":
            continue
        rate = rate_of(entry)
        rates = (entry or {}).get("repeats_tokens_per_s") or []
        rows.append({"section": section, "key": f"training-{library}-{what}", "library": library, "what": what,
                     "dtype": dtype, "tokens_per_s": rate, "min": min(rates, default=None),
                     "max": max(rates, default=None), "gflops": None, "ceiling_fraction": None,
                     "ratio": ratio(ours, rate) if library != "saekit" else None,
                     "ratio_means": "saekit fp32 / this" if library != "saekit" else None,
                     "note": None if rate else why_missing(entry)})
    return rows


def print_table(rows: list[dict[str, Any]], cpu: str, threads: int) -> None:
    """One table, every row, the CPU named."""
    header = ("section", "library", "what", "dtype", "tokens/s", "min-max", "GFLOP/s", "of ceiling", "ratio")

    def number(x: float | None, fmt: str = ",.0f") -> str:
        return format(x, fmt) if x else "-"
    lines = []
    for r in rows:
        spread = f"{r['min']:,.0f}-{r['max']:,.0f}" if r.get("min") and r.get("max") else "-"
        fraction = f"{r['ceiling_fraction']:.0%}" if r.get("ceiling_fraction") else "-"
        lines.append((r["section"], r["library"], r["what"], r["dtype"].replace("float32", "fp32").replace(
            "bfloat16", "bf16"), number(r["tokens_per_s"]), spread, number(r["gflops"], ",.1f"), fraction,
            f"{r['ratio']:.2f}x" if r.get("ratio") else "-"))
    widths = [max(len(str(x)) for x in column) for column in zip(header, *lines)]

    def fmt(cells: tuple[str, ...]) -> str:
        return "  ".join(str(c).ljust(w) if i < 4 else str(c).rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))
    print(f"\n{cpu}, {threads} torch threads")
    print(fmt(header))
    print("  ".join("-" * w for w in widths))
    previous = None
    for row, line in zip(rows, lines):
        if previous is not None and row["section"] != previous:
            print()
        previous = row["section"]
        print(fmt(line))
    meanings = dict.fromkeys(f"  {r['section']}: {r['ratio_means']}" for r in rows if r.get("ratio_means"))
    if meanings:
        print("\nratio:")
        print("\n".join(meanings))
    notes = dict.fromkeys(f"  {r['section']}, {r['library']} {r['what']}: {r['note']}" for r in rows if r.get("note"))
    if notes:
        print("\nnot measured:")
        print("\n".join(notes))
    print("\ntokens/s: median over the repeats (min-max beside it); GFLOP/s: tokens/s x the FLOPs per token of the "
          "layers run (saekit.models.flops, causal attention; a step's row: its floor's FLOPs); of ceiling: that "
          "over benchmarks/ceiling.py's block rate in the same dtype")


# ---- main ---------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Tokens/s of saekit's activation generation and SAE training on this CPU, next to SAELens "
                    "and sparsify, against this machine's matmul ceiling.",
        epilog="See the module docstring (or benchmarks/README.md) for what exactly is timed.")
    parser.add_argument("--tokens", type=int, default=8192,
                        help="tokens through the model per generation repeat, rounded up to whole model batches "
                             "of 16 contexts x 128 tokens (32 with the batch variants), and above 64 contexts to "
                             "whole chunks of 64 (default: 8192, one chunk of the default recipe)")
    parser.add_argument("--steps", type=int, default=20, help="timed training steps per repeat (default: 20)")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats; the median is reported (default: 3)")
    parser.add_argument("--warmup-steps", type=int, default=5, help="untimed training steps first (default: 5)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads for every library (default: the cores this process may use)")
    parser.add_argument("--skip-saelens", action="store_true", help="do not run SAELens")
    parser.add_argument("--skip-sparsify", action="store_true", help="do not run sparsify (training or forward)")
    parser.add_argument("--skip-sparsify-forward", action="store_true", help="do not time sparsify's model forward")
    parser.add_argument("--skip-bf16-model", action="store_true",
                        help="leave out the bf16 activation-generation section (saekit, SAELens, sparsify)")
    parser.add_argument("--skip-all-layers", action="store_true",
                        help="leave out the all-layers generation pass (the slow part), in every library")
    parser.add_argument("--skip-ceiling", action="store_true", help="do not measure the matmul ceiling")
    parser.add_argument("--ceiling-seconds", type=float, default=1.0,
                        help="seconds per ceiling timing (best of 3; default: 1)")
    parser.add_argument("--skip-variants", action="store_true",
                        help="leave out saekit's forward variants (eager attention, compile, batch, threads)")
    parser.add_argument("--skip-compile", action="store_true", help="leave out the torch.compile variant")
    parser.add_argument("--variant-dtypes", default="float32,bfloat16",
                        help="dtypes of the variants section, comma-separated (default: float32,bfloat16)")
    parser.add_argument("--skip-model-loop", action="store_true", help="leave out the model-in-the-loop KL step")
    parser.add_argument("--loop-dtypes", default="float32,bfloat16",
                        help="model dtypes of the KL / mse step section (default: float32,bfloat16)")
    parser.add_argument("--loop-steps", type=int, default=3, help="timed KL / mse steps per repeat (default: 3)")
    parser.add_argument("--skip-training", action="store_true", help="leave out the SAE training-step section")
    parser.add_argument("--setup", action="store_true",
                        help="create the SAELens and sparsify venvs (benchmarks/.saelens-venv, "
                             "benchmarks/.sparsify-venv) first where missing or broken")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                        help="cuda: run benchmarks/gpu_step.py instead (saekit's training step beside the anchor "
                             "harness on a GPU); only --output is passed on (default: cpu)")
    parser.add_argument("--output", type=Path, default=None,
                        help="JSON file to write (default: benchmarks/results/throughput-<date>.json, or "
                             "gpu_step.py's default with --device cuda)")
    parser.add_argument("--serve-arm", nargs=2, metavar=("HANDOFF", "ARM"), default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    for name in ("tokens", "steps", "repeats", "loop_steps"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.warmup_steps < 0 or (args.threads is not None and args.threads < 1):
        parser.error("--warmup-steps must be >= 0 and --threads >= 1")
    for flag in ("variant_dtypes", "loop_dtypes"):
        if set(getattr(args, flag).split(",")) - {"float32", "bfloat16"}:
            parser.error(f"--{flag.replace('_', '-')}: float32 and/or bfloat16")
    return args


def comparison_venvs(args: argparse.Namespace) -> tuple[list[Venv], dict[str, Any]]:
    """The venvs this run uses (built first with --setup), and their versions."""
    venvs = [venv for venv, skip in ((SAELENS, args.skip_saelens), (SPARSIFY, args.skip_sparsify)) if not skip]
    found = {}
    for venv in venvs:
        versions = setup_venv(venv) if args.setup else probe_venv(venv)
        if versions is None:
            flag = "--skip-saelens" if venv is SAELENS else "--skip-sparsify"
            raise SystemExit(f"no working {venv.label} venv at {venv.path}: run with --setup (or pass {flag})")
        check_venv(venv, versions)
        found[venv.label] = versions
    return venvs, found


def measure_ceiling_in_process(config: Any, plan: Plan, dtypes: tuple[str, ...], seconds: float) -> dict[str, Any]:
    """benchmarks/ceiling.py in a fresh process at the model's shapes and this run's threads and batch."""
    with tempfile.TemporaryDirectory() as scratch:
        output = Path(scratch) / "ceiling.json"
        command = [sys.executable, str(BENCH_DIR / "ceiling.py"), "--dtypes", ",".join(dtypes),
                   "--contexts", str(plan.config.run.model_batch_contexts), "--context-length",
                   str(plan.context_length), "--threads", str(plan.threads), "--seconds", str(seconds),
                   "--shapes", json.dumps(asdict(shapes_from_config(config))), "--json", str(output)]
        done = subprocess.run(command)
        if done.returncode != 0 or not output.is_file():
            return {"error": f"ceiling.py exited with status {done.returncode}"}
        return json.loads(output.read_text(encoding="utf-8"))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.serve_arm:  # a worker process for one of saekit's arms
        handoff, arm = Path(args.serve_arm[0]), json.loads(args.serve_arm[1])
        return serve_arm(lambda: prepare_saekit_arm(handoff, arm), prefixed_log(f"saekit {arm['kind']}"))
    if args.device == "cuda":  # one mechanism for the GPU: gpu_step.py, beside this file
        import gpu_step

        return gpu_step.main(["--device", "cuda", *(["--output", str(args.output)] if args.output else [])])
    plan = Plan.build(args)
    torch.set_num_threads(plan.threads)
    started = datetime.datetime.now()
    load_before = load_average()
    log(f"{cpu_name()}, {available_cores()} usable cores, torch threads {torch.get_num_threads()}, "
        f"load average {load_before}")
    venvs, venv_versions = comparison_venvs(args)

    log(f"loading the default model ({DEFAULT_MODEL_DESCRIPTION}) ...")
    loaded: LoadedModel | None = None

    def load() -> None:
        nonlocal loaded
        loaded = plan.config.data.load_model(plan.config.run.device)
    load_seconds = timed(load)
    assert loaded is not None
    log(f"  loaded in {load_seconds:.0f} s")
    site = plan.config.site
    n_layers = loaded.adapter.n_layers
    layer = loaded.adapter.site(site).layer
    model_config = copy.deepcopy(loaded.model.config)
    spec = plan.config.activation_spec()

    ceiling = None
    if not args.skip_ceiling:
        log("matmul ceiling at the model's shapes (benchmarks/ceiling.py, its own process)")
        ceiling = measure_ceiling_in_process(model_config, plan, ("float32", "bfloat16"), args.ceiling_seconds)

    log(f"training data: {1 + plan.repeats * plan.chunks_per_repeat} chunk(s) of activations at {site} (untimed)")
    chunks = chunks_for_training(spec, loaded, plan)
    train = training_data(chunks, plan.config)
    saekit: dict[str, Any] = {}
    if not args.skip_training:
        for key, dtype in (("training", None), ("training_bf16", torch.bfloat16)):
            log(f"SAE training ({'fp32' if dtype is None else 'bf16 autocast'}) on {train.shape[0]} cached "
                f"activation rows: {plan.repeats} x {plan.steps} steps after {plan.warmup_steps} warm-up steps")
            saekit[key] = measure_training(train, plan, autocast_dtype=dtype)
    lr = (saekit.get("training") or {}).get("lr") or measure_training(train, replace(plan, repeats=1, steps=1,
                                                                                      warmup_steps=0))["lr"]

    arms = plan_arms(args, plan, model_config, layer)
    others: dict[str, dict[str, Any] | None] = {"SAELens": None, "sparsify": None}
    measured: dict[str, dict[str, Any]] = {}
    handoff = Path(tempfile.mkdtemp(prefix="saekit-throughput-"))
    try:
        # TransformerLens treats any model path containing "llama" as one of its named Llama checkpoints.
        if "llama" in str(handoff).lower():
            raise SystemExit(f"temporary directory {handoff} contains 'llama'; set TMPDIR elsewhere")
        write_handoff(handoff, loaded, spec, plan, train, lr, chunks[0], all_layers=not args.skip_all_layers)
        loaded = None  # the workers load their own copies
        gc.collect()
        if not args.skip_training:
            for venv in venvs:
                others[venv.label] = run_training_worker(venv, handoff)
        for section in dict.fromkeys(arm.section for arm in arms):
            members = [arm for arm in arms if arm.section == section]
            log(f"{section}: {len(members)} arm(s), {plan.repeats} interleaved repeat(s), each in its own process")
            measured.update(run_section(members, handoff, plan.repeats))
    finally:
        shutil.rmtree(handoff, ignore_errors=True)

    rows = arm_rows(arms, measured, ceiling, model_config, plan, layer)
    if not args.skip_training:
        rows += training_rows(saekit, others, plan)
    cpu = cpu_name()
    if ceiling and "error" not in ceiling:
        print()
        print_ceiling(ceiling)
    print_table(rows, cpu, plan.threads)
    for key, entry in measured.items():
        error = (entry.get("info") or {}).get("relative_error_vs_saekit")
        if error is not None:
            print(f"{key}: relative difference from saekit's fp32 activations {error:.1e}")
    print()
    load_after = load_average()
    log(f"load average before {load_before}, after {load_after}")
    result = {
        "date": started.isoformat(timespec="seconds"),
        "machine": {"cpu": cpu, "usable_cores": available_cores(), "torch_threads": plan.threads,
                    "platform": platform.platform(), "load_average_before": load_before,
                    "load_average_after": load_after},
        "settings": {"model": DEFAULT_MODEL_DESCRIPTION, "site": site, "n_layers": n_layers,
                     "context_length": plan.context_length,
                     "model_batch_contexts": plan.config.run.model_batch_contexts,
                     "contexts_per_chunk": plan.config.data.contexts_per_chunk,
                     "tokens_per_generation_repeat": plan.tokens_per_repeat, "steps": plan.steps,
                     "warmup_steps": plan.warmup_steps, "repeats": plan.repeats, "loop_steps": plan.loop_steps,
                     "batch_size": plan.config.optim.batch_size, "k": plan.config.dictionary.k,
                     "expansion_factor": plan.config.dictionary.expansion_factor,
                     "all_layers": not args.skip_all_layers, "command": " ".join(sys.argv)},
        "versions": {"saekit": package_version("saekit"), "torch": torch.__version__,
                     "transformers": package_version("transformers"), "python": platform.python_version(),
                     "saelens_venv": venv_versions.get("SAELens"), "sparsify_venv": venv_versions.get("sparsify")},
        "model_load_seconds": load_seconds,
        "ceiling": ceiling,
        "flops_per_token": {"to_site": forward_flops_per_token(model_config, plan.context_length,
                                                               through_layer=layer).to_dict(),
                            "whole_model": forward_flops_per_token(model_config, plan.context_length).to_dict()},
        "rows": rows,
        "arms": {arm.key: {"spec": arm.spec, "section": arm.section, "library": arm.library, "label": arm.label,
                           **measured.get(arm.key, {})} for arm in arms},
        "saekit": saekit,
        "saelens": others["SAELens"],
        "sparsify": others["sparsify"],
    }
    output = args.output or RESULTS_DIR / f"throughput-{started.date().isoformat()}.json"
    write_json(output, result)
    log(f"wrote {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
