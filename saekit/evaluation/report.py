"""Render an evaluation's metrics as a short markdown report a person reads.

Where a reliability study (``saekit reliability``) sits beside the run, each metric it measured shows its
seed-to-seed SD too (``seed_noise``; :func:`saekit.evaluation.reliability.seed_noise_near` finds it).

Text read from ``metrics.json`` that saekit did not compose (the model name, site and run names, error
messages, corpus text in the damage and generation sections) goes through :mod:`saekit.render`'s markdown
helpers; headings, labels and numbers are written as they are.
"""

from __future__ import annotations

from collections.abc import Mapping

from saekit.dictionaries.base import Span
from saekit.dictionaries.registry import span_of
from saekit.evaluation.damage import damage_markdown
from saekit.evaluation.effective_compute import ComputeNotReported, EffectiveCompute, format_report_markdown
from saekit.evaluation.generation import generations_markdown
from saekit.evaluation.reliability import seed_noise_near
from saekit.evaluation.results import CONDITIONS, EvaluationResults, LossResults, MeanSE, ReconstructionResults
from saekit.render import markdown_code, markdown_inline, markdown_table


def _pm(value: MeanSE, digits: int = 4) -> str:
    return f"{value.mean:.{digits}f} ± {value.se:.{digits}f}"


def _sd(noise: Mapping[str, float], key: str, spec: str = ".3g") -> str:
    """`` (seed SD x)`` beside a metric a reliability study measured; nothing otherwise."""
    return f" (seed SD {noise[key]:{spec}})" if key in noise else ""


CONDITION_LABELS = {"clean": "clean model", "spliced": "dictionary spliced in", "zero": "site zero-ablated",
                    "mean": "site mean-ablated"}


def _loss_table(losses: LossResults) -> list[str]:
    rows = []
    for condition in CONDITIONS:
        clean = condition == "clean"
        rows.append([CONDITION_LABELS[condition], _pm(losses.ce(condition)),
                     "-" if clean else _pm(losses.delta_ce(condition)), "-" if clean else _pm(losses.kl(condition))])
    return [markdown_table(["condition", "CE (nats)", "ΔCE vs clean", "KL(clean ‖ condition)"], rows)]


def _outlier_lines(rec: ReconstructionResults, noise: Mapping[str, float]) -> list[str]:
    if rec.outlier_norm_factor is None:  # no outlier rule, or metrics written before the split
        return []
    return [f"- FVU without outlier-norm tokens (norm > {rec.outlier_norm_factor}x the median, the training "
            f"rule): **{rec.fvu_without_outliers:.4f}**{_sd(noise, 'fvu_without_outliers')}. Those tokens are "
            f"{rec.outlier_token_fraction:.2%} "
            f"of the evaluated tokens but hold {rec.outlier_variance_share:.1%} of the variance and "
            f"{rec.outlier_error_share:.1%} of the squared error; where the share is large, the all-token "
            "FVU above mostly measures them."]


def _shrinkage_lines(rec: ReconstructionResults) -> list[str]:
    if rec.relative_reconstruction_bias is None:  # metrics written before these were measured
        return []
    return [f"- Shrinkage: relative reconstruction bias Σ‖x̂‖² / Σ⟨x, x̂⟩ = **{rec.relative_reconstruction_bias:.4f}** "
            f"({rec.relative_reconstruction_bias_without_outliers:.4f} without outlier-norm tokens; 1: unbiased; "
            "below 1 the reconstructions are shrunk toward zero, above 1 they overshoot); "
            f"mean ‖x̂‖ / ‖x‖ {rec.norm_ratio_mean:.4f}; mean cos(x, x̂) {rec.cosine_similarity_mean:.4f}"]


def _reconstruction_lines(site: str, rec: ReconstructionResults, noise: Mapping[str, float]) -> list[str]:
    p = rec.l0_percentiles
    return [
        f"### Reconstruction and sparsity at {markdown_code(site)} ({rec.tokens} tokens)",
        "",
        f"- Fraction of variance unexplained (FVU): **{rec.fvu:.4f}**{_sd(noise, 'fvu')} "
        f"(explained variance {rec.explained_variance:.4f}); formula: {markdown_inline(rec.fvu_formula)}. "
        f"Legacy per-token-mean form: {rec.legacy_fvu_per_token_mean:.4f}.",
        *_outlier_lines(rec, noise),
        f"- MSE per token (sum over dimensions): {rec.mse_per_token:.4f}; per element: {rec.mse_per_element:.6f}",
        *_shrinkage_lines(rec),
        f"- L0: mean {rec.l0_mean:.2f}{_sd(noise, 'l0')}; 5/50/95th percentiles {p['5']:.0f} / "
        f"{p['50']:.0f} / {p['95']:.0f}",
        f"- Dead latents (never fired on these tokens): {rec.dead_fraction:.2%}{_sd(noise, 'dead_fraction', '.2%')}; "
        "dense latents "
        f"(fire on > {rec.dense_threshold:.0%} of tokens): {rec.dense_fraction:.2%}",
        "",
    ]


