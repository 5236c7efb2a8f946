"""The analysis's memory estimate against what the tiny model's analysis allocates, the default budget,
and ``saekit analyze`` / ``saekit dashboard`` refusing, in one line naming the flag, an analysis over it."""

from __future__ import annotations

import json
import re
from dataclasses import replace

import pytest
import torch
from cli_helpers import one_line, quiet_model_loading  # noqa: F401 (a fixture, used below)
from memory_helpers import allocated_peak, nbytes
from transformers import LlamaConfig, LlamaForCausalLM

from saekit import memory
from saekit.analysis.analyze import AnalysisConfig, analysis_memory, analyze_dictionary, check_analysis_memory
from saekit.analysis.examples import ExampleCollector, ExampleConfig, collector_bytes
from saekit.analysis.geometry import GeometryConfig
from saekit.analysis.latents import latent_batches
from saekit.analysis.statistics import StatisticsAccumulator, accumulator_bytes
from saekit.cli import main
from saekit.dictionaries.base import DictionaryConfig
from saekit.dictionaries.registry import build_dictionary, save_dictionary
from saekit.errors import SaekitError
from saekit.io import write_json
from saekit.models.architecture import ArchitectureAdapter
from saekit.models.loading import LoadedModel
from saekit.training.config import TrainConfig

pytestmark = pytest.mark.usefixtures("quiet_model_loading")  # the CLI's stderr is then only its own

SITE = "blocks.0.resid_post"
WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho sigma tau".split()


def _contexts(n: int, length: int, bos: int) -> torch.Tensor:
    torch.manual_seed(3)
    contexts = torch.randint(2, 1000, (n, length))  # ids the small-vocabulary model has
    contexts[:, 0] = bos
    return contexts


def _wide(width: int):
    torch.manual_seed(1)
    return build_dictionary(DictionaryConfig("topk", 32, width, k=8)).eval().requires_grad_(False)


EXAMPLES = ExampleConfig(top=8, sample_reservoir=16, quantile_groups=2, per_quantile=3, negatives=2)


def test_the_collector_and_accumulator_hold_what_their_estimates_say(tiny_loaded):
    dictionary, contexts = _wide(300), _contexts(6, 40, tiny_loaded.bos_token_id)
    collector, accumulator = ExampleCollector(250, 40, EXAMPLES), StatisticsAccumulator(250)
    for batch in latent_batches(tiny_loaded, dictionary, SITE, contexts, 250, 3):
        collector.update(batch.activations, batch.context_ids)
        accumulator.update(batch.activations[batch.counted])
    selections = (collector.top, collector.sample, collector.negative)
    assert collector_bytes(250, 40, EXAMPLES) == nbytes(
        t for s in selections for t in (s.scores, s.contexts, s.maxima, s.tokens))
    assert accumulator_bytes(250, accumulator.bins) == nbytes(
        [accumulator.fire_counts, accumulator.sums, accumulator.maxima, accumulator.histogram])


@pytest.fixture(scope="module")
def small_vocab(tiny_loaded) -> LoadedModel:
    """The tiny Llama with a 1000-token vocabulary (the tokenizer decodes those ids as ever): the logit
    weights, a block of latents x the vocabulary, then weigh less than the parts sized by latents x tokens."""
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=1000, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2)
    model = LlamaForCausalLM(config).eval().requires_grad_(False)
    return LoadedModel("small-vocab", model, tiny_loaded.tokenizer, ArchitectureAdapter(model))


# The largest part is the example table (long contexts) in the first, one batch's activations and example
# merge (many contexts at once) in the second.
@pytest.mark.parametrize(("width", "length", "batch_contexts"), [(1024, 96, 2), (2048, 32, 32)])
def test_the_estimate_is_what_the_analysis_allocates(small_vocab, tmp_path, width, length, batch_contexts):
    dictionary, contexts = _wide(width), _contexts(32, length, small_vocab.bos_token_id)
    config = AnalysisConfig(batch_contexts=batch_contexts, progress=False, examples=EXAMPLES,
                            geometry=GeometryConfig(col_block=1024, baseline_rows=512))
    source = {"site": SITE, "target_site": None}
    peak, _ = allocated_peak(lambda: analyze_dictionary(small_vocab, dictionary, source, contexts,
                                                        tmp_path / "analysis", config), tmp_path / "trace.json")
    estimate = analysis_memory(config, width, 32, length, 32, 1000, firing_per_token=8)
    # Measured: the estimate is 1.0x-1.2x of the peak; a part left out or counted twice moves it outside.
    assert 0.95 <= estimate.peak / peak <= 1.3, (estimate, peak)


def test_a_smaller_batch_is_named_when_it_is_enough():
    config = AnalysisConfig(batch_contexts=16, progress=False)
    sizes = dict(width=65536, direction_dim=576, context_length=1024, n_contexts=64, vocab=49152, firing_per_token=64)
    fits_at_4 = analysis_memory(replace(config, batch_contexts=4), **sizes).peak
    assert analysis_memory(replace(config, batch_contexts=8), **sizes).peak > fits_at_4
    with pytest.raises(SaekitError, match=r"; lower --batch-contexts to 4, or raise --max-memory-gb$"):
        check_analysis_memory(replace(config, max_memory_gb=fits_at_4 / 1e9), **sizes)


