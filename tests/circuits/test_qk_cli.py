"""``saekit attribute --qk``: SLUG.qk.json beside the graph, whose parts sum to the head's real pre-softmax scores
(recomputed by hand from the model's q/k projections, none of the code under test), and one line with nothing
written for each bad spec."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from cli_helpers import one_line, quiet_model_loading  # noqa: F401 (a fixture, used below)

from saekit.circuits.replacement import ReplacementModel
from saekit.circuits.transcoders import load_transcoders
from saekit.cli import main
from saekit.models.loading import LoadedModel
from tests.circuits.test_attention_attribution import _hand_scores, trained  # noqa: F401 (trained: a fixture)
from tests.circuits.test_attribution import PROMPT


def _check_side(side: dict, score: float, top: int, graph_nodes: dict[tuple[str, str], dict]) -> None:
    """bias + the listed parts + other is the score; the listed nodes are the largest, named as the graph names
    them, and those marked in_graph are in the graph JSON."""
    parts = [node["part"] for node in side["nodes"]]
    assert side["bias"] + sum(parts) + side["other"] == pytest.approx(score, abs=1e-5 * max(1.0, abs(score)))
    assert len(parts) <= top and all(part != 0 for part in parts)
    assert [abs(part) for part in parts] == sorted(map(abs, parts), reverse=True)
    for node in side["nodes"]:
        expected = {"latent": f"{node.get('layer')}_{node.get('latent')}_{node['position']}",
                    "error": f"0_{node.get('layer')}_{node['position']}",
                    "token": f"E_{node['node'].split('_')[1]}_{node['position']}"}[node["kind"]]
        assert node["node"] == expected
        if node["in_graph"]:
            found = graph_nodes[(node["kind"], node["node"])]
            assert found["ctx_idx"] == node["position"]


def test_attribute_qk_writes_parts_that_sum_to_the_heads_real_scores(trained, tiny_loaded: LoadedModel,  # noqa: F811
                                                                     tmp_path: Path, capsys) -> None:
    out = tmp_path / "graph"
    assert main(["attribute", str(trained), "--prompt", PROMPT, "--out", str(out), "--check-ablations", "0",
                 "--qk", "1.3,0.1@3", "--qk", "1.3", "--qk-top", "4"]) == 0
    assert "qk:" in capsys.readouterr().out
    written = next(out.glob("*.qk.json"))
    slug = written.name.removesuffix(".qk.json")
    record, graph_json = json.loads(written.read_text()), json.loads((out / f"{slug}.json").read_text())
    kinds = {"cross layer transcoder": "latent", "mlp reconstruction error": "error", "embedding": "token"}
    graph_nodes = {(kinds[node["feature_type"]], node["node_id"]): node for node in graph_json["nodes"]
                   if node["feature_type"] in kinds}
    ids = tiny_loaded.prompt_ids(PROMPT)
    last = len(ids) - 1
    # The repeated 1.3 (the last position, with and without saying so) is listed once.
    assert [(h["layer"], h["head"], h["query"]) for h in record["heads"]] == [(1, 3, last), (0, 1, 3)]
    assert len(record["prompt_tokens"]) == len(ids)
    replacement = ReplacementModel(tiny_loaded, load_transcoders(trained, "cpu"), ids)
    listed = 0
    for head in record["heads"]:
        layer, index, query = head["layer"], head["head"], head["query"]
        real = _hand_scores(replacement, replacement.clean_nodes(1), layer, index, query)[0]
        torch.testing.assert_close(torch.tensor(head["scores"]), real, atol=1e-5, rtol=1e-4)
        pattern = torch.tensor(head["pattern"])
        assert len(pattern) == query + 1
        torch.testing.assert_close(pattern, real.softmax(0), atol=1e-5, rtol=1e-4)  # Llama: no softcap
        keys = [key["key"] for key in head["keys"]]
        assert len(keys) == min(record["top_keys"], query + 1)
        assert keys == pattern.argsort(descending=True)[:len(keys)].tolist()
        for key in head["keys"]:
            assert key["score"] == pytest.approx(float(real[key["key"]]), abs=1e-5)
            assert key["weight"] == pytest.approx(float(pattern[key["key"]]))
            for side in ("query_side", "key_side"):
                _check_side(key[side], key["score"], 4, graph_nodes)
                listed += sum(abs(node["part"]) > 1e-3 for node in key[side]["nodes"])
    assert listed > 0 and record["largest_residual"] < 1e-5
    # One module-level function in transformers' registry, however many views ran.
    from transformers import AttentionInterface

    from saekit.circuits.attention import _QK_IMPLEMENTATION, _qk_interface

    assert AttentionInterface._global_mapping[_QK_IMPLEMENTATION] is _qk_interface


@pytest.mark.usefixtures("quiet_model_loading")  # the CLI's stderr is then only its own
def test_bad_qk_specs_are_one_line_and_write_nothing(trained, tmp_path: Path, capsys) -> None:  # noqa: F811
    never = tmp_path / "never"
    for argv, message in ((["--qk", "2.0"], "attention layer 2 does not exist; the model has layers 0-1"),
                          (["--qk", "-1.0"], "attention layer -1 does not exist"),
                          (["--qk", "0.4"], "head 4 does not exist; layer 0 has heads 0-3"),
                          (["--qk", "1.0,0.0@99"], "query position 99 is outside the prompt (positions 0-"),
                          (["--qk", "1:3"], "--qk '1:3' is not LAYER.HEAD[@POS]"),
                          (["--qk", "1.3@"], "--qk '1.3@' is not LAYER.HEAD[@POS]"),
                          (["--qk", "1.3,"], "--qk '' is not LAYER.HEAD[@POS]"),
                          (["--qk", "1.3", "--qk-top", "0"], "give at least 1"),
                          (["--qk-top", "3"], "without --qk")):
        assert main(["attribute", str(trained), "--prompt", PROMPT, "--out", str(never), *argv]) == 1, argv
        err = one_line(capsys)
        assert err.startswith("saekit: error:") and message in err, err
        assert not never.exists()
