"""saekit's page for one attribution graph: a static HTML file, layers by prompt positions, click a node.

The page embeds the pruned graph (circuit-tracer's node records and links) and, for each latent node
whose run has an analysis store, its dashboard data: top examples with per-token activations, top
and bottom logit weights, density, the explanation when ``saekit explain`` made one, and a link to
the latent's dashboard page. Tokens show whitespace as the dashboard does (``display_token``). Every
string from the corpus, the prompt or the tokenizer reaches the browser as JSON inside a script block
(``script_json``) and is put on the page with ``textContent``: never parsed as markup.
``#node=NODE_ID`` in the address selects a node (links can be shared).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from saekit.analysis.store import AnalysisStore
from saekit.circuits.graph import FEATURE_TYPE, Graph
from saekit.render import display_token, escape_html, script_json

EXAMPLES_PER_LATENT = 4
WINDOW_BEFORE, WINDOW_AFTER = 12, 4  # tokens shown around an example's strongest activation


@dataclass
class FeatureSource:
    """Where a model layer's latents are described: its analysis store and the run's explanations."""

    store: AnalysisStore
    offset: int = 0  # a CLT's store numbers the latents of every layer: layer index x per-layer width
    interpretations: dict[int, dict[str, Any]] = field(default_factory=dict)
    dashboard: Path | None = None  # the run's dashboard directory, when it has one


def _examples(store: AnalysisStore, latent: int) -> list[dict[str, Any]]:
    shown = []
    for example in [e for e in store.latent_examples(latent) if e.kind == "top"][:EXAMPLES_PER_LATENT]:
        start = max(0, example.max_index - WINDOW_BEFORE)
        stop = example.max_index + WINDOW_AFTER + 1
        shown.append({"tokens": [display_token(store.token_string(t)) for t in example.token_ids[start:stop]],
                      "values": [round(v, 4) for v in example.values[start:stop]],
                      "max": example.max_value, "at": example.max_index - start})
    return shown


def _logits(store: AnalysisStore, latent: int) -> dict[str, Any] | None:
    row = store.logit_row(latent)
    if row is None:
        return None
    return {side: [[display_token(store.token_string(t)), round(v, 4)] for t, v in zip(row[f"{side}_ids"][:8],
                                                                         row[f"{side}_values"][:8])]
            for side in ("positive", "negative")}


def feature_details(source: FeatureSource, latent: int, page_dir: Path) -> dict[str, Any] | None:
    """What the page shows for one latent of a layer (``latent`` numbered within the layer)."""
    store, index = source.store, source.offset + latent
    if index not in store.position:
        return None
    interpretation = source.interpretations.get(index) or {}
    details = {"store_latent": index, "examples": _examples(store, index), "logits": _logits(store, index),
               "log10_density": store.stat("log10_density", index), "explanation": interpretation.get("explanation")}
    page = None if source.dashboard is None else source.dashboard / "features" / f"{index}.html"
    if page is not None and page.is_file():
        details["dashboard"] = os.path.relpath(page, page_dir).replace(os.sep, "/")
    return details


def page_data(graph: Graph, record: dict[str, Any], sources: dict[int, FeatureSource],
              page_dir: Path) -> dict[str, Any]:
    """Everything the page's script needs: the prompt, the node records, the links, the latents' details."""
    details = {}
    for node in record["nodes"]:
        if node["feature_type"] != FEATURE_TYPE:
            continue
        layer, latent, _ = (int(part) for part in node["node_id"].split("_"))
        if layer in sources:
            found = feature_details(sources[layer], latent, page_dir)
            if found is not None:
                details[f"{layer}_{latent}"] = found
    return {"prompt": graph.prompt, "tokens": record["metadata"]["prompt_tokens"], "model": graph.model,
            "layers": graph.layers, "logit_layer": graph.node_layer(graph.logit_node(0)) + 1,
            "nodes": record["nodes"], "links": record["links"], "details": details,
            "thresholds": [record["metadata"]["node_threshold"], record["metadata"]["info"]["edge_threshold"]]}


STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:0;color:#222}
header{padding:10px 16px;border-bottom:1px solid #ddd}
main{display:flex;gap:12px;padding:8px}
#graph{flex:1 1 auto;overflow:auto;max-height:88vh;border:1px solid #eee}
#details{flex:0 0 380px;max-height:88vh;overflow:auto}
.muted{color:#777}.pos{color:#1a7f37}.neg{color:#b3261e}
.tok{display:inline-block;padding:0 1px;margin:1px 0;white-space:pre;border-radius:2px}
.ex{margin:4px 0;font-family:ui-monospace,monospace;font-size:12px}
table{border-collapse:collapse}td{padding:1px 6px;font-size:12px}
a.node{cursor:pointer;color:#0b57d0}
"""

