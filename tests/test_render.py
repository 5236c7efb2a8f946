"""saekit.render: tables escape what a corpus can hold, numbers format one way, figures land as real PNGs."""

from __future__ import annotations

import html
import json
import math
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from saekit.evaluation.damage import damage_markdown, token_damage  # noqa: E402
from saekit.evaluation.generation import SideBySide, generations_markdown  # noqa: E402
from saekit.evaluation.report import render_report  # noqa: E402
from saekit.evaluation.results import EvaluationResults  # noqa: E402
from saekit.render import (  # noqa: E402
    LINE_BREAK,
    NEWLINE_MARK,
    Markup,
    escape_html,
    format_cell,
    markdown_cell,
    markdown_code,
    markdown_inline,
    markdown_table,
    save_png,
    script_json,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
LEGACY_METRICS = Path(__file__).parent / "fixtures" / "legacy_run" / "metrics.json"
SCRIPT = "<script>alert(1)</script>"


def test_a_table_escapes_markup_and_pipes_in_cells():
    table = markdown_table(["text", "n"], [[SCRIPT, 1], ["a | b", 2]])
    assert table.splitlines() == [
        "| text | n |",
        "|---|---|",
        "| &lt;script&gt;alert(1)&lt;/script&gt; | 1 |",
        "| a &#124; b | 2 |",
    ]
    assert "<script>" not in table and "</script>" not in table


def test_a_cell_keeps_quotes_and_puts_line_breaks_on_one_line():
    assert markdown_cell('say "hi" & \'bye\'') == 'say "hi" &amp; \'bye\''
    assert markdown_cell("one\ntwo\r\nthree\rfour") == "one ⏎ two ⏎ three ⏎ four"
    assert markdown_cell("</style>") == "&lt;/style&gt;"
    assert markdown_inline("a | b <i>") == "a | b &lt;i&gt;"  # outside a table a pipe is just text


def test_headers_are_escaped_and_alignment_is_written():
    table = markdown_table(["a|b", "<c>"], [], align=["left", "right"])
    assert table.splitlines() == ["| a&#124;b | &lt;c&gt; |", "|:---|---:|"]
    with pytest.raises(ValueError, match="align"):
        markdown_table(["a"], [], align=["left", "right"])
    with pytest.raises(ValueError, match="2 cells for 1 columns"):
        markdown_table(["a"], [[1, 2]])


def test_numbers_format_one_way():
    assert format_cell(0.123456) == "0.123" and format_cell(0.123456, digits=4) == "0.1235"
    assert format_cell(2.0) == "2.000" and format_cell(np.float32(0.5)) == "0.500"
    assert format_cell(7) == "7" and format_cell(np.int64(7)) == "7" and format_cell(True) == "True"
    assert format_cell(None) == "-" and format_cell(math.nan) == "nan" and format_cell(-math.inf) == "-inf"
    assert format_cell("0.12345 ± 0.1") == "0.12345 ± 0.1"  # a string is the caller's formatting
    assert format_cell(torch.tensor(0.25)) == "0.250"
    table = markdown_table(["x", "y", "z"], [[1.23456, 3, None]], digits=2)
    assert table.splitlines()[-1] == "| 1.23 | 3 | - |"


def test_html_escaping_and_script_json():
    assert escape_html('<a href="x">\'&') == "&lt;a href=&quot;x&quot;&gt;&#x27;&amp;"
    text = script_json({"t": "</script><!--", "bad": math.nan})
    assert "<" not in text and ">" not in text and json.loads(text) == {"t": "</script><!--", "bad": None}


def _assert_png(path: Path) -> None:
    data = path.read_bytes()
    assert path.stat().st_size > 0 and data[:8] == PNG_SIGNATURE


def test_save_png_writes_a_png_atomically_and_closes_a_pyplot_figure(tmp_path):
    figure, ax = plt.subplots(figsize=(2, 2))
    ax.plot([0, 1], [1, 0])
    number = figure.number
    path = save_png(figure, tmp_path / "plots" / "line.png", dpi=50, tight=True)
    assert path == tmp_path / "plots" / "line.png"
    _assert_png(path)
    assert [p.name for p in path.parent.iterdir()] == ["line.png"]  # no temp file left
    assert number not in plt.get_fignums()


def test_save_png_draws_a_bare_figure_with_agg(tmp_path):
    figure = Figure(figsize=(2, 1))
    figure.add_subplot().bar([0, 1], [1, 2])
    path = save_png(figure, str(tmp_path / "bars.png"))
    _assert_png(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bars.png"]


def test_save_png_closes_the_figure_and_leaves_nothing_when_the_write_fails(tmp_path, monkeypatch):
    figure, _ = plt.subplots()
    number = figure.number

    def broken_savefig(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(figure, "savefig", broken_savefig)
    with pytest.raises(OSError, match="disk full"):
        save_png(figure, tmp_path / "broken.png")
    assert list(tmp_path.iterdir()) == [] and number not in plt.get_fignums()


def _metrics_with(context: str, token: str, prompt: str) -> EvaluationResults:
    """The legacy run's real metrics.json, with corpus text carrying markup in the damage and the samples."""
    data = json.loads(LEGACY_METRICS.read_text())
    data["token_damage"]["worst_positions"][0].update(context=context, token=token)
    data["token_damage"]["tokens_by_total_increase"][0]["token"] = token
    data["generations"] = [{"prompt": prompt, "clean": "fine", "spliced": "</style><b>x</b>"}]
    return EvaluationResults.from_dict(data, str(LEGACY_METRICS))


def test_the_report_escapes_corpus_markup_in_where_the_splice_hurts():
    metrics = _metrics_with(context=f"before {SCRIPT} after | pipe\nline", token="<img src=x onerror=alert(1)>",
                            prompt=SCRIPT)
    report = render_report(metrics)
    section = report[report.index("## Where the splice hurts"):report.index("## The degraded model")]
    assert "<script>" not in report and "</style>" not in report and "<img" not in report
    assert "…'before &lt;script&gt;alert(1)&lt;/script&gt; after | pipe\\nline' → " in section
    assert "| '&lt;img src=x onerror=alert(1)&gt;' |" in section  # the table row, quoted by repr
    assert "| &lt;script&gt;alert(1)&lt;/script&gt; | fine | &lt;/style&gt;&lt;b&gt;x&lt;/b&gt; |" in report
    # Everything else renders as before: the table of losses, the reconstruction section.
    assert "| clean model | " in report and "| dictionary spliced in | " in report
    assert "### Reconstruction and sparsity at `blocks.1.resid_post`" in report


class _Tokenizer:
    """Decodes ids to fixed strings, one of them markup, as a tokenizer of a web corpus could."""

    VOCAB = ["<s>", " the", SCRIPT, " a|b", "\n"]

    def decode(self, ids, skip_special_tokens=False):
        return "".join(self.VOCAB[i] for i in ids if not (skip_special_tokens and i == 0))


def test_damage_markdown_from_token_damage_escapes_the_decoded_text():
    contexts = torch.tensor([[0, 1, 2, 3, 4, 2], [0, 2, 1, 2, 3, 1]])
    delta = torch.tensor([[0.1, 2.0, 0.3, 1.5], [0.2, 0.9, 0.1, 0.4]])  # [contexts, seq - 2]
    text = damage_markdown(token_damage(contexts, delta, _Tokenizer(), top=3, min_count=1))
    assert "<script>" not in text and "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    lines = text.splitlines()
    assert lines[:2] == ["| token | count | mean ΔNLL | total ΔNLL |", "|---|---|---|---|"]
    assert all(line.count(" | ") == 3 for line in lines[2:5])  # ' a|b' does not split a row
    assert "| ' a&#124;b' | 2 | 1.050 | 2.10 |" in lines


def test_generations_keep_their_format():
    rows = [SideBySide('A "quoted" <b>', "line1\nline2 | x", "ok & done")]
    assert generations_markdown(rows).splitlines() == [
        "| prompt | clean model | dictionary spliced in |",
        "|---|---|---|",
        '| A "quoted" &lt;b&gt; | line1 ⏎ line2 &#124; x | ok &amp; done |',
    ]


# Classic HTML / markdown injections, as a corpus, a tokenizer or an LLM could produce them.
PAYLOADS = [
    SCRIPT,
    "</style>",
    "<img src=x onerror=alert(1)>",
    "<svg/onload=alert(1)>",
    '"><script>alert(1)</script>',
    '<a href="javascript:alert(1)">x</a>',
    "[x](javascript:alert(1))",
    "![t](http://e/x.png)",
    "[x]: http://evil.example/",
    "[text][ref] and [^1]",
    "`code`",
    "```js",
    "**bold** and *em*",
    "__bold__ and _em_",
    "~~strike~~",
    "<!--",
    "-->",
    "&lt;script&gt;",  # already escaped: must show as written, not decode to a tag
    "&#60;script&#62; &amp",
    "a | b",
    "x\n| a | b |\n|---|---|",  # a newline starting a table
    "\n# title",
    "# title",
    "> quote",
    "- item",
    "1. item",
    "    indented code",
    "line\r\nnext\rmore",
    "a\u2028b\u2029c\x85d\x0be",
    "<https://evil.example>",
    "see https://evil.example/x and www.evil.example",
    "\\[not a link](x) \\",
    "data:text/html,<script>alert(1)</script>",
]
ENTITY = re.compile(r"&(?:amp|lt|gt|#\d+);")


def _shown(text: str) -> str:
    """What a renderer shows for ``text`` placed on one line: line breaks as the ⏎ mark."""
    return LINE_BREAK.sub(NEWLINE_MARK, text)


def _assert_inert(out: str, payload: str) -> None:
    """No renderer (CommonMark / GFM / python-markdown) can read any markup into ``out``."""
    assert len(out.splitlines()) == 1 and not LINE_BREAK.search(out)
    assert not set("<>[]`*~") & set(out), out
    assert "](" not in out and "://" not in out and "www." not in out.lower()
    assert not re.search(r"(?<![^\W_])_|_(?![^\W_])", out)  # an underscore only inside a word
    assert not re.search(r"\\(?![^\W_]| )", out)  # no backslash escapes the next character
    assert all(ENTITY.match(out, m.start()) for m in re.finditer("&", out))  # every & starts a reference
    assert html.unescape(out) == _shown(payload)  # and it shows exactly the text


@pytest.mark.parametrize("payload", PAYLOADS)
def test_inline_text_from_data_forms_no_markup(payload):
    out = markdown_inline(payload)
    _assert_inert(out, payload)
    assert not re.match(r"[ \t]*(#|[-+=](\s|$)|\d+[.)](\s|$))|[ \t]{4}|\t", out)  # safe at a line start


@pytest.mark.parametrize("payload", PAYLOADS)
def test_a_table_cell_from_data_forms_no_markup_and_keeps_the_row(payload):
    out = markdown_cell(payload)
    _assert_inert(out, payload)
    assert "|" not in out
    table = markdown_table([payload, "n"], [[payload, 1], ["ok", payload]])
    lines = table.splitlines()
    assert len(lines) == 4 and all(line.count("|") == 3 for line in lines)


@pytest.mark.parametrize("payload", PAYLOADS)
def test_a_code_span_shows_the_text_literally(payload):
    out = markdown_code(payload)
    fence = re.match("`+", out).group()
    inner = out[len(fence):-len(fence)]
    assert out.endswith(fence) and fence not in inner and len(out.splitlines()) == 1
    assert inner.strip() == _shown(payload).strip() or not payload.strip()


TAG = re.compile(r"</?([a-z0-9]+)[^>]*>")


def _render(text: str) -> tuple[set[str], str]:
    """``text`` rendered by a CommonMark renderer with GFM tables and strikethrough: its tags and its text."""
    markdown_it = pytest.importorskip("markdown_it")  # the structural tests above hold without it
    rendered = markdown_it.MarkdownIt("commonmark").enable(["table", "strikethrough"]).render(text)
    return {m.group(1) for m in TAG.finditer(rendered)}, html.unescape(TAG.sub("", rendered))


@pytest.mark.parametrize("payload", PAYLOADS)
def test_rendered_by_a_markdown_renderer_the_payload_is_only_text(payload):
    tags, text = _render(markdown_inline(payload))  # alone, so at the start of a line
    assert tags <= {"p"} and text.strip() == _shown(payload).strip()
    tags, text = _render(f"- before {markdown_inline(payload)} after")
    assert tags == {"ul", "li"} and text.strip() == f"before {_shown(payload)} after"
    tags, text = _render(f"| a | b |\n|---|---|\n| {markdown_cell(payload)} | 1 |\n")
    assert tags == {"table", "thead", "tbody", "tr", "th", "td"}
    assert text.split() == ["a", "b", *_shown(payload).split(), "1"]
    tags, text = _render(f"in {markdown_code(payload)} code")
    assert tags == {"p", "code"} and text == f"in {_shown(payload)} code\n"


def test_words_numbers_and_repr_stay_readable():
    for text in ("resid_post", "blocks.1.resid_post", "-0.5", "1.5e-3", "12.5%", "'a\\nb'", "x - y", "(n=3)",
                 "C:\\runs\\x", 'say "hi"', "a | b"):
        assert markdown_inline(text) == text
    assert markdown_cell("-") == "-" and markdown_inline("-") == "&#45;"  # a cell holds no list marker
    assert markdown_inline("https://x.org") == "https:&#47;&#47;x.org"


def test_a_markup_cell_goes_in_as_it_is():
    table = markdown_table(["package", "text"], [[markdown_code("saekit/data"), "`x`"]])
    assert table.splitlines()[-1] == "| `saekit/data` | &#96;x&#96; |"
    assert isinstance(markdown_code("a"), Markup) and markdown_code("a`b") == "``a`b``"
    assert markdown_code("`x`") == "`` `x` ``"
