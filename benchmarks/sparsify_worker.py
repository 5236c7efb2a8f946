"""The sparsify half of ``benchmarks/throughput.py``; runs inside ``benchmarks/.sparsify-venv``.

Not meant to be run by hand: ``throughput.py`` writes a hand-off directory and starts this script
with that venv's interpreter. It reads ``settings.json`` (sizes, step counts, thread count) and the
``train`` tensor of ``data.safetensors`` (saekit's activations at the SAE site, scaled to unit mean
squared norm and shuffled, the very rows saekit and SAELens train on), and writes its measurements
to the JSON file named on the command line. Only safetensors and JSON are read.

What is timed is one training step of EleutherAI sparsify's ``Trainer`` (``sparsify.trainer``,
``loss_fn="fvu"``, one hookpoint, one seed, no gradient accumulation, no DDP), taken apart from its
model forward. sparsify trains inside a forward hook on the language model, so its step cannot be
called on its own; :class:`TrainerStep` does, in the same order, what ``Trainer.fit`` and its hook
do for each batch once the hooked module's output is in hand:

- in the hook: an all-true token mask (no ``exclude_tokens``) applied to the flattened output, and
  the ``detach().clone()`` of the output the hook keeps; on the first step only, ``b_dec`` set to the
  batch mean; ``set_decoder_norm_to_unit_norm()``; the dead mask for the AuxK loss (only when
  ``auxk_alpha > 0``, which is not sparsify's default); the batch's total variance; the
  ``SparseCoder`` forward with it (encoder, TopK, sparse decoder, FVU, AuxK when there are dead
  latents, Multi-TopK when configured); marking the fired latents; ``float(fvu)`` for the running
  log (a host sync every step, as the trainer has); ``loss.div(acc_steps).backward()``;
- after the forward: ``remove_gradient_parallel_to_decoder_directions()``; ``optimizer.step()`` and
  ``zero_grad()``; the LR schedulers (none for the default optimizer); the tokens-since-fired
  counters updated and the fired mask cleared.

The optimizer is sparsify's default (``optimizer="signum"``): ``ScheduleFreeWrapper(SignSGD(...),
momentum=0.95)`` in train mode, with sparsify's default learning rate for this width. Parameters are
fp32, as the trainer creates them. ``SparseCoder.forward`` carries ``torch.autocast("cuda", bf16)``,
which does nothing on a CPU: on this machine sparsify's default step is fp32. ``Trainer.fit``'s
``torch.set_float32_matmul_precision("high")`` is applied too.

Left out of the step: the language-model forward itself, timed on its own by ``--serve``, checkpoints
every ``save_every`` (1000) steps, Weights & Biases logging (off when wandb is not installed, as in
this venv), DDP all-reduces and the k-decay schedule (off by default).

``sparsify_worker.py --serve HANDOFF ARM`` (``ARM`` is JSON: ``{"kind": "forward", "dtype": ...}``) serves
sparsify's model forward, one timed repeat per request (``bench_common.serve_arm``), so throughput.py can
interleave it with saekit's arms. It reproduces what ``sparsify.__main__`` and ``Trainer.fit`` do around the
step with ``loss_fn="fvu"``: the model is ``AutoModel.from_pretrained`` (the base model, no LM head: fvu needs no
logits) in the arm's dtype (sparsify's own choice on a CPU is ``dtype="auto"``, the checkpoint's dtype, which
for the hub's SmolLM2 is bf16; here both dtypes are timed), ``requires_grad_(False)``,
``set_float32_matmul_precision("high")``, a forward hook on ``base_model.layers.<layer>`` registered before
and removed after each batch, and ``self.model(x)`` with no ``no_grad`` and the default ``use_cache``. The
whole model runs (sparsify does not stop after the hooked layer). The hook does only the unpacking of the
output tuple and the token mask (the rest of its work is the training step above); the contexts are the
hand-off's, 16 x 128 tokens per forward like every other arm (sparsify's default is 32 x 2048).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import traceback
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")

import torch  # noqa: E402
from bench_common import (  # noqa: E402
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
from torch import Tensor  # noqa: E402

log = prefixed_log("sparsify")






class TrainerStep:
    """sparsify's per-batch training work for one SAE on a batch of activations (see the module docstring)."""

    def __init__(self, d_in: int, width: int, k: int, seed: int, auxk_alpha: float = 0.0) -> None:
        from sparsify import SparseCoder, SparseCoderConfig, TrainConfig

        # The trainer's defaults, from its own config class (loss_fn, optimizer, auxk_alpha, thresholds).
        self.cfg = TrainConfig(SparseCoderConfig(k=k, num_latents=width), auxk_alpha=auxk_alpha,
                               log_to_wandb=False)
        if self.cfg.loss_fn != "fvu" or self.cfg.optimizer != "signum":
            raise RuntimeError(f"this sparsify's defaults changed (loss {self.cfg.loss_fn}, optimizer "
                               f"{self.cfg.optimizer}): the worker reproduces fvu + signum only")
        torch.manual_seed(seed)
        self.sae = SparseCoder(d_in, self.cfg.sae, "cpu", dtype=torch.float32)
        self.lr = self.cfg.lr or 5e-3 / (self.sae.num_latents / (2**14)) ** 0.5
        self.optimizers = [self._signum()]
        self.lr_schedulers: list[Any] = []  # the signum branch creates none
        self.acc_steps = self.cfg.grad_acc_steps * self.cfg.micro_acc_steps
        self.num_tokens_since_fired = torch.zeros(self.sae.num_latents, dtype=torch.long)
        self.did_fire = torch.zeros(self.sae.num_latents, dtype=torch.bool)
        self.global_step = 0
        self.fvu_log = 0.0

    def _signum(self) -> Any:
        from schedulefree import ScheduleFreeWrapper
        from sparsify.sign_sgd import SignSGD

        optimizer = ScheduleFreeWrapper(SignSGD([{"params": self.sae.parameters(), "lr": self.lr}]), momentum=0.95)
        optimizer.train()
        return optimizer

    def __call__(self, batch: Tensor) -> float:
        sae, cfg = self.sae, self.cfg
        # -- what the forward hook does with the module's output (flattened: tokens x d_in)
        mask = torch.ones(batch.shape[0], dtype=torch.bool)
        kept = batch.detach().clone()  # the hook's copy of the full output (used by the ce/kl losses)
        del kept
        outputs = batch[mask]
        inputs = outputs  # autoencoding
        if self.global_step == 0:
            sae.b_dec.data = outputs.mean(0).to(sae.dtype)
        if sae.cfg.normalize_decoder:
            sae.set_decoder_norm_to_unit_norm()
        dead_mask = self.num_tokens_since_fired > cfg.dead_feature_threshold if cfg.auxk_alpha > 0 else None
        total_variance = (outputs - outputs.mean(0)).pow(2).sum()
        out = sae(x=inputs, y=outputs, dead_mask=dead_mask, total_variance=total_variance)
        self.did_fire[out.latent_indices.flatten()] = True
        self.fvu_log += float(out.fvu.detach() / (self.acc_steps * cfg.wandb_log_frequency))
        loss = out.fvu + cfg.auxk_alpha * out.auxk_loss + out.multi_topk_fvu / 8
        loss.div(self.acc_steps).backward()
        num_tokens_in_step = int(mask.sum())
        # -- after the model forward: the optimizer step and the dead-latent bookkeeping
        if cfg.sae.normalize_decoder and not cfg.sae.transcode:
            sae.remove_gradient_parallel_to_decoder_directions()
        for optimizer in self.optimizers:
            optimizer.step()
            optimizer.zero_grad()
        for scheduler in self.lr_schedulers:
            scheduler.step()
        with torch.no_grad():
            self.num_tokens_since_fired += num_tokens_in_step
            self.num_tokens_since_fired[self.did_fire] = 0
            self.did_fire.zero_()
        fvu, self.fvu_log = self.fvu_log, 0.0
        self.global_step += 1
        return fvu




