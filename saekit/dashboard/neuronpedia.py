"""Export each analysed latent as a JSON object in the shape of a Neuronpedia feature.

Filled (honestly, from the analysis store): ``modelId``, ``layer`` (Neuronpedia's source id,
``<layer>-saekit-<site kind>``), ``index``, ``hookName`` (TransformerLens-style name of the read site),
``maxActApprox`` (max activation over the analysed tokens), ``frac_nonzero`` (density),
``pos_str``/``pos_values``/``neg_str``/``neg_values`` and ``logits_hist_data_bar_heights``/``_values``
(logit weights; only for residual-width sites), ``freq_hist_data_bar_heights``/``_values`` (histogram of
non-zero activations; NOTE: saekit's bins are log-spaced, values are geometric bin centres, where
Neuronpedia's own are linear), ``topkCosSimIndices``/``topkCosSimValues`` (decoder cosine neighbours,
the latent itself first with 1.0 as Neuronpedia lists them), ``neuron_alignment_indices``/``_values``/
``_l1`` (the decoder row's largest-magnitude coordinates and their share of its L1 norm), and
``activations`` (``tokens``, ``values``, ``maxValue``, ``maxValueTokenIndex``, ``minValue``, plus
``saekitKind``: top / quantile / random-negative, and ``saekitQuantile``); after ``saekit explain``, also
``explanations`` (``description``, ``explanationModelName``, ``typeName``: saekit-llm or saekit-baseline,
and ``scores`` with each scorer's balanced accuracy).

Not filled (not computed by saekit): ``correlated_neurons_*``,
``correlated_features_*``, ``decoder_weights_dist``, ``umap_*``, ``vector``/``hasVector``, and the
per-activation ``binMin``/``binMax``/``binContains``, ``lossValues``, ``logitContributions``, ``dfa*``.
"""

from __future__ import annotations

import math
import re
from typing import Any

from torch import Tensor

from saekit.analysis.store import AnalysisStore
from saekit.models.sites import parse_site

FIELDS_NOTE = __doc__
TL_HOOKS = {"resid_pre": "hook_resid_pre", "resid_post": "hook_resid_post", "attn_out": "hook_attn_out",
            "mlp_out": "hook_mlp_out", "mlp_act": "mlp.hook_post", "mlp_in": "ln2.hook_normalized"}


def model_slug(name: str) -> str:
    """'SmolLM2-135M-Instruct (Q4_1 GGUF ...)' -> 'smollm2-135m-instruct'."""
    base = name.split(" (")[0].rstrip("/").split("/")[-1]
    return re.sub(r"[^a-z0-9.]+", "-", base.lower()).strip("-") or "model"


def _centres(edges: list[float], log: bool) -> list[float]:
    if log:
        return [math.sqrt(a * b) for a, b in zip(edges[:-1], edges[1:])]
    return [(a + b) / 2 for a, b in zip(edges[:-1], edges[1:])]


def _alignment(decoder_row: Tensor, count: int = 3) -> dict[str, list]:
    magnitude = decoder_row.abs()
    top = magnitude.topk(min(count, len(magnitude)))
    total = float(magnitude.sum()) or 1.0
    return {"neuron_alignment_indices": top.indices.tolist(),
            "neuron_alignment_values": decoder_row[top.indices].tolist(),
            "neuron_alignment_l1": [float(v) / total for v in top.values]}


def _activations(store: AnalysisStore, latent: int) -> list[dict[str, Any]]:
    out = []
    for example in store.latent_examples(latent):
        values = [round(v, 4) for v in example.values]
        out.append({"tokens": [store.token_string(t) for t in example.token_ids], "values": values,
                    "maxValue": max(values), "maxValueTokenIndex": example.max_index, "minValue": min(values),
                    "saekitKind": example.kind, "saekitQuantile": example.quantile if example.quantile >= 0 else None})
    return out


def _logit_fields(store: AnalysisStore, latent: int) -> dict[str, Any]:
    row = store.logit_row(latent)
    if row is None:
        return {}
    return {"pos_str": [store.token_string(t) for t in row["positive_ids"]], "pos_values": row["positive_values"],
            "neg_str": [store.token_string(t) for t in row["negative_ids"]], "neg_values": row["negative_values"],
            "logits_hist_data_bar_heights": row["histogram"],
            "logits_hist_data_bar_values": _centres(row["histogram_edges"], log=False)}


def _explanations(interpretation: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for explainer, key in (("llm", "explanation"), ("baseline", "baseline")):
        if interpretation.get(key):
            scores = {scorer: result.get("balanced_accuracy")
                      for scorer, result in interpretation["scores"].get(explainer, {}).items()}
            out.append({"description": interpretation[key], "typeName": f"saekit-{explainer}",
                        "explanationModelName": interpretation["model"] if explainer == "llm" else "none",
                        "scores": scores})
    return out


def feature_json(store: AnalysisStore, latent: int, decoder_row: Tensor | None, model_id: str,
                 interpretation: dict[str, Any] | None = None) -> dict[str, Any]:
    i = store.position[latent]
    site = parse_site(store.manifest["site"])
    counts = store.stats["histogram"][i].tolist()
    centres = _centres(store.stats["histogram_edges"].tolist(), log=True)
    nonzero = [j for j, c in enumerate(counts) if c]
    span = range(nonzero[0], nonzero[-1] + 1) if nonzero else range(0)
    ids, cosines = store.geometry_row(latent)
    feature: dict[str, Any] = {
        "modelId": model_id, "layer": f"{site.layer}-saekit-{site.kind}", "index": str(latent),
        "hookName": f"blocks.{site.layer}.{TL_HOOKS[site.kind]}",
        "maxActApprox": float(store.stats["max_activation"][i]), "frac_nonzero": float(store.stats["density"][i]),
        "freq_hist_data_bar_heights": [counts[j] for j in span],
        "freq_hist_data_bar_values": [centres[j] for j in span],
        "topkCosSimIndices": [latent, *ids], "topkCosSimValues": [1.0, *cosines],
        **_logit_fields(store, latent),
        **(_alignment(decoder_row) if decoder_row is not None else {}),
        "activations": _activations(store, latent),
    }
    if interpretation is not None:
        feature["explanations"] = _explanations(interpretation)
    return feature
