"""HTML building blocks that make corpus text safe: escaping, JSON for script blocks, shaded tokens.

Every string from a corpus or a tokenizer reaches a page only through :func:`esc` (text and
attributes) or :func:`script_json` (data blocks, with ``<``, ``>`` and ``&`` written as JSON escapes so
no ``</script>`` or ``<!--`` can ever appear inside the block). Pages never build markup from data in
JavaScript with innerHTML; the index script uses textContent.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Iterable, Sequence
from typing import Any

from saekit.dashboard.assets import CSS

VISIBLE_WHITESPACE = {"\n": "\u21b5", "\r": "\u240d", "\t": "\u2192"}
SHADE_RGB = "255, 120, 0"


def esc(text: Any) -> str:
    """Escape text for HTML element content and quoted attribute values."""
    return html.escape(str(text), quote=True)


def clean_json(value: Any) -> Any:
    """Replace NaN/inf (not valid JSON) by None, recursively."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: clean_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean_json(v) for v in value]
    return value


def script_json(value: Any) -> str:
    """JSON safe to place inside ``<script type="application/json">``: no markup-significant characters."""
    text = json.dumps(clean_json(value), ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    for char, escape in (("&", "\\u0026"), ("<", "\\u003c"), (">", "\\u003e"), ("\u2028", "\\u2028"),
                         ("\u2029", "\\u2029")):
        text = text.replace(char, escape)
    return text


def display_token(text: str) -> str:
    """Make whitespace-only structure visible (newlines, tabs) and empty tokens non-empty."""
    for char, symbol in VISIBLE_WHITESPACE.items():
        text = text.replace(char, symbol)
    return text if text else "\u2205"


def fmt(value: float | None, digits: int = 3) -> str:
    if value is None or not math.isfinite(value):
        return "\u2013"
    return f"{value:.{digits}g}"


def token_span(text: str, value: float, scale: float, counted: bool = True) -> str:
    """One token, its background opacity proportional to value / scale, the value in its title."""
    shown = esc(display_token(text))
    if not counted:
        return f'<span class="tok skip" title="{esc(repr(text))} (not counted)">{shown}</span>'
    if value <= 0:
        return f'<span class="tok">{shown}</span>'
    alpha = min(1.0, value / scale) if scale > 0 else 1.0
    title = esc(f"{text!r}: {value:.4g}")
    return f'<span class="tok on" style="background:rgba({SHADE_RGB},{alpha:.3f})" title="{title}">{shown}</span>'


def table(headers: Sequence[str] | None, rows: Iterable[Sequence[str]], css_class: str = "grid") -> str:
    """A table whose cells are already-safe HTML fragments (escape data before passing it)."""
    head = "<thead><tr>" + "".join(f"<th>{esc(h)}</th>" for h in headers) + "</tr></thead>" if headers else ""
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    return f'<table class="{css_class}">{head}<tbody>{body}</tbody></table>'


def page(title: str, body: str, script: str = "", root: str = "") -> str:
    """A complete standalone page: inline CSS, optional inline script, no external resources."""
    nav = (f'<nav><a href="{root}index.html">Latents</a> \u00b7 <a href="{root}overview.html">Overview</a>'
           "</nav>")
    script_tag = f"<script>{script}</script>" if script else ""
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{esc(title)}</title><style>{CSS}</style></head>"
            f"<body>{nav}{body}{script_tag}</body></html>\n")
