"""Escaping and shading helpers: corpus text can never become markup or script."""

from __future__ import annotations

import json
import math

from saekit.dashboard.html import display_token, page, table, token_span
from saekit.render import clean_json, script_json
from saekit.render import escape_html as esc


def test_esc_escapes_markup_and_quotes():
    assert esc("<script>alert('x')</script>") == "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;"
    assert esc('a "b" & c') == "a &quot;b&quot; &amp; c"


def test_script_json_has_no_markup_characters_and_round_trips():
    value = {"t": "</script><script>x()</script><!-- & \u2028", "n": float("nan"), "i": [1, math.inf]}
    text = script_json(value)
    for bad in ("<", ">", "&", "\u2028"):
        assert bad not in text
    assert json.loads(text) == {"t": "</script><script>x()</script><!-- & \u2028", "n": None, "i": [1, None]}


def test_token_span_shading_and_title():
    span = token_span("<b>", 0.5, 2.0)
    assert "rgba(255, 120, 0,0.250)" in span
    assert "&lt;b&gt;" in span and "<b>" not in span
    assert 'title="&#x27;&lt;b&gt;&#x27;: 0.5"' in span
    assert "rgba" not in token_span("x", 0.0, 2.0)
    assert "1.000" in token_span("x", 3.0, 2.0)  # clipped at full opacity
    assert "skip" in token_span("<s>", 1.0, 1.0, counted=False)


def test_display_token_makes_whitespace_visible():
    assert display_token("a\nb\t") == "a\u21b5b\u2192"
    assert display_token("") == "\u2205"


def test_page_is_self_contained():
    html = page("<title>", table(["h"], [["<i>ok</i>"]]))
    assert "&lt;title&gt;" in html and "http" not in html.replace("http-equiv", "")
    assert clean_json([float("inf")]) == [None]
