"""saekit's evaluation against SAEBench's core evaluation (sae-bench 0.6.0), number by number, on the same tokens.

    .venv/bin/python scripts/interop/compare_saebench.py --setup          # once: the side venv
    .venv/bin/python scripts/interop/compare_saebench.py                  # train, evaluate, export, compare
    .venv/bin/python scripts/interop/compare_saebench.py --run /tmp/saebench/runs/sae-l12   # reuse a run

One command does it all:

1. ``--setup``: SAEBench's venv ``scripts/interop/.saebench-venv`` (see :func:`setup`: torch 2.13 CPU first, then
   sae-bench's resolved requirements less the CUDA-linked packages, so no nvidia-* wheel is fetched);
2. the default model (SmolLM2-135M from the GGUF, as saekit loads it) as a plain HF directory
   (``model_export.export_default_model``), which the worker rebuilds as a TransformerLens HookedTransformer;
3. a TopK SAE trained with ``saekit train`` at ``--site`` (or ``--run RUN``), evaluated with ``saekit evaluate
   RUN --eval-tokens`` (``contexts x (L - 2)`` tokens, so exactly ``--contexts`` held-out contexts), exported with
   ``saekit convert RUN --to saelens``; the held-out contexts (``saekit.evaluation.evaluate.eval_contexts``, the
   ones ``saekit evaluate`` used) and the run's training mean saved to ``tokens.safetensors``;
4. ``saebench_worker.py`` in the side venv: SAEBench's own ``run_evals`` on those contexts, and per-token NLL, KL,
   activations, reconstructions and latents from the same TransformerLens model and SAELens SAE;
5. the comparison: saekit's numbers (metrics.json); SAEBench's; saekit's definitions applied to the worker's
   per-token tensors with saekit's own aggregation code (``LossComparison``, ``ReconstructionMetrics``), which
   must equal saekit's numbers up to float error (model and SAE implementations agree); SAEBench's definitions
   recomputed from the same tensors, which must equal SAEBench's numbers; and, for every metric whose
   definitions differ, the chain of one-change-at-a-time recomputations from one definition to the other;
6. ``benchmarks/results/saebench-core-default.json`` and ``.md`` (``--label``), and the table on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(HERE))

from model_export import export_default_model  # noqa: E402

VENV = HERE / ".saebench-venv"
WORKER = HERE / "saebench_worker.py"
RESULTS = REPO / "benchmarks" / "results"
CONSTRAINTS = REPO / "benchmarks" / "constraints.txt"
# Left out of the side venv, with why: none is used by the core evaluation.
DROPPED = {
    "xgboost": "requires nvidia-nccl-cu12 on Linux; only sae-probes' probing eval uses it",
    "torchvision": "PyPI's build is linked against CUDA torch and fails to load under torch 2.13+cpu "
                   "(transformers then fails importing LlamaConfig); nothing in the core eval uses it",
}


# ---- the side venv --------------------------------------------------------------------------------------------

def _pip(python: Path, *args: str) -> None:
    print("$", python, "-m pip", " ".join(args), flush=True)
    subprocess.run([str(python), "-m", "pip", *args], check=True)


def _dry_run(python: Path, *args: str) -> list[tuple[str, str]]:
    """(name, version) of everything ``pip install args`` would install."""
    with tempfile.NamedTemporaryFile(suffix=".json") as report:
        _pip(python, "install", "--dry-run", "--quiet", "--report", report.name, *args)
        items = json.loads(Path(report.name).read_text())["install"]
    return [(item["metadata"]["name"].lower(), item["metadata"]["version"]) for item in items]


def _cuda(name: str) -> bool:
    return name.startswith(("nvidia-", "cuda", "triton"))


def setup(venv: Path, spec: str) -> Path:
    """SAEBench's venv: torch 2.13.0 (the CPU build pip finds on local disk) first, then the exact versions a
    resolution of ``spec`` picks, less the CUDA-only packages and ``DROPPED``, installed with ``--no-deps`` (so
    nothing can pull nvidia-* wheels or replace torch)."""
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    torch_pin = ("torch==2.13.0",)
    if cuda := [n for n, _ in _dry_run(python, *torch_pin) if _cuda(n)]:
        sys.exit(f"pip would fetch CUDA packages with torch ({', '.join(cuda)}); stopping")
    _pip(python, "install", *torch_pin)
    subprocess.run([str(python), "-c", "import torch; assert torch.version.cuda is None, torch.__version__"],
                   check=True)
    resolved = _dry_run(python, "-c", str(CONSTRAINTS), spec)
    dropped = [f"{n}=={v}" for n, v in resolved if _cuda(n) or n in DROPPED]
    pins = [f"{n}=={v}" for n, v in resolved if not (_cuda(n) or n in DROPPED)]
    print(f"leaving out {', '.join(dropped) or 'nothing'} ({'; '.join(f'{k}: {v}' for k, v in DROPPED.items())})")
    if cuda := [n for n, _ in _dry_run(python, "--no-deps", "-c", str(CONSTRAINTS), *pins) if _cuda(n)]:
        sys.exit(f"pip would fetch CUDA packages ({', '.join(cuda)}); stopping")
    _pip(python, "install", "--no-deps", "-c", str(CONSTRAINTS), *pins)
    subprocess.run([str(python), "-c", "import sae_bench.evals.core.main, sae_lens, transformer_lens"], check=True)
    return python


# ---- saekit's side --------------------------------------------------------------------------------------------

def saekit_cli(*args: str) -> None:
    command = [sys.executable, "-m", "saekit", *args]
    print("$", shlex.join(["saekit", *args]), flush=True)
    subprocess.run(command, check=True, cwd=REPO)


def train(runs_dir: Path, args: argparse.Namespace) -> Path:
    """A small TopK SAE at ``args.site`` (``saekit train``); an existing finished run is reused."""
    run = runs_dir / args.name
    if (run / "dictionary").is_dir():
        return run
    saekit_cli("train", "--site", args.site, "--name", args.name, "--runs-dir", str(runs_dir),
               "--architecture", "topk", "--k", str(args.k), "--expansion-factor", str(args.expansion_factor),
               "--train-tokens", str(args.train_tokens), "--cache-dir", str(runs_dir.parent / "cache"))
    return run


def export_inputs(run: Path, contexts_wanted: int, out: Path, batch_size: int) -> dict[str, Tensor]:
    """The held-out contexts ``saekit evaluate`` uses and the run's training mean (to ``out``), and saekit's own
    site activations and dictionary outputs on them (for the model and export checks)."""
    from saekit.dictionaries.registry import load_dictionary
    from saekit.evaluation.evaluate import eval_contexts
    from saekit.io import load_tensors, save_tensors
    from saekit.models.hooks import capture
    from saekit.rundir import DICTIONARY_DIR, STATS_FILE
    from saekit.training.config import load_run_config

    config = load_run_config(run)
    loaded = config.data.load_model("cpu")
    contexts = eval_contexts(loaded, config, contexts_wanted * (config.data.context_length - 2))
    if contexts.shape[0] != contexts_wanted:
        raise SystemExit(f"eval_contexts gave {contexts.shape[0]} contexts, expected {contexts_wanted}")
    mean = load_tensors(run / STATS_FILE, "activation statistics")[f"mean.{config.site}"]
    save_tensors(out, {"contexts": contexts, "mean": mean.float()})
    dictionary, _ = load_dictionary(run / DICTIONARY_DIR, "cpu")
    dictionary = dictionary.eval().requires_grad_(False)
    site = loaded.adapter.site(config.site)
    xs, xhats, latents = [], [], []
    with torch.no_grad():
        for ids in contexts.split(batch_size):
            x = capture(loaded.adapter, ids, [site])[site].float()
            output = dictionary(x)
            xs.append(x)
            xhats.append(output.reconstruction)
            latents.append(output.latents.to_sparse())
    return {"contexts": contexts, "x": torch.cat(xs), "xhat": torch.cat(xhats), "latents": latents,
            "bos": torch.tensor(loaded.bos_token_id), "dictionary": dictionary}  # type: ignore[dict-item]


def run_worker(python: Path, model_dir: Path, sae_dir: Path, tokens: Path, out: Path,
               args: argparse.Namespace, reuse: bool = False) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """SAEBench's numbers and the per-token tensors (``saebench_worker.py`` in the side venv); with ``reuse``, a
    finished worker output for the same contexts is read instead."""
    from safetensors.torch import load_file

    if reuse and (out / "tensors.safetensors").is_file() and (out / "saebench.json").is_file():
        done = load_file(str(out / "tensors.safetensors"))
        if done["special"].shape == load_file(str(tokens))["contexts"].shape:
            print(f"reusing the worker's output in {out}", flush=True)
            return json.loads((out / "saebench.json").read_text()), done

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false", "PYTHONWARNINGS": "ignore", "WANDB_MODE": "disabled"}
    command = [str(python), str(WORKER), "--model", str(model_dir), "--sae", str(sae_dir), "--tokens", str(tokens),
               "--out", str(out), "--batch-size", str(args.batch_size), "--threads", str(args.threads)]
    print("$", shlex.join(command), flush=True)
    subprocess.run(command, check=True, env=env)
    return json.loads((out / "saebench.json").read_text()), load_file(str(out / "tensors.safetensors"))


# ---- the definitions ------------------------------------------------------------------------------------------

def dense(values: Tensor, indices: Tensor, width: int) -> Tensor:
    return torch.zeros(*values.shape[:-1], width).scatter_(-1, indices, values)


def saekit_definitions(t: dict[str, Tensor], width: int, outlier_norm_factor: float | None) -> dict[str, Any]:
    """saekit's losses and reconstruction metrics of the worker's per-token tensors, by saekit's own code: the
    positions saekit uses (predictions at 1..L-2, KL at 1..L-2, tokens 1..L-1) and its splice (BOS kept clean)."""
    from saekit.evaluation.reconstruction import ReconstructionMetrics
    from saekit.evaluation.splice import LossComparison

    comparison = LossComparison()
    metrics = ReconstructionMetrics(width, outlier_norm_factor=outlier_norm_factor)
    conditions = {"spliced": "spliced_keep_bos", "zero": "zero_keep_bos", "mean": "mean_keep_bos"}
    for rows in torch.arange(t["x"].shape[0]).split(8):
        comparison.update("clean", t["nll_clean"][rows, 1:], None)
        for condition, variant in conditions.items():
            comparison.update(condition, t[f"nll_{variant}"][rows, 1:], t[f"kl_{variant}"][rows, 1:-1])
        latents = dense(t["latent_values"][rows], t["latent_indices"][rows], width)
        metrics.update(t["x"][rows, 1:], t["xhat"][rows, 1:], latents[:, 1:])
    losses = comparison.result()
    return {"losses": losses, "reconstruction": metrics.result()}


def saebench_reconstruction(x: Tensor, xhat: Tensor, latents: Tensor, keep: Tensor, batch: int,
                            per_batch_mean: bool = True, variance: str = "saebench") -> dict[str, float]:
    """SAEBench's sparsity, variance and shrinkage metrics (``get_sparsity_and_variance_metrics``) over the tokens
    ``keep`` [N, L], in batches of ``batch`` contexts; ``variance='centered'`` uses the total variance
    E||x||^2 - ||E x||^2 instead, ``per_batch_mean=False`` centres the legacy form on the mean over all tokens."""
    per_token: dict[str, list[Tensor]] = {k: [] for k in ("l2_norm_in", "l2_norm_out", "l2_ratio", "l0", "l1", "mse",
                                                          "cossim", "legacy")}
    rrb, sum_sq, mean_sq_dim, resid, means = [], [], [], [], []
    overall_mean = x[keep].double().mean(0)
    fires, tokens = torch.zeros(latents.shape[-1], dtype=torch.float64), 0
    for rows in torch.arange(x.shape[0]).split(batch):
        mask = keep[rows]
        xi, xo, z = x[rows][mask].double(), xhat[rows][mask].double(), latents[rows][mask].double()
        n_in, n_out = xi.norm(dim=-1), xo.norm(dim=-1)
        per_token["l2_norm_in"].append(n_in)
        per_token["l2_norm_out"].append(n_out)
        per_token["l2_ratio"].append(n_out / torch.where(n_in.abs() < 1e-4, 1.0, n_in))
        rrb.append((n_out.pow(2).mean() / (xi * xo).sum(-1).mean()).reshape(1))
        per_token["l0"].append((z != 0).sum(-1).double())
        per_token["l1"].append(z.sum(-1))
        r = (xi - xo).pow(2).sum(-1)
        per_token["mse"].append(r / mask.sum())
        centre = xi.mean(0) if per_batch_mean else overall_mean
        per_token["legacy"].append(1 - r / (xi - centre).pow(2).sum(-1))
        per_token["cossim"].append((xi * xo).sum(-1) / (n_in * n_out))
        sum_sq.append(xi.pow(2).sum(-1).mean())
        mean_sq_dim.append(xi.pow(2).mean(0))
        means.append(xi.mean(0))
        resid.append(r.mean())
        fires += (z > 0).sum(0).double()
        tokens += int(mask.sum())
    out = {k: torch.cat(v).mean().item() for k, v in per_token.items()}
    out["explained_variance_legacy"] = out.pop("legacy")
    out["relative_reconstruction_bias"] = torch.cat(rrb).mean().item()
    if variance == "saebench":  # sae-bench 0.6.0: the mean over batches *and dimensions* of E[x_d^2], squared
        total = torch.stack(sum_sq).mean() - torch.cat(mean_sq_dim).mean() ** 2
    else:
        total = torch.stack(sum_sq).mean() - torch.stack(means).mean(0).pow(2).sum()
    out["explained_variance"] = (1 - torch.stack(resid).mean() / total).item()
    density = fires / tokens
    out.update(frac_alive=(density > 0).double().mean().item(),
               freq_over_1_percent=(density > 0.01).double().mean().item(),
               freq_over_10_percent=(density > 0.1).double().mean().item(),
               normalized_freq_over_1_percent=(density[density > 0.01].sum() / density.sum()).item(),
               normalized_freq_over_10_percent=(density[density > 0.1].sum() / density.sum()).item(),
               tokens=tokens)
    return out


def masked_mean(values: Tensor, mask: Tensor) -> float:
    return values.double()[mask].mean().item()


def loss_variants(t: dict[str, Tensor]) -> dict[str, float]:
    """Every CE and KL mean used by the definition chains, named ``what/variant/positions``."""
    n, length = t["special"].shape
    position = torch.arange(length).expand(n, length)
    ordinary = ~t["special"]
    pred = {"saekit": position[:, :-1] >= 1, "saebench": ordinary[:, :-1]}  # NLL: positions 0..L-2
    kl = {"saekit": (position >= 1) & (position <= length - 2), "with_last": position >= 1, "saebench": ordinary}
    out = {}
    for variant in ["clean", *(k[4:] for k in t if k.startswith("nll_") and k != "nll_clean")]:
        for name, mask in pred.items():
            out[f"ce/{variant}/{name}"] = masked_mean(t[f"nll_{variant}"], mask)
        if variant != "clean":
            for name, mask in kl.items():
                out[f"kl/{variant}/{name}"] = masked_mean(t[f"kl_{variant}"], mask)
    return out


def score(ablated: float, spliced: float, clean: float) -> float:
    """SAEBench's ce_loss_score = saekit's loss recovered: 1 - (spliced - clean) / (ablated - clean)."""
    return (ablated - spliced) / (ablated - clean)


def chains(v: dict[str, float], rec: dict[str, dict[str, float]]) -> dict[str, list[tuple[str, float]]]:
    """For each metric, saekit's definition turned into SAEBench's one change at a time (values from the worker's
    per-token tensors; the first entry is saekit's definition, the last SAEBench's)."""
    out = {
        "ce_clean": [("saekit: predictions at positions 1..L-2", v["ce/clean/saekit"]),
                     ("drop predictions made at EOS/pad tokens (ignore_tokens)", v["ce/clean/saebench"])],
        "ce_spliced": [("saekit: splice keeps BOS clean; predictions at 1..L-2", v["ce/spliced_keep_bos/saekit"]),
                       ("EOS positions also keep their clean activation", v["ce/spliced_keep_special/saekit"]),
                       ("drop predictions made at EOS/pad", v["ce/spliced_keep_special/saebench"])],
        "ce_zero": [("saekit: zero ablation keeps BOS clean; predictions at 1..L-2", v["ce/zero_keep_bos/saekit"]),
                    ("BOS zeroed too (SAEBench's zero hook ignores the mask)", v["ce/zero_all/saekit"]),
                    ("drop predictions made at EOS/pad", v["ce/zero_all/saebench"])],
        "kl_spliced": [("saekit: KL at positions 1..L-2, BOS kept", v["kl/spliced_keep_bos/saekit"]),
                       ("add the last position (SAEBench's KL covers every position)",
                        v["kl/spliced_keep_bos/with_last"]),
                       ("EOS positions also keep their clean activation", v["kl/spliced_keep_special/with_last"]),
                       ("drop EOS/pad positions", v["kl/spliced_keep_special/saebench"])],
        "kl_zero": [("saekit: KL at positions 1..L-2, BOS kept clean", v["kl/zero_keep_bos/saekit"]),
                    ("add the last position", v["kl/zero_keep_bos/with_last"]),
                    ("BOS zeroed too", v["kl/zero_all/with_last"]),
                    ("drop EOS/pad positions", v["kl/zero_all/saebench"])],
    }
    steps = [  # (change, zero variant, splice variant, NLL positions, KL positions)
        ("saekit's inputs", "zero_keep_bos", "spliced_keep_bos", "saekit", "saekit"),
        ("KL: add the last position", "zero_keep_bos", "spliced_keep_bos", "saekit", "with_last"),
        ("BOS zeroed too in the ablation", "zero_all", "spliced_keep_bos", "saekit", "with_last"),
        ("EOS kept clean in the splice", "zero_all", "spliced_keep_special", "saekit", "with_last"),
        ("drop predictions / positions at EOS and pad", "zero_all", "spliced_keep_special", "saebench", "saebench"),
    ]
    out["ce_loss_score"] = [(change, score(v[f"ce/{zero}/{pos}"], v[f"ce/{spliced}/{pos}"], v[f"ce/clean/{pos}"]))
                            for change, zero, spliced, pos, _ in steps if not change.startswith("KL")]
    out["kl_div_score"] = [(change, 1 - v[f"kl/{spliced}/{pos}"] / v[f"kl/{zero}/{pos}"])
                           for change, zero, spliced, _, pos in steps]
    s, a, b = rec["saekit_tokens"], rec["saebench_tokens"], rec["saebench"]
    out["explained_variance"] = [("saekit: 1 - sum r / sum ||x - mean||^2 over tokens 1..L-1", s["ev_centered"]),
                                 ("drop EOS/pad tokens", a["ev_centered"]),
                                 ("its sums as means of per-batch means (batches hold unequal token counts)",
                                  a["explained_variance_centered_batched"]),
                                 ("SAEBench's denominator E||x||^2 - (mean_d E[x_d^2])^2", b["explained_variance"])]
    out["explained_variance_legacy"] = [("saekit: 1 - mean_t r_t / ||x_t - mean||^2, mean over all tokens",
                                         s["legacy_overall_mean"]),
                                        ("drop EOS/pad tokens", a["legacy_overall_mean"]),
                                        ("centre on each batch's own mean", b["explained_variance_legacy"])]
    out["mse"] = [("saekit mse_per_token: mean_t ||x_t - xhat_t||^2", s["mse_per_token"]),
                  ("drop EOS/pad tokens", a["mse_per_token"]),
                  ("divided again by the tokens in the batch (SAEBench's mse)", b["mse"])]
    for name in ("l0", "l1", "cossim", "l2_ratio", "relative_reconstruction_bias", "frac_alive",
                 "freq_over_10_percent", "freq_over_1_percent"):
        out[name] = [("on saekit's tokens 1..L-1", s[name]), ("drop EOS/pad tokens", b[name])]
    return out


def default_splice(v: dict[str, float]) -> list[tuple[str, float]]:
    """SAEBench's CE and KL numbers with exclude_special_tokens_from_reconstruction off (its CLI and config default:
    BOS and EOS spliced too), recomputed from the worker's ``spliced_all`` variant under SAEBench's definitions."""
    ce, kl = v["ce/spliced_all/saebench"], v["kl/spliced_all/saebench"]
    return [("ce_loss_with_sae", ce), ("kl_div_with_sae", kl),
            ("ce_loss_score", score(v["ce/zero_all/saebench"], ce, v["ce/clean/saebench"])),
            ("kl_div_score", 1 - kl / v["kl/zero_all/saebench"])]


def reconstruction_views(t: dict[str, Tensor], width: int, batch: int) -> dict[str, dict[str, float]]:
    """SAEBench's reconstruction metrics on saekit's tokens (all but BOS), on SAEBench's (no EOS/pad), and the
    centred-variance and overall-mean variants used by the chains."""
    latents = dense(t["latent_values"], t["latent_indices"], width)
    n, length = t["special"].shape
    saekit_tokens = torch.arange(length).expand(n, length) >= 1
    views = {}
    for name, keep in (("saekit_tokens", saekit_tokens), ("saebench_tokens", ~t["special"])):
        view = saebench_reconstruction(t["x"], t["xhat"], latents, keep, batch)
        view["explained_variance_centered_batched"] = saebench_reconstruction(
            t["x"], t["xhat"], latents, keep, batch, variance="centered")["explained_variance"]
        pooled = saebench_reconstruction(t["x"], t["xhat"], latents, keep, t["x"].shape[0], per_batch_mean=False,
                                         variance="centered")
        view["ev_centered"] = pooled["explained_variance"]
        view["legacy_overall_mean"] = pooled["explained_variance_legacy"]
        r = (t["x"] - t["xhat"]).double().pow(2).sum(-1)[keep]
        view["mse_per_token"] = r.mean().item()
        views[name] = view
    views["saebench"] = saebench_reconstruction(t["x"], t["xhat"], latents, ~t["special"], batch)
    return views


# ---- the comparison -------------------------------------------------------------------------------------------

def rel(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-300)


def rows_for(saekit: dict[str, Any], bench: dict[str, Any], mine: dict[str, Any], recomputed: dict[str, float],
             on_saekit_objects: dict[str, float]) -> list[dict[str, Any]]:
    """One row per metric: saekit's value, SAEBench's, saekit's definition on SAEBench's objects, SAEBench's
    definition recomputed from the per-token tensors, SAEBench's definition on saekit's own model and dictionary
    (reconstruction metrics), and what differs."""
    losses, rec = saekit["losses"], next(iter(saekit["reconstruction"].values()))
    ml, mr = mine["losses"], mine["reconstruction"]
    m = bench["metrics"]
    perf, behav = m["model_performance_preservation"], m["model_behavior_preservation"]
    quality, shrink, sparsity, misc = m["reconstruction_quality"], m["shrinkage"], m["sparsity"], bench["misc_metrics"]
    table = [
        ("CE clean (nats)", "ce_clean", losses["ce_clean"]["mean"], "ce_loss_without_sae", perf["ce_loss_without_sae"],
         ml.ce_clean.mean, recomputed["ce_clean"], None, DIFF["ce_clean"]),
        ("CE spliced", "ce_spliced", losses["ce_spliced"]["mean"], "ce_loss_with_sae", perf["ce_loss_with_sae"],
         ml.ce_spliced.mean, recomputed["ce_spliced"], None, DIFF["ce_spliced"]),
        ("CE zero-ablated", "ce_zero", losses["ce_zero"]["mean"], "ce_loss_with_ablation",
         perf["ce_loss_with_ablation"], ml.ce_zero.mean, recomputed["ce_zero"], None, DIFF["ce_zero"]),
        ("CE mean-ablated", "ce_mean", losses["ce_mean"]["mean"], "-", None, ml.ce_mean.mean, None, None,
         "saekit only (the run's training mean at the site; BOS kept clean)"),
        ("loss recovered vs zero / CE loss score", "loss_recovered_vs_zero_ablation",
         losses["loss_recovered_vs_zero_ablation"], "ce_loss_score", perf["ce_loss_score"],
         ml.loss_recovered_vs_zero_ablation, recomputed["ce_loss_score"], None, DIFF["ce_loss_score"]),
        ("KL(clean || spliced)", "kl_spliced", losses["kl_spliced"]["mean"], "kl_div_with_sae",
         behav["kl_div_with_sae"], ml.kl_spliced.mean, recomputed["kl_spliced"], None, DIFF["kl_spliced"]),
        ("KL(clean || zero-ablated)", "kl_zero", losses["kl_zero"]["mean"], "kl_div_with_ablation",
         behav["kl_div_with_ablation"], ml.kl_zero.mean, recomputed["kl_zero"], None, DIFF["kl_zero"]),
        ("KL score", "1 - kl_spliced / kl_zero (not reported)", 1 - losses["kl_spliced"]["mean"] /
         losses["kl_zero"]["mean"], "kl_div_score", behav["kl_div_score"], 1 - ml.kl_spliced.mean / ml.kl_zero.mean,
         recomputed["kl_div_score"], None, DIFF["kl_div_score"]),
        ("explained variance", "explained_variance (1 - fvu)", rec["explained_variance"], "explained_variance",
         quality["explained_variance"], mr.explained_variance, recomputed["explained_variance"],
         on_saekit_objects["explained_variance"], DIFF["explained_variance"]),
        ("explained variance, per-token form", "1 - legacy_fvu_per_token_mean", 1 - rec["legacy_fvu_per_token_mean"],
         "explained_variance_legacy", quality["explained_variance_legacy"], 1 - mr.legacy_fvu_per_token_mean,
         recomputed["explained_variance_legacy"], on_saekit_objects["explained_variance_legacy"],
         DIFF["explained_variance_legacy"]),
        ("MSE", "mse_per_token", rec["mse_per_token"], "mse", quality["mse"], mr.mse_per_token, recomputed["mse"],
         on_saekit_objects["mse"], DIFF["mse"]),
        ("cosine(x, xhat)", "cosine_similarity_mean", rec["cosine_similarity_mean"], "cossim", quality["cossim"],
         mr.cosine_similarity_mean, recomputed["cossim"],
         on_saekit_objects["cossim"], DIFF["cossim"]),
        ("L0", "l0_mean", rec["l0_mean"], "l0", sparsity["l0"], mr.l0_mean, recomputed["l0"], on_saekit_objects["l0"],
         DIFF["l0"]),
        ("L1", "-", None, "l1", sparsity["l1"], None, recomputed["l1"], on_saekit_objects["l1"], DIFF["l1"]),
        ("||xhat|| / ||x||", "norm_ratio_mean", rec["norm_ratio_mean"], "l2_ratio", shrink["l2_ratio"],
         mr.norm_ratio_mean, recomputed["l2_ratio"],
         on_saekit_objects["l2_ratio"], DIFF["l2_ratio"]),
        ("relative reconstruction bias", "relative_reconstruction_bias", rec["relative_reconstruction_bias"],
         "relative_reconstruction_bias", shrink["relative_reconstruction_bias"], mr.relative_reconstruction_bias,
         recomputed["relative_reconstruction_bias"],
         on_saekit_objects["relative_reconstruction_bias"], DIFF["relative_reconstruction_bias"]),
        ("||x||, ||xhat||", "-", None, "l2_norm_in / l2_norm_out",
         f"{shrink['l2_norm_in']:.6g} / {shrink['l2_norm_out']:.6g}", None,
         f"{recomputed['l2_norm_in']:.6g} / {recomputed['l2_norm_out']:.6g}",
         f"{on_saekit_objects['l2_norm_in']:.6g} / {on_saekit_objects['l2_norm_out']:.6g}", DIFF["l2_norm"]),
        ("alive fraction", "1 - dead_fraction", 1 - rec["dead_fraction"], "frac_alive", misc["frac_alive"],
         1 - mr.dead_fraction, recomputed["frac_alive"], on_saekit_objects["frac_alive"], DIFF["frac_alive"]),
        ("density > 10%", "dense_fraction", rec["dense_fraction"], "freq_over_10_percent",
         misc["freq_over_10_percent"], mr.dense_fraction, recomputed["freq_over_10_percent"],
         on_saekit_objects["freq_over_10_percent"], DIFF["freq_over_10_percent"]),
        ("density > 1%", "-", None, "freq_over_1_percent", misc["freq_over_1_percent"], None,
         recomputed["freq_over_1_percent"], on_saekit_objects["freq_over_1_percent"], DIFF["freq_over_1_percent"]),
        ("tokens in the reconstruction metrics", "reconstruction tokens", rec["tokens"],
         "total_tokens_eval_sparsity_variance", m["token_stats"]["total_tokens_eval_sparsity_variance"],
         mr.tokens, recomputed["tokens"], on_saekit_objects["tokens"], DIFF["tokens"]),
        ("mean max cosine, decoder rows", "-", None, "average_max_decoder_cosine_sim",
         misc["average_max_decoder_cosine_sim"], None, None, on_saekit_objects["average_max_decoder_cosine_sim"],
         "SAEBench only; from the weights (mean over latents of the largest cosine with another latent)"),
        ("mean max cosine, encoder columns", "-", None, "average_max_encoder_cosine_sim",
         misc["average_max_encoder_cosine_sim"], None, None, on_saekit_objects["average_max_encoder_cosine_sim"],
         "SAEBench only; as above for the encoder"),
        ("FVU without outliers", "fvu_without_outliers", rec["fvu_without_outliers"], "-", None,
         mr.fvu_without_outliers, None, None, "saekit only (tokens with norm > 10 x median left out)"),
        ("relative reconstruction bias without outliers", "relative_reconstruction_bias_without_outliers",
         rec["relative_reconstruction_bias_without_outliers"], "-", None,
         mr.relative_reconstruction_bias_without_outliers, None, None,
         "saekit only (the same tokens left out as for FVU without outliers)"),
    ]
    keys = ("metric", "saekit_key", "saekit", "saebench_key", "saebench", "saekit_def_on_saebench_objects",
            "saebench_def_recomputed", "saebench_def_on_saekit_objects", "difference")
    return [dict(zip(keys, row)) for row in table]


DIFF = {
    "ce_clean": "positions: saekit averages predictions at 1..L-2 (none made at BOS); SAEBench drops predictions "
                "made at any ignored token (BOS, and EOS = pad, saekit's document separator). Per context vs per "
                "token is no difference here (every context has L-2 predictions)",
    "ce_spliced": "as CE clean, and SAEBench's splice (exclude_special_tokens_from_reconstruction) also keeps EOS "
                  "positions clean; saekit keeps only BOS",
    "ce_zero": "SAEBench's zero-ablation hook zeroes every position, BOS included (it ignores the mask); saekit's "
               "keeps BOS clean, as every saekit splice does. Plus the EOS positions as CE clean",
    "ce_loss_score": "the same formula, 1 - (spliced - clean) / (zero - clean); differs through its inputs, almost "
                     "all of it through the zero-ablation baseline (BOS zeroed or not)",
    "kl_spliced": "SAEBench's KL includes the last position (no next token, but a distribution) and drops EOS; "
                  "saekit's covers 1..L-2; splice differs at EOS as CE spliced",
    "kl_zero": "as KL spliced, and BOS zeroed in SAEBench's ablation",
    "kl_div_score": "saekit does not report it; computed from saekit's KLs",
    "explained_variance": "saekit: 1 - sum_t r_t / sum_t ||x_t - mu||^2 over tokens 1..L-1 (mu the mean per "
                          "dimension). SAEBench 0.6.0: 1 - E[r] / (E||x||^2 - m^2) with m the mean over batches and "
                          "dimensions of E[x_d^2] (it squares a mean of squares where the variance needs "
                          "sum_d (E x_d)^2), over tokens without BOS/EOS",
    "explained_variance_legacy": "both are the per-token mean of 1 - r_t / ||x_t - mu||^2; SAEBench centres on each "
                                 "batch's own mean, saekit on the mean over all evaluated tokens; EOS tokens",
    "mse": "saekit: mean_t ||x_t - xhat_t||^2 (per token, summed over dimensions); SAEBench divides each token's "
           "error by the number of tokens in its batch before averaging, so its mse is saekit's / tokens per batch",
    "cossim": "the same definition (mean over tokens of cos(x_t, xhat_t)); tokens: saekit counts EOS tokens, "
              "SAEBench drops them",
    "l0": "the same definition; tokens: saekit counts EOS tokens, SAEBench drops them",
    "l1": "SAEBench only; mean over tokens of the latents' sum",
    "l2_ratio": "the same definition (mean over tokens of ||xhat_t|| / ||x_t||); tokens: EOS",
    "relative_reconstruction_bias": "saekit: sum_t ||xhat_t||^2 / sum_t <x_t, xhat_t> over every evaluated token; "
                                    "SAEBench: that ratio per batch, then averaged over batches; tokens: EOS. The "
                                    "few outlier-norm tokens (none at EOS here) dominate a ratio of sums over every "
                                    "token; SAEBench's per-batch average weighs the one batch holding them as one "
                                    "of several. Without them (saekit's next row) the bias is near 1: TopK does not "
                                    "shrink",
    "l2_norm": "SAEBench only; mean norms of the input and the reconstruction",
    "frac_alive": "the same definition (fired on at least one evaluated token); tokens: EOS",
    "freq_over_10_percent": "the same definition (density > 0.1); tokens: EOS",
    "freq_over_1_percent": "SAEBench only",
    "tokens": "saekit counts the tokens it evaluated (all but BOS); SAEBench reports context_size x batches x "
              "batch size, every token, though its averages leave the ignored ones out (the recomputed count)",
}


def object_checks(saekit_side: dict[str, Any], t: dict[str, Tensor], bench: dict[str, Any]) -> dict[str, Any]:
    """How closely SAEBench's objects (TransformerLens model, SAELens SAE) reproduce saekit's (HF model from the
    GGUF, saekit dictionary): activations at the site, and the dictionary on the same activations."""
    x_saekit, x_tl = saekit_side["x"][:, 1:].double(), t["x"][:, 1:].double()
    dictionary = saekit_side["dictionary"]
    with torch.no_grad():
        output = dictionary(t["x"].float())
    width = dictionary.config.width
    lat_lens = dense(t["latent_values"], t["latent_indices"], width)
    same_support = ((output.latents != 0) == (lat_lens != 0)).all(-1).double().mean().item()
    return {
        "tl_vs_hf_logits_max_abs": bench["tl_vs_hf_logits_max_abs"], "hf_logits_max_abs": bench["hf_logits_max_abs"],
        "site_activations_rel_error": ((x_saekit - x_tl).norm() / x_saekit.norm()).item(),
        "site_activations_max_abs_diff": (x_saekit - x_tl).abs().max().item(),
        "saelens_vs_saekit_reconstruction_rel_error": ((output.reconstruction.double() - t["xhat"].double()).norm()
                                                       / t["xhat"].double().norm()).item(),
        "saelens_vs_saekit_latents_max_abs_diff": (output.latents - lat_lens).abs().max().item(),
        "tokens_with_identical_active_latents": same_support,
    }


def mean_max_cosine(columns: Tensor, chunk: int = 512) -> float:
    """The mean over columns of the largest cosine similarity with another column (SAEBench's weight metric)."""
    unit = torch.nn.functional.normalize(columns.double(), dim=0)
    best = []
    for start in range(0, unit.shape[1], chunk):
        similarity = unit[:, start:start + chunk].T @ unit
        rows = torch.arange(similarity.shape[0])
        similarity[rows, rows + start] = float("-inf")  # not with itself
        best.append(similarity.max(-1).values)
    return torch.cat(best).mean().item()


def saebench_def_on_saekit_objects(saekit_side: dict[str, Any], special: Tensor, width: int,
                                   batch: int) -> dict[str, float]:
    """SAEBench's reconstruction and weight metrics on saekit's own model activations and dictionary."""
    latents = torch.cat([z.to_dense() for z in saekit_side["latents"]])
    out = saebench_reconstruction(saekit_side["x"], saekit_side["xhat"], latents, ~special, batch)
    dictionary = saekit_side["dictionary"]
    out["average_max_decoder_cosine_sim"] = mean_max_cosine(dictionary.W_dec.detach().T)
    out["average_max_encoder_cosine_sim"] = mean_max_cosine(dictionary.W_enc.detach())
    return out


def fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    return f"{value:.6g}"


def markdown(result: dict[str, Any]) -> str:
    from saekit.render import markdown_table

    setup = result["setup"]
    lines = [f"# saekit evaluate vs SAEBench core ({setup['versions']['sae-bench']}), {setup['model']} "
             f"{setup['site']}", "",
             f"TopK SAE, width {setup['width']}, k {setup['k']}, {setup['train_tokens']} training tokens; "
             f"{setup['contexts']} held-out contexts of {setup['context_length']} tokens (saekit's `eval_contexts`, "
             f"BOS first), {setup['eos_tokens']} EOS separator tokens among them; SAEBench batches of "
             f"{setup['batch_size']} contexts, ignore_tokens {setup['ignore_tokens']}, "
             "exclude_special_tokens_from_reconstruction on. All float32 on the CPU.", "",
             f"Command: `{setup['command']}`", "",
             "Columns: **saekit** = `saekit evaluate` (metrics.json); **SAEBench** = `sae_bench.evals.core.main."
             "run_evals` on the TransformerLens model and the SAELens export; **saekit def.** = saekit's own "
             "aggregation code (`LossComparison`, `ReconstructionMetrics`) on the worker's per-token tensors from "
             "SAEBench's objects (must equal saekit's up to float error); **SAEBench def.** = SAEBench's definition "
             "recomputed from the same tensors (must equal SAEBench's); **SAEBench def., saekit objects** = the "
             "same on saekit's own model activations and dictionary outputs.", ""]
    header = ["metric", "saekit (key)", "saekit", "SAEBench (key)", "SAEBench", "saekit def.", "SAEBench def.",
              "SAEBench def., saekit objects", "what differs"]
    lines.append(markdown_table(header, [[r["metric"], r["saekit_key"], fmt(r["saekit"]), r["saebench_key"],
                                          fmt(r["saebench"]), fmt(r["saekit_def_on_saebench_objects"]),
                                          fmt(r["saebench_def_recomputed"]), fmt(r["saebench_def_on_saekit_objects"]),
                                          r["difference"]] for r in result["rows"]]))
    agreement = result["agreement"]
    lines += ["", "## Same definition, other implementation", "",
              f"- saekit's definitions on SAEBench's objects vs saekit's numbers: max relative difference "
              f"{agreement['saekit_def_max_rel']:.2e} ({agreement['saekit_def_worst']})",
              f"- SAEBench's definitions recomputed vs SAEBench's numbers: max relative difference "
              f"{agreement['saebench_def_max_rel']:.2e} ({agreement['saebench_def_worst']})",
              f"- SAEBench's definitions on saekit's objects vs SAEBench's numbers: max relative difference "
              f"{agreement['saekit_objects_max_rel']:.2e} ({agreement['saekit_objects_worst']})"]
    lines += [f"- {k}: {v:.3g}" for k, v in result["objects"].items()]
    lines += ["", "## From saekit's definition to SAEBench's, one change at a time", "",
              "Each row changes one thing from the row above, on the worker's per-token tensors; the first row is "
              "saekit's definition, the last SAEBench's.", ""]
    for name, steps in result["chains"].items():
        lines.append(markdown_table([name, "value"], [[label, fmt(value)] for label, value in steps]))
        lines.append("")
    lines += ["## SAEBench's default splice", "",
              "With exclude_special_tokens_from_reconstruction off (the default of SAEBench's CoreEvalConfig and "
              "command line; the run above has it on, as SAEBench's documented commands do), BOS and EOS are "
              "spliced too. Recomputed under SAEBench's definitions from the worker's every-position splice:", "",
              markdown_table(["metric", "value"], [[k, fmt(x)] for k, x in result["saebench_default_splice"]]), ""]
    lines += ["## Notes", ""] + [f"- {note}" for note in result["notes"]] + [""]
    lines.append("Timings (s): " + ", ".join(f"{k} {v:.0f}" for k, v in result["timings"].items()))
    return "\n".join(lines) + "\n"


def notes(chain: dict[str, list[tuple[str, float]]], setup: dict[str, Any]) -> list[str]:
    """The closing notes, with this run's numbers from the definition chains."""
    zero, score_steps = chain["ce_zero"], chain["ce_loss_score"]
    ev = chain["explained_variance"]
    return [
        "BOS: saekit never splices BOS (dictionaries are not trained on it) and makes no prediction from it. "
        "SAEBench's ignore_tokens (pad, eos, bos) drop BOS and every EOS (saekit's document separator, also "
        "SmolLM2's pad) from every average, and with exclude_special_tokens_from_reconstruction its splice keeps "
        "them clean, but its zero ablation zeroes every position. That is the one large difference: zeroing BOS's "
        f"residual stream too moves the zero-ablated CE from {zero[0][1]:.4g} to {zero[1][1]:.4g} nats, and the "
        f"CE loss score from {score_steps[0][1]:.4g} to {score_steps[1][1]:.4g}.",
        f"EOS: {setup['eos_tokens']} of the {setup['contexts'] * (setup['context_length'] - 1)} non-BOS tokens are "
        "EOS separators; leaving them out (SAEBench) moves every mean by a little (the chains' 'drop EOS' rows).",
        "Averaging: saekit takes the mean per context, then over contexts; with every context contributing L-2 "
        "predictions that is the per-token mean SAEBench takes. Reconstruction metrics are per token on both "
        "sides, except SAEBench's relative reconstruction bias (per batch, then averaged) and the pieces of its "
        "explained variance (means of per-batch means).",
        f"Explained variance: SAEBench 0.6.0's denominator is not the variance (it subtracts the square of the "
        "mean over dimensions of E[x_d^2] where the variance subtracts sum_d (E x_d)^2); with the variance "
        f"instead, its formula gives {ev[2][1]:.4g}, saekit's {ev[0][1]:.4g} up to the EOS tokens and batching. "
        "Both sides count every token, so both are dominated by the few outlier tokens with norms ~100x the median "
        "(saekit's fvu_without_outliers leaves them out).",
        "MSE: SAEBench's mse divides each token's squared error by the number of tokens in its batch before "
        "averaging, so it is saekit's mse_per_token / tokens per batch (~1000 here), not a per-element or "
        "per-token error.",
        "Positions: SAEBench's CE covers predictions at 0..L-2 (TransformerLens's per-token loss, less the ignored "
        "tokens) and its KL every position 0..L-1 including the last, which predicts nothing in the context; "
        "saekit's both cover 1..L-2.",
        "Dtype: both sides float32 on the CPU; the models differ only in implementation (Hugging Face's Llama from "
        "the GGUF in saekit, TransformerLens's HookedTransformer from the same weights), which moves the numbers "
        "by float rounding (the checks above).",
    ]


def agreement(rows: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, mine, theirs in (("saekit_def", "saekit_def_on_saebench_objects", "saekit"),
                               ("saebench_def", "saebench_def_recomputed", "saebench"),
                               ("saekit_objects", "saebench_def_on_saekit_objects", "saebench")):
        pairs = [(r["metric"], rel(r[mine], r[theirs])) for r in rows
                 if isinstance(r[mine], float) and isinstance(r[theirs], float)]
        worst = max(pairs, key=lambda p: p[1])
        out[f"{name}_max_rel"], out[f"{name}_worst"] = worst[1], worst[0]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--setup", action="store_true", help="create the side venv first")
    parser.add_argument("--saebench-spec", default="sae-bench", help="what --setup installs (e.g. sae-bench==0.6.0)")
    parser.add_argument("--python", type=Path, default=VENV / "bin" / "python", help="the side venv's interpreter")
    parser.add_argument("--run", type=Path, help="a trained single-site run to reuse (skips training)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/saebench"))
    parser.add_argument("--model-dir", type=Path, help="the exported model directory [WORK/smollm2]")
    parser.add_argument("--site", default="blocks.12.resid_post")
    parser.add_argument("--name", default="sae-l12")
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--expansion-factor", type=int, default=8)
    parser.add_argument("--train-tokens", type=int, default=131072)
    parser.add_argument("--contexts", type=int, default=32, help="held-out contexts (a multiple of --batch-size)")
    parser.add_argument("--batch-size", type=int, default=8, help="contexts per SAEBench batch")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--reuse", action="store_true",
                        help="reuse WORK's metrics.json, SAELens export and worker output where present (development)")
    parser.add_argument("--label", default="saebench-core-default")
    parser.add_argument("--no-write", action="store_true", help="do not write benchmarks/results files")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.contexts % args.batch_size:
        raise SystemExit("--contexts must be a multiple of --batch-size")
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}

    def timed(name: str, started: float) -> None:
        timings[name] = time.perf_counter() - started
        print(f"[{name}: {timings[name]:.0f} s]", flush=True)

    if args.setup:
        started = time.perf_counter()
        setup(args.python.parent.parent, args.saebench_spec)
        timed("setup", started)
    started = time.perf_counter()
    model_dir = export_default_model(args.model_dir or work / "smollm2")
    timed("model_export", started)
    started = time.perf_counter()
    run = args.run or train(work / "runs", args)
    timed("train", started)

    from saekit.training.config import load_run_config

    config = load_run_config(run)
    length = config.data.context_length
    started = time.perf_counter()
    metrics_file = run / "metrics.json"
    if not (args.reuse and metrics_file.is_file()
            and json.loads(metrics_file.read_text())["eval_contexts"] == args.contexts):
        saekit_cli("evaluate", str(run), "--eval-tokens", str(args.contexts * (length - 2)))
    saekit_metrics = json.loads(metrics_file.read_text())
    timed("saekit_evaluate", started)
    started = time.perf_counter()
    sae_dir = work / "saelens"
    if not (args.reuse and (sae_dir / "cfg.json").is_file()):
        saekit_cli("convert", str(run), "--to", "saelens", str(sae_dir))
    tokens = work / "tokens.safetensors"
    saekit_side = export_inputs(run, args.contexts, tokens, args.batch_size)
    if saekit_metrics["eval_contexts"] != args.contexts:
        raise SystemExit(f"saekit evaluate used {saekit_metrics['eval_contexts']} contexts, not {args.contexts}")
    timed("export", started)

    started = time.perf_counter()
    bench, t = run_worker(args.python, model_dir, sae_dir, tokens, work / "worker", args, args.reuse)
    timed("saebench_worker", started)

    if not torch.equal(t["special"][:, 0], torch.ones_like(t["special"][:, 0])):
        raise SystemExit("the first token of some context is not an ignored token (BOS)")
    width = saekit_side["dictionary"].config.width
    mine = saekit_definitions(t, width, config.data.outlier_norm_factor)
    v = loss_variants(t)
    views = reconstruction_views(t, width, args.batch_size)
    chain = chains(v, views)
    recomputed = {name: steps[-1][1] for name, steps in chain.items()}
    recomputed.update({k: views["saebench"][k] for k in ("l2_norm_in", "l2_norm_out", "tokens")})
    on_saekit = saebench_def_on_saekit_objects(saekit_side, t["special"], width, args.batch_size)
    rows = rows_for(saekit_metrics, bench, mine, recomputed, on_saekit)
    contexts = saekit_side["contexts"]
    result = {
        "label": args.label,
        "setup": {
            "model": config.data.model, "model_dir": str(model_dir), "site": config.site, "run": str(run),
            "width": width, "k": config.dictionary.k, "train_tokens": config.optim.train_tokens,
            "contexts": args.contexts, "context_length": length, "batch_size": args.batch_size,
            "ignore_tokens": bench["ignore_tokens"], "eos_tokens": int(t["special"][:, 1:].sum()),
            "bos_after_position_0": int((contexts[:, 1:] == int(saekit_side["bos"])).sum()),
            "versions": bench["versions"], "rotary_base": bench["rotary_base"],
            "command": shlex.join([".venv/bin/python", "scripts/interop/compare_saebench.py", *sys.argv[1:]]),
            "host": f"{platform.machine()} {os.cpu_count()} CPUs, torch {torch.__version__}",
        },
        "rows": rows, "agreement": agreement(rows), "objects": object_checks(saekit_side, t, bench),
        "chains": chain, "loss_variants": v, "reconstruction_views": views,
        "saebench_raw": {k: bench[k] for k in ("metrics", "misc_metrics", "config")},
        "saekit_def_on_saebench_objects": {
            "losses": asdict(mine["losses"]),
            "reconstruction": {k: val for k, val in asdict(mine["reconstruction"]).items() if k != "latent_density"}},
        "timings": timings | {f"worker_{k}": s for k, s in bench["seconds"].items()},
    }
    result["notes"] = notes(chain, result["setup"])
    result["saebench_default_splice"] = default_splice(v)
    text = markdown(result)
    print(text)
    if not args.no_write:
        from saekit.io import write_json, write_text

        RESULTS.mkdir(parents=True, exist_ok=True)
        write_json(RESULTS / f"{args.label}.json", result)
        write_text(RESULTS / f"{args.label}.md", text)
        print(f"wrote {RESULTS / f'{args.label}.json'} and .md")


if __name__ == "__main__":
    main()
