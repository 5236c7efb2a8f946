"""Render the dashboard's pages from an analysis store: the latent index, one page per latent, the overview.

Every corpus/tokenizer string goes through :func:`esc` or :func:`script_json`; see
:mod:`saekit.dashboard.html`.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from typing import Any

from saekit.analysis.store import AnalysisStore, Example
from saekit.dashboard.assets import INDEX_SCRIPT
from saekit.dashboard.figures import svg_histogram, svg_layer_bars
from saekit.dashboard.html import display_token, fmt, page, table, token_span
from saekit.models.sites import parse_site
from saekit.render import escape_html as esc
from saekit.render import script_json

INDEX_COLUMNS = [  # key, header, kind (int/num/text): the index table and its filterable statistics
    ("id", "latent", "int"), ("log10_density", "log10 density", "num"), ("max", "max act", "num"),
    ("mean_active", "mean when active", "num"), ("bias", "encoder bias", "num"), ("de", "D/E", "num"),
    ("max_cos", "max cos", "num"), ("nearest", "nearest", "int"), ("flag", "flag", "text"),
    ("tokens", "top tokens", "text"), ("logits", "top logits", "text"),
]
# Added when the run has autointerp scores (``saekit explain``); balanced accuracies, chance 0.5.
INTERPRETATION_COLUMNS = [
    ("explanation", "explanation", "text"), ("detection", "detection", "num"), ("fuzzing", "fuzzing", "num"),
    ("baseline_detection", "baseline detection", "num"),
]


@dataclass(frozen=True)
class DashboardConfig:
    """What the site shows."""

    max_latents: int | None = None  # feature pages for the first N analysed latents (index lists all)
    window_before: int | None = 24  # tokens shown before an example's max token (None: whole context)
    window_after: int | None = 8
    top_examples: int = 16
    index_row_limit: int = 2000  # rows the index draws at once (filtering/sorting covers all)
    model_id: str | None = None  # Neuronpedia modelId; default: a slug of the model name
    neuronpedia: bool = True


Interpretations = dict[int, dict[str, Any]]  # latent -> autointerp.pipeline.scores_for_dashboard's value


def _balanced_accuracy(interpretation: dict[str, Any], explainer: str, scorer: str) -> float | None:
    return ((interpretation["scores"].get(explainer) or {}).get(scorer) or {}).get("balanced_accuracy")


def flag_of(store: AnalysisStore, latent: int) -> str:
    i = store.position[latent]
    if bool(store.stats["dead"][i]):
        return "dead"
    return "ultra-rare" if bool(store.stats["ultra_rare"][i]) else ""


def top_tokens(store: AnalysisStore, latent: int, count: int = 5) -> list[str]:
    """Most frequent tokens at the max position of the latent's top examples."""
    table = store.examples
    rows = table.rows(store.position[latent])
    kinds, contexts, positions = (table.kind[rows.start:rows.stop], table.context[rows.start:rows.stop],
                                  table.max_index[rows.start:rows.stop])
    top = kinds == 0
    ids = store.token_ids[contexts[top].long(), positions[top].long()].tolist()
    return [store.token_string(t) for t, _ in Counter(ids).most_common(count)]


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def index_row(store: AnalysisStore, latent: int, interpretation: dict[str, Any] | None = None) -> dict[str, Any]:
    i = store.position[latent]
    stats, geometry = store.stats, store.geometry
    logits = store.logit_row(latent)
    row = {
        "id": latent, "log10_density": _finite(float(stats["log10_density"][i])),
        "max": float(stats["max_activation"][i]), "mean_active": _finite(float(stats["mean_when_active"][i])),
        "bias": float(stats["encoder_bias"][i]), "de": _finite(float(stats["de_cosine"][i])),
        "max_cos": _finite(float(geometry["cos_rank_1"][i])), "nearest": int(geometry["neighbour_ids"][i][0]),
        "flag": flag_of(store, latent), "tokens": " \u00b7 ".join(top_tokens(store, latent)),
        "logits": " \u00b7 ".join(store.token_string(t) for t in logits["positive_ids"][:5]) if logits else "",
    }
    if interpretation is not None:
        row.update(explanation=interpretation["explanation"] or "",
                   detection=_balanced_accuracy(interpretation, "llm", "detection"),
                   fuzzing=_balanced_accuracy(interpretation, "llm", "fuzzing"),
                   baseline_detection=_balanced_accuracy(interpretation, "baseline", "detection"))
    return row