def measure_training(settings: dict[str, Any], train: Tensor) -> dict[str, Any]:
    torch.set_float32_matmul_precision("high")  # Trainer.fit does this first
    batch, steps, warmup, repeats = (settings[key] for key in ("batch_size", "steps", "warmup_steps", "repeats"))
    step = TrainerStep(settings["d_in"], settings["width"], settings["k"], settings.get("seed", 0),
                       auxk_alpha=settings.get("sparsify_auxk_alpha", 0.0))
    n_batches = train.shape[0] // batch
    batches = [train[i * batch:(i + 1) * batch] for i in range(n_batches)]
    fvus: list[float] = []

    def run(count: int, first: int) -> None:
        for i in range(first, first + count):
            fvus.append(step(batches[i % n_batches]))

    rates = step_rates(run, warmup, steps, repeats, batch, log)
    autocast = bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    from sparsify.utils import decoder_impl

    return {
        "tokens_per_s": statistics.median(rates), "repeats_tokens_per_s": rates,
        "precision": "bf16 autocast" if autocast else "fp32",
        "what": "sparsify Trainer's per-batch step (fvu loss, SignSGD + ScheduleFree, unit-norm decoder, "
                "parallel-gradient removal, float(fvu) every step, tokens-since-fired counters); the model "
                "forward it trains inside is not included",
        "optimizer": "ScheduleFreeWrapper(SignSGD, momentum=0.95)", "lr": step.lr,
        "auxk_alpha": step.cfg.auxk_alpha, "decoder_impl": decoder_impl.__name__,
        "fvu_first": fvus[0], "fvu_last": fvus[-1],
    }


