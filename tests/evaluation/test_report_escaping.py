"""The real report writers keep corpus, model, run-name and LLM text inert in the markdown and HTML they write."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from saekit.evaluation.damage import TokenDamage, TokenDamageRow, WorstPosition, damage_markdown
from saekit.evaluation.generation import SideBySide, generations_markdown
from saekit.evaluation.report import render_report
from saekit.evaluation.results import EvaluationResults
from saekit.evaluation.summary import summarize
from saekit.jobs.control import comparison_markdown

LEGACY = Path(__file__).parents[1] / "fixtures" / "legacy_run"
PAYLOADS = [
    "<script>alert(1)</script>",
    "</style>",
    "<img src=x onerror=alert(1)>",
    "[x](javascript:alert(1))",
    "![t](http://e/x.png)",
    "`code`",
    "**bold**",
    "~~gone~~",
    "<!--",
    "&lt;b&gt;",
    "https://evil.example/x",
    "a|b\n# title",
]
TEXT = " ".join(PAYLOADS)  # one string holding them all, as a context or a sample could
MARKERS = ("<script", "</style", "<img src=x", "<!--", "](", "`code`", "**bold**", "~~gone~~", "https://evil",
           "&lt;b&gt;", "\n# title")


def _assert_no_payload(text: str) -> None:
    for raw in (*PAYLOADS, *MARKERS):
        assert raw not in text, raw


def _rendered_tags(markdown: str) -> set[str]:
    markdown_it = pytest.importorskip("markdown_it")
    rendered = markdown_it.MarkdownIt("commonmark").enable(["table", "strikethrough"]).render(markdown)
    return {m.group(1) for m in re.finditer(r"<([a-z0-9]+)", rendered)}


def _metrics() -> EvaluationResults:
    data = json.loads((LEGACY / "metrics.json").read_text())
    data["model"] = TEXT
    for row in data["token_damage"]["tokens_by_total_increase"]:
        row["token"] = TEXT
    for row in data["token_damage"]["worst_positions"]:
        row.update(context=TEXT, token=TEXT)
    data["generations"] = [{"prompt": TEXT, "clean": TEXT, "spliced": TEXT}]
    data["effective_compute"] = {"error": TEXT}
    return EvaluationResults.from_dict(data, "metrics.json")


def test_the_evaluation_report_keeps_every_payload_inert():
    report = render_report(_metrics())
    _assert_no_payload(report)
    assert "## Where the splice hurts" in report and "## The degraded model, side by side" in report
    assert "Not reported: &lt;script&gt;" in report and "Model: &lt;script&gt;" in report


def test_the_report_renders_only_saekits_own_structure():
    report = render_report(_metrics())
    tags = _rendered_tags(report)
    assert not tags & {"a", "img", "script", "style", "em", "del", "s", "blockquote"}
    assert report.count("\n# ") == 0 and report.startswith("# saekit evaluation report\n")


def test_damage_and_generations_from_plain_rows():
    rows = tuple(TokenDamageRow(token=p, token_id=i, count=3, mean_delta_nats=0.5, total_delta_nats=1.5)
                 for i, p in enumerate(PAYLOADS))
    damage = TokenDamage(tokens_by_mean_increase=rows, tokens_by_total_increase=rows,
                         worst_positions=tuple(WorstPosition(delta_nats=2.0, context=p, token=p) for p in PAYLOADS),
                         note="")
    text = damage_markdown(damage, rows=len(PAYLOADS))
    _assert_no_payload(text)
    assert all(line.count("|") == 5 for line in text.splitlines() if line.startswith("|"))
    samples = generations_markdown([SideBySide(p, p, p) for p in PAYLOADS])
    _assert_no_payload(samples)
    assert len(samples.splitlines()) == 2 + len(PAYLOADS) and all(line.count("|") == 4 for line in samples.splitlines())


def test_the_summary_escapes_run_names_in_markdown_and_html(tmp_path):
    runs = []
    for index, name in enumerate(["<img src=x onerror=alert(1)>", "[x](javascript:alert(1))", "`code` **bold**"]):
        run = tmp_path / "runs" / f"{name} {index}"
        shutil.copytree(LEGACY, run)
        runs.append(run)
    summarize(runs, tmp_path / "out")
    markdown = (tmp_path / "out" / "summary.md").read_text()
    page = (tmp_path / "out" / "summary.html").read_text()
    body = markdown[:markdown.index("![")]  # the plots are saekit's own image links, after the tables
    _assert_no_payload(body)
    assert "&lt;img src=x onerror=alert(1)&gt; 0" in body and "&#91;x&#93;(javascript:alert(1)) 1" in body
    assert "<img src=x" not in page and "&lt;img src=x onerror=alert(1)&gt; 0" in page
    assert "<script" not in page and page.count("<img ") == 2  # the two embedded plots


def test_the_control_comparison_escapes_the_model_and_the_run_path():
    summary = {"latents": 3}
    rows = {"detection accuracy": {"chance": "0.5", "real": {"llm": "0.800", "baseline": "0.700"},
                                   "randomized": {"llm": "0.600", "baseline": "0.550"}}}
    text = comparison_markdown(rows, TEXT, Path("/runs") / "[x](javascript:alert(1))-randomized", summary, summary)
    _assert_no_payload(text)
    assert "scored by **&lt;script&gt;alert(1)&lt;/script&gt;" in text
