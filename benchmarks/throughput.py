"""Throughput of saekit's default recipe on this CPU, side by side with SAELens and sparsify doing the same work.

What is measured (tokens per second, median over ``--repeats``; torch uses as many threads as this
process may run on, in every library, unless ``--threads`` says otherwise):

1. Activation generation with the default model (SmolLM2-135M-Instruct, dequantized from the
   embedded GGUF), contexts of 128 tokens from the default corpus, 16 contexts per forward pass:

   - at one site, ``blocks.14.resid_post`` (the quickstart's): the forward stops after block 14;
   - at every layer's ``resid_post`` (30 sites) in one forward pass (the multi-site pass; left out
     with ``--skip-all-layers``).

   saekit: ``ActivationSource.chunk(i)`` without a disk cache (tokenizing the corpus, the hooked
   forward, dropping BOS and outlier tokens, copying out). SAELens: ``run_with_cache`` with
   ``names_filter`` and ``stop_at_layer`` as its ``ActivationsStore`` calls it, on the very same
   token contexts, through ``HookedTransformer`` (SAELens's default model class) and through
   ``HookedProxyLM`` (its wrapper around a plain transformers model). Tokens counted are the tokens
   run through the model (contexts x 128), BOS included, for both. Each repeat runs fresh contexts
   after one untimed warm-up chunk (saekit) or batch (SAELens). sparsify has no generation row: its
   trainer reads activations with forward hooks on a plain transformers model, the code path
   saekit's own hooks and ``HookedProxyLM`` already time.

2. SAE training steps on cached activations: the activations of step 1 at ``blocks.14.resid_post``,
   scaled to unit mean squared norm as saekit's runs do, shuffled once, cut into batches of 2048
   tokens; every library gets these same batches in the same order. saekit: ``DictionaryTrainer.
   train_step`` on a TopK dictionary (k=32, width 8 x 576 = 4608, Adam with saekit's width-scaled
   learning rate), once in fp32 and once with bf16 autocast (``autocast_dtype=torch.bfloat16``).
   SAELens: ``SAETrainer.step`` on a ``TopKTrainingSAE`` with the same d_in, width, k, batch,
   learning rate and warm-up steps (its own defaults otherwise: fp32). sparsify: its ``Trainer``'s
   per-batch step (``benchmarks/sparsify_worker.py`` says exactly what is reproduced) with the same
   d_in, width, k and batch and its defaults otherwise (SignSGD + ScheduleFree and its own learning
   rate; fp32 on a CPU, since its bf16 autocast applies to CUDA only). ``--steps`` timed steps per
   repeat after a few untimed warm-up steps; tokens/s = steps x 2048 / seconds.

The ratio columns are saekit tokens/s divided by SAELens's and by sparsify's (above 1: saekit is
faster); both saekit training rows are divided by the same SAELens and sparsify figures.

SAELens and sparsify live in their own venvs, ``benchmarks/.saelens-venv`` and
``benchmarks/.sparsify-venv`` (git-ignored), built by ``--setup`` the same way: ``pip install
torch==<pin>`` first (after a dry run that stops if pip would fetch a CUDA build), then ``pip install
-c benchmarks/constraints.txt sae-lens`` (or ``eai-sparsify``), so the pinned CPU torch is kept. This
script runs ``benchmarks/saelens_worker.py`` and ``benchmarks/sparsify_worker.py`` with those venvs'
Pythons and hands them the activations, token contexts and model weights as safetensors and JSON
files in one temporary directory (no pickle).

Run it from the repository root with saekit's venv (it is not part of the tests or CI):

    .venv/bin/python benchmarks/throughput.py --setup      # first time: builds both venvs
    .venv/bin/python benchmarks/throughput.py              # later runs
    .venv/bin/python benchmarks/throughput.py --tokens 2048 --steps 3 --repeats 2   # a quick check
    .venv/bin/python benchmarks/throughput.py --skip-saelens --skip-sparsify        # saekit only
    .venv/bin/python benchmarks/throughput.py --device cuda   # on a GPU: runs benchmarks/gpu_step.py

It prints a table and writes the same figures as JSON to ``benchmarks/results/throughput-<date>.json``.
Timings are only meaningful on an otherwise idle machine; the load average is recorded with them.
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
import shutil
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from bench_common import package_version, prefixed_log, step_rates, timed
from torch import Tensor

from saekit.activations.source import ActivationSource, ActivationSpec, contexts_for, load_split, token_mask
from saekit.data.contexts import take_contexts
from saekit.dictionaries.registry import build_dictionary
from saekit.io import save_tensors, write_json
from saekit.jobs.quickstart import QUICKSTART
from saekit.models.hooks import capture
from saekit.models.loading import DEFAULT_MODEL_DESCRIPTION, LoadedModel
from saekit.training.config import TrainConfig
from saekit.training.run import InputScaling
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


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


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

    @property
    def context_length(self) -> int:
        return self.config.data.context_length

    @property
    def tokens_per_repeat(self) -> int:
        return self.chunks_per_repeat * self.config.data.contexts_per_chunk * self.context_length

    @staticmethod
    def build(args: argparse.Namespace) -> Plan:
        contexts = contexts_for_tokens(args.tokens, QUICKSTART.data.context_length,
                                       QUICKSTART.run.model_batch_contexts)
        per_chunk = min(QUICKSTART.data.contexts_per_chunk, contexts)
        config = QUICKSTART.updated(contexts_per_chunk=per_chunk).validate()
        return Plan(steps=args.steps, repeats=args.repeats, warmup_steps=args.warmup_steps,
                    threads=args.threads or available_cores(), chunks_per_repeat=math.ceil(contexts / per_chunk),
                    config=config)


def measure_generation(spec: ActivationSpec, loaded: LoadedModel, plan: Plan,
                       keep_site: str | None) -> tuple[dict[str, Any], list[Tensor]]:
    """saekit tokens/s of ``ActivationSource.chunk`` (no cache); returns the kept chunks of ``keep_site``."""
    source = ActivationSource(spec, cache_root=None, load=lambda: loaded,
                              model_batch_contexts=plan.config.run.model_batch_contexts)
    kept: list[Tensor] = []

    def take(index: int) -> None:
        chunk = source.chunk(index)
        if keep_site is not None:
            kept.append(chunk[keep_site])

    warmup = timed(lambda: take(0))  # also loads and splits the corpus
    log(f"  warm-up chunk: {warmup:.1f} s")
    per_repeat = plan.chunks_per_repeat
    rates = []
    for r in range(plan.repeats):
        first = 1 + r * per_repeat
        elapsed = timed(lambda first=first: [take(i) for i in range(first, first + per_repeat)])
        rates.append(plan.tokens_per_repeat / elapsed)
        log(f"  repeat {r + 1}/{plan.repeats}: {rates[-1]:,.0f} tokens/s ({elapsed:.1f} s)")
    return {"tokens_per_s": statistics.median(rates), "repeats_tokens_per_s": rates,
            "tokens_per_repeat": plan.tokens_per_repeat, "sites": len(spec.sites)}, kept


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
                  first_chunk_rows: Tensor, *, all_layers: bool, with_model: bool) -> None:
    """The directory both workers read: settings.json, data.safetensors and (for SAELens) the model.

    ``train`` is the very tensor saekit's training steps were cut from, so every library trains on the
    same batches in the same order.
    """
    site = plan.config.site
    adapter = loaded.adapter
    tensors = {"train": train}
    if with_model:
        warmup_tokens, tokens = same_contexts(loaded, spec, plan)
        reference = capture(adapter, warmup_tokens, [adapter.site(site)])[adapter.site(site)]
        keep = token_mask({site: reference}, spec.data.exclude_bos, spec.data.outlier_norm_factor)
        rows = reference[keep]
        if not torch.allclose(rows, first_chunk_rows[:rows.shape[0]], rtol=1e-4, atol=1e-4):
            raise SystemExit("the contexts rebuilt for SAELens do not give saekit's chunk 0; not comparing")
        tensors.update(warmup_tokens=warmup_tokens, tokens=tokens, reference=reference)
        log(f"writing the model for SAELens to {handoff}")
        export_model(loaded, handoff)
    settings = {
        "d_in": train.shape[1], "width": plan.config.dictionary.expansion_factor * train.shape[1],
        "k": plan.config.dictionary.k, "batch_size": plan.config.optim.batch_size, "lr": lr,
        "lr_warmup_steps": plan.config.optim.warmup_steps, "steps": plan.steps, "warmup_steps": plan.warmup_steps,
        "repeats": plan.repeats, "threads": plan.threads, "seed": plan.config.optim.seed,
        "layer": adapter.site(site).layer, "n_layers": adapter.n_layers, "context_length": plan.context_length,
        "model_batch_contexts": plan.config.run.model_batch_contexts, "generation": with_model,
        "all_layers": all_layers,
    }
    save_tensors(handoff / "data.safetensors", tensors)
    write_json(handoff / "settings.json", settings)


def run_worker(venv: Venv, handoff: Path) -> dict[str, Any]:
    """Run ``venv``'s worker on the hand-off directory; what it measured, or an error entry."""
    output = handoff / f"{venv.worker.stem}.json"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "WANDB_MODE": "disabled",
           "PYTHONWARNINGS": "ignore::DeprecationWarning"}
    log(f"running {venv.worker.name} in {venv.path}")
    done = subprocess.run([str(venv.python), str(venv.worker), str(handoff), str(output)], env=env)
    if done.returncode != 0 or not output.is_file():
        return {"error": f"the {venv.label} worker exited with status {done.returncode} (its output is above)"}
    return json.loads(output.read_text(encoding="utf-8"))


