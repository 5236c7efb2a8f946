"""What ``saekit probe --scr``, ``--tpp`` and ``--structure`` write: the results JSON (every number, with the
reliability warning for SCR/TPP), a markdown report, and SAEBench's result JSON layout (``ScrEvalOutput``,
``TppEvalOutput``, ``MetaStructureEvalOutput``; MDL's own ``eval_results`` list), so SAEBench's plotting and
leaderboard code read them. In SAEBench's files the task stands where SAEBench names a dataset and its
``eval_config`` holds saekit's settings under SAEBench's names.
"""

from __future__ import annotations

import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

from saekit.io import write_json, write_text
from saekit.probing.scr_tpp import RemovalResults
from saekit.probing.structure import StructureResults
from saekit.render import markdown_inline, markdown_table

RESULTS_FILES = {"scr": "scr.json", "tpp": "tpp.json", "structure": "structure.json"}
REPORT_FILES = {"scr": "scr.md", "tpp": "tpp.md", "structure": "structure.md"}
SAEBENCH_FILES = {"scr": "scr_saebench.json", "tpp": "tpp_saebench.json", "mdl": "mdl_saebench.json",
                  "meta_structure": "meta_structure_saebench.json"}


def _header(results: RemovalResults | StructureResults) -> dict[str, Any]:
    return {"eval_id": str(uuid.uuid4()), "datetime_epoch_millis": int(time.time() * 1000),
            "sae_bench_commit_hash": None, "sae_lens_id": Path(results.run).name, "sae_lens_release_id": "saekit",
            "sae_lens_version": None,
            "sae_cfg_dict": {"architecture": results.architecture, "d_sae": results.width,
                             "hook_name": results.site, "model_name": results.model}}


def removal_saebench_layout(results: RemovalResults) -> dict[str, Any]:
    """SCR or TPP results as SAEBench's ``ScrEvalOutput`` / ``TppEvalOutput`` JSON."""
    s = results.settings
    dataset = f"{results.task['name']}_{results.metric}"
    config = {"random_seed": s["seed"], "dataset_names": [results.task["name"]],
              "perform_scr": results.metric == "scr", "early_stopping_patience": s["probe_epochs"],
              "train_set_size": None, "test_set_size": None, "context_length": s["context_length"],
              "probe_train_batch_size": s["probe_batch_size"], "probe_test_batch_size": 500,
              "probe_epochs": s["probe_epochs"], "probe_lr": s["probe_lr"], "probe_l1_penalty": s["probe_l1"],
              "sae_batch_size": 125, "llm_batch_size": s["batch_size"], "llm_dtype": "float32",
              "lower_vram_usage": False, "model_name": results.model, "n_values": s["n_values"]}
    layout = {"eval_type_id": results.metric, "eval_config": config, **_header(results),
              "eval_result_metrics": {f"{results.metric}_metrics": results.metrics},
              "eval_result_details": [{"dataset_name": f"{dataset}_results", **results.metrics}]}
    if results.metric == "tpp":
        layout["eval_result_unstructured"] = {results.task["name"]: results.details["per_class"]}
    return layout


def render_removal(results: RemovalResults) -> str:
    """The markdown report: the warning, the clean probes, then the scores by N."""
    name = "SCR (spurious correlation removal)" if results.metric == "scr" else "TPP (targeted probe perturbation)"
    lines = [f"# {name}: {markdown_inline(results.task['name'])}", "", f"> {results.warning}", "",
             f"Run {markdown_inline(results.run)} ({results.architecture}, {results.width} latents) at "
             f"{results.site} of {markdown_inline(results.model)}. Task: {markdown_inline(results.task['source'])}.",
             "", _ablation_line(results.settings),
             "", "## Probes on the raw activations (test accuracy, before ablation)", "",
             markdown_table(["probe", "accuracy"], [[k, f"{v:.4f}"] for k, v in results.clean_accuracy.items()]),
             "", "## Scores by number of ablated latents", ""]
    ns = results.settings["n_values"]
    if results.metric == "scr":
        keys = [("scr_metric_threshold_{}", "SCR"), ("scr_dir1_threshold_{}", "direction 1"),
                ("scr_dir2_threshold_{}", "direction 2")]
        lines.append(f"Chosen direction: {results.details['scr_metric_direction'] or 'none (tie)'}.")
        lines.append("")
    else:
        keys = [("tpp_threshold_{}_total_metric", "TPP"), ("tpp_threshold_{}_intended_diff_only", "intended drop"),
                ("tpp_threshold_{}_unintended_diff_only", "unintended drop")]
    rows = [[str(n), *[_number(results.metrics.get(key.format(n))) for key, _ in keys]] for n in ns]
    lines += [markdown_table(["N", *[label for _, label in keys]], rows), ""]
    return "\n".join(lines)


