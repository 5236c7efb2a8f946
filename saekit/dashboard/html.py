"""HTML building blocks that make corpus text safe: escaping, JSON for script blocks, shaded tokens.

Every string from a corpus or a tokenizer reaches a page only through :func:`esc` (text and
attributes) or :func:`script_json` (data blocks, with ``<``, ``>`` and ``&`` written as JSON escapes so
no ``</script>`` or ``<!--`` can ever appear inside the block). Both come from
:mod:`saekit.render` (``esc`` is ``escape_html``), where all of saekit's escaping lives. Pages never
build markup from data in JavaScript with innerHTML; the index script uses textContent.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

from saekit.dashboard.assets import CSS
from saekit.render import display_token
from saekit.render import escape_html as esc

SHADE_RGB = "255, 120, 0"



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