def index_page(store: AnalysisStore, pages: list[int], config: DashboardConfig,
               interpretations: Interpretations | None = None) -> str:
    interpretations = interpretations or {}
    columns = INDEX_COLUMNS + (INTERPRETATION_COLUMNS if interpretations else [])
    rows = [index_row(store, latent, interpretations.get(latent)) for latent in store.latent_ids]
    data = {"latents": rows, "pages": pages, "row_limit": config.index_row_limit,
            "columns": [{"key": k, "label": label, "kind": kind} for k, label, kind in columns]}
    numeric = [(k, label) for k, label, kind in columns if kind == "num"]
    options = "".join(f'<option value="{esc(k)}">{esc(label)}</option>' for k, label in numeric)
    headers = "".join(f'<th data-key="{esc(k)}">{esc(label)}</th>' for k, label, _ in columns)
    summary = store.stats_summary
    body = (
        f"<h1>Latents of {esc(store.manifest['site'])}</h1>{_header_line(store)}"
        f'<p class="muted">{esc(summary["rule"])}. {summary["dead"]} dead, {summary["ultra_rare"]} ultra-rare of '
        f'{summary["latents"]} analysed. Pages exist for {len(pages)} latents (linked).</p>'
        '<div class="controls"><label>search tokens <input type="text" id="search" '
        'placeholder="top tokens, logits, explanation"></label>'
        f'<label>filter <select id="stat">{options}</select></label>'
        '<label>min <input type="number" id="stat-min" step="any"></label>'
        '<label>max <input type="number" id="stat-max" step="any"></label>'
        '<label><input type="checkbox" id="hide-dead"> hide dead</label></div>'
        '<p class="muted" id="status"></p>'
        f'<table class="grid" id="latents"><thead><tr>{headers}</tr></thead><tbody></tbody></table>'
        f'<script type="application/json" id="latent-data">{script_json(data)}</script>'
    )
    return page(f"saekit latents: {store.manifest['site']}", body, INDEX_SCRIPT)


def _header_line(store: AnalysisStore) -> str:
    m = store.manifest
    target = f" \u2192 {m['target_site']}" if m.get("target_site") not in (None, m["site"]) else ""
    return (f'<p class="muted">{esc(m["model"])} \u00b7 {esc(m["site"])}{esc(target)} \u00b7 '
            f'{esc(m["dictionary"]["architecture"])} width {m["dictionary"]["width"]} \u00b7 '
            f'{m["tokens_counted"]} tokens in {m["contexts"]} contexts</p>')


def _window(example: Example, before: int | None, after: int | None) -> range:
    """Tokens shown: around the max token; the first tokens of a context where the latent never fires."""
    n = len(example.token_ids)
    if before is None or after is None:
        return range(n)
    if example.max_value <= 0:
        return range(min(n, before + after + 1))
    start = max(0, example.max_index - before)
    return range(start, min(n, example.max_index + after + 1))


def example_html(store: AnalysisStore, example: Example, scale: float, config: DashboardConfig) -> str:
    window = _window(example, config.window_before, config.window_after)
    spans = "".join(token_span(store.token_string(example.token_ids[p]), example.values[p], scale,
                               example.counted[p]) for p in window)
    ellipsis_before = "\u2026" if window.start > 0 else ""
    ellipsis_after = "\u2026" if window.stop < len(example.token_ids) else ""
    meta = f'<span class="meta">{fmt(example.max_value)} \u00b7 context {example.context}</span>'
    return f'<div class="example">{meta}{ellipsis_before}{spans}{ellipsis_after}</div>'


def _examples_section(store: AnalysisStore, examples: list[Example], scale: float, config: DashboardConfig) -> str:
    top = [e for e in examples if e.kind == "top"][:config.top_examples]
    quantile = [e for e in examples if e.kind == "quantile"]
    negative = [e for e in examples if e.kind == "random-negative"]
    parts = [f"<h2>Top activations ({len(top)})</h2>"]
    parts += [example_html(store, e, scale, config) for e in top] or ['<p class="muted">never fired</p>']
    groups = sorted({e.quantile for e in quantile}, reverse=True)
    n_groups = store.manifest["config"]["examples"]["quantile_groups"]
    parts.append(f"<h2>Sampled by activation quantile ({len(quantile)})</h2>"
                 '<p class="muted">a uniform sample of the contexts where the latent fires, split into '
                 f"{n_groups} equal-count groups by max activation</p>")
    for group in groups:
        parts.append(f"<h3>quantile group {group + 1} of {n_groups}</h3>")
        parts += [example_html(store, e, scale, config) for e in quantile if e.quantile == group]
    parts.append(f"<h2>Random contexts where it does not fire ({len(negative)})</h2>")
    parts += [example_html(store, e, scale, config) for e in negative] or ['<p class="muted">none</p>']
    return "".join(parts)


