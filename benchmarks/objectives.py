"""Which training recipe damages the default model least: saekit's objectives side by side, on one machine, in one run.

Every recipe trains the quickstart's dictionary (SmolLM2-135M-Instruct, ``blocks.14.resid_post``, TopK,
k 32, width 8 x 576 = 4608, batch 2048 tokens, the same seed and data order) on the same number of
training tokens (``--train-tokens``), and is evaluated by ``saekit evaluate``'s code on the same
held-out contexts (``--eval-tokens`` predictions): ΔCE with its standard error over contexts (paired:
spliced minus clean on each context), KL(clean || spliced), the effective-compute fraction, FVU (with and
without outlier tokens), L0 and the dead fraction, beside each run's own training throughput (tokens/s
end to end, from its ``throughput.json``) and wall time.

Recipes (``--recipes``, comma-separated):

- ``mse``: the quickstart's recipe (reconstruction at the site).
- ``mse+ft``: the same, with its last ``--finetune-fraction`` of the steps trained on KL + MSE
  (``--finetune-fraction``; Karvonen 2025).
- ``kl``: KL(clean || spliced) of the next-token distributions + the sparsity term, from the start.
- ``e2e_ds``: ``kl`` (coefficient 0.5) + 2.5 x the mean MSE at ``--downstream-sites`` (e2e_sae's "e2e+ds").
- ``mse+lora``: the ``mse`` dictionary, frozen, with LoRA adapters trained on the layers after its site on the
  KL to the original model for ``--lora-tokens`` more tokens (``saekit lora``; rank 64, alpha 32, dropout 0, lr
  ``--lora-lr``). Its ΔCE and KL are the adapted spliced model's against the ORIGINAL model's clean loss; the
  adapted model is not the original (its FVU and L0 are the frozen dictionary's, unchanged).

"closed" is the share of the ``mse`` recipe's ΔCE a recipe removes: 1 - ΔCE(recipe) / ΔCE(mse).

Writes ``benchmarks/results/objectives-<date>.json`` and ``.md`` (``--out`` to choose) and prints the table.
Run: ``.venv/bin/python benchmarks/objectives.py [--recipes mse,mse+ft] [--train-tokens 512000]``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import tempfile
import time
from pathlib import Path

from bench_common import cpu_name

from saekit.evaluation.adapted import evaluate_adapter
from saekit.evaluation.evaluate import evaluate_run
from saekit.io import write_json, write_text
from saekit.jobs.quickstart import quickstart_config
from saekit.render import markdown_table
from saekit.training.lora import AdapterSettings, train_adapter
from saekit.training.run import train_run

NOTE = ("tokens/s is each run's end-to-end training rate: the mse phase reads activations from saekit's disk "
        "cache when an earlier run wrote them (so it shows the dictionary steps alone), while the model-loss "
        "steps run the model twice and backpropagate through the layers after the site at every step. mse+lora: "
        "ΔCE and KL are the adapted model with the frozen mse dictionary spliced in, against the ORIGINAL model; "
        "its tokens/s is the adapters' training rate, its train s the mse run's plus the adapters'.")

RECIPES = {
    "mse": {},
    "mse+ft": {"finetune_fraction": None},  # filled from --finetune-fraction
    "kl": {"objective": "kl"},
    "e2e_ds": {"objective": "e2e_ds", "kl_coefficient": 0.5, "downstream_coefficient": 2.5},
    "mse+lora": {},  # the mse recipe, then adapters (run_recipe)
}


def recipe_overrides(name: str, args: argparse.Namespace) -> dict:
    overrides = dict(RECIPES[name])
    if name == "mse+ft":
        overrides["finetune_fraction"] = args.finetune_fraction
    if name == "e2e_ds":
        overrides["downstream_sites"] = tuple(args.downstream_sites.split(","))
    return overrides


def run_recipe(name: str, args: argparse.Namespace, runs_dir: Path, loaded) -> dict:
    config = quickstart_config(name.replace("+", "-")).updated(
        train_tokens=args.train_tokens, eval_tokens=args.eval_tokens, k=args.k, **recipe_overrides(name, args))
    started = time.perf_counter()
    run_dir = train_run(config, runs_dir, loaded=loaded)
    trained = time.perf_counter() - started
    results = evaluate_run(run_dir, loaded=loaded, generations=0)
    throughput = json.loads((run_dir / "throughput.json").read_text())
    losses, site = results.losses, next(iter(results.reconstruction.values()))
    compute = getattr(results.effective_compute, "compute_fraction", None)
    row = {"recipe": name, "k": args.k, "train_tokens": args.train_tokens,
           "delta_ce": losses.delta_ce_spliced.mean, "delta_ce_se": losses.delta_ce_spliced.se,
           "kl": losses.kl_spliced.mean, "kl_se": losses.kl_spliced.se, "compute_fraction": compute,
           "fvu": site.fvu, "fvu_without_outliers": site.fvu_without_outliers, "l0": site.l0_mean,
           "dead_fraction": site.dead_fraction, "train_seconds": trained,
           "tokens_per_s": throughput["end_to_end_tokens_per_s"], "config": config.to_dict()["loss"]}
    return with_adapters(row, run_dir, args, loaded) if name == "mse+lora" else row


def with_adapters(row: dict, run_dir: Path, args: argparse.Namespace, loaded) -> dict:
    """The row of a frozen dictionary once LoRA adapters are trained around it, against the ORIGINAL model."""
    settings = AdapterSettings(rank=64, alpha=32.0, dropout=0.0, lr=args.lora_lr, train_tokens=args.lora_tokens,
                               batch_size=2048)
    started = time.perf_counter()
    out = train_adapter(run_dir, settings, loaded=loaded, name="benchmark")
    seconds = time.perf_counter() - started
    metrics = evaluate_adapter(run_dir, out, loaded=loaded, eval_tokens=args.eval_tokens)
    after, kl = metrics["delta_ce_adapted_spliced"], metrics["kl_adapted_spliced"]
    adapted = {"delta_ce": after["mean"], "delta_ce_se": after["se"], "kl": kl["mean"], "kl_se": kl["se"],
               "compute_fraction": None, "train_tokens": args.train_tokens + args.lora_tokens,
               "train_seconds": row["train_seconds"] + seconds,
               "tokens_per_s": args.lora_tokens / seconds, "lora": settings.to_dict(),
               "frozen_dictionary_delta_ce": metrics["delta_ce_spliced"]["mean"]}
    return {**row, **adapted}


def markdown(rows: list[dict], header: dict) -> str:
    base = next((r["delta_ce"] for r in rows if r["recipe"] == "mse"), None)
    table = markdown_table(
        ["recipe", "k", "ΔCE (nats) ± SE", "closed vs mse", "KL", "compute fraction", "FVU", "FVU w/o outliers",
         "L0", "dead", "tokens/s", "train s"],
        [(r["recipe"], r["k"], f"{r['delta_ce']:.4f} ± {r['delta_ce_se']:.4f}",
          "" if base is None or r["recipe"] == "mse" else f"{1 - r['delta_ce'] / base:+.1%}",
          f"{r['kl']:.4f}", "" if r["compute_fraction"] is None else f"{r['compute_fraction']:.3f}",
          f"{r['fvu']:.4f}", f"{r['fvu_without_outliers']:.4f}", f"{r['l0']:.1f}", f"{r['dead_fraction']:.3f}",
          f"{r['tokens_per_s']:.0f}", f"{r['train_seconds']:.0f}") for r in rows])
    lines = [f"# Training objectives on the default model ({header['date']})", "",
             f"Machine: {header['cpu']}, {header['threads']} torch threads. Quickstart shape (blocks.14.resid_post, "
             f"TopK, width 4608), {header['train_tokens']} training tokens per recipe, {header['eval_tokens']} "
             "held-out predictions, one run of `benchmarks/objectives.py`.", "", f"Command: `{header['command']}`",
             "", table, "", NOTE, ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--recipes", default="mse,mse+ft,kl,e2e_ds")
    parser.add_argument("--train-tokens", type=int, default=512_000)
    parser.add_argument("--eval-tokens", type=int, default=8192)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--finetune-fraction", type=float, default=0.1)
    parser.add_argument("--downstream-sites", default="blocks.18.resid_post,blocks.22.resid_post,"
                                                       "blocks.26.resid_post,blocks.29.resid_post")
    parser.add_argument("--lora-tokens", type=int, default=65_536, help="mse+lora: the adapters' training tokens")
    parser.add_argument("--lora-lr", type=float, default=1e-3, help="mse+lora: the adapters' learning rate")
    parser.add_argument("--runs-dir", type=Path, default=None, help="where the runs go (default: a temporary dir)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    import torch

    recipes = args.recipes.split(",")
    unknown = [name for name in recipes if name not in RECIPES]
    if unknown:
        parser.error(f"unknown recipes {unknown}; choose from {sorted(RECIPES)}")
    date = datetime.date.today().isoformat()
    header = {"date": date, "cpu": cpu_name(), "threads": torch.get_num_threads(), "train_tokens": args.train_tokens,
              "eval_tokens": args.eval_tokens, "command": "python benchmarks/objectives.py " + " ".join(
                  f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if v is not None and k != "out")}
    with tempfile.TemporaryDirectory() as scratch:
        runs_dir = args.runs_dir or Path(scratch)
        loaded = quickstart_config().data.load_model("cpu")
        rows = []
        for name in recipes:
            rows.append(run_recipe(name, args, runs_dir, loaded))
            print(markdown(rows, header))
    out = args.out or Path(__file__).parent / "results" / f"objectives-{date}"
    write_json(out.with_suffix(".json"), {**header, "rows": rows})
    write_text(out.with_suffix(".md"), markdown(rows, header))
    print(f"written {out}.json and .md")


if __name__ == "__main__":
    main()
