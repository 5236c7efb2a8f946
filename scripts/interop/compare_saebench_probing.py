"""saekit's sparse probing against SAEBench's own selection and probe code (sae-bench 0.6.0), on the same pooled
features, written as a fixture that ``tests/probing/test_saebench_parity.py`` keeps in CI.

    .venv/bin/python scripts/interop/compare_saebench_probing.py                  # tiny run, writes the fixture
    .venv/bin/python scripts/interop/compare_saebench_probing.py --run RUN --task language --out DIR

1. saekit's side (this venv): a run (``--run``, or a tiny 2-layer random Llama with a TopK SAE trained here, as the
   tests build one) and a task (``--task``, default ``language`` at 40 / 10 texts per class); the pooled latents and
   raw activations (``saekit.probing.sparse_probing.pooled_task``) and saekit's one-vs-rest binary tasks
   (``binary_tasks``) saved to ``features.safetensors``.
2. SAEBench's side (``--worker``, run in the side venv ``/work/venvs/sae-bench`` with ``--python``): for every
   binary task and k, ``probe_training.get_top_k_mean_diff_mask``, ``apply_topk_mask_reduce_dim`` and
   ``train_sklearn_probe`` (its LogisticRegression) on exactly those tensors; selected indices and test accuracies
   to ``saebench.json``. The worker imports no saekit.
3. Both written to ``--out`` (default ``tests/fixtures/saebench_probing``); saekit's own selection and accuracy on
   the same tensors printed beside SAEBench's. No pickle: safetensors and JSON only.

The side venv: ``python3 -m venv /work/venvs/sae-bench``, torch 2.13.0 (CPU) first, then sae-bench 0.6.0 under
``benchmarks/constraints.txt`` (``compare_saebench.setup`` does it).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
FIXTURE = REPO / "tests" / "fixtures" / "saebench_probing"
SIDE_PYTHON = Path("/work/venvs/sae-bench/bin/python")
K_VALUES = (1, 2, 5)
SETS = ("sae", "llm")


def worker(features: Path, out: Path) -> None:
    """SAEBench's selection and probe on each saved binary task (runs in SAEBench's venv)."""
    import sae_bench
    import torch
    from sae_bench.evals.sparse_probing import probe_training
    from safetensors.torch import load_file

    tensors = load_file(str(features))
    names = sorted({key.rsplit("/", 1)[0] for key in tensors})
    results: dict[str, object] = {"sae_bench_version": getattr(sae_bench, "__version__", "0.6.0")}
    for name in names:
        train_x, train_y = tensors[f"{name}/train_x"], tensors[f"{name}/train_y"].long()
        test_x, test_y = tensors[f"{name}/test_x"], tensors[f"{name}/test_y"].long()
        entry: dict[str, object] = {}
        for k in K_VALUES:
            mask = probe_training.get_top_k_mean_diff_mask(train_x, train_y, k)
            chosen = torch.nonzero(~mask).flatten().tolist()
            _, accuracy = probe_training.train_sklearn_probe(
                probe_training.apply_topk_mask_reduce_dim(train_x, mask), train_y,
                probe_training.apply_topk_mask_reduce_dim(test_x, mask), test_y)
            entry[str(k)] = {"features": chosen, "accuracy": float(accuracy)}
        results[name] = entry
    out.write_text(json.dumps(results, indent=2) + "\n")


def tiny_run(root: Path) -> tuple[Path, object]:
    """A 2-layer random Llama with the default tokenizer and a TopK SAE trained on it (as tests/conftest.py)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from saekit.models.loading import DEFAULT_GGUF_FILE, default_gguf_path, load_model
    from saekit.training.config import TrainConfig
    from saekit.training.run import train_run

    tokenizer = AutoTokenizer.from_pretrained(str(default_gguf_path().parent), gguf_file=DEFAULT_GGUF_FILE)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id)
    LlamaForCausalLM(config).save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "model")
    loaded = load_model(str(root / "model"))
    run_config = TrainConfig.from_flat(dict(
        name="tiny", model=str(root / "model"), site="blocks.1.resid_post", context_length=16,
        contexts_per_chunk=16, expansion_factor=4, k=4, train_tokens=2048, batch_size=256,
        shuffle_buffer_tokens=512, cache_dir=str(root / "cache"), eval_tokens=140, eval_batch_contexts=4))
    return train_run(run_config, root / "runs", loaded=loaded, progress=False), loaded