def _latent_link(latent: int, pages: set[int]) -> str:
    return f'<a href="{latent}.html">{latent}</a>' if latent in pages else str(latent)


def _stats_table(store: AnalysisStore, latent: int) -> str:
    s, g = store.stats, store.geometry
    i = store.position[latent]
    tokens = store.stats_summary["tokens"]
    rows = [
        ("density", f"{fmt(float(s['density'][i]))} (log10 {fmt(float(s['log10_density'][i]))}); "
                    f"fired on {int(s['fire_counts'][i])} of {tokens} tokens"),
        ("max activation", fmt(float(s["max_activation"][i]))),
        ("mean activation (all tokens / when active)",
         f"{fmt(float(s['mean_activation'][i]))} / {fmt(float(s['mean_when_active'][i]))}"),
        ("encoder bias", fmt(float(s["encoder_bias"][i]))),
        ("D/E projection (cos encoder, decoder)", fmt(float(s["de_cosine"][i]))),
        ("decoder cos: max / 10th / 100th", " / ".join(fmt(float(g[f"cos_rank_{r}"][i])) for r in (1, 10, 100))),
    ]
    return table(["statistic", "value"], [(esc(k), esc(v)) for k, v in rows])


def _logit_section(store: AnalysisStore, latent: int) -> str:
    row = store.logit_row(latent)
    if row is None:
        return f'<h2>Logit weights</h2><p class="muted">{esc(store.manifest["logits"].get("note", ""))}</p>'

    def pills(ids: list[int], values: list[float], css: str) -> str:
        return "".join(f'<div><span class="pill">{esc(display_token(store.token_string(t)))}</span> '
                       f'<span class="{css}">{fmt(v)}</span></div>' for t, v in zip(ids, values))

    hist = svg_histogram(row["histogram"], row["histogram_edges"], log_x=False, colour="#4c78a8")
    positive = pills(row["positive_ids"], row["positive_values"], "pos")
    negative = pills(row["negative_ids"], row["negative_values"], "neg")
    return (f'<h2>Logit weights</h2><p class="muted">{esc(store.manifest["logits"]["direction"])}</p>'
            f'<div class="cols tokens"><div><h3>positive</h3>{positive}</div><div><h3>negative</h3>{negative}</div>'
            f"<div><h3>all tokens</h3>{hist}</div></div>")


def _output_layers_section(store: AnalysisStore, latent: int) -> str:
    """A cross-layer latent: its decoder norm into each output layer, and logit weights per strongest layer."""
    row = store.layer_row(latent)
    if row is None:
        return ""
    sites = store.written_sites
    layer_numbers = [str(parse_site(site).layer) for site in sites]
    bars = svg_layer_bars(layer_numbers, row["output_norms"])
    rows = []
    for position, positive, negative in zip(row["layers"], row["positive_ids"], row["negative_ids"]):
        if position < 0:
            continue
        rows.append((esc(sites[position]), fmt(row["output_norms"][position]),
                     " ".join(f'<span class="pill">{esc(display_token(store.token_string(t)))}</span>'
                              for t in positive[:6]),
                     " ".join(f'<span class="pill">{esc(display_token(store.token_string(t)))}</span>'
                              for t in negative[:6])))
    note = (store.manifest.get("logits") or {}).get("output_layers", {}).get("total", "")
    return (f'<h2>Output layers</h2><p class="muted">decoder norm into each layer it writes (x: layer); '
            f'the logit weights above read {esc(note)}</p><div class="cols tokens"><div>{bars}</div>'
            f'<div>{table(["output site", "decoder norm", "top logits", "bottom logits"], rows)}</div></div>')


def _interpretation_section(interpretation: dict[str, Any] | None) -> str:
    """The latent's explanations and their scores (balanced accuracy and AUROC; chance 0.5 for both)."""
    if interpretation is None:
        return ""
    explainers = {"llm": ("LLM explainer", "explanation"), "baseline": ("no-LLM baseline", "baseline")}
    # The embedding scorer has no decision threshold, hence AUROC only.
    columns = [("detection", "balanced_accuracy"), ("detection", "auroc"), ("fuzzing", "balanced_accuracy"),
               ("fuzzing", "auroc"), ("embedding", "auroc")]
    labels_of = {"balanced_accuracy": "bal. acc.", "auroc": "AUROC"}
    headers = ["explainer", "explanation"] + [f"{scorer} {labels_of[metric]}" for scorer, metric in columns]
    rows = []
    for explainer, (label, text_key) in explainers.items():
        by_scorer = interpretation["scores"].get(explainer)
        if by_scorer is None:
            continue
        cells = [fmt((by_scorer.get(scorer) or {}).get(metric)) for scorer, metric in columns]
        rows.append([esc(label), esc(interpretation.get(text_key) or "\u2013"), *cells])
    intruder = interpretation.get("intruder")
    intruder_line = (f"Intruder test accuracy {fmt(intruder['accuracy'])} (chance {fmt(intruder['chance'])}, "
                     f"{intruder['n']} trials). " if intruder else "")
    errors = "".join(f"<li>{esc(error)}</li>" for error in interpretation.get("errors", []))
    return (f'<h2>Explanation</h2><p class="muted">by {esc(interpretation.get("model"))}; scores on held-out '
            f"examples, chance 0.5; missing scores shown as \u2013, never as 0. {intruder_line}</p>"
            f'{table(headers, rows)}' + (f'<p class="muted">errors:</p><ul class="muted">{errors}</ul>' if errors
                                           else ""))


