"""The memory estimate of an attribution graph against what the tiny model's attribution allocates, and
``saekit attribute`` refusing, in one line naming the flag, a graph over its memory budget."""

from __future__ import annotations

import json
import re

import pytest
import torch
from cli_helpers import one_line, quiet_model_loading  # noqa: F401 (a fixture, used below)
from memory_helpers import allocated_peak, nbytes

from saekit.circuits.attribution import AttributionConfig, attribute
from saekit.circuits.budget import FLOAT, check_prompt_memory, estimate_attribution, sizes_of
from saekit.circuits.graph import prune
from saekit.circuits.replacement import ReplacementModel
from saekit.circuits.transcoders import TranscoderSet
from saekit.cli import main
from saekit.dictionaries import DictionaryConfig, build_dictionary
from saekit.dictionaries.registry import save_dictionary
from saekit.errors import SaekitError
from saekit.io import write_json
from saekit.training.config import TrainConfig

pytestmark = pytest.mark.usefixtures("quiet_model_loading")  # the CLI's stderr is then only its own

PROMPT = "The cat sat on the mat because"


def _per_layer(layers: tuple[int, ...] = (0, 1)) -> TranscoderSet:
    torch.manual_seed(0)
    per_layer = {layer: build_dictionary(DictionaryConfig("jumprelu", 32, 96, d_out=32)).eval() for layer in layers}
    for dictionary in per_layer.values():
        with torch.no_grad():
            dictionary.log_threshold.fill_(-3.0)  # many latents fire: a graph of a few hundred nodes
        dictionary.requires_grad_(False)
    return TranscoderSet.per_layer(per_layer)


@pytest.mark.parametrize(("batch_size", "layers"), [(1, (0, 1)), (16, (0, 1)), (16, (1,))])
def test_the_estimate_is_what_attribution_allocates(tiny_loaded, tmp_path, batch_size, layers):
    # (1,): layer 0's MLP frozen at its clean output, an error node per position the estimate must count
    transcoders = _per_layer(layers)
    ids = tiny_loaded.prompt_ids(PROMPT)
    replacement = ReplacementModel(tiny_loaded, transcoders, ids, freeze_unreplaced=True)
    assert len(replacement.clean.errors) == 2
    config = AttributionConfig(progress=False, batch_size=batch_size, max_feature_nodes=60)
    peak, graph = allocated_peak(lambda: attribute(replacement, PROMPT, config), tmp_path / "attribute.json")
    estimate = estimate_attribution(sizes_of(tiny_loaded, transcoders, len(ids), graph.n_features, graph.n_logits,
                                             batch_size))
    clean = replacement.clean
    held = [clean.logits, clean.embeddings, *clean.latents.values(), *clean.errors.values(),
            *clean.mlp_in.values(), *replacement.patterns.values(), *replacement.inverse_scales.values()]
    assert estimate.clean == nbytes(held)
    assert estimate.adjacency == nbytes([graph.rows])
    # The passes' peak: the copies share the clean attention pattern (no heads x S^2 term per copy, whatever the
    # batch size); an estimate missing a term of the passes falls below.
    assert 0.98 <= (estimate.forward + estimate.adjacency) / peak <= 1.2
    prune_peak, _ = allocated_peak(lambda: prune(graph), tmp_path / "prune.json")
    assert 0.98 <= estimate.pruning / prune_peak <= 1.05


@pytest.fixture(scope="module")
def transcoder_runs(tmp_path_factory, tiny_model_dir):
    """Per-layer transcoder runs of the tiny model, saved untrained (attribution reads any transcoders)."""
    root = tmp_path_factory.mktemp("budget-runs") / "tc"
    transcoders = _per_layer()
    for layer in (0, 1):
        config = TrainConfig.from_flat(dict(name=f"blocks.{layer}.mlp_in", model=str(tiny_model_dir),
                                            site=f"blocks.{layer}.mlp_in", target_site=f"blocks.{layer}.mlp_out",
                                            architecture="jumprelu", width=96, cache_dir=None))
        run = root / f"blocks.{layer}.mlp_in"
        write_json(run / "config.json", config.to_dict())
        save_dictionary(run / "dictionary", transcoders.dictionary_of(layer),
                        {"model": str(tiny_model_dir), "site": config.site, "target_site": config.target_site})
    return root


def test_attribute_over_budget_is_refused_with_the_flag_that_fits(transcoder_runs, tmp_path, capsys):
    out = tmp_path / "graph"
    argv = ["attribute", str(transcoder_runs), "--prompt", PROMPT, "--out", str(out), "--check-ablations", "1",
            "--batch-size", "4", "--max-memory-gb", "0.006"]
    assert main(argv) == 1
    err = one_line(capsys)
    fix = re.search(r"set --max-feature-nodes (\d+)", err)
    assert fix and "over the 0.006 GB budget" in err and "--max-memory-gb" in err, err
    assert not out.exists()
    # The latents it names are the most that fit: that many runs under the same budget, one more does not.
    features = int(fix[1])
    assert main([*argv, "--max-feature-nodes", str(features + 1)]) == 1
    assert "--max-feature-nodes" in one_line(capsys)
    assert main([*argv, "--max-feature-nodes", str(features)]) == 0
    printed = capsys.readouterr().out
    assert f"{features} latent nodes" in printed and "estimated peak" in printed
    graph = json.loads(next(p for p in out.glob("*.json") if p.name != "ablations.json").read_text())
    assert sum(node["feature_type"] == "cross layer transcoder" for node in graph["nodes"]) <= features


