"""SAEBench's core evaluation of a SAELens SAE on given token contexts, and the per-token losses and activations
under which saekit's definitions can be recomputed on the same objects.

Run in SAEBench's venv (sae-bench 0.6.0, sae-lens, transformer_lens; no saekit import)::

    HF_HUB_OFFLINE=1 scripts/interop/.saebench-venv/bin/python scripts/interop/saebench_worker.py \\
        --model MODEL_DIR --sae SAE_DIR --tokens TOKENS.safetensors --out OUT_DIR

``MODEL_DIR`` is a saved LlamaForCausalLM (saekit's default model exported by ``model_export.export_default_model``),
rebuilt as a TransformerLens ``HookedTransformer`` by ``model_export.hooked_transformer`` (no download) and checked
against the HF model's logits. ``SAE_DIR`` is a SAELens directory (``saekit convert RUN --to saelens``), loaded
with ``SAE.load_from_disk`` and prepared as SAEBench prepares a custom SAE (``load_and_format_sae``).
``TOKENS.safetensors`` holds ``contexts`` [N, L] (saekit's held-out contexts, BOS first) and ``mean`` [d] (the
run's training mean at the site, for the mean-ablation baseline only SAEBench lacks).

Two things are computed:

1. SAEBench's own numbers: ``sae_bench.evals.core.main.run_evals`` with the flags of ``multiple_evals`` (every
   metric, feature-wise statistics, ``ignore_tokens`` = the tokenizer's pad, eos and bos ids) and
   ``exclude_special_tokens_from_reconstruction`` on (as SAEBench's documented runs), then
   ``calculate_misc_metrics``. Its ``ActivationsStore`` is replaced by :class:`ContextStore`, which hands out the
   given contexts in order (``get_batch_tokens``, ``reset_input_dataset``: all ``run_evals`` calls), so both
   of its passes see exactly these contexts and no dataset is downloaded.
2. Per-token tensors on the same model and SAE: next-token NLL at every position and KL(clean || other) at every
   position. SAEBench's own three forwards per batch (clean, its splice, its zero ablation) are recorded by a
   forward hook on the unembedding (:class:`LogitRecorder`; it changes nothing), and the worker adds saekit's
   variants, which keep BOS clean (``VARIANTS``: splice, zero and mean ablation), and SAEBench's splice with
   ``exclude_special_tokens_from_reconstruction`` off (every position spliced). Also the clean site
   activations, the SAE's reconstruction and its non-zero latents. The comparison script aggregates them under
   saekit's definitions (with saekit's own code) and under SAEBench's.

Writes ``OUT_DIR/saebench.json`` and ``OUT_DIR/tensors.safetensors``. No pickle.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from importlib.metadata import version
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
from model_export import hooked_transformer, load_hf_llama, load_tokenizer  # noqa: E402

# The variants the worker runs besides SAEBench's own passes: (what is written, which positions keep their clean
# activation). "bos" keeps position 0 (saekit's rule); "none" replaces every position, which is SAEBench's splice
# when exclude_special_tokens_from_reconstruction is off (its default). SAEBench's own passes give the other two:
# its splice keeping every ignored token clean (the flag on, as here) and its zero ablation of every position.
VARIANTS = {"spliced_keep_bos": ("sae", "bos"), "zero_keep_bos": ("zero", "bos"), "mean_keep_bos": ("mean", "bos"),
            "spliced_all": ("sae", "none")}
SAEBENCH_PASSES = ("clean", "spliced_keep_special", "zero_all")  # get_recons_loss's forwards per batch, in order


class ContextStore:
    """What SAEBench's core evaluation reads of an ActivationsStore, serving fixed contexts in order."""

    def __init__(self, contexts: torch.Tensor, batch_size: int) -> None:
        self.contexts = contexts
        self.store_batch_size_prompts = batch_size
        self.context_size = contexts.shape[1]
        self.cursor = 0

    def get_batch_tokens(self, batch_size: int | None = None) -> torch.Tensor:
        n = batch_size or self.store_batch_size_prompts
        if self.cursor + n > self.contexts.shape[0]:
            raise SystemExit(f"SAEBench asked for more than the {self.contexts.shape[0]} given contexts")
        batch = self.contexts[self.cursor:self.cursor + n]
        self.cursor += n
        return batch

    def reset_input_dataset(self) -> None:
        self.cursor = 0


def special_mask(ids: torch.Tensor, special: set[int]) -> torch.Tensor:
    """[b, L] True at the tokens SAEBench ignores."""
    return torch.isin(ids, torch.tensor(sorted(special), dtype=ids.dtype))


