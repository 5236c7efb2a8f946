"""Open the generated site in headless Chromium: the index lists the latents, a feature page shows shaded
examples, and corpus text containing ``<script>`` is displayed as text and never executed."""

from __future__ import annotations

import re
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest
from browser_helpers import CHROMIUM

from saekit.analysis.store import AnalysisStore

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="the chromium binary is not installed "
                                                        "(apt-get install -y chromium); CI installs it")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--virtual-time-budget=2000"]


def dump_dom(path: Path, profile: Path, fragment: str = "") -> str:
    """The page's DOM after its scripts ran (opened at ``#fragment`` when given), serialised by Chromium."""
    result = subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", "--dump-dom", path.as_uri() + fragment],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


class _Text(HTMLParser):
    """Visible text of a serialised DOM (what a reader sees), script and style bodies left out."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag: str, attrs: list) -> None:
        self._skip += tag in ("script", "style", "title")

    def handle_endtag(self, tag: str) -> None:
        self._skip -= tag in ("script", "style", "title")

    def handle_data(self, data: str) -> None:
        if not self._skip:
            self.parts.append(data)


def visible_text(dom: str) -> str:
    parser = _Text()
    parser.feed(dom)
    return "".join(parser.parts)


def title_of(dom: str) -> str:
    return re.search(r"<title>(.*?)</title>", dom, re.S).group(1)


@pytest.fixture(scope="module")
def profile(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("chromium-profile")


def test_harness_detects_script_execution(tmp_path, profile):
    """Control: an unescaped script does run under these flags, so the checks below can fail."""
    page = tmp_path / "control.html"
    page.write_text("<!DOCTYPE html><html><head><title>safe</title></head><body>"
                    "<script>document.title='PWNED';document.body.appendChild(document.createElement('pwned-marker'))"
                    "</script></body></html>")
    dom = dump_dom(page, profile)
    assert title_of(dom) == "PWNED" and "<pwned-marker>" in dom


def test_index_lists_the_latents(site_dir, profile):
    dom = dump_dom(site_dir / "index.html", profile)
    assert title_of(dom) == "saekit latents: blocks.0.resid_post"
    rows = re.findall(r'<a href="features/(\d+)\.html">\1</a>', dom)
    assert {int(r) for r in rows} >= set(range(100))  # rows drawn by the script, linked where a page exists
    text = visible_text(dom)
    assert "128 of 128 latents match" in text
    assert "</script><script>document.title='PWNED'</script><b>bold</b>" in text  # the evil token, as text
    assert "PWNED" not in title_of(dom) and "<pwned-marker" not in dom and "<b>bold</b>" not in dom


def test_feature_page_shades_examples_and_never_runs_corpus_scripts(site_dir, site_store_dir, profile):
    store_dir, evil_latent, _ = site_store_dir
    store = AnalysisStore(store_dir)
    script_rows = [i for i, row in enumerate(store.token_ids.tolist())
                   if "<script>" in "".join(store.token_string(t) for t in row)]
    assert script_rows, "the test corpus must put <script> inside a context"
    latent = next(latent for latent in range(100)
                  if any(e.context in script_rows and e.max_value > 0 for e in store.latent_examples(latent)))
    for shown in (latent, evil_latent):
        dom = dump_dom(site_dir / "features" / f"{shown}.html", profile)
        assert title_of(dom) == f"Latent {shown} \u00b7 blocks.0.resid_post"
        assert "<pwned-marker" not in dom and "<b>bold</b>" not in dom
        shaded = re.findall(r'class="tok on" style="background: ?rgba\(255, 120, 0, ?([0-9.]+)\);?" title="([^"]*)"',
                            dom)
        assert shaded and max(float(alpha) for alpha, _ in shaded) == pytest.approx(1.0)
        assert all(re.search(r": -?[0-9.e+-]+$", title) for _, title in shaded)  # the value in the title
        text = visible_text(dom)
        assert "Top activations" in text
        if shown == latent:
            assert "<script>document.title='PWNED';" in text  # the corpus snippet, displayed as text
        else:
            assert "</script><script>document.title='PWNED'</script><b>bold</b>" in text
