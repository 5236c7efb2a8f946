"""Evaluating a run end to end on a tiny model, and every way its files can be bad."""

import json
import subprocess
import sys

import pytest

from saekit.errors import SaekitError
from saekit.evaluation.evaluate import evaluate_run
from saekit.evaluation.generation import DEFAULT_PROMPTS, side_by_side
from saekit.evaluation.results import EvaluationResults
from saekit.training.config import TrainConfig
from saekit.training.run import train_run


@pytest.fixture(scope="module")
def tiny_run(tiny_loaded, tiny_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("eval-runs")
    config = TrainConfig.from_flat(dict(
        name="tiny", model=str(tiny_model_dir), site="blocks.1.resid_post", context_length=16,
                         contexts_per_chunk=16, expansion_factor=4, k=4, train_tokens=2048, batch_size=256,
                         shuffle_buffer_tokens=512, cache_dir=str(root / "cache"), eval_tokens=280,
                         eval_batch_contexts=4))
    return train_run(config, root / "runs", loaded=tiny_loaded, progress=False)


def test_evaluate_writes_metrics_and_report(tiny_run, tiny_loaded):
    metrics = evaluate_run(tiny_run, loaded=tiny_loaded)
    saved = json.loads((tiny_run / "metrics.json").read_text())
    assert saved["losses"]["ce_clean"]["mean"] == pytest.approx(metrics.losses.ce_clean.mean)
    assert EvaluationResults.from_dict(saved) == metrics  # the JSON holds every field, and only those
    assert saved["eval_contexts"] == 20  # ceil(280 / (16 - 2))
    assert saved["reconstruction"]["blocks.1.resid_post"]["tokens"] == 20 * 15
    report = (tiny_run / "report.md").read_text()
    for phrase in ("zero-ablation", "mean-ablation", "Effective compute", "FVU", "ΔCE"):
        assert phrase in report
    # Where training's time went: the run's throughput record, end to end beside the forward alone.
    throughput = json.loads((tiny_run / "throughput.json").read_text())
    assert saved["training"] == throughput and throughput["tokens_trained_this_session"] == 2048
    assert throughput["model_forward_tokens"] >= 2048  # the model ran on at least every trained token
    assert 0 < throughput["end_to_end_tokens_per_s"] < throughput["dictionary_steps_tokens_per_s"]
    assert "## Training throughput" in report and "model forward alone (float32)" in report


def test_corrupt_or_missing_files(tiny_run, tiny_loaded, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(tiny_run, broken)
    weights = broken / "dictionary" / "weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(SaekitError, match="corrupt or not safetensors"):
        evaluate_run(broken, loaded=tiny_loaded)
    weights.unlink()
    with pytest.raises(SaekitError, match="dictionary weights not found"):
        evaluate_run(broken, loaded=tiny_loaded)
    (broken / "dictionary" / "config.json").write_text("{")
    with pytest.raises(SaekitError, match="dictionary config .* is corrupt"):
        evaluate_run(broken, loaded=tiny_loaded)
    with pytest.raises(SaekitError, match="run directory not found"):
        evaluate_run(tmp_path / "nowhere", loaded=tiny_loaded)


def test_cli_prints_one_line_and_exits_nonzero(tmp_path):
    result = subprocess.run([sys.executable, "-m", "saekit", "evaluate", str(tmp_path / "missing")],
                            capture_output=True, text=True)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [f"saekit: error: run directory not found: {tmp_path / 'missing'}"]


def test_report_has_damage_and_generations(tiny_run, tiny_loaded):
    metrics = evaluate_run(tiny_run, loaded=tiny_loaded, generations=2)
    damage = metrics.token_damage
    assert damage.worst_positions[0].delta_nats >= damage.worst_positions[-1].delta_nats
    assert len(metrics.generations) == 2 and metrics.generations[0].prompt
    report = (tiny_run / "report.md").read_text()
    assert "Where the splice hurts" in report and "side by side" in report


def test_generations_sample_as_many_as_asked(tiny_run, tiny_loaded, monkeypatch):
    import saekit.evaluation.evaluate as evaluate

    asked = []

    def recording(loaded, targets, prompts=DEFAULT_PROMPTS, **kwargs):
        asked.append(list(prompts))
        return side_by_side(loaded, targets, prompts, max_new_tokens=2, **kwargs)

    monkeypatch.setattr(evaluate, "side_by_side", recording)
    metrics = evaluate_run(tiny_run, loaded=tiny_loaded, eval_tokens=140, generations=6)
    # Past the four built-in prompts they repeat, and only the prompts asked for are sampled.
    assert asked == [list(DEFAULT_PROMPTS) + list(DEFAULT_PROMPTS[:2])]
    assert [row.prompt for row in metrics.generations] == asked[0]
    assert metrics.generations_skipped is None


def test_evaluate_cli_with_no_generations_samples_none_and_says_so(tiny_run, monkeypatch, capsys):
    import saekit.evaluation.evaluate as evaluate
    from saekit.cli import main

    def refuse(*args, **kwargs):
        raise AssertionError("sampled although --generations 0")

    monkeypatch.setattr(evaluate, "side_by_side", refuse)
    assert main(["evaluate", str(tiny_run), "--eval-tokens", "140", "--generations", "0"]) == 0
    saved = json.loads((tiny_run / "metrics.json").read_text())
    assert "generations" not in saved and saved["generations_skipped"] == "0 generations requested"
    report = (tiny_run / "report.md").read_text()
    assert "## The degraded model, side by side\n\nNone sampled: 0 generations requested.\n" in report


def test_a_negative_generation_count_is_refused_before_any_model_loads(tmp_path, capsys):
    from saekit.cli import main
    from saekit.evaluation.evaluate import evaluate_joint

    with pytest.raises(SystemExit) as exit_info:
        main(["evaluate", str(tmp_path / "missing"), "--generations", "-1"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "saekit evaluate: error: argument --generations: expected a whole number >= 0, got '-1' "
        "(see saekit evaluate --help)"]
    # Through the API too: the count is checked before the runs are read or the model loads.
    for call in (lambda: evaluate_run(tmp_path / "missing", generations=-1),
                 lambda: evaluate_joint([tmp_path / "a", tmp_path / "b"], tmp_path / "out", generations=-1)):
        with pytest.raises(SaekitError, match=r"^generations must be a whole number >= 0 \(0: sample none\), got -1$"):
            call()


def test_joint_evaluation_and_summary(tiny_run, tiny_loaded, tiny_model_dir, tmp_path):
    from saekit.evaluation.evaluate import evaluate_joint
    from saekit.evaluation.summary import pareto_front, summarize
    from saekit.training.config import load_run_config

    layer0 = load_run_config(tiny_run).updated(name="tiny0", site="blocks.0.resid_post")
    run0 = train_run(layer0, tiny_run.parent, loaded=tiny_loaded, progress=False)
    metrics = evaluate_joint([run0, tiny_run], tmp_path / "joint", loaded=tiny_loaded)
    assert set(metrics.reconstruction) == {"blocks.0.resid_post", "blocks.1.resid_post"}
    assert len(metrics.alone) == 2
    alone_deltas = [a.losses.delta_ce_spliced.mean for a in metrics.alone.values()]
    assert metrics.losses.contexts == next(iter(metrics.alone.values())).losses.contexts
    report = (tmp_path / "joint" / "report.md").read_text()
    assert "jointly" in report and "upstream of it already spliced in" in report
    # The most upstream dictionary reads clean activations in the joint splice too: same FVU as alone.
    alone0 = metrics.alone[str(run0)].reconstruction["blocks.0.resid_post"].fvu
    assert metrics.reconstruction["blocks.0.resid_post"].fvu == pytest.approx(alone0, rel=1e-5)
    assert all(isinstance(d, float) for d in alone_deltas)
    for run in (run0, tiny_run):  # the summary reads each run's own metrics.json
        evaluate_run(run, loaded=tiny_loaded, generations=0)
    summary = summarize([run0, tiny_run], tmp_path / "summary")
    assert [r["layer"] for r in summary["runs"]] == [0, 1]
    assert (tmp_path / "summary" / "pareto.png").stat().st_size > 1000
    assert "data:image/png;base64" in (tmp_path / "summary" / "summary.html").read_text()
    assert pareto_front([(1, 5), (2, 3), (3, 4), (0.5, 9)]) == [0, 1, 3]


def test_evaluate_cli_with_a_fitted_law_table(tiny_run, tmp_path):
    from saekit.evaluation.effective_compute import get_law

    law = get_law("chinchilla")
    table = tmp_path / "family.csv"
    rows = [(n, d, law.loss(n, d)) for n in (1e7, 3e7, 1e8, 3e8) for d in (1e9, 3e9, 1e10)]
    table.write_text("params,tokens,loss\n" + "".join(f"{n},{d},{loss}\n" for n, d, loss in rows))
    result = subprocess.run([sys.executable, "-m", "saekit", "evaluate", str(tiny_run), "--eval-tokens", "140",
                             "--law-table", str(table)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    compute = json.loads((tiny_run / "metrics.json").read_text())["effective_compute"]
    # The law used is the fit to the table (which recovers the law the rows came from), not a preset.
    assert compute["law"]["name"] == "fit:family.csv"
    assert compute["law"]["alpha"] == pytest.approx(law.alpha, rel=1e-4)
    assert compute["law"]["beta"] == pytest.approx(law.beta, rel=1e-4)
