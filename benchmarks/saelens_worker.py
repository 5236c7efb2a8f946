"""The SAELens half of ``benchmarks/throughput.py``; runs inside ``benchmarks/.saelens-venv``.

Not meant to be run by hand: ``throughput.py`` writes a hand-off directory and starts this script
with that venv's interpreter. The directory holds

- ``settings.json``: sizes, learning rate, step counts, thread count, which passes to run (written
  by throughput.py);
- ``data.safetensors``: ``train`` (saekit's activations at the SAE site, scaled to unit mean squared
  norm and shuffled), ``warmup_tokens`` / ``tokens`` (the token contexts saekit generated its
  activations from) and ``reference`` (saekit's activations for ``warmup_tokens``, to check that
  TransformerLens computes the same thing);
- the default model as a Hugging Face directory (``config.json``, tokenizer, ``model.safetensors``).

Two modes:

- ``saelens_worker.py HANDOFF OUTPUT``: training: tokens/s of ``SAETrainer.step`` (SAELens's own
  training step: ``TopKTrainingSAE`` forward and loss, backward, gradient clipping, Adam, LR scheduler,
  firing statistics) on the same batches as saekit, written to OUTPUT;
- ``saelens_worker.py --serve HANDOFF ARM``: one activation-generation arm (``ARM`` is JSON: ``kind``
  ``proxy`` or ``hooked_transformer``, ``dtype`` ``float32`` or ``bfloat16``, ``sites`` ``single`` or
  ``all``), served one timed repeat at a time (``bench_common.serve_arm``) so that throughput.py can
  interleave it with saekit's and sparsify's arms, each in a fresh process. What is timed is
  ``run_with_cache(tokens, names_filter=..., stop_at_layer=..., prepend_bos=False)`` and the copy
  into a preallocated tensor, as SAELens's ``ActivationsStore`` calls it, through
  ``HookedTransformer`` (SAELens's default model class) or ``HookedProxyLM`` (its wrapper for a plain
  ``AutoModelForCausalLM``, loaded here with ``dtype=`` the arm's dtype), under ``torch.no_grad``.

A part that fails is recorded with its reason. Only safetensors and JSON are read.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")

import torch  # noqa: E402
from bench_common import (  # noqa: E402
    failure,
    package_version,
    prefixed_log,
    repeat_contexts,
    serve_arm,
    step_rates,
    timed,
    timed_batches,
    warmup_batch,
)
from safetensors.torch import load_file  # noqa: E402

log = prefixed_log("saelens")










# ---- training ---------------------------------------------------------------------------------
def measure_training(settings: dict[str, Any], train: torch.Tensor) -> dict[str, Any]:
    from sae_lens import LoggingConfig, SAETrainer, TopKTrainingSAE, TopKTrainingSAEConfig
    from sae_lens.config import SAETrainerConfig

    batch, steps, warmup, repeats = (settings[key] for key in ("batch_size", "steps", "warmup_steps", "repeats"))
    total_steps = warmup + steps * repeats
    sae = TopKTrainingSAE(TopKTrainingSAEConfig(
        d_in=settings["d_in"], d_sae=settings["width"], k=settings["k"], device="cpu", dtype="float32",
    ))
    n_batches = train.shape[0] // batch
    batches = [train[i * batch:(i + 1) * batch] for i in range(n_batches)]

    def provider():  # SAETrainer wants a data provider; the loop below feeds step() itself
        while True:
            yield from batches

    trainer = SAETrainer(
        cfg=SAETrainerConfig(
            total_training_samples=total_steps * batch, train_batch_size_samples=batch,
            lr=settings["lr"], lr_end=settings["lr"] / 10, lr_warm_up_steps=settings["lr_warmup_steps"],
            device="cpu", logger=LoggingConfig(log_to_wandb=False),
        ),
        sae=sae, data_provider=provider(),
    )

    def run(count: int, first: int) -> None:
        for i in range(first, first + count):
            trainer.step(batches[i % n_batches])
            trainer.n_training_steps += 1  # fit() advances this after each step

    rates = step_rates(run, warmup, steps, repeats, batch, log)
    return {
        "tokens_per_s": statistics.median(rates), "repeats_tokens_per_s": rates,
        "what": "SAETrainer.step on TopKTrainingSAE (its defaults otherwise: rescale_acts_by_decoder_norm, "
                "decoder_init_norm=0.1, grad-norm clipping at 1.0, constant LR after warm-up)",
        "sae_config": {key: getattr(sae.cfg, key) for key in (
            "d_in", "d_sae", "k", "rescale_acts_by_decoder_norm", "aux_loss_coefficient",
            "apply_b_dec_to_input", "normalize_activations")},
    }


# ---- activation generation ----------------------------------------------------------------------
def load_hf_model(model_dir: Path, dtype: torch.dtype = torch.float32) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=dtype)
    model.eval().requires_grad_(False)
    return model, AutoTokenizer.from_pretrained(str(model_dir))


def load_hooked_transformer(model_dir: Path, hf_model: Any, tokenizer: Any, n_ctx: int) -> tuple[Any, str]:
    """The model as a ``HookedTransformer``, the way SAELens loads one (no weight processing).

    ``from_pretrained_no_processing`` needs a name from TransformerLens's list of official models;
    the default model (SmolLM2-135M) is not on it, and without hub access no other name can supply
    its config. So after that attempt fails, the same steps are taken with TransformerLens's own
    loading functions, which accept a local Hugging Face directory: the config comes from
    ``config.json`` in ``model_dir`` and the weights from ``hf_model``.
    """
    from transformer_lens import HookedTransformer
    from transformer_lens import loading_from_pretrained as loading

    try:
        model = HookedTransformer.from_pretrained_no_processing(
            str(model_dir), hf_model=hf_model, tokenizer=tokenizer, device="cpu", n_ctx=n_ctx)
        return model, "HookedTransformer.from_pretrained_no_processing(local dir, hf_model=...)"
    except ValueError as err:
        first_attempt = str(err).split(". Valid")[0]
    cfg = loading.get_pretrained_model_config(
        str(model_dir), hf_cfg=hf_model.config.to_dict(), device="cpu", dtype=torch.float32, n_ctx=n_ctx)
    state_dict = loading.get_pretrained_state_dict(str(model_dir), cfg, hf_model, dtype=torch.float32)
    model = HookedTransformer(cfg, tokenizer, move_to_device=False)
    model.load_and_process_state_dict(
        state_dict, fold_ln=False, center_writing_weights=False, center_unembed=False,
        fold_value_biases=False, refactor_factored_attn_matrices=False)
    model.move_model_modules_to_device()
    model.eval()
    how = (f"from_pretrained_no_processing refused the model ({first_attempt}: SmolLM2 is not among "
           "TransformerLens's official models); built with transformer_lens.loading_from_pretrained."
           "get_pretrained_model_config / get_pretrained_state_dict from the local config.json and the passed "
           "hf_model, then HookedTransformer(cfg).load_and_process_state_dict (no processing, as SAELens loads it)")
    return model, how


def activations_store_pass(model: Any, tokens: torch.Tensor, hook_names: list[str], d_in: int,
                           stop_at_layer: int | None) -> dict[str, torch.Tensor]:
    """One forward as SAELens's ``ActivationsStore.get_(multi_hook_)activations`` runs it."""
    _, cache = model.run_with_cache(tokens, names_filter=list(hook_names), stop_at_layer=stop_at_layer,
                                    prepend_bos=False)
    out = {}
    for name in hook_names:
        stacked = torch.zeros((tokens.shape[0], tokens.shape[1], d_in))
        stacked[:, :] = cache[name]
        out[name] = stacked
    return out


