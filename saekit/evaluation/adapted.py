"""Evaluate a LoRA-adapted model around a frozen dictionary against the ORIGINAL model, on held-out contexts.

The adapters of ``saekit lora`` (``saekit.training.lora``) change the model: an adapted model that
predicts well with the dictionary spliced in is not the model the dictionary was meant to explain.
This module's one job is to say how far each model is from the original, on the run's held-out contexts
(``evaluate.eval_contexts``), per context and paired:

- ``ce_original``: the original model's clean cross-entropy (adapters disabled, nothing spliced): the reference;
- ``ce_adapted``: the adapted model, nothing spliced;
- ``ce_adapted_spliced``: the adapted model with the dictionary spliced in (the evaluation's splice, BOS clean);
- ``ce_spliced``: the original model with the dictionary spliced in (what ``saekit evaluate`` measures);
- ``delta_ce_*``: each minus ``ce_original``, context by context (paired standard errors);
- ``kl_*``: KL(original clean || that model) at the same positions;
- ``gap_closed``: 1 - delta_ce_adapted_spliced / delta_ce_spliced.

It writes ``RUN/adapters/NAME/metrics.json`` and ``report.md``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from saekit.errors import SaekitError
from saekit.evaluation.evaluate import eval_contexts, load_splice_targets
from saekit.evaluation.splice import kl_divergence, next_token_nll
from saekit.io import read_json, write_json, write_text
from saekit.models.loading import LoadedModel
from saekit.render import markdown_table
from saekit.rundir import METRICS_FILE, REPORT_FILE
from saekit.training.config import load_run_config
from saekit.training.lora import SETTINGS_FILE, attached_adapter
from saekit.training.splicing import spliced_context

MODELS = ("original", "adapted", "adapted_spliced", "spliced")  # original is the clean reference
LABELS = {"original": "original model, clean (the reference)", "adapted": "adapted model, nothing spliced",
          "adapted_spliced": "adapted model + dictionary spliced", "spliced": "original model + dictionary spliced"}


def _mean_se(values: Tensor) -> dict[str, float]:
    n = values.numel()
    return {"mean": values.mean().item(), "se": values.std().item() / math.sqrt(n) if n > 1 else float("nan")}


@torch.no_grad()
def adapted_losses(loaded: LoadedModel, run_dir: Path, adapter: Path, contexts: Tensor,
                   batch_contexts: int) -> dict[str, Tensor]:
    """Per-context mean NLL of each of :data:`MODELS` and KL(original || model) of the others, [contexts] each."""
    targets = load_splice_targets(run_dir, loaded, str(loaded.device))
    nll: dict[str, list[Tensor]] = {name: [] for name in MODELS}
    kl: dict[str, list[Tensor]] = {name: [] for name in MODELS if name != "original"}

    def forward(input_ids: Tensor, splice: bool) -> Tensor:
        if splice:
            with spliced_context(loaded, targets, input_ids=input_ids):
                return loaded.model(input_ids=input_ids, use_cache=False).logits
        return loaded.model(input_ids=input_ids, use_cache=False).logits

    with attached_adapter(loaded, adapter) as peft_model:
        for input_ids in contexts.split(batch_contexts):
            input_ids = input_ids.to(loaded.device)
            with peft_model.disable_adapter():
                logits = {"original": forward(input_ids, False), "spliced": forward(input_ids, True)}
            logits.update(adapted=forward(input_ids, False), adapted_spliced=forward(input_ids, True))
            for name, values in logits.items():
                nll[name].append(next_token_nll(values, input_ids).mean(-1).double().cpu())
                if name != "original":
                    kl[name].append(kl_divergence(logits["original"], values).mean(-1).double().cpu())
    found = {f"nll_{name}": torch.cat(values) for name, values in nll.items()}
    found.update({f"kl_{name}": torch.cat(values) for name, values in kl.items()})
    return found


def evaluate_adapter(run_dir: str | Path, adapter: str | Path, loaded: LoadedModel | None = None,
                     eval_tokens: int | None = None, contexts: Tensor | None = None,
                     write: bool = True) -> dict[str, Any]:
    """The adapted model against the original on held-out contexts (or ``contexts``); writes metrics and report."""
    run_dir, adapter = Path(run_dir), Path(adapter)
    config = load_run_config(run_dir)
    loaded = loaded or config.data.load_model(config.run.device)
    if contexts is None:
        contexts = eval_contexts(loaded, config, eval_tokens or config.run.eval_tokens)
    losses = adapted_losses(loaded, run_dir, adapter, contexts, config.run.eval_batch_contexts)
    original = losses["nll_original"]
    metrics: dict[str, Any] = {
        "note": "the adapted model is NOT the original model: its LoRA adapters change every layer they sit on. "
                "delta_ce and kl are measured against the ORIGINAL model's clean loss and distribution.",
        "run": str(run_dir), "adapter": str(adapter), "model": loaded.name,
        "eval_contexts": int(contexts.shape[0]), "context_length": int(contexts.shape[1]),
        "bos_handling": "BOS keeps its clean activation; predictions made at BOS are excluded",
        "adapter_settings": read_json(adapter / SETTINGS_FILE, "adapter settings")
        if (adapter / SETTINGS_FILE).is_file() else None,
    }
    metrics.update({f"ce_{name}": _mean_se(losses[f"nll_{name}"]) for name in MODELS})
    metrics.update({f"delta_ce_{name}": _mean_se(losses[f"nll_{name}"] - original) for name in MODELS
                    if name != "original"})
    metrics.update({f"kl_{name}": _mean_se(losses[f"kl_{name}"]) for name in MODELS if name != "original"})
    before, after = metrics["delta_ce_spliced"]["mean"], metrics["delta_ce_adapted_spliced"]["mean"]
    metrics["gap_closed"] = 1 - after / before if before > 0 else None
    if write:
        if not adapter.is_dir():
            raise SaekitError(f"adapter directory not found: {adapter}")
        write_text(adapter / REPORT_FILE, render_adapted_report(metrics))
        write_json(adapter / METRICS_FILE, metrics)
    return metrics


def render_adapted_report(metrics: dict[str, Any]) -> str:
    def shown(entry: dict[str, float] | None) -> str:
        return "-" if entry is None else f"{entry['mean']:.4f} ± {entry['se']:.4f}"
    rows = [(LABELS[name], shown(metrics[f"ce_{name}"]), shown(metrics.get(f"delta_ce_{name}")),
             shown(metrics.get(f"kl_{name}"))) for name in MODELS]
    gap = metrics["gap_closed"]
    gap_line = (f"The adapters close {gap:.1%} of the splice's ΔCE against the original model." if gap is not None
                else "The unadapted splice does not raise the loss here, so no gap-closed fraction is given.")
    settings = metrics.get("adapter_settings") or {}
    return "\n".join([
        f"# LoRA adapters around a frozen dictionary: {metrics['adapter']}",
        "",
        "**The adapted model is not the original model.** Its LoRA adapters change the layers they sit on; a low "
        "loss with the dictionary spliced into the adapted model says the adapted model works with the "
        "dictionary, not that the dictionary explains the original model. Every ΔCE and KL below is measured "
        "against the ORIGINAL model's clean loss and next-token distribution.",
        "",
        f"Run: `{metrics['run']}`; model `{metrics['model']}`; {metrics['eval_contexts']} held-out contexts of "
        f"{metrics['context_length']} tokens; {metrics['bos_handling']}. Means ± standard errors over contexts "
        "(ΔCE paired by context).",
        f"Adapted layers: {settings.get('layers', '?')}; modules: {', '.join(settings.get('modules', []) or ['?'])}.",
        "",
        markdown_table(("model", "CE (nats)", "ΔCE vs original clean", "KL(original clean ‖ model)"), rows),
        "",
        gap_line,
        "",
    ])