def saekit_features(run: Path, loaded: object, task_name: str, train: int, test: int) -> dict[str, object]:
    """saekit's binary tasks for the sae and llm feature sets, as ``{f"{set}.{class}/{part}": tensor}``."""
    from saekit.data.labelled import load_task
    from saekit.probing.sparse_probing import ProbeSettings, binary_tasks, load_probe_inputs, pooled_task

    settings = ProbeSettings(k=K_VALUES, train_per_class=train, test_per_class=test).validate()
    task = load_task(task_name, train, test)
    pooled = pooled_task(load_probe_inputs(run, loaded), task, settings)
    tensors = {}
    for name in SETS:
        for binary in binary_tasks(pooled, task, name, settings.seed):
            prefix = f"{name}.{binary.label}"
            tensors.update({f"{prefix}/train_x": binary.train_x.float().contiguous(),
                            f"{prefix}/train_y": binary.train_y.int(),
                            f"{prefix}/test_x": binary.test_x.float().contiguous(),
                            f"{prefix}/test_y": binary.test_y.int()})
    return tensors


def compare(out: Path) -> int:
    """saekit's selection and accuracies on the fixture's tensors against SAEBench's; the number of mismatches."""
    from safetensors.torch import load_file

    from saekit.probing.probes import BinaryTask, fit_probe, top_k_mean_diff

    tensors = load_file(str(out / "features.safetensors"))
    expected = json.loads((out / "saebench.json").read_text())
    mismatches = 0
    for name, by_k in expected.items():
        if name == "sae_bench_version":
            continue
        task = BinaryTask(name, tensors[f"{name}/train_x"], tensors[f"{name}/train_y"].long(),
                          tensors[f"{name}/test_x"], tensors[f"{name}/test_y"].long())
        for k, theirs in by_k.items():
            ours = top_k_mean_diff(task.train_x, task.train_y, int(k))
            accuracy = fit_probe(task, ours).accuracy
            same = ours == theirs["features"] and abs(accuracy - theirs["accuracy"]) <= 1e-6
            mismatches += not same
            print(f"{name:>14} k={k}: saekit {ours} {accuracy:.6f} | SAEBench {theirs['features']} "
                  f"{theirs['accuracy']:.6f} {'ok' if same else 'DIFFERENT'}")
    return mismatches


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--worker", nargs=2, type=Path, metavar=("FEATURES", "OUT"), help=argparse.SUPPRESS)
    parser.add_argument("--run", type=Path, help="a run directory (default: a tiny run trained here)")
    parser.add_argument("--task", default="language", help="a built-in task or labelled file [%(default)s]")
    parser.add_argument("--train-per-class", type=int, default=40)
    parser.add_argument("--test-per-class", type=int, default=10)
    parser.add_argument("--python", type=Path, default=SIDE_PYTHON, help="SAEBench's venv python [%(default)s]")
    parser.add_argument("--out", type=Path, default=FIXTURE, help="where the fixture goes [%(default)s]")
    args = parser.parse_args()
    if args.worker:
        worker(*args.worker)
        return 0
    sys.path.insert(0, str(REPO))
    from saekit.io import save_tensors

    with tempfile.TemporaryDirectory() as scratch:
        if args.run is None:
            run, loaded = tiny_run(Path(scratch))
        else:
            run, loaded = args.run, None
        tensors = saekit_features(run, loaded, args.task, args.train_per_class, args.test_per_class)
    args.out.mkdir(parents=True, exist_ok=True)
    save_tensors(args.out / "features.safetensors", tensors)
    subprocess.run([str(args.python), __file__, "--worker", str(args.out / "features.safetensors"),
                    str(args.out / "saebench.json")], check=True, cwd=REPO)
    mismatches = compare(args.out)
    print(f"{mismatches} mismatches; fixture in {args.out}")
    return 1 if mismatches else 0


if __name__ == "__main__":
    sys.exit(main())
