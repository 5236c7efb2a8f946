"""Each analysed latent in the shape of a Neuronpedia feature: the fields, shared by the dashboard and the upload set.

:func:`neuron_fields` gives the columns of Neuronpedia's ``Neuron`` table that saekit computes,
:func:`activation_fields` those of its ``Activation`` table for one example, :func:`explanations_of`
the explanations of one latent; :func:`feature_json` puts them together as the dashboard's
``neuronpedia/<id>.json``, and :mod:`saekit.dashboard.neuronpedia_upload` writes them as Neuronpedia's
table rows.

Filled (honestly, from the analysis store): ``modelId``, ``layer`` (Neuronpedia's source id,
``<layer>-<set name>``, by default ``<layer>-saekit-<site kind>``), ``index``, ``hookName``
(TransformerLens-style name of the read site), ``maxActApprox`` (max activation over the analysed
tokens), ``frac_nonzero`` (density), ``pos_str``/``pos_values``/``neg_str``/``neg_values`` and
``logits_hist_data_bar_heights``/``_values`` (logit weights; only for residual-width sites),
``freq_hist_data_bar_heights``/``_values`` (histogram of non-zero activations; NOTE: saekit's bins are
log-spaced, values are geometric bin centres, where Neuronpedia's own are linear),
``topkCosSimIndices``/``topkCosSimValues`` (decoder cosine neighbours, the latent itself first with 1.0
as Neuronpedia lists them), ``neuron_alignment_indices``/``_values``/``_l1`` (the decoder row's
largest-magnitude coordinates and their share of its L1 norm), and ``activations`` (``tokens``,
``values``, ``maxValue``, ``maxValueTokenIndex``, ``minValue``, plus ``saekitKind``: top / quantile /
random-negative, and ``saekitQuantile``); after ``saekit explain``, also ``explanations``
(``description``, ``explanationModelName``, ``typeName``: saekit-llm or saekit-baseline, and ``scores``
with each scorer's balanced accuracy).

Not filled (not computed by saekit): ``correlated_neurons_*``,
``correlated_features_*``, ``decoder_weights_dist``, ``umap_*``, ``vector``/``hasVector`` (the upload set
has them), and the per-activation ``binMin``/``binMax``/``binContains``, ``lossValues``,
``logitContributions``, ``dfa*``.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from saekit.analysis.store import AnalysisStore, Example
from saekit.models.sites import parse_site

FIELDS_NOTE = __doc__[__doc__.index("Filled (honestly"):]  # what FIELDS.md says: the fields, not the functions
TL_HOOKS = {"resid_pre": "hook_resid_pre", "resid_post": "hook_resid_post", "attn_out": "hook_attn_out",
            "mlp_out": "hook_mlp_out", "mlp_act": "mlp.hook_post", "mlp_in": "ln2.hook_normalized"}
EXPLAINERS = (("llm", "explanation"), ("baseline", "baseline"))  # explainer, its key in an interpretation


def model_slug(name: str) -> str:
    """'SmolLM2-135M-Instruct (Q4_1 GGUF ...)' -> 'smollm2-135m-instruct'."""
    base = name.split(" (")[0].rstrip("/").split("/")[-1]
    return re.sub(r"[^a-z0-9.]+", "-", base.lower()).strip("-") or "model"


def default_set_name(store: AnalysisStore) -> str:
    """The Neuronpedia source set saekit names a store's latents after: ``saekit-<site kind>``."""
    return f"saekit-{parse_site(store.manifest['site']).kind}"


def source_id(store: AnalysisStore, set_name: str | None = None) -> str:
    """Neuronpedia's source id (its ``layer`` column): ``<layer>-<set name>``, e.g. ``5-saekit-resid_post``."""
    return f"{parse_site(store.manifest['site']).layer}-{set_name or default_set_name(store)}"


def hook_name(store: AnalysisStore) -> str:
    site = parse_site(store.manifest["site"])
    return f"blocks.{site.layer}.{TL_HOOKS[site.kind]}"


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


