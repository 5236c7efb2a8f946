"""What ``saekit probe`` writes: ``probing.json`` (every number), ``probing.md`` (the tables), and
``sparse_probing_saebench.json`` in SAEBench's sparse_probing result layout (``SparseProbingEvalOutput``), so
its plotting and leaderboard code read saekit's numbers.

In the SAEBench file, the task stands where SAEBench names a dataset, accuracies are averaged over the classes,
and ``llm_test_accuracy`` is the sklearn probe on all raw activations (SAEBench fits that one with its own torch
probe, early-stopped on the test split); the per-class accuracies go to ``eval_result_unstructured`` as SAEBench
puts them there. The random dictionary's scores have no field in SAEBench's layout and stay in ``probing.json``,
as do the AUCs and the split setting (SAEBench's layout has accuracies only); its set sizes are the split's.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

from saekit.io import write_json, write_text
from saekit.probing.sparse_probing import ProbingResults
from saekit.render import markdown_inline, markdown_table
from saekit.rundir import PROBING_RESULTS_FILE

RESULTS_FILE = PROBING_RESULTS_FILE  # the name `saekit report` globs for (saekit/rundir.py)
REPORT_FILE = "probing.md"
SAEBENCH_FILE = "sparse_probing_saebench.json"
SET_NAMES = {"sae": "dictionary latents", "llm": "raw activations", "random": "random dictionary"}


def saebench_layout(results: ProbingResults) -> dict[str, Any]:
    """The results as SAEBench's ``SparseProbingEvalOutput`` JSON."""
    dataset = results.task["name"]
    ks = [int(k) for k in results.mean["sae"]]
    averaged = {"llm_test_accuracy": results.llm_all["accuracy"], "sae_test_accuracy": None}
    for name in ("llm", "sae"):
        averaged.update({f"{name}_top_{k}_test_accuracy": results.mean[name][str(k)]["accuracy"] for k in ks})
    per_class: dict[str, dict[str, float]] = {"llm_test_accuracy": {c.label: c.llm_all.accuracy
                                                                    for c in results.classes}}
    for name in ("llm", "sae"):
        for k in ks:
            per_class[f"{name}_top_{k}_test_accuracy"] = {c.label: c.top_k[name][str(k)].accuracy
                                                          for c in results.classes}
    return {
        "eval_type_id": "sparse_probing",
        "eval_config": {"random_seed": results.settings["seed"], "dataset_names": [dataset],
                        "probe_train_set_size": _set_size(results, "train"),
                        "probe_test_set_size": _set_size(results, "test"),
                        "context_length": results.settings["context_length"], "sae_batch_size": 125,
                        "llm_batch_size": results.settings["batch_size"], "llm_dtype": "float32",
                        "model_name": results.model, "k_values": ks, "lower_vram_usage": False},
        "eval_id": str(uuid.uuid4()),
        "datetime_epoch_millis": int(time.time() * 1000),
        "eval_result_metrics": {"llm": {k: v for k, v in averaged.items() if k.startswith("llm_")},
                                "sae": {k: v for k, v in averaged.items() if k.startswith("sae_")}},
        "eval_result_details": [{"dataset_name": f"{dataset}_results", **averaged}],
        "sae_bench_commit_hash": None,
        "sae_lens_id": Path(results.run).name,
        "sae_lens_release_id": "saekit",
        "sae_lens_version": None,
        "sae_cfg_dict": {"architecture": results.architecture, "d_sae": results.width, "hook_name": results.site,
                         "model_name": results.model},
        "eval_result_unstructured": {f"{dataset}_results": per_class},
    }


def _set_size(results: ProbingResults, split: str) -> int:
    """Texts in one binary task's split: the split plan's counts (older results: the balanced 2 x per class)."""
    if results.split:
        return results.split[f"{split}_positives"] + results.split[f"{split}_negatives"]
    return 2 * results.task[f"{split}_per_class"]


