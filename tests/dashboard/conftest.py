"""Fixtures for the dashboard tests: an analysis store whose corpus and one token string carry HTML/script."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from saekit.analysis.analyze import AnalysisConfig, analyze_dictionary
from saekit.analysis.examples import ExampleConfig
from saekit.analysis.store import TOKENS_JSON, AnalysisStore
from saekit.dashboard.build import build_dashboard
from saekit.dashboard.pages import DashboardConfig
from saekit.data.contexts import iter_contexts, take_contexts
from saekit.data.corpus import Document
from saekit.dictionaries.base import DictionaryConfig
from saekit.dictionaries.registry import build_dictionary

SITE = "blocks.0.resid_post"
CORPUS_SCRIPT = ("<script>document.title='PWNED';"
                 "document.body.appendChild(document.createElement('pwned-marker'))</script>")
EVIL_TOKEN = "</script><script>document.title='PWNED'</script><b>bold</b>&amp;"
TEXTS = [
    f"Careful with this page: {CORPUS_SCRIPT} and then nothing else happens here.",
    "In the beginning God created the heaven and the earth. And the earth was without form, and void.",
    "The quick brown fox jumps over the lazy dog while the cat watches from the warm windowsill.",
    "def add(a, b):\n    return a + b  # Python functions return values with the return statement.",
    "Tags like <b>bold</b> & <i>italic</i> are HTML; a \"quoted\" value and an 'apostrophe' too.",
]


@pytest.fixture(scope="session")
def site_store_dir(tmp_path_factory, tiny_loaded):
    """The analysis store, with one token's decoded string replaced by markup that must stay inert."""
    torch.manual_seed(3)
    dictionary = build_dictionary(DictionaryConfig("topk", 32, 128, k=4)).eval()
    docs = [Document("test", f"doc{i}", text) for i, text in enumerate(TEXTS * 2)]
    contexts = take_contexts(iter_contexts(docs, tiny_loaded.tokenizer, 32, tiny_loaded.bos_token_id,
                                           tiny_loaded.eos_token_id, seed=0), 8)
    config = AnalysisConfig(batch_contexts=4, progress=False,
                            examples=ExampleConfig(top=5, sample_reservoir=6, quantile_groups=2, per_quantile=2,
                                                   negatives=2))
    out = analyze_dictionary(tiny_loaded, dictionary, {"site": SITE, "target_site": None}, contexts,
                             tmp_path_factory.mktemp("site-analysis"), config)
    store = AnalysisStore(out)
    evil_latent = next(latent for latent in store.latent_ids if not bool(store.stats["dead"][latent]))
    top = store.latent_examples(evil_latent)[0]
    strings = json.loads((out / TOKENS_JSON).read_text())
    strings[str(top.token_ids[top.max_index])] = EVIL_TOKEN
    (out / TOKENS_JSON).write_text(json.dumps(strings))
    return out, evil_latent, dictionary


@pytest.fixture(scope="session")
def site_dir(tmp_path_factory, site_store_dir):
    store_dir, _, dictionary = site_store_dir
    out = tmp_path_factory.mktemp("site")
    copy = out / "analysis"
    shutil.copytree(store_dir, copy)
    return build_dashboard(copy, out / "dashboard", DashboardConfig(max_latents=100, window_before=None,
                                                                    window_after=None),
                           decoder=dictionary.W_dec.detach(), progress=False)
