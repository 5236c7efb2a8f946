"""The dashboard's inline CSS and the index page's script (no external resources, no corpus data)."""

from __future__ import annotations

CSS = """
body{font:14px/1.45 system-ui,-apple-system,'Segoe UI',sans-serif;margin:0 auto;max-width:1200px;padding:12px 20px;
color:#1d1d1f;background:#fff}
nav{margin-bottom:10px;font-size:13px}a{color:#0b57d0;text-decoration:none}a:hover{text-decoration:underline}
h1{font-size:22px;margin:6px 0 4px}h2{font-size:17px;margin:22px 0 8px;border-bottom:1px solid #ddd;padding-bottom:3px}
h3{font-size:14px;margin:14px 0 6px;color:#444}.muted{color:#666;font-size:12px}
table.grid{border-collapse:collapse;font-size:13px}
table.grid td,table.grid th{padding:3px 8px;border-bottom:1px solid #eee;text-align:left;vertical-align:top}
table.grid th{background:#f6f6f6;position:sticky;top:0}
#latents th{cursor:pointer;user-select:none;white-space:nowrap}#latents th.sorted-asc::after{content:' \\25B2'}
#latents th.sorted-desc::after{content:' \\25BC'}#latents td.num{text-align:right;font-variant-numeric:tabular-nums}
.controls{display:flex;flex-wrap:wrap;gap:10px;align-items:center;margin:10px 0;padding:8px;background:#f6f6f6;
border-radius:6px}.controls input[type=text]{width:220px}.controls input[type=number]{width:80px}
.flag{font-size:11px;padding:1px 5px;border-radius:8px;background:#eee}.flag.dead{background:#fdd}
.flag.ultra-rare{background:#ffe6b3}
.cols{display:flex;flex-wrap:wrap;gap:28px}.cols>div{min-width:260px}
.example{font:13px/1.7 ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;white-space:pre-wrap;word-break:break-word;
padding:4px 8px;margin:3px 0;border-left:3px solid #eee;background:#fcfcfc}
.example .meta{color:#888;font:11px system-ui,sans-serif;margin-right:8px;white-space:nowrap}
.tok{border-radius:2px}.tok.on{outline:1px solid rgba(255,120,0,.35)}.tok.skip{color:#aaa}
.tokens span.pill{display:inline-block;font:12px ui-monospace,monospace;background:#f1f1f1;border-radius:4px;
padding:0 5px;margin:1px 2px;white-space:pre}
.pos{color:#0a7a2f}.neg{color:#b3261e}svg text{font:10px system-ui,sans-serif;fill:#555}
img.figure{max-width:100%;border:1px solid #eee}
"""

INDEX_SCRIPT = r"""
(function () {
  'use strict';
  var data = JSON.parse(document.getElementById('latent-data').textContent);
  var rows = data.latents;
  var limit = data.row_limit;
  var columns = data.columns;
  var pages = new Set(data.pages);
  var body = document.querySelector('#latents tbody');
  var status = document.getElementById('status');
  var search = document.getElementById('search');
  var statSelect = document.getElementById('stat');
  var minBox = document.getElementById('stat-min');
  var maxBox = document.getElementById('stat-max');
  var hideDead = document.getElementById('hide-dead');
  var sortKey = 'id', sortDir = 1;

  function fmt(v, kind) {
    if (v === null || v === undefined) { return '\u2013'; }
    if (kind === 'int') { return String(v); }
    if (kind === 'num') { return Number(v).toPrecision(3); }
    return String(v);
  }
  function cmp(a, b) {
    var x = a[sortKey], y = b[sortKey];
    if (x === null || x === undefined) { return 1; }
    if (y === null || y === undefined) { return -1; }
    if (typeof x === 'string') { return sortDir * x.localeCompare(y); }
    return sortDir * (x - y);
  }
  function matches(r) {
    var q = search.value.toLowerCase();
    var text = r.tokens + '\u0000' + r.logits + '\u0000' + (r.explanation || '');
    if (q && text.toLowerCase().indexOf(q) < 0) { return false; }
    if (hideDead.checked && r.flag === 'dead') { return false; }
    var v = r[statSelect.value];
    var lo = parseFloat(minBox.value), hi = parseFloat(maxBox.value);
    if (!isNaN(lo) && !(v !== null && v >= lo)) { return false; }
    if (!isNaN(hi) && !(v !== null && v <= hi)) { return false; }
    return true;
  }
  function cell(r, c) {
    var td = document.createElement('td');
    if (c.kind !== 'text') { td.className = 'num'; }
    var value = r[c.key];
    if ((c.key === 'id' || c.key === 'nearest') && value !== null && pages.has(value)) {
      var a = document.createElement('a');
      a.href = 'features/' + Number(value) + '.html';
      a.textContent = String(value);
      td.appendChild(a);
    } else if (c.key === 'flag' && value) {
      var s = document.createElement('span');
      s.className = 'flag ' + value;
      s.textContent = value;
      td.appendChild(s);
    } else {
      td.textContent = fmt(value, c.kind);
    }
    return td;
  }
  function render() {
    var shown = rows.filter(matches).sort(cmp);
    var fragment = document.createDocumentFragment();
    shown.slice(0, limit).forEach(function (r) {
      var tr = document.createElement('tr');
      columns.forEach(function (c) { tr.appendChild(cell(r, c)); });
      fragment.appendChild(tr);
    });
    body.replaceChildren(fragment);
    status.textContent = shown.length + ' of ' + rows.length + ' latents match' +
      (shown.length > limit ? ' (first ' + limit + ' shown)' : '');
    document.querySelectorAll('#latents th').forEach(function (th) {
      th.className = th.dataset.key === sortKey ? (sortDir > 0 ? 'sorted-asc' : 'sorted-desc') : '';
    });
  }
  document.querySelectorAll('#latents th').forEach(function (th) {
    th.addEventListener('click', function () {
      if (sortKey === th.dataset.key) { sortDir = -sortDir; } else { sortKey = th.dataset.key; sortDir = 1; }
      render();
    });
  });
  [search, statSelect, minBox, maxBox, hideDead].forEach(function (el) { el.addEventListener('input', render); });
  render();
})();
"""
