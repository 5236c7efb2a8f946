"""How values become text and pictures a person reads: table cells, escaping, and PNG figures, each rule once.

Markdown (``report.md``, ``summary.md``, the toy summaries): :func:`markdown_table` is the only way a table
is built. Every cell goes through :func:`format_cell` (strings as the caller formatted them, ``None`` as
``-``, integers as they are, other numbers with a fixed count of decimals) and then :func:`markdown_cell`,
so text from a corpus, a tokenizer or a model can neither close the table (``|``, newlines) nor smuggle
markup into a rendered page (``<script>``, ``</style>``, ``&``). Quotes stay as they are: outside
attributes they need no escaping and read better raw. Text quoted outside a table goes through
:func:`markdown_inline`.

HTML (the dashboard, ``summary.html``): :func:`escape_html` for element content and quoted attribute
values, :func:`script_json` for data inside ``<script type="application/json">`` blocks.

Figures: :func:`save_png` writes a matplotlib figure atomically and closes it.
"""

from __future__ import annotations

import html
import json
import math
import numbers
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from saekit.io import atomic_write

if TYPE_CHECKING:
    from matplotlib.figure import Figure

Align = Literal["", "left", "center", "right"]
ALIGN_RULES: dict[str, str] = {"": "---", "left": ":---", "center": ":---:", "right": "---:"}
MISSING = "-"  # a table cell without a value
NEWLINE_MARK = " \u23ce "  # " ⏎ ": where a line break was in text shown on one line


def format_cell(value: object, digits: int = 3) -> str:
    """The text of one table cell, before escaping.

    Strings are taken as already formatted (pass ``f"{x:.4f}"`` for another precision), ``None`` is
    ``-``, integers (and bools) print as they are, and other real numbers get ``digits`` decimals
    (non-finite ones print as ``nan`` / ``inf``).
    """
    if value is None:
        return MISSING
    if isinstance(value, str):
        return value
    if isinstance(value, numbers.Integral):
        return str(value)
    if isinstance(value, numbers.Real):
        return f"{float(value):.{digits}f}"
    try:  # a 0-d tensor or another number-like that formats as a float
        return format(value, f".{digits}f")
    except (TypeError, ValueError):
        return str(value)


def markdown_inline(text: str) -> str:
    """Text made safe to quote in markdown outside a table: ``&``, ``<`` and ``>`` as entities, line breaks as ⏎.

    No raw HTML survives (``<script>`` becomes ``&lt;script&gt;``); quotes are left readable.
    """
    escaped = html.escape(str(text), quote=False)
    return escaped.replace("\r\n", "\n").replace("\r", "\n").replace("\n", NEWLINE_MARK)


def markdown_cell(text: str) -> str:
    """Text made safe for one markdown table cell: :func:`markdown_inline`, and ``|`` as ``&#124;``."""
    return markdown_inline(text).replace("|", "&#124;")


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[object]], align: Sequence[Align] | None = None,
                   digits: int = 3) -> str:
    """A GitHub-flavoured markdown table (no trailing newline).

    Cells are formatted by :func:`format_cell` (floats with ``digits`` decimals) and escaped by
    :func:`markdown_cell`, the header too. ``align`` gives each column's alignment: ``""`` (the
    renderer's default), ``"left"``, ``"center"`` or ``"right"``.
    """
    width = len(header)
    align = list(align) if align is not None else [""] * width
    if len(align) != width:
        raise ValueError(f"align has {len(align)} entries for {width} columns")
    lines = [_table_row(markdown_cell(h) for h in header), "|" + "|".join(ALIGN_RULES[a] for a in align) + "|"]
    for row in rows:
        if len(row) != width:
            raise ValueError(f"a table row has {len(row)} cells for {width} columns: {list(row)!r}")
        lines.append(_table_row(markdown_cell(format_cell(cell, digits)) for cell in row))
    return "\n".join(lines)


def _table_row(cells: Iterable[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def escape_html(text: object) -> str:
    """Escape text for HTML element content and quoted attribute values (``& < > " '``)."""
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


SCRIPT_JSON_ESCAPES = (("&", "\\u0026"), ("<", "\\u003c"), (">", "\\u003e"), ("\u2028", "\\u2028"),
                       ("\u2029", "\\u2029"))


def script_json(value: Any) -> str:
    """JSON safe to place inside ``<script type="application/json">``: no markup-significant characters.

    ``<``, ``>`` and ``&`` (and the JavaScript line separators) are written as JSON escapes, so no
    ``</script>`` or ``<!--`` can appear inside the block; NaN/inf become null.
    """
    text = json.dumps(clean_json(value), ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    for char, escape in SCRIPT_JSON_ESCAPES:
        text = text.replace(char, escape)
    return text


def save_png(figure: Figure, path: str | Path, dpi: int = 110, *, tight: bool = False) -> Path:
    """Write ``figure`` to ``path`` as a PNG, atomically, and close it; returns ``path``.

    ``tight`` crops the saved image to the drawn content (``bbox_inches="tight"``). A figure made
    without pyplot gets an Agg canvas, so no global backend is switched; a pyplot figure is closed in
    pyplot too, so saving many never accumulates open figures. The figure is closed even when the
    write fails.
    """
    from matplotlib.backend_bases import FigureCanvasBase
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    path = Path(path)
    if type(figure.canvas) is FigureCanvasBase:  # a bare Figure(): draw it with Agg
        FigureCanvasAgg(figure)
    try:
        atomic_write(path, lambda tmp: figure.savefig(tmp, format="png", dpi=dpi,
                                                      bbox_inches="tight" if tight else None))
    finally:
        close_figure(figure)
    return path


def close_figure(figure: Figure) -> None:
    """Release a figure: drop it from pyplot's registry where pyplot made it (bare figures hold no registry)."""
    pyplot = sys.modules.get("matplotlib.pyplot")  # a figure can only be registered if pyplot was imported
    if pyplot is not None:
        pyplot.close(figure)