def run_workers(venvs: list[Venv], loaded: LoadedModel, spec: ActivationSpec, plan: Plan, train: Tensor, lr: float,
                first_chunk_rows: Tensor, all_layers: bool) -> dict[str, dict[str, Any]]:
    """Write one hand-off directory, run each venv's worker on it in turn; {label: its results}."""
    handoff = Path(tempfile.mkdtemp(prefix="saekit-throughput-"))
    try:
        # TransformerLens treats any model path containing "llama" as one of its named Llama checkpoints.
        if "llama" in str(handoff).lower():
            raise SystemExit(f"temporary directory {handoff} contains 'llama'; set TMPDIR elsewhere")
        write_handoff(handoff, loaded, spec, plan, train, lr, first_chunk_rows, all_layers=all_layers,
                      with_model=SAELENS in venvs)
        return {venv.label: run_worker(venv, handoff) for venv in venvs}
    finally:
        shutil.rmtree(handoff, ignore_errors=True)


# ---- report -------------------------------------------------------------------------------------
def rate_of(entry: Any) -> float | None:
    return entry.get("tokens_per_s") if isinstance(entry, dict) else None


def why_missing(entry: Any) -> str:
    if isinstance(entry, dict) and "error" in entry:
        return entry["error"].splitlines()[0]
    return "not measured"


