r"""How values become text and pictures a person reads: table cells, escaping, and PNG figures, each rule once.

Markdown (``report.md``, ``summary.md``, ``control.md``, the toy summaries): :func:`markdown_table` is the only
way a table is built. Every cell goes through :func:`format_cell` (strings as the caller formatted them,
``None`` as ``-``, integers as they are, other numbers with a fixed count of decimals) and then
:func:`markdown_cell`; text quoted outside a table goes through :func:`markdown_inline`, and text that must
read as code through :func:`markdown_code`. Text from a corpus, a tokenizer, a model, an LLM or a user (run
names, paths, model names) always takes one of these routes; only what saekit composes itself (headings,
numbers, its own labels) is written raw, and :class:`Markup` marks such text for a table cell.

The markdown scheme is HTML character references, the one ``&lt;`` and ``&#124;`` already used: CommonMark
(GitHub, markdown-it) treats a reference as literal text that can never be structure, and python-markdown
passes it through to the HTML, where the browser shows the character. Backslash escapes were the other
choice, but python-markdown honours them only for some characters (``\~``, ``\<`` and ``\&`` show their
backslash there), and references also round-trip through :func:`html.unescape`. Escaped, always: ``& < >``
(raw HTML, comments, ``<http://…>`` autolinks, and entities such as ``&lt;`` in the data, which then show
as written), ``[ ]`` (links, images, footnotes: ``![x](…)`` needs ``[``, so ``!`` and ``( )`` stay raw),
backticks (code spans), ``*`` and ``~`` (emphasis, strikethrough); ``_`` unless it sits between two
letters or digits, where no renderer reads it as emphasis (``resid_post`` stays readable); ``\`` unless a
letter, digit or space follows (``'a\nb'`` from ``repr`` stays readable; before punctuation it would escape
the next character). GitHub also links bare ``https://…`` and ``www.…`` (the GFM autolink extension), which
would make corpus text a live link, so ``://`` is written ``:&#47;&#47;`` and ``www.`` as ``www&#46;``: the
link text reads the same and nothing is clickable. Bare e-mail addresses are left (a ``mailto:`` link
fetches nothing, and ``@`` is common in code), and so are GitHub's ``$…$`` math and ``:emoji:`` (they restyle
text but link, load and run nothing). Line breaks of every kind (``\r\n``, ``\r``, U+2028, …)
become ⏎, so data never starts a line, a heading or a table row; :func:`markdown_inline` also escapes a
leading ``#``, list marker, rule or indentation in case its text is placed at the start of a line. Quotes,
digits and words stay as they are. Character references are not decoded inside code spans, so data text
is never put between backticks by hand: :func:`markdown_code` builds the span.

HTML (the dashboard, ``summary.html``): :func:`escape_html` for element content and quoted attribute
values, :func:`script_json` for data inside ``<script type="application/json">`` blocks.

Figures: :func:`save_png` writes a matplotlib figure atomically and closes it.
"""

from __future__ import annotations

import html
import json
import math
import numbers
import re
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


class Markup(str):
    """Markdown saekit composed itself (a code span from :func:`markdown_code`, its own labels).

    :func:`markdown_table` puts a ``Markup`` cell in as it is, unescaped; it must hold no ``|`` or line break.
    Never wrap text from data in it directly.
    """


LINE_BREAK = re.compile(r"\r\n|[\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029]")  # what str.splitlines() splits on
NAMED_ENTITIES = {"&": "&amp;", "<": "&lt;", ">": "&gt;"}
_ALNUM = r"[^\W_]"  # a letter or digit (any script)
MARKDOWN_SYNTAX = re.compile(
    r"[&<>\[\]`*~]"                                    # HTML, links and images, code, emphasis, strikethrough
    rf"|_(?!{_ALNUM})|(?<!{_ALNUM})_"                    # an underscore not inside a word
    rf"|\\(?!{_ALNUM}| )"                               # a backslash that would escape what follows
    r"|://|(?i:www)\.")                                  # GFM's bare-URL autolinks
LINE_MARKER = re.compile(rf"\d{{1,9}}(?=[.)](?:\s|$))|(?=#|[-+=](?!{_ALNUM}))")  # ends where the marker is


def _reference(match: re.Match[str]) -> str:
    text = match.group()
    if text == "://":
        return ":&#47;&#47;"
    if len(text) == 4:  # www.
        return text[:3] + "&#46;"
    return NAMED_ENTITIES.get(text) or f"&#{ord(text)};"


def _one_line(text: str) -> str:
    return LINE_BREAK.sub(NEWLINE_MARK, text)


def _escape_markdown(text: object) -> str:
    return _one_line(MARKDOWN_SYNTAX.sub(_reference, str(text)))


