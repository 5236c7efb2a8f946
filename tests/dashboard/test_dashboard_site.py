"""The generated site's files: pages, escaping in every page, embedded JSON, figures, Neuronpedia JSON."""

from __future__ import annotations

import html
import json
import re

import pytest

EVIL_TOKEN = "</script><script>document.title='PWNED'</script><b>bold</b>&amp;"
DATA_BLOCK = re.compile(r'<script type="application/json" id="latent-data">(.*?)</script>', re.S)


@pytest.fixture(scope="module")
def pages(site_dir) -> dict[str, str]:
    return {str(p.relative_to(site_dir)): p.read_text(encoding="utf-8") for p in site_dir.rglob("*.html")}


def test_site_layout(site_dir):
    assert (site_dir / "index.html").is_file() and (site_dir / "overview.html").is_file()
    assert len(list((site_dir / "features").glob("*.html"))) == 100
    assert len(list((site_dir / "neuronpedia").glob("*.json"))) == 100
    for name in ("density.png", "density_bias_de.png", "geometry.png"):
        assert (site_dir / "figures" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_no_corpus_markup_becomes_a_tag(pages):
    for name, text in pages.items():
        scripts = re.findall(r"<script\b[^>]*>", text)
        assert scripts == ([] if name != "index.html" else ['<script type="application/json" id="latent-data">',
                                                            "<script>"]), name
        assert "<b>bold</b>" not in text and "<pwned-marker" not in text, name
        assert not re.search(r"(src|href)=\"(https?:)?//", text), name  # nothing external


def test_index_embeds_every_latent_as_escaped_json(pages, site_store_dir):
    _, evil_latent, _ = site_store_dir
    block = DATA_BLOCK.search(pages["index.html"]).group(1)
    assert "</" not in block and "<" not in block
    data = json.loads(block)
    assert [row["id"] for row in data["latents"]] == list(range(128))
    assert data["pages"] == list(range(100))
    assert EVIL_TOKEN in data["latents"][evil_latent]["tokens"]


def test_feature_page_shows_markup_as_text(pages, site_store_dir):
    _, evil_latent, _ = site_store_dir
    text = pages[f"features/{evil_latent}.html"]
    assert html.escape(EVIL_TOKEN) in text
    assert 'class="tok on" style="background:rgba(255, 120, 0,1.000)"' in text  # the max token is fully shaded
    for section in ("Top activations", "Sampled by activation quantile", "Random contexts where it does not fire",
                    "Logit weights", "Nearest decoder directions", "Activation histogram"):
        assert section in text


def test_neuronpedia_json(site_dir, site_store_dir):
    _, evil_latent, dictionary = site_store_dir
    feature = json.loads((site_dir / "neuronpedia" / f"{evil_latent}.json").read_text())
    for key in ("modelId", "layer", "index", "maxActApprox", "frac_nonzero", "pos_str", "pos_values", "neg_str",
                "neg_values", "freq_hist_data_bar_heights", "freq_hist_data_bar_values",
                "logits_hist_data_bar_heights", "logits_hist_data_bar_values", "topkCosSimIndices",
                "topkCosSimValues", "neuron_alignment_indices", "neuron_alignment_values", "neuron_alignment_l1",
                "activations", "hookName"):
        assert key in feature, key
    assert feature["index"] == str(evil_latent) and feature["layer"] == "0-saekit-resid_post"
    assert feature["hookName"] == "blocks.0.hook_resid_post"
    assert feature["topkCosSimIndices"][0] == evil_latent and feature["topkCosSimValues"][0] == 1.0
    top = feature["activations"][0]
    assert top["saekitKind"] == "top" and EVIL_TOKEN in top["tokens"]
    assert top["values"][top["maxValueTokenIndex"]] == top["maxValue"]
    assert abs(top["maxValue"] - feature["maxActApprox"]) < 1e-2 * feature["maxActApprox"]
    assert sum(feature["freq_hist_data_bar_heights"]) > 0
    row = dictionary.W_dec.detach()[evil_latent]
    assert feature["neuron_alignment_indices"][0] == int(row.abs().argmax())
    fields = (site_dir / "neuronpedia" / "FIELDS.md").read_text()
    assert "correlated_features_" in fields and "Not filled" in fields