def ratio(ours: float | None, theirs: float | None) -> float | None:
    return ours / theirs if ours and theirs else None


SPARSIFY_GENERATION = ("no separate code path: sparsify's Trainer runs the plain Hugging Face forward with "
                       "forward hooks on the layer modules, as saekit and SAELens's HookedProxyLM do")


def comparison_rows(saekit: dict[str, Any], others: dict[str, dict[str, Any] | None], plan: Plan,
                    n_layers: int) -> list[dict[str, Any]]:
    """The table's rows; ``others`` maps "SAELens" / "sparsify" to a worker's results (None: skipped)."""
    site, cfg = plan.config.site, plan.config
    shape = f"TopK k={cfg.dictionary.k}, width {cfg.dictionary.expansion_factor}x, batch {cfg.optim.batch_size}"
    saelens, sparsify = others.get("SAELens"), others.get("sparsify")

    def missing(result: dict[str, Any] | None, entry: Any, label: str) -> str | None:
        if result is None:
            return f"{label} skipped"
        if "error" in result:
            return result["error"].splitlines()[0]
        return None if rate_of(entry) else why_missing(entry)

    rows = []
    generation = (saelens or {}).get("generation") or {}
    labels = {"single_site": f"activations, 1 site ({site})",
              "single_site_bf16": f"activations, 1 site ({site}), saekit's model in bf16 (SAELens fp32)",
              "all_layers": f"activations, all {n_layers} layers' resid_post, one pass"}
    for key in ("single_site", "single_site_bf16", "all_layers"):
        if key not in saekit:
            continue
        classes = [name for name in ("HookedTransformer", "HookedProxyLM") if name in generation] or [None]
        for name in classes:
            # SAELens's one-site figure (its default dtype) is what saekit's bf16 model is set against
            theirs = generation.get(name, {}).get(key.removesuffix("_bf16")) if name else None
            if name and "error" in generation.get(name, {}):
                theirs = generation[name]
            rows.append({"measurement": labels[key], "saekit_as": "ActivationSource.chunk", "saelens_via": name,
                         "sparsify_via": None, "saekit": rate_of(saekit[key]), "saelens": rate_of(theirs),
                         "sparsify": None, "saelens_note": missing(saelens, theirs, "SAELens"),
                         "sparsify_note": SPARSIFY_GENERATION})
    saelens_training = (saelens or {}).get("training")
    sparsify_training = (sparsify or {}).get("training")
    for key, precision in (("training", "fp32"), ("training_bf16", "bf16 autocast")):
        rows.append({"measurement": f"SAE training step ({shape})", "saekit_as": f"train_step, {precision}",
                     "saelens_via": "SAETrainer.step, fp32" if saelens else None,
                     "sparsify_via": (f"Trainer step, {sparsify_training.get('precision', '?')}"
                                      if isinstance(sparsify_training, dict) and "error" not in sparsify_training
                                      else None),
                     "saekit": rate_of(saekit[key]), "saelens": rate_of(saelens_training),
                     "sparsify": rate_of(sparsify_training),
                     "saelens_note": missing(saelens, saelens_training, "SAELens"),
                     "sparsify_note": missing(sparsify, sparsify_training, "sparsify")})
    for row in rows:
        row["ratio_vs_saelens"] = ratio(row["saekit"], row["saelens"])
        row["ratio_vs_sparsify"] = ratio(row["saekit"], row["sparsify"])
    return rows