def check_against_trainer() -> int:
    """Train with sparsify's own ``Trainer.fit`` and with :class:`TrainerStep` on the same activations; compare.

    A tiny randomly initialised Llama (no download) is the model; ``Trainer.fit`` trains an SAE on one
    layer's output for a few batches; the same outputs, captured with a forward hook, go through
    ``TrainerStep``. Both start from the same seed, so the weights and the counters must agree.
    """
    import tempfile

    from datasets import Dataset
    from sparsify import SparseCoderConfig, TrainConfig, Trainer
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(123)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=100, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                                         num_attention_heads=4, num_key_value_heads=4)).eval()
    ids = torch.randint(0, 100, (24, 32))
    dataset = Dataset.from_dict({"input_ids": ids.tolist()}).with_format("torch")
    with tempfile.TemporaryDirectory() as save_dir:
        trainer = Trainer(TrainConfig(SparseCoderConfig(k=8, num_latents=512), batch_size=4, hookpoints=["layers.1"],
                                      log_to_wandb=False, save_dir=save_dir), dataset, model)
        trainer.fit()
    captured: list[Tensor] = []

    def keep(module: Any, inputs: Any, output: Any) -> None:
        captured.append((output[0] if isinstance(output, tuple) else output).flatten(0, 1).detach())
    handle = model.model.layers[1].register_forward_hook(keep)
    with torch.no_grad():
        for batch in ids.split(4):
            model(batch)
    handle.remove()
    step = TrainerStep(64, 512, 8, seed=0)
    for batch in captured:
        step(batch)
    theirs, ours = dict(trainer.saes["layers.1"].named_parameters()), dict(step.sae.named_parameters())
    with torch.no_grad():
        worst = max(float((theirs[n] - ours[n]).abs().max() / theirs[n].abs().max().clamp_min(1e-12))
                    for n in theirs)

    same_counts = torch.equal(trainer.num_tokens_since_fired["layers.1"], step.num_tokens_since_fired)
    log(f"{len(captured)} steps: largest relative weight difference {worst:.1e}, counters equal: {same_counts}")
    return 0 if worst < 1e-5 and same_counts else 1