def render_report(metrics: EvaluationResults, seed_noise: Mapping[str, float] | None = None) -> str:
    """The report; ``seed_noise`` (metric key -> seed SD) defaults to the reliability study beside a single run."""
    losses = metrics.losses
    noise = seed_noise_near(metrics.runs) if seed_noise is None else seed_noise
    lines = [
        "# saekit evaluation report",
        "",
        f"Model: {markdown_inline(metrics.model)}{_dtype_note(metrics.run)}. "
        f"Sites spliced jointly: {', '.join(markdown_code(s) for s in metrics.sites)}. "
        f"{metrics.eval_contexts} held-out contexts of {metrics.context_length} tokens "
        f"({losses.contexts} contexts scored). {markdown_inline(metrics.bos_handling)}. ± values are standard errors "
        "over contexts (ΔCE paired by context)."
        + (" Seed SD: the metric's seed-to-seed standard deviation in the reliability study beside the run "
           "(`saekit reliability`)." if noise else ""),
        "",
        *_objective_lines(metrics),
        "## Degradation of the model",
        "",
        *_loss_table(losses),
        "",
        f"- ΔCE with the dictionary spliced in: **{losses.delta_ce_spliced.mean:.4f} nats**{_sd(noise, 'delta_ce')}"
        + (f"; KL {losses.kl_spliced.mean:.4f}{_sd(noise, 'kl')}." if "kl" in noise else "."),
        f"- Loss recovered against a **zero-ablation** baseline: {losses.loss_recovered_vs_zero_ablation:.2%}; "
        f"against a **mean-ablation** baseline: {losses.loss_recovered_vs_mean_ablation:.2%}. "
        "Loss recovered flatters: ablating a site destroys the model, so the denominator is huge. "
        "Read ΔCE and the effective compute below instead.",
        "",
    ]
    compute = metrics.effective_compute
    if isinstance(compute, ComputeNotReported):
        lines += ["### Effective compute", "", f"Not reported: {markdown_inline(compute.error)}", ""]
    elif isinstance(compute, EffectiveCompute):
        lines += [format_report_markdown(compute), ""]
        if "compute_fraction" in noise:
            lines += [f"Seed SD of the effective compute fraction: {noise['compute_fraction']:.3g}.", ""]
    if metrics.is_joint:
        lines += _alone_lines(metrics)
    cross_layer = _cross_layer_lines(metrics.run)
    if cross_layer:
        lines += cross_layer
    elif len(metrics.reconstruction) > 1:
        lines += ["In the joint splice each dictionary reads the activations of the model with the dictionaries "
                  "upstream of it already spliced in, so the reconstruction figures below are measured there and "
                  "differ from each dictionary alone (the FVU column above).", ""]
    for site, rec in metrics.reconstruction.items():
        lines += _reconstruction_lines(site, rec, noise)
    if metrics.token_damage is not None:
        lines += ["## Where the splice hurts", "", damage_markdown(metrics.token_damage), ""]
    if metrics.training:
        lines += _training_lines(metrics.training, metrics.run)
    return "\n".join(lines + _generation_lines(metrics)) + "\n"


def _generation_lines(metrics: EvaluationResults) -> list[str]:
    """The side-by-side samples; where none were sampled, why (nothing for metrics that never recorded it)."""
    heading = ["## The degraded model, side by side", ""]
    if metrics.generations:
        return heading + ["Same prompts, same sampling seed (temperature 0.7), clean vs spliced:", "",
                          generations_markdown(metrics.generations), ""]
    if metrics.generations_skipped:
        return heading + [f"None sampled: {markdown_inline(metrics.generations_skipped)}.", ""]
    return []


# ``run`` and ``training`` are the JSON documents EvaluationResults keeps them as (config.json, throughput.json).
def _cross_layer_lines(run: dict | None) -> list[str]:
    """How a cross-layer run was spliced (its config names the layer range); nothing for a single-site run."""
    if not run or not run.get("layers"):
        return []
    layers = markdown_code(run["layers"])
    if span_of(run["dictionary"]["architecture"]) is Span.CAUSAL:
        text = (f"The cross-layer transcoder replaces the output of every MLP in layers {layers} at once: layer j's "
                "output is the sum of the decoders into j of the latents of every layer up to j, each layer's encoder "
                "reading the spliced model's own MLP input there. The per-layer figures below (FVU of each MLP "
                "output, L0 of that layer's latents) are measured in that spliced model.")
    else:
        text = (f"The crosscoder is acausal: it encodes the clean activations of every layer in {layers} together, "
                "and each layer is replaced by its part of that one reconstruction. The per-layer FVU below compares "
                "with those clean activations; every layer shares the same latents (and L0).")
    return [text, ""]