def activation_fields(store: AnalysisStore, example: Example) -> dict[str, Any]:
    """One example as the columns of Neuronpedia's ``Activation`` table that hold its text and values."""
    values = [round(v, 4) for v in example.values]
    return {"tokens": [store.token_string(t) for t in example.token_ids], "values": values,
            "maxValue": max(values), "maxValueTokenIndex": example.max_index, "minValue": min(values)}


def _activations(store: AnalysisStore, latent: int) -> list[dict[str, Any]]:
    return [{**activation_fields(store, example), "saekitKind": example.kind,
             "saekitQuantile": example.quantile if example.quantile >= 0 else None}
            for example in store.latent_examples(latent)]


def _logit_fields(store: AnalysisStore, latent: int) -> dict[str, Any]:
    row = store.logit_row(latent)
    if row is None:
        return {}
    return {"pos_str": [store.token_string(t) for t in row["positive_ids"]], "pos_values": row["positive_values"],
            "neg_str": [store.token_string(t) for t in row["negative_ids"]], "neg_values": row["negative_values"],
            "logits_hist_data_bar_heights": row["histogram"],
            "logits_hist_data_bar_values": _centres(row["histogram_edges"], log=False)}


@dataclass(frozen=True)
class ExplanationText:
    """One explanation of a latent: which explainer wrote it, with which model, and its scores."""

    explainer: str  # llm or baseline
    description: str
    model: str | None  # the explainer model; None for the baseline (no model)
    scores: dict[str, float | None]  # scorer -> balanced accuracy

    @property
    def type_name(self) -> str:
        return f"saekit-{self.explainer}"


def explanations_of(interpretation: dict[str, Any]) -> list[ExplanationText]:
    """The explanations in one ``autointerp.pipeline.scores_for_dashboard`` value (those it has)."""
    out = []
    for explainer, key in EXPLAINERS:
        if interpretation.get(key):
            scores = {scorer: result.get("balanced_accuracy")
                      for scorer, result in interpretation["scores"].get(explainer, {}).items()}
            out.append(ExplanationText(explainer, interpretation[key],
                                       interpretation["model"] if explainer == "llm" else None, scores))
    return out


def neuron_fields(store: AnalysisStore, latent: int, decoder_row: Tensor | None, model_id: str,
                  set_name: str | None = None) -> dict[str, Any]:
    """The columns of Neuronpedia's ``Neuron`` table saekit computes for ``latent``.

    The logit fields are left out when the store has no logit weights (sites not of residual width),
    the neuron-alignment fields when no decoder row is given.
    """
    i = store.position[latent]
    counts = store.stats["histogram"][i].tolist()
    centres = _centres(store.stats["histogram_edges"].tolist(), log=True)
    nonzero = [j for j, c in enumerate(counts) if c]
    span = range(nonzero[0], nonzero[-1] + 1) if nonzero else range(0)
    ids, cosines = store.geometry_row(latent)
    return {
        "modelId": model_id, "layer": source_id(store, set_name), "index": str(latent), "hookName": hook_name(store),
        "maxActApprox": float(store.stats["max_activation"][i]), "frac_nonzero": float(store.stats["density"][i]),
        "freq_hist_data_bar_heights": [counts[j] for j in span],
        "freq_hist_data_bar_values": [centres[j] for j in span],
        "topkCosSimIndices": [latent, *ids], "topkCosSimValues": [1.0, *cosines],
        **_logit_fields(store, latent),
        **(_alignment(decoder_row) if decoder_row is not None else {}),
    }


def feature_json(store: AnalysisStore, latent: int, decoder_row: Tensor | None, model_id: str,
                 interpretation: dict[str, Any] | None = None, set_name: str | None = None) -> dict[str, Any]:
    """The dashboard's ``neuronpedia/<id>.json``: the Neuron fields, the examples and any explanations."""
    feature = {**neuron_fields(store, latent, decoder_row, model_id, set_name),
               "activations": _activations(store, latent)}
    if interpretation is not None:
        feature["explanations"] = [
            {"description": text.description, "typeName": text.type_name,
             "explanationModelName": text.model or "none", "scores": text.scores}
            for text in explanations_of(interpretation)]
    return feature