def test_the_default_budget_is_a_share_of_the_free_memory_the_tightest_limit_allows(tmp_path, monkeypatch):
    (tmp_path / "meminfo").write_text("MemTotal: 8000000 kB\nMemAvailable:    2000000 kB\n")
    cgroup = tmp_path / "cgroup"
    cgroup.mkdir()
    monkeypatch.setattr(memory, "MEMINFO", tmp_path / "meminfo")
    monkeypatch.setattr(memory, "CGROUP", cgroup)
    assert memory.memory_budget(None) == int(0.9 * 2_048_000_000)  # no container limit
    (cgroup / "memory.max").write_text("1000000000\n")
    (cgroup / "memory.current").write_text("600000000\n")
    (cgroup / "memory.stat").write_text("anon 500000000\ninactive_file 100000000\n")
    assert memory.memory_budget(None) == int(0.9 * 500_000_000)  # the container's room, cache it can drop free
    assert memory.memory_budget(1.5) == 1_500_000_000


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tiny_model_dir):
    root = tmp_path_factory.mktemp("budget-runs")
    corpus = root / "corpus"
    corpus.mkdir()
    for i in range(12):
        (corpus / f"doc{i:02d}.txt").write_text(" ".join(WORDS[(i + j) % len(WORDS)] for j in range(120)))
    config = TrainConfig.from_flat(dict(name="tiny", model=str(tiny_model_dir), site="blocks.1.resid_post",
                                        corpus=str(corpus), eval_fraction=0.3, context_length=16, width=64, k=4,
                                        cache_dir=None))
    run = root / "tiny"
    write_json(run / "config.json", config.to_dict())
    torch.manual_seed(2)
    save_dictionary(run / "dictionary", build_dictionary(DictionaryConfig("topk", 32, 64, k=4)),
                    {"model": config.data.model, "site": config.site, "target_site": None})
    return run


def test_analyze_over_budget_is_refused_with_the_latents_that_fit(run_dir, capsys):
    argv = ["analyze", str(run_dir), "--tokens", "200", "--max-memory-gb", "0.02"]
    assert main(argv) == 1
    err = one_line(capsys)
    fix = re.search(r"analyse the first (\d+) latents with --latents \1, or raise --max-memory-gb$", err)
    assert fix and "(64 latents, contexts of 16 tokens" in err and "for its logit weights" in err, err
    assert "over the 0.02 GB budget" in err, err
    assert not (run_dir / "analysis").exists()
    # The latents it names are the most that fit: that many run under the same budget, one more does not.
    latents = int(fix[1])
    assert main([*argv, "--latents", str(latents + 1)]) == 1
    assert "--latents" in one_line(capsys)
    assert main([*argv, "--latents", str(latents)]) == 0
    manifest = json.loads((run_dir / "analysis" / "analysis.json").read_text())
    assert manifest["latents_analysed"] == latents


def test_dashboard_that_must_analyse_over_budget_is_refused_before_writing(run_dir, tmp_path, capsys):
    fresh = tmp_path / "fresh"  # the run without its analysis store
    fresh.mkdir()
    for name in ("config.json", "dictionary"):
        (fresh / name).symlink_to(run_dir / name)
    assert main(["dashboard", str(fresh), "--tokens", "200", "--max-memory-gb", "0.02"]) == 1
    err = one_line(capsys)
    assert "the analysis would need about" in err and "--latents" in err and "--max-memory-gb" in err, err
    assert sorted(p.name for p in fresh.iterdir() if not p.name.startswith(".")) == ["config.json", "dictionary"]


def test_dashboard_whose_store_will_not_fit_is_refused_before_reading_it(run_dir, tmp_path, capsys):
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    for name in ("config.json", "dictionary"):
        (fresh / name).symlink_to(run_dir / name)
    assert main(["analyze", str(fresh), "--tokens", "60", "--latents", "8"]) == 0
    store = sum(path.stat().st_size for path in (fresh / "analysis").iterdir())
    dictionary = sum(path.stat().st_size for path in (run_dir / "dictionary").iterdir())
    capsys.readouterr()
    # A budget of the store alone: the dictionary does not fit beside it.
    assert main(["dashboard", str(fresh), "--max-memory-gb", str(store / 1e9)]) == 1
    err = one_line(capsys)
    assert f"the dashboard would read {(store + dictionary) / 1e9:.3g} GB" in err, err
    assert f"saekit analyze {fresh} --latents N`, or raise --max-memory-gb" in err, err
    assert not (fresh / "dashboard").exists()
    assert main(["dashboard", str(fresh), "--max-memory-gb", str((store + dictionary) / 1e9)]) == 0
    assert (fresh / "dashboard" / "index.html").is_file()