def nll_all(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """[b, L-1] NLL of token p+1 predicted at position p (every position)."""
    log_probs = logits[:, :-1].float().log_softmax(-1)
    return -log_probs.gather(-1, ids[:, 1:, None]).squeeze(-1)


def kl_all(clean: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """[b, L] KL(clean || other) of the next-token distributions at every position."""
    p, q = clean.float().log_softmax(-1), other.float().log_softmax(-1)
    return (p.exp() * (p - q)).sum(-1)


class LogitRecorder:
    """A forward hook on the unembedding that turns the logits of SAEBench's own forwards into per-token NLL and KL.

    ``get_recons_loss`` runs, per batch, the clean model, the splice and the zero ablation (``SAEBENCH_PASSES``);
    its sparsity pass stops below the unembedding, so the hook sees exactly those three forwards per batch, in
    order. The clean logits are kept per batch: the worker's own variants need them for their KL."""

    def __init__(self, store: ContextStore) -> None:
        self.store = store
        self.calls = 0
        self.clean: list[torch.Tensor] = []
        self.tensors: dict[str, list[torch.Tensor]] = {"nll_clean": []}
        for name in SAEBENCH_PASSES[1:]:
            self.tensors[f"nll_{name}"], self.tensors[f"kl_{name}"] = [], []

    def __call__(self, module: Any, inputs: Any, logits: torch.Tensor) -> None:
        kind = SAEBENCH_PASSES[self.calls % len(SAEBENCH_PASSES)]
        self.calls += 1
        ids = self.store.contexts[self.store.cursor - logits.shape[0]:self.store.cursor]
        logits = logits.detach().float()
        self.tensors[f"nll_{kind}"].append(nll_all(logits, ids))
        if kind == "clean":
            self.clean.append(logits)
        else:
            self.tensors[f"kl_{kind}"].append(kl_all(self.clean[-1], logits))


def replacement(sae: Any, kind: str, mean: torch.Tensor, keep: torch.Tensor, captured: dict[str, torch.Tensor]) -> Any:
    """A TransformerLens hook writing the SAE's reconstruction ('sae'), zeros or ``mean`` where ``keep`` is False,
    and recording the first activations it sees in ``captured['x']``."""
    def replace(acts: torch.Tensor, hook: Any) -> torch.Tensor:
        captured.setdefault("x", acts.detach().clone())  # a single site: these are the clean activations
        if kind == "sae":
            new = sae.decode(sae.encode(acts)).to(acts.dtype)
        elif kind == "zero":
            new = torch.zeros_like(acts)
        else:
            new = mean.to(acts.dtype).expand_as(acts)
        return torch.where(keep, acts, new)
    return replace


def per_token(model: Any, sae: Any, contexts: torch.Tensor, clean_logits: list[torch.Tensor], mean: torch.Tensor,
              batch_size: int) -> dict[str, torch.Tensor]:
    """Per-token NLL and KL of the worker's variants; clean activations, reconstruction, latents."""
    hook = sae.cfg.hook_name
    out: dict[str, list[torch.Tensor]] = {name: [] for name in ["x", "xhat", "latents"]}
    for name in VARIANTS:
        out[f"nll_{name}"], out[f"kl_{name}"] = [], []
    for ids, clean in zip(contexts.split(batch_size), clean_logits, strict=True):
        keep = {"bos": (torch.arange(ids.shape[1]) == 0)[None, :, None], "none": torch.zeros(1, 1, 1, dtype=torch.bool)}
        captured: dict[str, torch.Tensor] = {}
        for name, (kind, kept) in VARIANTS.items():
            replace = replacement(sae, kind, mean, keep[kept], captured)
            with torch.no_grad():
                logits = model.run_with_hooks(ids, fwd_hooks=[(hook, replace)]).float()
            out[f"nll_{name}"].append(nll_all(logits, ids))
            out[f"kl_{name}"].append(kl_all(clean, logits))
        with torch.no_grad():
            latents = sae.encode(captured["x"])
            out["xhat"].append(sae.decode(latents))
        out["x"].append(captured["x"])
        out["latents"].append(latents)
        print(f"per-token pass: {sum(t.shape[0] for t in out['x'])}/{contexts.shape[0]} contexts", flush=True)
    tensors = {name: torch.cat(values) for name, values in out.items() if name != "latents"}
    latents = torch.cat(out["latents"])
    width = int((latents != 0).sum(-1).max())  # the most latents any token has active
    values, indices = latents.topk(max(width, 1), dim=-1)
    tensors.update(latent_values=values, latent_indices=indices)
    return tensors


def saebench_core(model: Any, sae: Any, store: ContextStore, special: set[int]) -> dict[str, Any]:
    """SAEBench's core metrics of ``sae`` on the store's contexts (its own ``run_evals`` and
    ``calculate_misc_metrics``)."""
    from sae_bench.evals.core.eval_config import CoreEvalConfig
    from sae_bench.evals.core.main import calculate_misc_metrics, run_evals

    batch_size = store.store_batch_size_prompts
    n_batches = store.contexts.shape[0] // batch_size
    # multiple_evals' configuration, every metric on, both passes over all the contexts
    config = CoreEvalConfig(model_name=sae.cfg.model_name, batch_size_prompts=batch_size,
                            n_eval_reconstruction_batches=n_batches, n_eval_sparsity_variance_batches=n_batches,
                            exclude_special_tokens_from_reconstruction=True, dataset="saekit eval contexts",
                            context_size=store.context_size, compute_kl=True, compute_ce_loss=True,
                            compute_l2_norms=True, compute_sparsity_metrics=True, compute_variance_metrics=True,
                            compute_featurewise_density_statistics=True,
                            compute_featurewise_weight_based_metrics=True, llm_dtype="float32")
    metrics, features = run_evals(sae=sae, activation_store=store, model=model, eval_config=config,  # type: ignore
                                  ignore_tokens=special)
    misc = calculate_misc_metrics(features)
    return {"metrics": metrics, "misc_metrics": misc, "feature_density": features["feature_density"],
            "config": {k: getattr(config, k) for k in ("batch_size_prompts", "n_eval_reconstruction_batches",
                                                        "n_eval_sparsity_variance_batches", "context_size",
                                                        "exclude_special_tokens_from_reconstruction")}}


def load_sae(directory: Path) -> Any:
    """The SAELens SAE at ``directory``, prepared as SAEBench prepares a custom SAE object."""
    from sae_bench.sae_bench_utils.general_utils import load_and_format_sae
    from sae_lens import SAE

    sae = SAE.load_from_disk(str(directory), device="cpu")
    _, sae, _ = load_and_format_sae("saekit", sae, "cpu")  # type: ignore[misc]
    return sae.to(dtype=torch.float32).eval()


def main() -> None:
    """Parse arguments, build the model and SAE, run SAEBench's core evaluation and the per-token pass, save."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, type=Path, help="a local Hugging Face LlamaForCausalLM directory")
    parser.add_argument("--sae", required=True, type=Path, help="a SAELens SAE directory")
    parser.add_argument("--tokens", required=True, type=Path, help="safetensors: contexts [N, L], mean [d]")
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--batch-size", type=int, default=8, help="contexts per forward (SAEBench batch_size_prompts)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    inputs = load_file(str(args.tokens))
    contexts, mean = inputs["contexts"].long(), inputs["mean"].float()
    if contexts.shape[0] % args.batch_size:
        raise SystemExit(f"{contexts.shape[0]} contexts are not a whole number of batches of {args.batch_size}")
    seconds: dict[str, float] = {}

    started = time.perf_counter()
    _, hf = load_hf_llama(args.model)
    tokenizer = load_tokenizer(args.model, args.out / "tokenizer")
    model = hooked_transformer(args.model, hf, tokenizer)
    sae = load_sae(args.sae)
    with torch.no_grad():
        probe = contexts[:2]
        tl_logits, hf_logits = model(probe).float(), hf(probe).logits.float()
    del hf
    seconds["build"] = time.perf_counter() - started
    special = {t for t in (model.tokenizer.pad_token_id, model.tokenizer.eos_token_id, model.tokenizer.bos_token_id)
               if t is not None}  # multiple_evals' ignore_tokens

    started = time.perf_counter()
    store = ContextStore(contexts, args.batch_size)
    recorder = LogitRecorder(store)
    handle = model.unembed.register_forward_hook(recorder)
    core = saebench_core(model, sae, store, special)
    handle.remove()
    if recorder.calls != len(SAEBENCH_PASSES) * len(recorder.clean):
        raise SystemExit(f"saw {recorder.calls} unembedding calls for {len(recorder.clean)} batches")
    seconds["saebench_run_evals"] = time.perf_counter() - started
    print(json.dumps(core["metrics"], indent=1), flush=True)

    started = time.perf_counter()
    tensors = per_token(model, sae, contexts, recorder.clean, mean, args.batch_size)
    tensors.update({name: torch.cat(values) for name, values in recorder.tensors.items()})
    tensors["special"] = special_mask(contexts, special)
    seconds["per_token_pass"] = time.perf_counter() - started
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(args.out / "tensors.safetensors"))

    info = {
        **core,
        "ignore_tokens": sorted(special),
        "hook_name": sae.cfg.hook_name, "hook_layer": sae.cfg.hook_layer, "d_sae": sae.cfg.d_sae,
        "architecture": sae.cfg.architecture_str,
        "rotary_base": float(model.cfg.rotary_base),
        "tl_vs_hf_logits_max_abs": float((tl_logits - hf_logits).abs().max()),
        "hf_logits_max_abs": float(hf_logits.abs().max()),
        "versions": {name: version(name) for name in ("sae-bench", "sae-lens", "transformer-lens", "transformers",
                                                      "torch")},
        "seconds": seconds,
    }
    (args.out / "saebench.json").write_text(json.dumps(info, indent=1) + "\n")
    print(json.dumps({k: v for k, v in info.items() if k != "feature_density"} | {"metrics": "..."}, default=str))


if __name__ == "__main__":
    main()