def prepare_forward(handoff: Path, arm: dict[str, Any]) -> tuple[dict[str, Any], Any]:
    """sparsify's model forward with its hook (see the module docstring): (info, run(repeat))."""
    import time

    from transformers import AutoModel

    settings = json.loads((handoff / "settings.json").read_text(encoding="utf-8"))
    torch.set_num_threads(settings["threads"])
    data = load_file(str(handoff / "data.safetensors"))
    per_batch, layer = settings["model_batch_contexts"], settings["layer"]
    dtype = getattr(torch, arm.get("dtype", "float32"))
    start = time.perf_counter()
    model = AutoModel.from_pretrained(str(handoff), dtype=dtype)
    torch.set_float32_matmul_precision("high")  # Trainer.fit, first thing
    model.requires_grad_(False)  # Trainer.fit: "Make sure the model is frozen"
    module = model.base_model.get_submodule(f"layers.{layer}")
    load_seconds = time.perf_counter() - start

    def hook(module: Any, inputs: Any, outputs: Any) -> None:
        if isinstance(inputs, tuple):
            inputs = inputs[0]
        if isinstance(outputs, tuple):
            outputs, *_ = outputs
        mask = torch.ones(outputs.shape[:2], dtype=torch.bool)  # no exclude_tokens
        outputs = outputs[mask]  # the hook's flattening (the SAE step takes it from here)

    def forward(x: Tensor) -> None:
        handle = module.register_forward_hook(hook)
        try:
            model(x)
        finally:
            handle.remove()
    info = {"threads": torch.get_num_threads(), "model_class": type(model).__name__, "load_seconds": load_seconds,
            "hooked": f"base_model.layers.{layer}", "dtype": str(dtype).removeprefix("torch."),
            "versions": {name: package_version(name) for name in ("eai-sparsify", "torch", "transformers")},
            "warmup_seconds": timed(lambda: forward(warmup_batch(data["warmup_tokens"], per_batch)))}
    return info, lambda repeat: timed_batches(forward, repeat_contexts(data["tokens"], repeat, settings["repeats"]),
                                              per_batch)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("handoff", type=Path, nargs="?", help="directory written by benchmarks/throughput.py")
    parser.add_argument("output", type=str, nargs="?",
                        help="JSON file to write the results to (with --serve: the arm, as JSON)")
    parser.add_argument("--check", action="store_true",
                        help="instead: check TrainerStep against sparsify's own Trainer.fit on a tiny random model")
    parser.add_argument("--serve", action="store_true", help="serve the model-forward arm, a repeat per request")
    args = parser.parse_args()
    if args.check:
        return check_against_trainer()
    if args.handoff is None or args.output is None:
        parser.error("give the hand-off directory and the output file (or --check)")
    if args.serve:
        arm = json.loads(args.output)
        return serve_arm(lambda: prepare_forward(args.handoff, arm), log)
    settings = json.loads((args.handoff / "settings.json").read_text(encoding="utf-8"))
    torch.set_num_threads(settings["threads"])
    train = load_file(str(args.handoff / "data.safetensors"))["train"]
    results: dict[str, Any] = {
        "versions": {name: package_version(name) for name in ("eai-sparsify", "schedulefree", "torch")},
        "threads": torch.get_num_threads(),
    }
    log(f"versions: {results['versions']}, torch threads: {results['threads']}")
    log("training ...")
    try:
        results["training"] = measure_training(settings, train)
    except Exception as err:  # recorded, so throughput.py can say why
        results["training"] = {"error": f"{type(err).__name__}: {err}".strip()[:2000],
                               "traceback": "".join(traceback.format_exception(err)[-3:])[-3000:]}
        log(f"training failed: {results['training']['error']}")
    Path(args.output).write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