def _escape_line_start(text: str) -> str:
    """Escape the character that would make ``text`` a heading, list item, rule or code block at a line start."""
    body = text.lstrip(" \t")
    indent = len(text) - len(body)
    if indent >= 4 or "\t" in text[:indent]:  # an indented code block
        at = 0
    elif marker := LINE_MARKER.match(body):  # '#', '- ', '+ ', '---', '===', '1. ', '1) '
        at = indent + marker.end()
    else:
        return text
    return text[:at] + f"&#{ord(text[at])};" + text[at + 1:]


def markdown_inline(text: object) -> str:
    """Text from data made safe to quote in markdown outside a table: it can form no markup (see the module).

    ``<script>`` becomes ``&lt;script&gt;``, ``[x](javascript:…)`` ``&#91;x&#93;(javascript:…)``, a line
    break ``⏎``; a leading ``#``, list marker or rule is escaped too. Quotes, words and numbers stay readable.
    """
    return _escape_line_start(_escape_markdown(text))


def markdown_cell(text: object) -> str:
    """Text from data made safe for one markdown table cell: escaped as inline text, and ``|`` as ``&#124;``.

    A cell holds no block structure, so a leading ``-`` (the missing value) or ``#`` stays as it is.
    """
    return _escape_markdown(text).replace("|", "&#124;")


def markdown_code(text: object) -> Markup:
    """Text from data shown as an inline code span, literally (in a table only text without ``|``: GFM splits there).

    The fence is one backtick longer than the longest run inside, so no backtick in the text closes it;
    line breaks become ⏎. Inside a code span nothing else is markup, in any renderer.
    """
    text = _one_line(str(text))
    if not text.strip():
        return Markup(markdown_inline(text))
    fence = "`" * (max((len(run) for run in re.findall("`+", text)), default=0) + 1)
    pad = " " if text[0] in "` " or text[-1] in "` " else ""
    return Markup(f"{fence}{pad}{text}{pad}{fence}")


REFERENCE = re.compile(r"&(?:#(\d+)|(amp|lt|gt));")  # every reference _reference writes, and only those
CODE_SPAN = re.compile(r"(?<!`)(`+)(?!`).*?(?<!`)\1(?!`)", re.S)  # CommonMark: closed by a run of equal length
PLAIN_ENTITIES = {name[1:-1]: char for char, name in NAMED_ENTITIES.items()}


def plain_text(markdown: str) -> str:
    """Markdown saekit wrote, as a terminal should show it: the character references the escaping made are
    characters again, outside code spans (inside one, a reference is literal text and stays).

    Exactly undoes :func:`markdown_inline` and :func:`markdown_cell` (``&#96;`` is a backtick again, ``&amp;lt;``
    is ``&lt;``) but for line breaks, which stay ⏎; the markdown saekit composed itself stays as it is.
    The files keep their escapes: this is for printing only.
    """
    pieces, end = [], 0
    for span in CODE_SPAN.finditer(markdown):
        pieces += [_unreference(markdown[end:span.start()]), span.group()]
        end = span.end()
    return "".join(pieces) + _unreference(markdown[end:])


def _unreference(text: str) -> str:
    return REFERENCE.sub(lambda m: chr(int(m.group(1))) if m.group(1) else PLAIN_ENTITIES[m.group(2)], text)


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[object]], align: Sequence[Align] | None = None,
                   digits: int = 3) -> str:
    """A GitHub-flavoured markdown table (no trailing newline).

    Cells are formatted by :func:`format_cell` (floats with ``digits`` decimals) and escaped by
    :func:`markdown_cell`, the header too; a :class:`Markup` cell goes in as it is. ``align`` gives each
    column's alignment: ``""`` (the renderer's default), ``"left"``, ``"center"`` or ``"right"``.
    """
    width = len(header)
    align = list(align) if align is not None else [""] * width
    if len(align) != width:
        raise ValueError(f"align has {len(align)} entries for {width} columns")
    lines = [_table_row(_cell(h) for h in header), "|" + "|".join(ALIGN_RULES[a] for a in align) + "|"]
    for row in rows:
        if len(row) != width:
            raise ValueError(f"a table row has {len(row)} cells for {width} columns: {list(row)!r}")
        lines.append(_table_row(_cell(cell, digits) for cell in row))
    return "\n".join(lines)


def _cell(value: object, digits: int = 3) -> str:
    return value if isinstance(value, Markup) else markdown_cell(format_cell(value, digits))


def _table_row(cells: Iterable[str]) -> str:
    return "| " + " | ".join(cells) + " |"


VISIBLE_WHITESPACE = {"\n": "\u21b5", "\r": "\u240d", "\t": "\u2192"}


def display_token(text: str, symbols: dict[str, str] = VISIBLE_WHITESPACE, empty: str = "\u2205") -> str:
    """Make whitespace-only structure visible (newlines, tabs) and empty tokens non-empty (``empty``)."""
    for char, symbol in symbols.items():
        text = text.replace(char, symbol)
    return text if text else empty


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
