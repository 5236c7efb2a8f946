"""Fixtures for the analysis tests: a tiny TopK dictionary on the tiny Llama, contexts, and its analysis store."""

from __future__ import annotations

import pytest
import torch

from saekit.analysis.analyze import AnalysisConfig, analyze_dictionary
from saekit.analysis.examples import ExampleConfig
from saekit.data.contexts import iter_contexts, take_contexts
from saekit.data.corpus import Document
from saekit.dictionaries.base import DictionaryConfig
from saekit.dictionaries.registry import build_dictionary

SITE = "blocks.0.resid_post"
TEXTS = [
    "In the beginning God created the heaven and the earth. And the earth was without form, and void.",
    "The quick brown fox jumps over the lazy dog while the cat watches from the warm windowsill.",
    "Markup such as <b>bold</b> and <script>x()</script> is just text to a tokenizer.",
    "def add(a, b):\n    return a + b  # Python functions return values with the return statement.",
    "A fortune cookie says: you will find a thing of great value in a small and unexpected place.",
    "Numbers like 3.14159 and 2.71828 appear in mathematics, physics and engineering very often.",
] * 3


@pytest.fixture(scope="session")
def tiny_dictionary():
    torch.manual_seed(1)
    return build_dictionary(DictionaryConfig("topk", 32, 128, k=4)).eval().requires_grad_(False)


@pytest.fixture(scope="session")
def analysis_contexts(tiny_loaded) -> torch.Tensor:
    docs = [Document("test", f"doc{i}", text) for i, text in enumerate(TEXTS)]
    rows = iter_contexts(docs, tiny_loaded.tokenizer, 24, tiny_loaded.bos_token_id, tiny_loaded.eos_token_id, seed=0)
    return take_contexts(rows, 18)


@pytest.fixture(scope="session")
def small_config() -> AnalysisConfig:
    return AnalysisConfig(batch_contexts=3, progress=False,
                          examples=ExampleConfig(top=5, sample_reservoir=8, quantile_groups=2, per_quantile=2,
                                                 negatives=3, seed=0))


@pytest.fixture(scope="session")
def analysis_store_dir(tmp_path_factory, tiny_loaded, tiny_dictionary, analysis_contexts, small_config):
    out = tmp_path_factory.mktemp("analysis")
    return analyze_dictionary(tiny_loaded, tiny_dictionary, {"site": SITE, "target_site": None}, analysis_contexts,
                              out, small_config)