SCRIPT = r"""
const data = JSON.parse(document.getElementById('graph-data').textContent);
const NS = 'http://www.w3.org/2000/svg';
const COL = 120, ROW = 26, LEFT = 60, TOP = 20;
const rows = ['E', ...data.layers.map(String), String(data.logit_layer)];
const rowOf = l => rows.length - 1 - rows.indexOf(l);
const byId = new Map(data.nodes.map(n => [n.node_id, n]));
const incoming = new Map(), outgoing = new Map();
for (const link of data.links) {
  (incoming.get(link.target) || incoming.set(link.target, []).get(link.target)).push(link);
  (outgoing.get(link.source) || outgoing.set(link.source, []).get(link.source)).push(link);
}
const cells = new Map();
for (const n of data.nodes) {
  const key = n.layer + ':' + n.ctx_idx;
  (cells.get(key) || cells.set(key, []).get(key)).push(n);
}
for (const group of cells.values()) {
  group.sort((a, b) => (a.influence ?? 1) - (b.influence ?? 1));  // cumulative share: small first
  group.forEach((n, i) => {
    const spread = Math.min(COL - 20, 8 * group.length);
    n.x = LEFT + n.ctx_idx * COL + COL / 2 + (group.length > 1 ? (i / (group.length - 1) - 0.5) * spread : 0);
    n.y = TOP + rowOf(n.layer) * ROW + ROW / 2;
  });
}
function el(tag, attrs, parent) {
  const e = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  if (parent) parent.appendChild(e);
  return e;
}
function html(tag, text, parent, cls) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  if (cls) e.className = cls;
  if (parent) parent.appendChild(e);
  return e;
}
const width = LEFT + data.tokens.length * COL + 20, height = TOP + rows.length * ROW + 60;
const svg = el('svg', {width, height, id: 'graph-svg'}, document.getElementById('graph'));
rows.forEach((r, i) => {
  const label = el('text', {x: 4, y: TOP + rowOf(r) * ROW + ROW / 2 + 4, 'font-size': 11, fill: '#777'}, svg);
  label.textContent = r === 'E' ? 'tokens' : (r === String(data.logit_layer) ? 'logits' : 'L' + r);
});
data.tokens.forEach((t, p) => {
  const label = el('text', {x: LEFT + p * COL + COL / 2, y: height - 30, 'text-anchor': 'middle', 'font-size': 12,
                            class: 'prompt-token'}, svg);
  label.textContent = t;
});
const edgeLayer = el('g', {id: 'edges'}, svg), nodeLayer = el('g', {id: 'nodes'}, svg);
const maxWeight = Math.max(1e-12, ...data.links.map(l => Math.abs(l.weight)));
function drawEdges(links, strong) {
  edgeLayer.replaceChildren();
  for (const link of links) {
    const s = byId.get(link.source), t = byId.get(link.target);
    if (!s || !t) continue;
    el('line', {x1: s.x, y1: s.y, x2: t.x, y2: t.y, class: 'edge',
                stroke: link.weight > 0 ? '#1a7f37' : '#b3261e',
                'stroke-opacity': Math.min(1, 0.1 + (strong ? 1.5 : 0.8) * Math.abs(link.weight) / maxWeight),
                'stroke-width': strong ? 1.5 : 0.7}, edgeLayer);
  }
}
const overview = [...data.links].sort((a, b) => Math.abs(b.weight) - Math.abs(a.weight)).slice(0, 1500);
const shapes = new Map();
for (const n of data.nodes) {
  const colours = {embedding: '#888', logit: '#0b57d0', 'mlp reconstruction error': '#c77c02'};
  const colour = colours[n.feature_type] || '#6f42c1';
  const shape = n.feature_type === 'mlp reconstruction error'
    ? el('rect', {x: n.x - 4, y: n.y - 4, width: 8, height: 8, fill: colour}, nodeLayer)
    : el('circle', {cx: n.x, cy: n.y, r: n.feature_type === 'logit' || n.feature_type === 'embedding' ? 6 : 4.5,
                    fill: colour}, nodeLayer);
  shape.setAttribute('class', 'node');
  shape.setAttribute('data-node', n.node_id);
  const title = el('title', {}, shape);
  title.textContent = describe(n);
  shape.addEventListener('click', () => select(n.node_id));
  shapes.set(n.node_id, shape);
}
function describe(n) {
  if (n.feature_type === 'embedding') return 'token ' + JSON.stringify(data.tokens[n.ctx_idx]) + ' at ' + n.ctx_idx;
  if (n.feature_type === 'logit') return n.clerp;
  if (n.feature_type === 'mlp reconstruction error') return 'error of layer ' + n.layer + ' at ' + n.ctx_idx;
  const [layer, latent] = n.node_id.split('_');
  return 'layer ' + layer + ' latent ' + latent + ' at ' + n.ctx_idx + ' ' + JSON.stringify(data.tokens[n.ctx_idx]);
}
function fmt(v) { return v === null || v === undefined ? '\u2013' : Number(v).toPrecision(3); }
function edgeList(title, links, end, panel) {
  html('h3', title + ' (' + links.length + ')', panel);
  const table = html('table', null, panel);
  for (const link of [...links].sort((a, b) => Math.abs(b.weight) - Math.abs(a.weight)).slice(0, 12)) {
    const row = html('tr', null, table), other = byId.get(link[end]);
    const name = html('a', describe(other), html('td', null, row), 'node');
    name.addEventListener('click', () => select(other.node_id));
    html('td', (link.weight > 0 ? '+' : '') + fmt(link.weight), row, link.weight > 0 ? 'pos' : 'neg');
  }
}
function showExamples(examples, panel) {
  html('h3', 'Top examples', panel);
  for (const ex of examples) {
    const line = html('div', null, panel, 'ex');
    ex.tokens.forEach((t, i) => {
      const span = html('span', t, line, 'tok');
      const share = ex.max > 0 ? Math.max(0, ex.values[i]) / ex.max : 0;
      span.style.background = 'rgba(255,120,0,' + share.toFixed(3) + ')';
      if (i === ex.at) span.style.outline = '1px solid #b35c00';
      span.title = fmt(ex.values[i]);
    });
  }
}
function showLogits(logits, panel) {
  html('h3', 'Logit weights', panel);
  const table = html('table', null, panel);
  for (let i = 0; i < Math.max(logits.positive.length, logits.negative.length); i++) {
    const row = html('tr', null, table);
    for (const [side, cls] of [['positive', 'pos'], ['negative', 'neg']]) {
      const item = logits[side][i];
      html('td', item ? item[0] : '', row, 'tok');
      html('td', item ? fmt(item[1]) : '', row, cls);
    }
  }
}
function select(id) {
  const n = byId.get(id);
  if (!n) return;
  for (const [key, shape] of shapes) shape.setAttribute('stroke', key === id ? '#000' : 'none');
  const ins = incoming.get(id) || [], outs = outgoing.get(id) || [];
  drawEdges([...ins, ...outs], true);
  const panel = document.getElementById('details');
  panel.replaceChildren();
  html('h2', describe(n), panel, 'selected-node');
  const activation = n.activation !== null ? ', activation ' + fmt(n.activation) : '';
  html('p', 'cumulative influence share ' + fmt(n.influence) + activation, panel, 'muted');
  const [layer, latent] = n.node_id.split('_');
  const details = n.feature_type === 'cross layer transcoder' ? data.details[layer + '_' + latent] : null;
  if (details) {
    if (details.explanation) html('p', details.explanation, panel, 'explanation');
    html('p', 'log10 density ' + fmt(details.log10_density), panel, 'muted');
    if (details.dashboard) {
      const link = html('a', 'dashboard page', html('p', null, panel));
      link.href = details.dashboard;
    }
    showExamples(details.examples, panel);
    if (details.logits) showLogits(details.logits, panel);
  } else if (n.feature_type === 'cross layer transcoder') {
    html('p', 'no analysis store for this layer (run saekit analyze on its run)', panel, 'muted');
  }
  edgeList('Inputs', ins, 'source', panel);
  edgeList('Outputs', outs, 'target', panel);
  if (location.hash !== '#node=' + id) history.replaceState(null, '', '#node=' + id);
}
drawEdges(overview, false);
const fromHash = decodeURIComponent(location.hash.replace(/^#node=/, ''));
select(byId.has(fromHash) ? fromHash : (data.nodes.find(n => n.is_target_logit) || {}).node_id);
"""