def _objective_lines(metrics: EvaluationResults) -> list[str]:
    """What the dictionary was trained to minimise; one trained on the model's loss trades reconstruction for it."""
    config = metrics.run_config()
    if config is None:
        return []
    loss = config.loss
    lines = [f"Training objective: {markdown_inline(loss.describe())}."]
    if loss.needs_model:
        lines.append("It was trained (at least in part) on the model's own next-token loss, which trades "
                     "reconstruction for it: read the FVU below beside ΔCE and KL, not alone.")
    return [" ".join(lines), ""]


def _dtype_note(run: dict | None) -> str:
    """The model's dtype, which the clean and the spliced losses share (the run's data section decides it)."""
    dtype = ((run or {}).get("data") or {}).get("model_dtype")
    return f", run in {markdown_inline(dtype)} (clean and spliced alike)" if dtype else ""


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f} tokens/s"


def _training_lines(training: dict, run: dict | None) -> list[str]:
    """Where the last training session's time went: end to end beside the forward and the steps alone.

    The table escapes its cells itself; the prose around it goes through ``markdown_inline``.
    """
    optim = (run or {}).get("optim", {})
    rows = [
        ["end to end (activations + steps, as run)", _rate(training.get("end_to_end_tokens_per_s")),
         f"{training.get('wall_seconds', 0):.1f} s"],
        [f"model forward alone ({training.get('model_dtype', '?')})",
         _rate(training.get("model_forward_tokens_per_s")), f"{training.get('model_forward_seconds', 0):.1f} s"],
        [f"dictionary steps alone (autocast {training.get('autocast', '?')})",
         _rate(training.get("dictionary_steps_tokens_per_s")), f"{training.get('dictionary_steps_seconds', 0):.1f} s"],
        ["waiting for activations", "-", f"{training.get('waiting_for_activations_seconds', 0):.1f} s"],
    ]
    return [
        "## Training throughput", "",
        f"{training.get('tokens_trained_this_session', 0):,} tokens trained this session "
        f"({optim.get('train_tokens', 0):,} in the run) on {markdown_inline(str(training.get('device')))}, "
        f"{training.get('processes', 1)} process(es), {training.get('torch_threads')} threads, "
        f"{training.get('prefetch_chunks', 0)} chunk(s) prefetched.", "",
        markdown_table(["part", "rate", "time"], rows), "",
        f"{markdown_inline(training.get('note', ''))}.", "",
        *_ceiling_lines(training.get("model_forward_ceiling")),
    ]


def _ceiling_lines(ceiling: dict | None) -> list[str]:
    """The forward's achieved FLOP/s against this machine's matmul rate at the model's shapes (when measured)."""
    if not ceiling or ceiling.get("ceiling_fraction") is None:
        return []
    return [f"The model forward (blocks 0-{ceiling['through_layer']}, {ceiling['flops_per_token'] / 1e6:.1f} MFLOP "
            f"a token in matrix products) ran at {ceiling['gflops_per_s']:.1f} GFLOP/s: "
            f"{ceiling['ceiling_fraction']:.0%} of this machine's rate on the model's block products in "
            f"{markdown_inline(ceiling['ceiling_dtype'])} ({ceiling['ceiling_gflops_per_s']:.1f} GFLOP/s, "
            f"{ceiling['ceiling_threads']} threads, measured after training; the rest goes to attention, norms, "
            "rotary embeddings and elementwise work).", ""]


def _alone_lines(metrics: EvaluationResults) -> list[str]:
    joint = metrics.losses
    rows = []
    for run, alone in metrics.alone.items():
        (rec,) = alone.reconstruction.values()
        rows.append([f"{alone.sites[0]} alone ({run})", _pm(alone.losses.delta_ce_spliced),
                     _pm(alone.losses.kl_spliced), f"{rec.fvu:.4f}"])
    rows.append([f"all {len(metrics.alone)} jointly", _pm(joint.delta_ce_spliced), _pm(joint.kl_spliced), None])
    return ["## Each dictionary alone vs all jointly", "",
            markdown_table(["spliced", "ΔCE (nats)", "KL", "FVU"], rows), ""]