def relative_error(model: Any, warmup_tokens: torch.Tensor, reference: torch.Tensor, hook_name: str,
                   stop_at_layer: int | None, d_in: int) -> float:
    """||ours - saekit's|| / ||saekit's|| at the SAE site on the warm-up batch (BOS positions left out)."""
    with torch.no_grad():
        ours = activations_store_pass(model, warmup_tokens, [hook_name], d_in, stop_at_layer)[hook_name]
    return float((ours[:, 1:] - reference[:, 1:]).norm() / reference[:, 1:].norm())


def prepare_arm(handoff: Path, arm: dict[str, Any]) -> tuple[dict[str, Any], Any]:
    """Load the arm's model, check it against saekit's activations, warm up; (info, run(repeat))."""
    from sae_lens.util import extract_stop_at_layer_from_tlens_hook_name

    settings = json.loads((handoff / "settings.json").read_text(encoding="utf-8"))
    torch.set_num_threads(settings["threads"])
    data = load_file(str(handoff / "data.safetensors"))
    layer, n_layers, d_in, per_batch = (settings[key] for key in ("layer", "n_layers", "d_in", "model_batch_contexts"))
    dtype = getattr(torch, arm.get("dtype", "float32"))
    start = time.perf_counter()
    hf_model, tokenizer = load_hf_model(handoff, dtype)
    info: dict[str, Any] = {"threads": torch.get_num_threads(), "versions": {name: package_version(name) for name in (
        "sae-lens", "transformer-lens", "torch", "transformers")}}
    if arm["kind"] == "hooked_transformer":
        if dtype != torch.float32:
            raise ValueError("the HookedTransformer arm is fp32 only")
        model, how = load_hooked_transformer(handoff, hf_model, tokenizer, settings["context_length"])
        layer_hook = lambda i: f"blocks.{i}.hook_resid_post"
        hooks = [layer_hook(layer)] if arm["sites"] == "single" else [layer_hook(i) for i in range(n_layers)]
    else:
        from sae_lens.load_model import HookedProxyLM

        layer_hook = lambda i: f"model.layers.{i}"
        hooks = [layer_hook(layer)] if arm["sites"] == "single" else [layer_hook(i) for i in range(n_layers)]
        # SAELens's runner hooks only the modules it reads; the hooks stay on the wrapped model for good
        model = HookedProxyLM(hf_model, tokenizer, hook_names=list(hooks))
        how = f"sae_lens.load_model.HookedProxyLM(AutoModelForCausalLM(dtype={dtype}), tokenizer, hook_names=...)"
    stops = [extract_stop_at_layer_from_tlens_hook_name(h) for h in hooks]
    stop = None if any(s is None for s in stops) else max(stops)
    info.update(loaded_by=how, load_seconds=time.perf_counter() - start, hook_count=len(hooks), stop_at_layer=stop)
    if arm["sites"] == "single":
        info["relative_error_vs_saekit"] = relative_error(model, data["warmup_tokens"], data["reference"],
                                                          hooks[0], stop, d_in)
        log(f"{arm['kind']} {dtype}: relative difference from saekit's fp32 activations "
            f"{info['relative_error_vs_saekit']:.2e}")

    def forward(batch: torch.Tensor) -> None:
        activations_store_pass(model, batch, hooks, d_in, stop)
    with torch.no_grad():
        info["warmup_seconds"] = timed(lambda: forward(warmup_batch(data["warmup_tokens"], per_batch)))

    def run(repeat: int) -> dict[str, Any]:
        with torch.no_grad():
            return timed_batches(forward, repeat_contexts(data["tokens"], repeat, settings["repeats"]), per_batch)
    return info, run


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("handoff", type=Path, help="directory written by benchmarks/throughput.py")
    parser.add_argument("output", type=str, help="JSON file to write the results to (with --serve: the arm, JSON)")
    parser.add_argument("--serve", action="store_true", help="serve one generation arm, a repeat per request")
    args = parser.parse_args()
    if args.serve:
        arm = json.loads(args.output)
        return serve_arm(lambda: prepare_arm(args.handoff, arm), log)
    settings = json.loads((args.handoff / "settings.json").read_text(encoding="utf-8"))
    torch.set_num_threads(settings["threads"])
    data = load_file(str(args.handoff / "data.safetensors"))
    results: dict[str, Any] = {
        "versions": {name: package_version(name) for name in (
            "sae-lens", "transformer-lens", "torch", "transformers")},
        "threads": torch.get_num_threads(),
    }
    log(f"versions: {results['versions']}, torch threads: {results['threads']}")

    log("training ...")
    try:
        results["training"] = measure_training(settings, data["train"])
    except Exception as err:
        results["training"] = failure(err)
        log(f"training failed: {results['training']['error']}")
    Path(args.output).write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
