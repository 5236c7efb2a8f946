"""The explorer page: static HTML, CSS and vanilla JavaScript (no CDN, works offline).

The page holds no data of its own: everything it shows comes from the ``/v1`` API and reaches the DOM through
``textContent`` only (never ``innerHTML``), so text from a corpus, a prompt or an explanation stays text; the
page is served under a Content-Security-Policy that allows only its own script. When the server has graph
transcoders, an "Attribution graph" button posts the typed prompt to ``/v1/graph/generate`` and opens the graph's
page (``/graphs/KEY``) in a window opened at the click (one opened after the wait would be blocked).
"""

from __future__ import annotations

HTML = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>saekit explorer</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="stylesheet" href="/static/app.css"><script src="/static/app.js" defer></script></head>
<body>
<header><h1>saekit explorer</h1>
<label>run <select id="run"></select></label> <span id="run-note" class="muted"></span></header>
<section id="activations-view"><h2>Activations</h2>
<form id="activation-form">
<textarea id="prompt" rows="3" cols="80" placeholder="Type text to see which latents fire"></textarea>
<br><button id="show" type="submit">Show activations</button>
<button id="graph" type="button" hidden>Attribution graph</button> <span id="act-error" class="error"></span>
<span id="graph-status" class="muted"></span> <a id="graph-link" target="_blank" rel="noopener" hidden></a></form>
<div class="cols"><div id="tokens" class="tokens"></div>
<div class="side"><h3 id="hover-title">Hover a token</h3><ol id="hover"></ol></div></div>
<h3>Top latents <span class="muted">(click a name: its dashboard page; "highlight": shade tokens by it)</span></h3>
<ol id="latents"></ol></section>
<section id="search-view"><h2>Search explanations <span id="search-method" class="muted"></span></h2>
<form id="search-form"><input id="query" type="text" size="50" placeholder="e.g. numbers, Python code">
<button id="search" type="submit">Search</button> <span id="search-error" class="error"></span></form>
<ol id="results"></ol></section>
<section id="steer-view"><h2>Steer</h2>
<form id="steer-form"><textarea id="steer-prompt" rows="2" cols="80" placeholder="Prompt to continue"></textarea><br>
<label>latent <input id="steer-index" type="number" min="0" value="0"></label>
<label>strength <input id="steer-strength" type="number" step="any" value="4"></label>
<label>method <select id="steer-method"><option>SIMPLE_ADDITIVE</option><option>ORTHOGONAL_DECOMP</option>
<option>PROJECTION_CAP</option></select></label>
<label>tokens <input id="steer-tokens" type="number" min="1" value="16"></label>
<label>temperature <input id="steer-temperature" type="number" min="0" step="any" value="0.7"></label>
<label>seed <input id="steer-seed" type="number" min="0" value="0"></label>
<button id="steer" type="submit">Generate</button> <span id="steer-error" class="error"></span></form>
<div class="cols"><div><h3>Clean</h3><p id="clean" class="completion"></p></div>
<div><h3>Steered</h3><p id="steered" class="completion"></p></div></div></section>
</body></html>
"""

CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:0 auto;max-width:1100px;padding:12px 20px;color:#1d1d1f}
h1{font-size:22px;margin:4px 0}h2{font-size:17px;border-bottom:1px solid #ddd;margin:22px 0 8px}h3{font-size:14px}
.muted{color:#666;font-size:12px}.error{color:#b00020}a{color:#0b57d0}
.cols{display:flex;flex-wrap:wrap;gap:24px}.cols>div{flex:1;min-width:260px}
.tokens{font-family:ui-monospace,monospace;white-space:pre-wrap;line-height:1.9;border:1px solid #eee;padding:8px}
.token{border-radius:3px;padding:1px 0;cursor:default}.token.active{outline:1px solid #e0a060}
.token.hovered{outline:2px solid #0b57d0}
.completion{white-space:pre-wrap;font-family:ui-monospace,monospace;background:#f6f6f6;padding:8px;min-height:2em}
li .explanation{color:#444}li .value{font-variant-numeric:tabular-nums;color:#555}
button.small{font-size:11px;margin-left:6px}
"""