def print_table(rows: list[dict[str, Any]]) -> None:
    header = ("measurement", "saekit as", "SAELens via", "saekit tok/s", "SAELens tok/s", "sparsify tok/s",
              "saekit/SAELens", "saekit/sparsify")

    def number(x: float | None) -> str:
        return f"{x:,.0f}" if x else "-"

    def times(x: float | None) -> str:
        return f"{x:.2f}x" if x else "-"
    lines = [(r["measurement"], r["saekit_as"], r["saelens_via"] or "-", number(r["saekit"]), number(r["saelens"]),
              number(r["sparsify"]), times(r["ratio_vs_saelens"]), times(r["ratio_vs_sparsify"])) for r in rows]
    widths = [max(len(str(x)) for x in column) for column in zip(header, *lines)]

    def fmt(cells: tuple[str, ...]) -> str:
        return "  ".join(str(c).ljust(w) if i < 3 else str(c).rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))
    print()
    print(fmt(header))
    print("  ".join("-" * w for w in widths))
    for line in lines:
        print(fmt(line))
    notes = [f"  {r['measurement']}, {label}: {r[key]}" for r in rows
             for label, key in (("SAELens", "saelens_note"), ("sparsify", "sparsify_note")) if r[key]]
    if notes:
        print("\nnot compared:")
        print("\n".join(dict.fromkeys(notes)))
    via = dict.fromkeys(r["sparsify_via"] for r in rows if r["sparsify_via"])
    if via:
        print(f"\nsparsify via: {', '.join(via)} (its default on this device)")
    print("\nratio = saekit tokens/s / the other library's tokens/s (above 1: saekit faster); both saekit training "
          "rows are divided by the same SAELens and sparsify figures (each library's default precision)")