def test_a_prompt_too_long_for_the_budget_is_refused_before_the_clean_run(transcoder_runs, tiny_loaded, tmp_path,
                                                                         capsys, monkeypatch):
    import saekit.jobs.circuits as job

    def never(*args, **kwargs):
        raise AssertionError("the clean run started")
    monkeypatch.setattr(job, "ReplacementModel", never)
    out = tmp_path / "graph"
    long_prompt = " ".join(["the cat sat on the mat"] * 200)
    assert main(["attribute", str(transcoder_runs), "--prompt", long_prompt, "--out", str(out),
                 "--max-memory-gb", "0.05"]) == 1
    err = one_line(capsys)
    fix = re.search(r"shorten --prompt to at most (\d+) tokens \(it has 1201 with BOS\), or raise --max-memory-gb$",
                    err)
    assert fix and "would need at least" in err, err
    assert not out.exists()
    # The length it names is the longest that passes this check.
    longest = int(fix[1])
    check_prompt_memory(tiny_loaded, _per_layer(), longest, 32, 0.05)
    with pytest.raises(SaekitError, match="shorten --prompt"):
        check_prompt_memory(tiny_loaded, _per_layer(), longest + 1, 32, 0.05)


def test_no_budget_for_one_pass_and_a_prompt_over_the_context_are_one_line_before_the_clean_run(
        transcoder_runs, tiny_loaded, tmp_path, capsys, monkeypatch):
    import saekit.jobs.circuits as job

    def never(*args, **kwargs):
        raise AssertionError("the clean run started")
    monkeypatch.setattr(job, "ReplacementModel", never)
    out = tmp_path / "graph"
    # Not even BOS and one token fit at batch size 1: no shorter prompt or smaller batch helps, only the budget.
    assert main(["attribute", str(transcoder_runs), "--prompt", PROMPT, "--out", str(out),
                 "--max-memory-gb", "0.0001"]) == 1
    err = one_line(capsys)
    assert "not even a one-token prompt fits at --batch-size 1" in err and err.endswith("raise --max-memory-gb"), err
    assert "at most 0 tokens" not in err
    with pytest.raises(SaekitError, match="not even a one-token prompt"):
        check_prompt_memory(tiny_loaded, _per_layer(), 8, 1, 0.0001)
    # The tiny model's context is 2,048 positions: a longer prompt is refused before its graph is estimated.
    assert main(["attribute", str(transcoder_runs), "--prompt", "the " * 2100, "--out", str(out)]) == 1
    err = one_line(capsys)
    assert "longer than the model's context of 2048" in err and "shorten it" in err, err
    assert not out.exists()


def test_a_small_batch_bounds_the_passes_of_a_long_prompt(tiny_loaded):
    # The copies share the clean attention patterns: the passes grow with the batch linearly in the prompt, with
    # no heads x S^2 term per copy (2,048 tokens: 4.5 GB a copy on SmolLM2-135M), and the rows linearly too.
    transcoders = _per_layer()
    one, four = (estimate_attribution(sizes_of(tiny_loaded, transcoders, 2048, 500, 10, batch)) for batch in (1, 4))
    per_copy = (four.forward - one.forward) / 3
    heads, layers = 4, 2
    assert per_copy < FLOAT * layers * heads * 2048 ** 2 / 10
    assert one.adjacency == FLOAT * 510 * one.sizes.nodes and one.pruning < 4 * one.adjacency


def test_steer_refuses_a_position_beyond_the_prompt_before_the_model_runs(transcoder_runs, capsys, monkeypatch):
    import saekit.jobs.circuits as job

    def never(*args, **kwargs):
        raise AssertionError("the model ran")
    monkeypatch.setattr(job, "intervened_logits", never)
    assert main(["steer", str(transcoder_runs), "--prompt", "a b c d e", "--latent", "1:1@999=ablate"]) == 1
    err = one_line(capsys)
    assert "--latent 1:1@999=ablate: position 999 is outside the prompt, which has 6 tokens" in err, err


def test_steer_out_naming_a_directory_is_refused_before_any_work(transcoder_runs, tmp_path, capsys, monkeypatch):
    import saekit.jobs.circuits as job

    def never(*args, **kwargs):
        raise AssertionError("the transcoders were loaded")
    monkeypatch.setattr(job, "load_transcoders", never)
    before = sorted(tmp_path.iterdir())
    assert main(["steer", str(transcoder_runs), "--prompt", PROMPT, "--latent", "1:1=ablate",
                 "--out", str(tmp_path)]) == 1
    err = one_line(capsys)
    assert f"--out {tmp_path} is a directory" in err and "name a file" in err, err
    assert sorted(tmp_path.iterdir()) == before