SCRIPT = r"""
"use strict";
const $ = (id) => document.getElementById(id);
const state = {runs: [], explanations: {}, result: null, graph: null};

function el(tag, text, cls) {
  const node = document.createElement(tag);
  if (text !== undefined) node.textContent = text;
  if (cls) node.className = cls;
  return node;
}

async function api(path, body) {
  const options = {credentials: "same-origin"};
  if (body !== undefined) {
    options.method = "POST";
    options.headers = {"Content-Type": "application/json"};
    options.body = JSON.stringify(body);
  }
  const response = await fetch(path, options);
  const data = await response.json();
  if (!response.ok) throw new Error(data.error || response.statusText);
  return data;
}

function currentRun() { return state.runs.find((run) => run.name === $("run").value); }

function dashboardLink(source, index) {
  const run = state.runs.find((r) => r.name === source);
  if (!run || !run.dashboard) return null;
  return "/runs/" + encodeURIComponent(source) + "/dashboard/features/" + index + ".html";
}

function latentItem(source, index, value) {
  const item = el("li");
  const label = source + " #" + index;
  const link = dashboardLink(source, index);
  const name = el(link ? "a" : "span", label, "latent");
  if (link) { name.href = link; name.target = "_blank"; name.rel = "noopener"; }
  name.dataset.source = source;
  name.dataset.index = String(index);
  item.append(name);
  if (value !== undefined) item.append(el("span", " " + value.toFixed(3), "value"));
  const text = (state.explanations[source] || {})[String(index)];
  if (text) item.append(el("span", " \u2014 " + text, "explanation"));
  return item;
}

async function loadRuns() {
  const data = await api("/v1/runs");
  state.runs = data.runs;
  for (const run of data.runs) {
    const option = el("option", run.name + " (" + run.model + ", " + run.width + " latents)");
    option.value = run.name;
    $("run").append(option);
    state.explanations[run.name] = (await api("/v1/runs/" + encodeURIComponent(run.name) + "/explanations"))
      .explanations;
  }
  $("search-method").textContent = "(" + data.search + ")";
  state.graph = data.graph;
  if (data.graph) {
    $("graph").hidden = false;
    $("graph").title = "the attribution graph of the prompt over " + data.graph.transcoders + " (" +
      data.graph.model + "; at most " + data.graph.maxPromptTokens + " tokens)";
  }
  document.body.dataset.ready = "1";
}

function shade(strength, peak) {
  const alpha = peak > 0 ? Math.max(0, strength) / peak : 0;
  return "rgba(255, 140, 0, " + alpha.toFixed(3) + ")";
}

function drawTokens(only) {
  const box = $("tokens");
  box.replaceChildren();
  const features = only ? [only] : state.result.activations;
  let peak = 0;
  for (const f of features) peak = Math.max(peak, f.maxValue);
  state.result.tokens.forEach((token, position) => {
    if (position === 0) return;  // BOS
    let strength = 0;
    for (const f of features) strength = Math.max(strength, f.values[position]);
    const span = el("span", token, strength > 0 ? "token active" : "token");
    span.dataset.position = String(position);
    span.dataset.activation = strength.toFixed(6);
    span.style.backgroundColor = shade(strength, peak);
    span.addEventListener("mouseenter", () => showTokenLatents(span, position));
    box.append(span);
  });
}

function showTokenLatents(span, position) {
  for (const other of document.querySelectorAll(".token.hovered")) other.classList.remove("hovered");
  span.classList.add("hovered");
  $("hover-title").textContent = "Token " + JSON.stringify(state.result.tokens[position]) + " at " + position;
  const list = $("hover");
  list.replaceChildren();
  const here = state.result.activations.filter((f) => f.values[position] > 0)
    .sort((a, b) => b.values[position] - a.values[position]).slice(0, 10);
  for (const f of here) list.append(latentItem(f.source, f.index, f.values[position]));
  if (!here.length) list.append(el("li", "no top latent fires here", "muted"));
}

function drawLatentList() {
  const list = $("latents");
  list.replaceChildren();
  for (const f of state.result.activations) {
    const item = latentItem(f.source, f.index, f.maxValue);
    const button = el("button", "highlight", "small");
    button.type = "button";
    button.addEventListener("click", () => drawTokens(f));
    item.append(button);
    list.append(item);
  }
}

async function showActivations(event) {
  event.preventDefault();
  $("act-error").textContent = "";
  try {
    const run = currentRun();
    state.result = await api("/v1/activation/all", {prompt: $("prompt").value, model: run.model,
      selectedSources: [run.name], ignoreBos: true, sortByTokenIndexes: []});
    drawTokens(null);
    drawLatentList();
  } catch (err) { $("act-error").textContent = err.message; }
}

async function showGraph() {
  $("act-error").textContent = "";
  $("graph-link").hidden = true;
  $("graph-status").textContent = "building the graph\u2026";
  // Opened now, while the click still counts as the user's: a window opened after the wait would be blocked.
  const win = window.open("", "_blank");
  try {
    const data = await api("/v1/graph/generate", {prompt: $("prompt").value, model_id: state.graph.model});
    $("graph-status").textContent = data.graph.nodes.length + " nodes, " + data.graph.links.length + " edges: ";
    $("graph-link").textContent = "open the graph " + data.slug;
    $("graph-link").href = data.url;
    $("graph-link").hidden = false;
    if (win) win.location.href = data.url;
  } catch (err) {
    if (win) win.close();
    $("graph-status").textContent = "";
    $("act-error").textContent = err.message;
  }
}

async function search(event) {
  event.preventDefault();
  $("search-error").textContent = "";
  const list = $("results");
  list.replaceChildren();
  try {
    const data = await api("/v1/explanation/search", {query: $("query").value});
    for (const hit of data.results) {
      const item = latentItem(hit.source, hit.index);
      item.append(el("span", " (" + hit.score.toFixed(3) + ")", "value"));
      const button = el("button", "steer with it", "small");
      button.type = "button";
      button.addEventListener("click", () => { $("run").value = hit.source; $("steer-index").value = hit.index; });
      item.append(button);
      list.append(item);
    }
    if (!data.results.length) list.append(el("li", "no explanation matches", "muted"));
  } catch (err) { $("search-error").textContent = err.message; }
}

async function steer(event) {
  event.preventDefault();
  $("steer-error").textContent = "";
  try {
    const run = currentRun();
    const data = await api("/v1/steer/completion", {prompt: $("steer-prompt").value, model: run.model,
      steerMethod: $("steer-method").value, normalizeSteering: false, types: ["DEFAULT", "STEERED"],
      features: [{source: run.name, index: Number($("steer-index").value),
                  strength: Number($("steer-strength").value)}],
      nCompletionTokens: Number($("steer-tokens").value), temperature: Number($("steer-temperature").value),
      strengthMultiplier: 1, freqPenalty: 0, seed: Number($("steer-seed").value)});
    for (const output of data.outputs) $(output.type === "DEFAULT" ? "clean" : "steered").textContent = output.output;
  } catch (err) { $("steer-error").textContent = err.message; }
}

document.addEventListener("DOMContentLoaded", () => {
  $("activation-form").addEventListener("submit", showActivations);
  $("graph").addEventListener("click", showGraph);
  $("search-form").addEventListener("submit", search);
  $("steer-form").addEventListener("submit", steer);
  loadRuns().catch((err) => { $("run-note").textContent = err.message; });
});
"""