def feature_page(store: AnalysisStore, latent: int, pages: set[int], config: DashboardConfig,
                 interpretation: dict[str, Any] | None = None) -> str:
    i = store.position[latent]
    examples = store.latent_examples(latent)
    scale = float(store.stats["max_activation"][i])
    hist = svg_histogram(store.stats["histogram"][i].tolist(), store.stats["histogram_edges"].tolist(), log_x=True)
    ids, cosines = store.geometry_row(latent)
    neighbours = table(["latent", "cosine"], [(_latent_link(n, pages), fmt(c)) for n, c in zip(ids, cosines)])
    flag = flag_of(store, latent)
    flag_html = f' <span class="flag {flag}">{flag}</span>' if flag else ""
    position = store.position[latent]
    nav = " ".join(f'<a href="{n}.html">{label}</a>' for label, n in (
        ("\u2190 previous", store.latent_ids[position - 1] if position > 0 else None),
        ("next \u2192", store.latent_ids[position + 1] if position + 1 < len(store.latent_ids) else None))
        if n is not None and n in pages)
    body = (f"<h1>Latent {latent}{flag_html}</h1>{_header_line(store)}<p>{nav}</p>"
            f'<div class="cols"><div><h2>Statistics</h2>{_stats_table(store, latent)}</div>'
            f'<div><h2>Activation histogram</h2><p class="muted">non-zero activations, log-spaced bins</p>{hist}</div>'
            f"<div><h2>Nearest decoder directions</h2>{neighbours}</div></div>"
            f"{_interpretation_section(interpretation)}{_logit_section(store, latent)}"
            f"{_output_layers_section(store, latent)}"
            f"{_examples_section(store, examples, scale, config)}")
    return page(f"Latent {latent} \u00b7 {store.manifest['site']}", body, root="../")


def overview_page(store: AnalysisStore, figures: dict[str, str]) -> str:
    summary, geometry = store.stats_summary, store.geometry_summary
    peak = geometry["peak"]
    stats_rows = [
        ("tokens analysed", str(summary["tokens"])), ("latents analysed", str(summary["latents"])),
        ("flag rule", summary["rule"]),
        ("dead", f"{summary['dead']} ({summary['dead_fraction']:.1%})"),
        ("ultra-rare", f"{summary['ultra_rare']} ({summary['ultra_rare_fraction']:.1%})"),
        ("smallest measurable log10 density", fmt(summary["min_measurable_log10_density"])),
    ]
    geo_rows = [
        ("median max cos: decoder / random", f"{fmt(geometry['decoder']['rank_1']['median'])} / "
                                             f"{fmt(geometry['random_baseline']['rank_1']['median'])}"),
        ("random baseline", geometry["random_baseline"]["description"]),
        ("peak range", f"[{fmt(peak['range'][0])}, {fmt(peak['range'][1])}) ({peak['range_source']})"),
        ("latents in peak", str(peak["latents_in_peak"])),
        ("most common nearest neighbour in peak",
         f"{peak['most_common_neighbour']} (share {fmt(peak['share'])})" if peak["most_common_neighbour"] is not None
         else "\u2013"),
    ]
    images = "".join(f'<h2>{esc(title)}</h2><img class="figure" src="{esc(src)}" alt="{esc(title)}">'
                     for title, src in figures.items())
    body = (f"<h1>Overview</h1>{_header_line(store)}"
            f'<div class="cols"><div><h2>Density</h2>{table(None, [(esc(a), esc(b)) for a, b in stats_rows])}'
            f'</div><div><h2>Decoder geometry</h2>{table(None, [(esc(a), esc(b)) for a, b in geo_rows])}'
            f"</div></div>{images}")
    return page(f"saekit overview: {store.manifest['site']}", body)