# ---- main ---------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Tokens/s of saekit's activation generation and SAE training on this CPU, next to SAELens "
                    "and sparsify.",
        epilog="See the module docstring (or benchmarks/README.md) for what exactly is timed.")
    parser.add_argument("--tokens", type=int, default=8192,
                        help="tokens through the model per generation repeat, rounded up to whole model batches "
                             "of 16 contexts x 128 tokens, and above 64 contexts to whole chunks of 64 "
                             "(default: 8192, one chunk of the default recipe)")
    parser.add_argument("--steps", type=int, default=20, help="timed training steps per repeat (default: 20)")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats; the median is reported (default: 3)")
    parser.add_argument("--warmup-steps", type=int, default=5, help="untimed training steps first (default: 5)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads for every library (default: the cores this process may use)")
    parser.add_argument("--skip-saelens", action="store_true", help="do not run SAELens")
    parser.add_argument("--skip-sparsify", action="store_true", help="do not run sparsify")
    parser.add_argument("--skip-bf16-model", action="store_true",
                        help="do not also time saekit's generation with the model in bfloat16")
    parser.add_argument("--skip-all-layers", action="store_true",
                        help="leave out the all-layers generation pass (the slow part), in every library")
    parser.add_argument("--setup", action="store_true",
                        help="create the SAELens and sparsify venvs (benchmarks/.saelens-venv, "
                             "benchmarks/.sparsify-venv) first where missing or broken")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                        help="cuda: run benchmarks/gpu_step.py instead (saekit's training step beside the anchor "
                             "harness on a GPU); only --output is passed on (default: cpu)")
    parser.add_argument("--output", type=Path, default=None,
                        help="JSON file to write (default: benchmarks/results/throughput-<date>.json, or "
                             "gpu_step.py's default with --device cuda)")
    args = parser.parse_args(argv)
    for name in ("tokens", "steps", "repeats"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    if args.warmup_steps < 0 or (args.threads is not None and args.threads < 1):
        parser.error("--warmup-steps must be >= 0 and --threads >= 1")
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


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
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
    spec = plan.config.activation_spec()
    all_sites = tuple(f"blocks.{i}.resid_post" for i in range(n_layers))

    saekit: dict[str, Any] = {}
    log(f"activation generation at {site}: {plan.repeats} x {plan.tokens_per_repeat} tokens")
    saekit["single_site"], chunks = measure_generation(spec, loaded, plan, keep_site=site)
    if not args.skip_all_layers:
        log(f"activation generation at all {n_layers} layers' resid_post in one pass")
        saekit["all_layers"], _ = measure_generation(replace(spec, sites=all_sites), loaded, plan, keep_site=None)
    if not args.skip_bf16_model:  # the model itself in bf16: saekit's quickstart recipe on CPUs with bf16 units
        bf16_data = replace(plan.config.data, model_dtype="bfloat16")
        log(f"activation generation at {site}, the model in bfloat16")
        saekit["single_site_bf16"], _ = measure_generation(replace(spec, data=bf16_data),
                                                           bf16_data.load_model(plan.config.run.device), plan,
                                                           keep_site=None)
    gc.collect()
    train = training_data(chunks, plan.config)
    for key, dtype in (("training", None), ("training_bf16", torch.bfloat16)):
        log(f"SAE training ({'fp32' if dtype is None else 'bf16 autocast'}) on {train.shape[0]} cached activation "
            f"rows: {plan.repeats} x {plan.steps} steps after {plan.warmup_steps} warm-up steps")
        saekit[key] = measure_training(train, plan, autocast_dtype=dtype)

    others: dict[str, dict[str, Any] | None] = {"SAELens": None, "sparsify": None}
    if venvs:
        others.update(run_workers(venvs, loaded, spec, plan, train, saekit["training"]["lr"], chunks[0],
                                  all_layers=not args.skip_all_layers))
    loaded = None
    gc.collect()

    rows = comparison_rows(saekit, others, plan, n_layers)
    print_table(rows)
    for name, entry in ((others["SAELens"] or {}).get("generation") or {}).items():
        if isinstance(entry, dict) and "loaded_by" in entry:
            print(f"SAELens {name}: {entry['loaded_by']}; relative difference from saekit's activations "
                  f"{entry['relative_error_vs_saekit']:.1e}")
    print()
    load_after = load_average()
    log(f"load average before {load_before}, after {load_after}")
    result = {
        "date": started.isoformat(timespec="seconds"),
        "machine": {"cpu": cpu_name(), "usable_cores": available_cores(), "torch_threads": plan.threads,
                    "platform": platform.platform(), "load_average_before": load_before,
                    "load_average_after": load_after},
        "settings": {"model": DEFAULT_MODEL_DESCRIPTION, "site": site, "n_layers": n_layers,
                     "context_length": plan.context_length,
                     "model_batch_contexts": plan.config.run.model_batch_contexts,
                     "contexts_per_chunk": plan.config.data.contexts_per_chunk,
                     "tokens_per_generation_repeat": plan.tokens_per_repeat, "steps": plan.steps,
                     "warmup_steps": plan.warmup_steps, "repeats": plan.repeats,
                     "batch_size": plan.config.optim.batch_size, "k": plan.config.dictionary.k,
                     "expansion_factor": plan.config.dictionary.expansion_factor,
                     "all_layers": not args.skip_all_layers},
        "versions": {"saekit": package_version("saekit"), "torch": torch.__version__,
                     "transformers": package_version("transformers"), "python": platform.python_version(),
                     "saelens_venv": venv_versions.get("SAELens"), "sparsify_venv": venv_versions.get("sparsify")},
        "model_load_seconds": load_seconds,
        "comparison": rows,
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