def _ablation_line(settings: dict[str, Any]) -> str:
    if settings.get("saebench_masked_positions"):
        return ("Ablation as SAEBench 0.6.0 does it: the ablated latents' decode of the zero vector is also "
                "subtracted at each text's BOS and padding up to the context length (--saebench-masked-positions).")
    return ("Ablation over the texts' real tokens only (SAEBench also subtracts the decode of the zero vector at "
            "BOS and padding; --saebench-masked-positions does that, for numbers comparable with SAEBench's).")


def _number(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def mdl_saebench_layout(results: StructureResults) -> dict[str, Any]:
    """MDL results as SAEBench's MDL script writes them (``eval_results``: one entry per bin count)."""
    s = results.settings
    return {"eval_instance_id": str(uuid.uuid4()), "sae_lens_release": "saekit", "sae_lens_id": Path(results.run).name,
            "eval_type_id": "mdl", "sae_lens_version": None, "sae_bench_version": None,
            "date_time": datetime.now().isoformat(),
            "eval_config": {"k_values": [None], "num_bins_values": s["num_bins"], "random_seed": s["seed"],
                            "dataset_name": "saekit eval split", "context_length": None,
                            "sae_batch_size": s["batch_size"], "model_name": results.model, "llm_dtype": "float32",
                            "mse_epsilon_threshold": s["mse_threshold"]},
            "eval_results": [{"num_bins": row["num_bins"], "bins": [], "k": None,
                              "description_length": row["description_length"],
                              "within_threshold": row["within_threshold"], "mse_loss": row["mse_loss"]}
                             for row in results.mdl],
            "eval_artifacts": {"artifacts": "None"}, "sae_cfg_dict": _header(results)["sae_cfg_dict"]}


def meta_saebench_layout(results: StructureResults) -> dict[str, Any]:
    """Meta-structure results as SAEBench's ``MetaStructureEvalOutput``."""
    s = results.settings
    config = {"random_seed": s["seed"], "width_ratio": s["meta_width_ratio"], "k": s["meta_k"],
              "train_steps": s["meta_steps"], "train_batch_size": s["meta_batch_size"], "learning_rate": s["meta_lr"],
              "weight_decay": 0.0, "autocast": False, "eval_batch_size": results.width, "dead_feature_window": None,
              "feature_sampling_window": None, "dtype": "float32"}
    metrics = {key: results.meta[key] for key in ("decoder_fraction_variance_explained", "final_reconstruction_mse")}
    return {"eval_type_id": "meta_structure_decoder_variance", "eval_config": config, **_header(results),
            "eval_result_metrics": {"meta_structure": {**metrics, "train_time_seconds": results.meta["seconds"]}},
            "eval_result_details": []}


def render_structure(results: StructureResults) -> str:
    """The markdown report: MDL by bin count, then the meta-dictionary's fit."""
    chosen, meta = results.mdl_chosen, results.meta
    rows = [[str(r["num_bins"]), f"{r['description_length']:.2f}", f"{r['mean_bits_per_latent']:.4f}",
             f"{r['mse_loss']:.3g}", "yes" if r["within_threshold"] else "no"] for r in results.mdl]
    viable = "" if chosen["within_threshold"] else " (no bin count reached the threshold: the smallest overall)"
    return "\n".join([
        f"# Structure: MDL and meta-structure of {markdown_inline(results.run)}", "",
        f"{results.architecture}, {results.width} latents at {results.site} of {markdown_inline(results.model)}.", "",
        "## MDL (description length, bits per token)", "",
        markdown_table(["bins", "bits / token", "bits / latent", "sqrt(MSE) / d_in", "viable"], rows), "",
        f"Chosen: {chosen['num_bins']} bins, {chosen['description_length']:.2f} bits per token{viable}.", "",
        "## Meta-structure", "",
        f"A BatchTopK meta-dictionary of {meta['meta_width']} latents (k {meta['k']}) trained on the decoder rows "
        f"explains {meta['decoder_fraction_variance_explained']:.4f} of their variance (MSE "
        f"{meta['final_reconstruction_mse']:.3g}, inference L0 {meta['inference_l0']:.2f}).", ""])


def write_removal(out_dir: Path, results: RemovalResults) -> None:
    """Report and SAEBench's file first; the results JSON last."""
    out_dir.mkdir(parents=True, exist_ok=True)
    write_text(out_dir / REPORT_FILES[results.metric], render_removal(results))
    write_json(out_dir / SAEBENCH_FILES[results.metric], removal_saebench_layout(results))
    write_json(out_dir / RESULTS_FILES[results.metric], results.to_dict())


def write_structure(out_dir: Path, results: StructureResults) -> None:
    """Report and SAEBench's two files first; ``structure.json`` last."""
    out_dir.mkdir(parents=True, exist_ok=True)
    write_text(out_dir / REPORT_FILES["structure"], render_structure(results))
    write_json(out_dir / SAEBENCH_FILES["mdl"], mdl_saebench_layout(results))
    write_json(out_dir / SAEBENCH_FILES["meta_structure"], meta_saebench_layout(results))
    write_json(out_dir / RESULTS_FILES["structure"], results.to_dict())
