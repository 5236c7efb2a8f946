"""``saekit attribute`` and ``saekit steer`` on per-layer transcoders trained by ``saekit train --sites``."""

from __future__ import annotations

import json
import re

import pytest
from run_helpers import train_tiny_transcoders

from saekit.cli import main

PROMPT = "The cat sat on the mat because"


@pytest.fixture(scope="module")
def transcoders(tiny_model_dir, tmp_path_factory):
    return train_tiny_transcoders(tiny_model_dir, tmp_path_factory.mktemp("circuit-runs"))


def test_attribute_writes_graph_page_and_ablation_report(transcoders, tmp_path, capsys):
    # One layer's run analysed: its latents get dashboard details on the page, the other layer's do not.
    assert main(["analyze", str(transcoders / "blocks.1.mlp_in"), "--tokens", "1024", "--batch-contexts", "4"]) == 0
    out = tmp_path / "graph"
    assert main(["attribute", str(transcoders), "--prompt", PROMPT, "--out", str(out), "--check-ablations", "3",
                 "--batch-size", "16", "--node-threshold", "0.99"]) == 0
    report = (out / "report.md").read_text()
    assert "Attribution graph" in report and "predicted change" in report and "measured change" in report
    checks = json.loads((out / "ablations.json").read_text())["checks"]
    assert len(checks) == 3 and all(len(c["predicted"]) == len(c["measured"]) for c in checks)
    assert any(path.suffix == ".html" for path in out.iterdir())
    assert any(path.suffix == ".json" and path.name != "ablations.json" for path in out.iterdir())
    page = next(out.glob("*.html")).read_text()
    data = json.loads(re.search(r'<script type="application/json" id="graph-data">(.*?)</script>', page, re.S)[1])
    layer_one = {"_".join(node["node_id"].split("_")[:2]) for node in data["nodes"]
                 if node["feature_type"] == "cross layer transcoder" and node["layer"] == "1"}
    assert layer_one and set(data["details"]) == layer_one  # every kept layer-1 latent, no layer-0 one
    assert all(detail["logits"]["positive"] for detail in data["details"].values())


def test_steer_reports_the_change_and_bad_input_is_one_line(transcoders, tmp_path, capsys):
    out = tmp_path / "steer.json"
    assert main(["steer", str(transcoders), "--prompt", PROMPT, "--latent", "1:3=clamp:50", "--new-tokens", "4",
                 "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["kl_clean_to_steered"] > 0 and result["next_token"]
    assert "greedy continuation" in capsys.readouterr().out
    for argv, message in ((["--latent", "7:3=ablate"], "replace layers 0-1"),
                          (["--latent", "1:3=clamp"], "LAYER:LATENT"),
                          ([], "at least one --latent"),
                          (["--latent", "1:3=ablate", "--device", "cuda:7"], "not available")):
        assert main(["steer", str(transcoders), "--prompt", PROMPT, *argv]) == 1
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1
    assert main(["attribute", str(tmp_path), "--prompt", PROMPT]) == 1
    assert "holds no transcoder run" in capsys.readouterr().err
    assert main(["attribute", str(transcoders), "--prompt", PROMPT, "--device", "cuda:7",
                 "--out", str(tmp_path / "never")]) == 1
    assert "not available" in capsys.readouterr().err and not (tmp_path / "never").exists()


def test_attribute_with_chosen_targets_names_them_and_measures_in_steers_unit(transcoders, tmp_path, capsys):
    out = tmp_path / "targets"
    assert main(["attribute", str(transcoders), "--prompt", PROMPT, "--out", str(out), "--check-ablations", "1",
                 "--target-token", " the", "--target-diff", " the| a", "--zero-bos-errors"]) == 0
    report = (out / "report.md").read_text()
    assert "targets (weights: a token its probability, others 1): ' the' (logit minus the mean logit" in report
    assert "' the' - ' a' (logit minus logit at the last position)" in report and "replacement " in report
    assert "BOS error nodes have no edges" in report
    record = json.loads(next(p for p in out.glob("*.json") if p.name not in ("ablations.json",
                                                                                "graph-metadata.json")).read_text())
    assert record["metadata"]["targets"] == ["' the'", "' the' - ' a'"]
    assert set(record["metadata"]["scores"]) == {"replacement", "completeness"}
    assert "Targets: &#x27; the&#x27;, &#x27; the&#x27; - &#x27; a&#x27;" in next(out.glob("*.html")).read_text()
    # The ablation check's measured change of ' the' is what `saekit steer` reports for the same ablation.
    check = json.loads((out / "ablations.json").read_text())["checks"][0]
    steered = tmp_path / "steer.json"
    assert main(["steer", str(transcoders), "--prompt", PROMPT, "--latent",
                 f"{check['layer']}:{check['latent']}@{check['position']}=ablate", "--top", "50000",
                 "--new-tokens", "1", "--out", str(steered)]) == 0
    row = next(r for r in json.loads(steered.read_text())["next_token"] if r["token"] == " the")
    assert row["logit_change"] == pytest.approx(check["measured"][0], abs=1e-5)


def test_bad_targets_and_prompts_are_one_line(transcoders, tmp_path, capsys):
    for argv, message in ((["--target-token", " Parisianisms"], "is 3 tokens"),
                          (["--target-latent", "1:100000@2"], "layer 1 has"),
                          (["--target-latent", "1:3@99"], "the position must be"),
                          (["--prompt", "the " * 2100], "longer than the model's context of 2048")):
        prompt = [] if argv[0] == "--prompt" else ["--prompt", PROMPT]
        assert main(["attribute", str(transcoders), *prompt, *argv, "--out", str(tmp_path / "never")]) == 1
        last = capsys.readouterr().err.strip().splitlines()[-1]  # after the model's loading progress, if any
        assert last.startswith("saekit: error:") and message in last, last
    assert not (tmp_path / "never").exists()
