"""saekit's page for one attribution graph: a static HTML file, layers by prompt positions, click a node.

The page embeds the pruned graph (circuit-tracer's node records and links) and, for each latent node
whose run has an analysis store, its dashboard data: top examples with per-token activations, top
and bottom logit weights, density, the explanation when ``saekit explain`` made one, and a link to
the latent's dashboard page. Tokens show whitespace as the dashboard does (``display_token``). Every
string from the corpus, the prompt or the tokenizer reaches the browser as JSON inside a script block
(``script_json``) and is put on the page with ``textContent``: never parsed as markup.
``#node=NODE_ID`` in the address selects a node (links can be shared).

The page is also a place to work: shift-click a node (or "pin" in its details) to pin it, tick pinned nodes
and "group" them into a named supernode, label a node or rename a supernode. The subgraph view above the
graph draws only the pinned nodes (a supernode as one box) and the edges among them, summed per supernode.
The state is Neuronpedia's subgraph (``saekit.circuits.subgraph``): kept in the browser's localStorage
under the graph's slug, downloaded as ``SLUG.subgraph.json`` and loaded from such a file. A
``SLUG.subgraph.json`` beside the graph when the page is built (or the graph JSON's own ``qParams``) is
embedded and opened when the browser holds nothing for the slug; ``embed_subgraph`` replaces it in a built page.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from saekit.analysis.store import AnalysisStore
from saekit.circuits.graph import FEATURE_TYPE, Graph
from saekit.circuits.subgraph import (
    SUBGRAPH_SUFFIX,
    Subgraph,
    clerp_keys,
    parse_subgraph,
    read_subgraph,
    without_unknown,
)
from saekit.errors import SaekitError
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
            "slug": record["metadata"]["slug"], "clerp_keys": clerp_keys(record),
            "layers": graph.layers, "logit_layer": graph.node_layer(graph.logit_node(0)) + 1,
            "nodes": record["nodes"], "links": record["links"], "details": details,
            "thresholds": [record["metadata"]["node_threshold"], record["metadata"]["info"]["edge_threshold"]]}


SUBGRAPH_BLOCK = re.compile(r'(<script type="application/json" id="subgraph-data">)(.*?)(</script>)', re.S)


def _has_state(q_params: dict[str, Any]) -> bool:
    return any(q_params.get(key) for key in ("pinnedIds", "supernodes", "clerps"))


def saved_subgraph(record: dict[str, Any], page_dir: Path | None) -> dict[str, Any]:
    """The subgraph the page opens with when the browser holds none: ``SLUG.subgraph.json`` beside the graph,
    else the graph JSON's ``qParams``. Lenient, since the graph is already built: ids this graph lacks are
    dropped and named, a malformed file is named on the page, and neither stops the build."""
    slug = record["metadata"]["slug"]
    beside = None if page_dir is None else page_dir / f"{slug}{SUBGRAPH_SUFFIX}"
    try:
        if beside is not None and beside.is_file():
            found, source = read_subgraph(beside), beside.name
        elif _has_state(record.get("qParams") or {}):
            found, source = parse_subgraph(record, "the graph JSON's qParams"), f"{slug}.json"
        else:
            return {"state": None}
    except SaekitError as err:
        return {"state": None, "source": beside.name if beside else f"{slug}.json", "problem": str(err)}
    kept, dropped = without_unknown(found, record)
    return {"state": kept.q_params(), "source": source, "dropped": dropped}


def subgraph_state(subgraph: Subgraph, source: str) -> dict[str, Any]:
    """What ``embed_subgraph`` puts in a page: a subgraph already checked against the page's graph."""
    return {"state": subgraph.q_params(), "source": source, "dropped": []}


def embed_subgraph(page: str, saved: dict[str, Any]) -> str:
    """A built page with its embedded subgraph replaced (``script_json`` never writes ``</script>``)."""
    if not SUBGRAPH_BLOCK.search(page):
        raise SaekitError("the graph page has no embedded subgraph block (built by an older saekit); rebuild it "
                          "with `saekit attribute`")
    return SUBGRAPH_BLOCK.sub(lambda match: match[1] + script_json(saved) + match[3], page, count=1)


STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:0;color:#222}
header{padding:10px 16px;border-bottom:1px solid #ddd}
main{display:flex;gap:12px;padding:8px}
#views{flex:1 1 auto;min-width:0}
#graph{overflow:auto;max-height:70vh;border:1px solid #eee}
#subgraph{overflow:auto;max-height:40vh;border:1px solid #eee;margin-bottom:8px;padding:4px}
#side{flex:0 0 400px;max-height:92vh;overflow:auto}
#workspace{border:1px solid #ddd;padding:6px 8px;margin-bottom:8px}
#workspace h2,#subgraph h2{font-size:15px;margin:2px 0 4px}
.row{margin:4px 0}.pin{display:flex;gap:4px;align-items:center;margin:1px 0}
.members{margin-left:16px}.supernode{margin:4px 0;padding:2px 4px;background:#f6f1ff}
.muted{color:#777}.pos{color:#1a7f37}.neg{color:#b3261e}
.tok{display:inline-block;padding:0 1px;margin:1px 0;white-space:pre;border-radius:2px}
.ex{margin:4px 0;font-family:ui-monospace,monospace;font-size:12px}
table{border-collapse:collapse}td{padding:1px 6px;font-size:12px}
a.node{cursor:pointer;color:#0b57d0}
button{font-size:12px}
"""

WORKSPACE = """
<section id="workspace"><h2>Subgraph</h2>
<p class="muted">Shift-click a node (or "pin" in its details) to pin it; tick pinned nodes and group them into a
supernode; label the selected node in its details. Kept in this browser; download it to keep a file.</p>
<div id="pins"></div>
<div class="row"><input id="group-name" placeholder="supernode name" size="20">
<button id="group" type="button">group ticked</button></div>
<div class="row"><label>edges of the selected node <select id="link-type"><option value="input">inputs</option>
<option value="output">outputs</option><option value="either">either</option><option value="both">both</option>
</select></label></div>
<div class="row"><button id="download" type="button">download subgraph</button>
<label>load subgraph <input id="load" type="file" accept=".json,application/json"></label></div>
<div class="row"><button id="reset" type="button">reset to the saved file</button>
<button id="clear" type="button">clear</button></div>
<p id="status" class="muted"></p></section>
"""

SCRIPT = r"""
const data = JSON.parse(document.getElementById('graph-data').textContent);
const saved = JSON.parse(document.getElementById('subgraph-data').textContent);
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
// A crowded cell wraps onto more lines (its layer's row grows), so every node stays clickable.
const STEP = 10, PER_LINE = Math.floor((COL - 20) / STEP) + 1;
const lines = rows.map(() => 1);
for (const group of cells.values()) {
  const r = rowOf(group[0].layer);
  lines[r] = Math.max(lines[r], Math.ceil(group.length / PER_LINE));
}
const rowY = [];
lines.forEach((count, r) => rowY.push(r ? rowY[r - 1] + lines[r - 1] * ROW : TOP));
for (const group of cells.values()) {
  group.sort((a, b) => (a.influence ?? 1) - (b.influence ?? 1));  // cumulative share: small first
  group.forEach((n, i) => {
    const line = Math.floor(i / PER_LINE), inLine = Math.min(PER_LINE, group.length - line * PER_LINE);
    n.x = LEFT + n.ctx_idx * COL + COL / 2 + (i % PER_LINE - (inLine - 1) / 2) * STEP;
    n.y = rowY[rowOf(n.layer)] + line * ROW + ROW / 2;
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
function button(text, parent, onClick, cls) {
  const b = html('button', text, parent, cls);
  b.type = 'button';
  b.addEventListener('click', onClick);
  return b;
}

// The working subgraph: Neuronpedia's qParams (saekit.circuits.subgraph), saved per slug in this browser.
const STORE_KEY = 'saekit-subgraph:' + data.slug;
const LINK_TYPES = ['input', 'output', 'either', 'both'];
const keyOf = id => data.clerp_keys[id];
const labelKeys = new Set(Object.values(data.clerp_keys));
let state = blank();
const ticked = new Set();  // pinned nodes ticked for grouping: not part of the saved state
let current = null;  // the selected node id, or 'supernode-I'
function blank() { return {pinnedIds: [], supernodes: [], clerps: [], clickedId: '', linkType: 'both'}; }
function strings(value) { return Array.isArray(value) && value.every(v => typeof v === 'string'); }
function adopt(raw) {
  // A subgraph from a file or storage, less what this graph lacks; returns how many entries were dropped.
  if (raw && raw.qParams && raw.nodes) raw = {...raw.qParams, slug: raw.metadata && raw.metadata.slug};
  if (!raw || typeof raw !== 'object' || Array.isArray(raw)) throw new Error('not a subgraph (a JSON object)');
  if (typeof raw.slug === 'string' && raw.slug !== data.slug)
    throw new Error('it is the subgraph of graph ' + JSON.stringify(raw.slug) + ', not ' + JSON.stringify(data.slug));
  let pinned = typeof raw.pinnedIds === 'string' ? raw.pinnedIds.split(',').filter(Boolean) : (raw.pinnedIds || []);
  let clerps = typeof raw.clerps === 'string' ? JSON.parse(raw.clerps || '[]') : (raw.clerps || []);
  const supernodes = raw.supernodes || [];
  if (!strings(pinned) || !Array.isArray(supernodes) || !Array.isArray(clerps))
    throw new Error('pinnedIds, supernodes or clerps has the wrong shape');
  const next = blank();
  let dropped = 0;
  for (const id of pinned) {
    if (byId.has(id) && !next.pinnedIds.includes(id)) next.pinnedIds.push(id); else dropped++;
  }
  const grouped = new Set();
  for (const entry of supernodes) {
    if (!strings(entry) || entry.length < 2) { dropped++; continue; }
    const members = entry.slice(1).filter(id => byId.has(id) && !grouped.has(id));
    dropped += entry.length - 1 - members.length;
    members.forEach(id => grouped.add(id));
    if (members.length) next.supernodes.push([entry[0], ...members]);
  }
  for (const pair of clerps) {
    if (strings(pair) && pair.length === 2 && labelKeys.has(pair[0]) && !next.clerps.some(c => c[0] === pair[0]))
      next.clerps.push([pair[0], pair[1]]);
    else dropped++;
  }
  next.clickedId = typeof raw.clickedId === 'string' && byId.has(raw.clickedId) ? raw.clickedId : '';
  next.linkType = LINK_TYPES.includes(raw.linkType) ? raw.linkType : 'both';
  state = next;
  return dropped;
}
function serialise() {
  return {slug: data.slug, pinnedIds: [...state.pinnedIds], supernodes: state.supernodes.map(s => [...s]),
          clerps: state.clerps.map(c => [...c]), clickedId: state.clickedId, linkType: state.linkType};
}
window.saekitSubgraph = serialise;  // what "download subgraph" writes
function status(text) { document.getElementById('status').textContent = text; }
function save() {
  try {
    localStorage.setItem(STORE_KEY, JSON.stringify(serialise()));
    status('saved in this browser (' + state.pinnedIds.length + ' pinned)');
  } catch (err) {
    status('not saved in this browser (' + err.message + '); download the subgraph to keep it');
  }
}
function labelOf(id) {
  const found = state.clerps.find(c => c[0] === keyOf(id));
  return found ? found[1] : '';
}
function nameOf(n) {
  const label = labelOf(n.node_id);
  return label ? label + ' \u2014 ' + describe(n) : describe(n);
}
function ownerOf(id) { return state.supernodes.findIndex(s => s.indexOf(id, 1) > 0); }
function togglePin(id) {
  if (state.pinnedIds.includes(id)) {
    state.pinnedIds = state.pinnedIds.filter(p => p !== id);
    state.supernodes = state.supernodes.map(s => s.filter((v, i) => i === 0 || v !== id)).filter(s => s.length > 1);
    ticked.delete(id);
  } else {
    state.pinnedIds.push(id);
  }
  changed();
}
function group() {
  const ids = state.pinnedIds.filter(id => ticked.has(id));
  if (ids.length < 2) return status('tick at least two pinned nodes to group them');
  const name = document.getElementById('group-name').value.trim() || 'supernode';
  state.supernodes = state.supernodes.map(s => s.filter((v, i) => i === 0 || !ids.includes(v)))
    .filter(s => s.length > 1);
  state.supernodes.push([name, ...ids]);
  ticked.clear();
  document.getElementById('group-name').value = '';
  changed();
}
function annotate(text) {
  if (current && current.startsWith('supernode-')) {
    const entry = state.supernodes[+current.split('-')[1]];
    if (entry) entry[0] = text || 'supernode';
  } else if (current) {
    const key = keyOf(current);
    state.clerps = state.clerps.filter(c => c[0] !== key);
    if (text) state.clerps.push([key, text]);
  }
  changed();
}
function changed() {
  save();
  render();
}
function hasWork() { return state.pinnedIds.length || state.supernodes.length || state.clerps.length; }
function render() {
  renderWorkspace();
  renderSubgraph();
  for (const [id, shape] of shapes) {
    shape.setAttribute('class', state.pinnedIds.includes(id) ? 'node pinned' : 'node');
    shape.querySelector('title').textContent = nameOf(byId.get(id));
  }
  paintSelection();
  if (current) showDetails(current);
}

const width = LEFT + data.tokens.length * COL + 20;
const height = rowY[rows.length - 1] + lines[rows.length - 1] * ROW + 60;
const svg = el('svg', {width, height, id: 'graph-svg'}, document.getElementById('graph'));
rows.forEach((r, i) => {
  const label = el('text', {x: 4, y: rowY[rowOf(r)] + ROW / 2 + 4, 'font-size': 11, fill: '#777'}, svg);
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
  el('title', {}, shape);
  shape.addEventListener('click', ev => ev.shiftKey ? togglePin(n.node_id) : select(n.node_id));
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
    const name = html('a', nameOf(other), html('td', null, row), 'node');
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
function annotationField(panel, value, what) {
  const row = html('div', null, panel, 'row');
  const input = html('input', null, row);
  input.id = 'annotation';
  input.size = 28;
  input.placeholder = what;
  input.value = value;
  button('label', row, () => annotate(input.value.trim())).id = 'annotate';
}
function paintSelection() {
  for (const [key, shape] of shapes) {
    const pinned = state.pinnedIds.includes(key);
    shape.setAttribute('stroke', key === current ? '#000' : (pinned ? '#e8a400' : 'none'));
    shape.setAttribute('stroke-width', key === current || pinned ? 2 : 0);
  }
}
function showSupernode(i, panel) {
  const entry = state.supernodes[i];
  if (!entry) { current = null; return; }  // ungrouped meanwhile
  html('h2', entry[0], panel, 'selected-node');
  html('p', 'supernode of ' + (entry.length - 1) + ' nodes', panel, 'muted');
  annotationField(panel, entry[0], 'supernode name');
  for (const id of entry.slice(1)) {
    const link = html('a', nameOf(byId.get(id)), html('div', null, panel), 'node');
    link.addEventListener('click', () => select(id));
  }
}
function showDetails(id) {
  const panel = document.getElementById('details');
  panel.replaceChildren();
  if (id.startsWith('supernode-')) return showSupernode(+id.split('-')[1], panel);
  const n = byId.get(id);
  html('h2', describe(n), panel, 'selected-node');
  const pinned = state.pinnedIds.includes(id);
  button(pinned ? 'unpin' : 'pin', html('div', null, panel, 'row'), () => togglePin(id)).id = 'pin-toggle';
  annotationField(panel, labelOf(id), 'label for this node');
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
  edgeList('Inputs', incoming.get(id) || [], 'source', panel);
  edgeList('Outputs', outgoing.get(id) || [], 'target', panel);
}
function select(id, persist = true) {
  if (!byId.has(id) && !(id || '').startsWith('supernode-')) return;
  current = id;
  paintSelection();
  showDetails(id);
  if (id.startsWith('supernode-')) return;
  const ins = incoming.get(id) || [], outs = outgoing.get(id) || [];
  drawEdges(state.linkType === 'input' ? ins : state.linkType === 'output' ? outs : [...ins, ...outs], true);
  if (location.hash !== '#node=' + id) history.replaceState(null, '', '#node=' + id);
  if (state.clickedId === id) return;
  state.clickedId = id;
  if (persist && hasWork()) save();  // opening the page saves nothing: a later subgraph file still loads
}
function pinRow(id, parent) {
  const row = html('div', null, parent, 'pin');
  const box = html('input', null, row);
  box.type = 'checkbox';
  box.setAttribute('data-pin', id);
  box.checked = ticked.has(id);
  box.addEventListener('change', () => box.checked ? ticked.add(id) : ticked.delete(id));
  const link = html('a', nameOf(byId.get(id)), row, 'node');
  link.addEventListener('click', () => select(id));
  button('unpin', row, () => togglePin(id), 'unpin');
}
function renderWorkspace() {
  const pins = document.getElementById('pins');
  pins.replaceChildren();
  const shown = state.supernodes.filter(s => s.slice(1).some(id => state.pinnedIds.includes(id))).length;
  html('p', state.pinnedIds.length + ' pinned, ' + shown + ' supernodes', pins, 'muted');
  state.supernodes.forEach((entry, i) => {
    const members = entry.slice(1).filter(id => state.pinnedIds.includes(id));
    if (!members.length) return;
    const box = html('div', null, pins, 'supernode');
    const head = html('div', null, box, 'pin');
    const name = html('a', entry[0], head, 'node supernode-name');
    name.addEventListener('click', () => select('supernode-' + i));
    button('ungroup', head, () => { state.supernodes.splice(i, 1); changed(); }, 'ungroup');
    const list = html('div', null, box, 'members');
    members.forEach(id => pinRow(id, list));
  });
  state.pinnedIds.filter(id => ownerOf(id) < 0).forEach(id => pinRow(id, pins));
  document.getElementById('link-type').value = state.linkType;
}
function renderSubgraph() {
  // Only the pinned nodes, each supernode as one box, and the edges among them (summed per supernode).
  const host = document.getElementById('subgraph');
  host.replaceChildren();
  html('h2', 'Subgraph view', host);
  const pinned = new Set(state.pinnedIds);
  const key = new Map();
  state.supernodes.forEach((s, i) => s.slice(1).forEach(id => { if (pinned.has(id)) key.set(id, 'supernode-' + i); }));
  const items = new Map();
  for (const id of state.pinnedIds) {
    const n = byId.get(id), k = key.get(id) || id;
    const item = items.get(k) || items.set(k, {key: k, members: []}).get(k);
    item.members.push(n);
  }
  if (!items.size) return html('p', 'Nothing pinned yet: shift-click nodes in the graph below.', host, 'muted');
  const mean = (xs) => xs.reduce((a, b) => a + b, 0) / xs.length;
  for (const item of items.values()) {
    item.row = Math.round(mean(item.members.map(n => rowOf(n.layer))));
    item.col = Math.round(mean(item.members.map(n => n.ctx_idx)));
    item.label = item.key.startsWith('supernode-') ? state.supernodes[+item.key.split('-')[1]][0]
                                                   : nameOf(item.members[0]);
  }
  const BOX = 150, HIGH = 28, GAP = 22;
  const cols = [...new Set([...items.values()].map(i => i.col))].sort((a, b) => a - b);
  const used = [...new Set([...items.values()].map(i => i.row))].sort((a, b) => a - b);
  const perCell = new Map();
  let x = 10;
  const colX = new Map();
  for (const c of cols) {
    colX.set(c, x);
    let widest = 1;
    for (const r of used) widest = Math.max(widest, [...items.values()].filter(i => i.col === c && i.row === r).length);
    x += widest * (BOX + 10) + 10;
  }
  for (const item of items.values()) {
    const cell = item.col + ':' + item.row, k = perCell.get(cell) || 0;
    perCell.set(cell, k + 1);
    item.x = colX.get(item.col) + k * (BOX + 10);
    item.y = 10 + used.indexOf(item.row) * (HIGH + GAP);
  }
  const sums = new Map();
  for (const link of data.links) {
    if (!pinned.has(link.source) || !pinned.has(link.target)) continue;
    const s = key.get(link.source) || link.source, t = key.get(link.target) || link.target;
    if (s !== t) sums.set(s + '\u0000' + t, (sums.get(s + '\u0000' + t) || 0) + link.weight);
  }
  const sg = el('svg', {width: x + 10, height: 20 + used.length * (HIGH + GAP), id: 'subgraph-svg'}, host);
  const top = Math.max(1e-12, ...[...sums.values()].map(Math.abs));
  for (const [pair, weight] of sums) {
    const [s, t] = pair.split('\u0000').map(k => items.get(k));
    el('line', {x1: s.x + BOX / 2, y1: s.y + HIGH / 2, x2: t.x + BOX / 2, y2: t.y + HIGH / 2, class: 'sg-edge',
                stroke: weight > 0 ? '#1a7f37' : '#b3261e', 'stroke-width': 0.5 + 3 * Math.abs(weight) / top,
                'stroke-opacity': 0.8}, sg);
  }
  for (const item of items.values()) {
    const grouped = item.key.startsWith('supernode-');
    const g = el('g', {'data-sg-node': item.key, class: grouped ? 'sg-node sg-supernode' : 'sg-node'}, sg);
    el('rect', {x: item.x, y: item.y, width: BOX, height: HIGH, rx: 4, fill: grouped ? '#efe6ff' : '#fff',
                stroke: grouped ? '#6f42c1' : '#999', 'stroke-dasharray': grouped ? '4 2' : ''}, g);
    const text = el('text', {x: item.x + 5, y: item.y + 18, 'font-size': 11}, g);
    text.textContent = item.label.length > 22 ? item.label.slice(0, 21) + '\u2026' : item.label;
    el('title', {}, g).textContent = item.label + (grouped ? ' (' + item.members.length + ' nodes)' : '');
    g.addEventListener('click', () => select(grouped ? item.key : item.members[0].node_id));
  }
  html('p', items.size + ' boxes, ' + sums.size + ' edges among them', host, 'muted');
}
function download() {
  const text = JSON.stringify(serialise(), null, 2) + '\n';
  const link = document.createElement('a');
  link.href = URL.createObjectURL(new Blob([text], {type: 'application/json'}));
  link.download = data.slug + '.subgraph.json';
  document.body.appendChild(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(link.href), 10000);
}
function openWith(raw, source, persist) {
  const dropped = adopt(raw);
  if (persist) changed(); else render();
  const note = dropped ? '; ' + dropped + ' entries not in this graph left out' : '';
  status('opened the subgraph from ' + source + note);
}
document.getElementById('group').addEventListener('click', group);
document.getElementById('download').addEventListener('click', download);
document.getElementById('link-type').addEventListener('change', ev => {
  state.linkType = ev.target.value;
  changed();
  if (current && !current.startsWith('supernode-')) select(current);
});
document.getElementById('load').addEventListener('change', ev => {
  const file = ev.target.files[0];
  if (!file) return;
  file.text().then(text => openWith(JSON.parse(text), file.name, true))
    .catch(err => status('could not load ' + file.name + ': ' + err.message))
    .finally(() => { ev.target.value = ''; });
});
document.getElementById('reset').addEventListener('click', () => {
  try { localStorage.removeItem(STORE_KEY); } catch (err) { /* storage off: nothing kept to remove */ }
  if (saved.state) openWith(saved.state, saved.source, false); else { state = blank(); render(); }
});
document.getElementById('clear').addEventListener('click', () => { state = blank(); ticked.clear(); changed(); });

let stored = null;
try { stored = localStorage.getItem(STORE_KEY); } catch (err) { stored = null; }
try {
  if (stored) openWith(JSON.parse(stored), 'this browser', false);
  else if (saved.state) openWith(saved.state, saved.source, false);
  else render();
} catch (err) {
  state = blank();
  render();
  status('the saved subgraph could not be read (' + err.message + '); starting empty');
}
if (saved.problem) status(saved.problem);
else if (saved.dropped && saved.dropped.length && !stored)
  status('opened ' + saved.source + ' without ' + saved.dropped.join(', ') + ' (not in this graph)');
drawEdges(overview, false);
const fromHash = decodeURIComponent(location.hash.replace(/^#node=/, ''));
select(byId.has(fromHash) ? fromHash : byId.has(state.clickedId) ? state.clickedId
       : (data.nodes.find(n => n.is_target_logit) || {}).node_id, false);
document.body.setAttribute('data-ready', '1');
"""


def graph_page(graph: Graph, record: dict[str, Any], sources: dict[int, FeatureSource],
               page_dir: Path | None = None) -> str:
    """The page's HTML (self-contained: no network, no external files). ``page_dir`` is where it is written:
    dashboard links are relative to it, and a ``SLUG.subgraph.json`` there is embedded."""
    data = page_data(graph, record, sources, page_dir or Path("."))
    saved = saved_subgraph(record, page_dir)
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
               f"Click a node for its inputs, outputs and examples; shift-click to pin it.")
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>saekit graph: '
            f'{escape_html(graph.prompt)}</title><style>{STYLE}</style></head><body>'
            f'<header><h1>Attribution graph</h1><p class="prompt">{escape_html(graph.prompt)}</p>'
            f'<p class="muted">{summary}</p></header>'
            f'<main><div id="views"><div id="subgraph"></div><div id="graph"></div></div>'
            f'<aside id="side">{WORKSPACE}<div id="details"></div></aside></main>'
            f'<script type="application/json" id="graph-data">{script_json(data)}</script>'
            f'<script type="application/json" id="subgraph-data">{script_json(saved)}</script>'
            f'<script>{SCRIPT}</script></body></html>')