def graph_page(graph: Graph, record: dict[str, Any], sources: dict[int, FeatureSource],
               page_dir: Path | None = None) -> str:
    """The page's HTML (self-contained: no network, no external files)."""
    data = page_data(graph, record, sources, page_dir or Path("."))
    features = sum(node["feature_type"] == FEATURE_TYPE for node in record["nodes"])
    scores = record["metadata"].get("scores") or {}
    frozen = record["metadata"].get("frozen_mlp_layers") or []
    targets = record["metadata"].get("targets") or [repr(s) for s in graph.logit_strings]
    summary = (f"Target{'s' if len(targets) > 1 else ''}: {escape_html(', '.join(targets))}. "
               f"Replacement score {scores.get('replacement', float('nan')):.3f}, completeness "
               f"{scores.get('completeness', float('nan')):.3f} (circuit-tracer's definitions). "
               + (f"MLPs of layers {', '.join(map(str, frozen))} have no transcoder: frozen at their clean "
                  "outputs, as error nodes. " if frozen else "")
               + f"{escape_html(graph.model)}; {features} latents, {len(record['nodes'])} nodes and "
               f"{len(record['links'])} edges after pruning (node threshold {data['thresholds'][0]}, edge "
               f"threshold {data['thresholds'][1]}). Green edges excite, red inhibit; squares are error nodes. "
               f"Click a node for its inputs, outputs and examples.")
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>saekit graph: '
            f'{escape_html(graph.prompt)}</title><style>{STYLE}</style></head><body>'
            f'<header><h1>Attribution graph</h1><p class="prompt">{escape_html(graph.prompt)}</p>'
            f'<p class="muted">{summary}</p></header>'
            f'<main><div id="graph"></div><div id="details"></div></main>'
            f'<script type="application/json" id="graph-data">{script_json(data)}</script>'
            f'<script>{SCRIPT}</script></body></html>')