def split_line(results: ProbingResults) -> str:
    """Which split setting the probes used, in words, with its counts per one-vs-rest task."""
    split = results.split
    if not split or split["setting"] == "balanced" and split["test_positive_fraction"] is None:
        return ("Split setting: balanced (SAEBench): each class probed against as many texts of the others, in "
                "training and test.")
    test = ("balanced" if split["test_positive_fraction"] is None
            else f"positive fraction {split['test_positive_fraction']:g}")
    origin = "SAEBench" if split["setting"] == "balanced" else "sae-probes, Kantamneni et al. 2025"
    return (f"Split setting: {split['setting']} ({origin}): per one-vs-rest task "
            f"{split['train_positives']} positive and {split['train_negatives']} negative training texts "
            f"(--train-size {split['train_size'] or 'task'}, --positive-fraction {split['positive_fraction']:g}); "
            f"test split {test}: {split['test_positives']} positive and {split['test_negatives']} negative texts. "
            "Read AUC first: accuracy on an imbalanced split rewards predicting the majority class.")


def render_report(results: ProbingResults) -> str:
    """The markdown report: mean test accuracy and AUC by feature set and k, then each class."""
    task = results.task
    lines = [f"# Sparse probing: {markdown_inline(task['name'])}", "",
             f"Run {markdown_inline(results.run)} ({results.architecture}, {results.width} latents) at "
             f"{results.site} of {markdown_inline(results.model)}. Task: {markdown_inline(task['source'])}; classes "
             f"{markdown_inline(', '.join(task['classes']))}; "
             f"{task['train_per_class']} training and {task['test_per_class']} test texts per class, each class "
             f"probed against the others (one-vs-rest, split as below), context "
             f"{results.settings['context_length']} tokens, mean over non-BOS tokens.", "", split_line(results), "",
             "## Mean over classes", ""]
    ks = list(results.mean["sae"])
    header = ["features", *[f"k={k} acc" for k in ks], *[f"k={k} AUC" for k in ks]]
    rows = [[SET_NAMES[name], *[f"{results.mean[name][k]['accuracy']:.4f}" for k in ks],
             *[f"{results.mean[name][k]['auc']:.4f}" for k in ks]] for name in ("sae", "llm", "random")]
    lines += [markdown_table(header, rows), "",
              f"All raw activations: accuracy {results.llm_all['accuracy']:.4f}, AUC {results.llm_all['auc']:.4f}.",
              "", "## By class (test accuracy)", ""]
    class_header = ["class", "all raw", *[f"{name} k={k}" for name in ("sae", "llm", "random") for k in ks],
                    f"top-{ks[0]} latents"]
    class_rows = [[c.label, f"{c.llm_all.accuracy:.4f}",
                   *[f"{c.top_k[name][k].accuracy:.4f}" for name in ("sae", "llm", "random") for k in ks],
                   ", ".join(map(str, c.top_k["sae"][ks[0]].features or []))] for c in results.classes]
    auc_header = ["class", "all raw", *[f"{name} k={k}" for name in ("sae", "llm", "random") for k in ks]]
    auc_rows = [[c.label, f"{c.llm_all.auc:.4f}",
                 *[f"{c.top_k[name][k].auc:.4f}" for name in ("sae", "llm", "random") for k in ks]]
                for c in results.classes]
    lines += [markdown_table(class_header, class_rows), "", "## By class (test AUC)", "",
              markdown_table(auc_header, auc_rows), ""]
    return "\n".join(lines)


def write_probing(out_dir: Path, results: ProbingResults) -> None:
    """The report and SAEBench's file first: ``probing.json`` is what other commands read, so it is written last."""
    out_dir.mkdir(parents=True, exist_ok=True)
    write_text(out_dir / REPORT_FILE, render_report(results))
    write_json(out_dir / SAEBENCH_FILE, saebench_layout(results))
    write_json(out_dir / RESULTS_FILE, results.to_dict())
