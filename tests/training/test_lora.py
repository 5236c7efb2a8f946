"""LoRA adapters around a frozen dictionary on the tiny model: the KL falls, the model is untouched, exact resume,
the training splice is the evaluation's, and bad input is one line before any model loads."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest
import torch
from run_helpers import ONE_THREAD
from training.test_run import _config

from saekit.cli import main
from saekit.evaluation.adapted import evaluate_adapter
from saekit.evaluation.evaluate import load_splice_targets
from saekit.evaluation.splice import next_token_nll
from saekit.io import load_tensors
from saekit.models.hooks import recording_prefix, resumed_at
from saekit.rundir import CHECKPOINT_FILE, CONFIG_FILE, LOG_FILE, write_run_config
from saekit.training.lora import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    AdapterSettings,
    attached_adapter,
    plan_adapter,
    read_log,
    total_steps,
    train_adapter,
    training_contexts,
)
from saekit.training.objectives import next_token_kl
from saekit.training.run import read_checkpoint_step, train_run
from saekit.training.splicing import spliced_context

SITE = "blocks.0.resid_post"  # the tiny model has 2 layers: the adapters go on layer 1


@pytest.fixture(scope="module")
def tiny_run(tiny_loaded, tiny_model_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("lora-run")
    config = _config(tiny_model_dir, tmp, name="sae", site=SITE, k=2, train_tokens=256 * 8, eval_tokens=280)
    return train_run(config, tmp / "runs", loaded=tiny_loaded, progress=False)


def _settings(**changes) -> AdapterSettings:
    values = dict(rank=8, alpha=16.0, dropout=0.0, train_tokens=256 * 30, batch_size=256, lr=1e-2, checkpoint_every=10)
    values.update(changes)
    return AdapterSettings(**values)


def test_lora_lowers_the_spliced_kl_and_leaves_the_model_untouched(tiny_loaded, tiny_run):
    before = {name: value.clone() for name, value in tiny_loaded.model.state_dict().items()}
    settings = _settings()
    out = train_adapter(tiny_run, settings, loaded=tiny_loaded, name="kl", progress=False)
    assert (out / ADAPTER_WEIGHTS).is_file() and (out / ADAPTER_CONFIG).is_file()
    steps = total_steps(plan_adapter(tiny_run, settings).config, settings)
    assert steps == 29 and [r["step"] for r in read_log(out)] == list(range(1, steps + 1))  # 18 contexts a step
    # The model comes back as it was: same weights, no LoRA module left, nothing trainable added.
    after = tiny_loaded.model.state_dict()
    assert after.keys() == before.keys()
    for name, value in before.items():
        assert torch.equal(after[name], value), name
    assert not any("lora" in name for name, _ in tiny_loaded.model.named_modules())
    assert all(p.grad is None for p in tiny_loaded.model.parameters())

    # Measured by the evaluation (its own splice), on the first training contexts.
    plan = plan_adapter(tiny_run, settings)
    steps = training_contexts(tiny_loaded, plan.config, settings, 0)
    contexts = torch.cat([next(steps) for _ in range(4)])
    metrics = evaluate_adapter(tiny_run, out, loaded=tiny_loaded, contexts=contexts, write=False)
    assert metrics["kl_spliced"]["mean"] > 0
    assert metrics["kl_adapted_spliced"]["mean"] < 0.85 * metrics["kl_spliced"]["mean"]  # 0.0052 -> 0.0039 measured
    assert metrics["delta_ce_adapted_spliced"]["mean"] < metrics["delta_ce_spliced"]["mean"]
    # The clean reference is the un-wrapped model's own loss on those contexts.
    with torch.no_grad():
        logits = tiny_loaded.model(input_ids=contexts, use_cache=False).logits
    expected = next_token_nll(logits, contexts).mean(-1).double()
    assert metrics["ce_original"]["mean"] == pytest.approx(expected.mean().item(), rel=1e-6)


def test_blocks_before_the_adapters_replay_from_the_original_models_pass(tiny_loaded, tiny_run):
    out = train_adapter(tiny_run, _settings(train_tokens=256 * 3), loaded=tiny_loaded, name="same", progress=False)
    plan = plan_adapter(tiny_run, _settings())
    assert plan.first_changed_layer == 0  # the SAE writes block 0's output; the adapters sit on layer 1
    targets = load_splice_targets(tiny_run, tiny_loaded)
    ids = next(training_contexts(tiny_loaded, plan.config, _settings(), 0))
    adapter = tiny_loaded.adapter
    with torch.no_grad(), attached_adapter(tiny_loaded, out) as peft_model:
        with spliced_context(tiny_loaded, targets, input_ids=ids):
            whole = tiny_loaded.model(input_ids=ids, use_cache=False).logits
        # Block 0 replayed from the original model's pass (adapters disabled) gives the adapted model's
        # logits: peft's layers all come after it, which is what lets the training loop skip it.
        with peft_model.disable_adapter(), recording_prefix(adapter, 1) as prefix:
            tiny_loaded.model(input_ids=ids, use_cache=False)
        with resumed_at(adapter, prefix):
            resumed_clean_prefix = tiny_loaded.model(input_ids=ids, use_cache=False).logits
        adapted_clean = tiny_loaded.model(input_ids=ids, use_cache=False).logits
    torch.testing.assert_close(resumed_clean_prefix, adapted_clean, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(whole, adapted_clean, atol=1e-4)  # the splice changes the adapted model's logits


def test_a_run_past_block_0_skips_the_blocks_before_it_and_its_first_kl_is_the_splices(tiny_loaded, tiny_model_dir,
                                                                                        tmp_path):
    """Site blocks.1.resid_pre: the training forwards replay block 0. Before its first update a LoRA adapter is the
    identity (B starts at zero), so step 1's KL is the KL of the plain spliced model on step 1's contexts."""
    config = _config(tiny_model_dir, tmp_path, name="late", site="blocks.1.resid_pre", k=2, train_tokens=256 * 4)
    run = train_run(config, tmp_path / "runs", loaded=tiny_loaded, progress=False)
    settings = _settings(train_tokens=256 * 2)
    assert plan_adapter(run, settings).first_changed_layer == 1
    out = train_adapter(run, settings, loaded=tiny_loaded, name="late", progress=False)
    ids = next(training_contexts(tiny_loaded, plan_adapter(run, settings).config, settings, 0))
    targets = load_splice_targets(run, tiny_loaded)
    with torch.no_grad():
        clean = tiny_loaded.model(input_ids=ids, use_cache=False).logits
        with spliced_context(tiny_loaded, targets, input_ids=ids):
            spliced = tiny_loaded.model(input_ids=ids, use_cache=False).logits
    assert read_log(out)[0]["kl"] == pytest.approx(next_token_kl(clean, spliced).item(), rel=1e-5)


def test_evaluation_writes_a_report_naming_the_original_model(tiny_loaded, tiny_run):
    out = train_adapter(tiny_run, _settings(train_tokens=256 * 2), loaded=tiny_loaded, name="report",
                        progress=False)
    metrics = evaluate_adapter(tiny_run, out, loaded=tiny_loaded)
    report = (out / "report.md").read_text()
    assert "not the original model" in report and (out / "metrics.json").is_file()
    assert metrics["eval_contexts"] > 0 and "ce_adapted" in metrics


def _lora_command(run, name, *extra):
    return [sys.executable, "-m", "saekit", "lora", str(run), "--name", name, "--rank", "4", "--alpha", "8",
            "--train-tokens", str(256 * 40), "--batch-size", "256", "--lr", "1e-2", "--checkpoint-every", "3",
            "--eval-tokens", "28", *extra]


def test_a_killed_lora_run_resumes_exactly(tiny_run):
    subprocess.run(_lora_command(tiny_run, "whole"), env=ONE_THREAD, check=True, capture_output=True)
    process = subprocess.Popen(_lora_command(tiny_run, "killed"), env=ONE_THREAD, stderr=subprocess.DEVNULL,
                               stdout=subprocess.DEVNULL)
    log = tiny_run / "adapters" / "killed" / LOG_FILE
    deadline = time.time() + 120
    while time.time() < deadline and process.poll() is None:
        if log.exists() and len(log.read_text().splitlines()) >= 10:
            process.send_signal(signal.SIGKILL)
            break
        time.sleep(0.005)
    assert process.wait() == -signal.SIGKILL, "the run finished before it could be killed"
    step = read_checkpoint_step(tiny_run / "adapters" / "killed" / CHECKPOINT_FILE)
    assert step is not None and 0 < step < 38
    resumed = subprocess.run(_lora_command(tiny_run, "killed", "--resume"), env=ONE_THREAD, capture_output=True,
                             text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "delta CE against the original model" in resumed.stdout
    expected = load_tensors(tiny_run / "adapters" / "whole" / ADAPTER_WEIGHTS)
    actual = load_tensors(tiny_run / "adapters" / "killed" / ADAPTER_WEIGHTS)
    assert expected.keys() == actual.keys() and expected
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], rtol=1e-5, atol=1e-6)
    whole = read_log(tiny_run / "adapters" / "whole")
    assert [r["kl"] for r in read_log(tiny_run / "adapters" / "killed")] == pytest.approx([r["kl"] for r in whole])


@pytest.mark.parametrize(("flags", "message"), [
    (["--rank", "0"], "--rank must be >= 1"),
    (["--modules", "q_proj,qkv"], "the llama family has no such module"),
    (["--layers", "1-5"], "goes beyond the model"),
    (["--layers", "2-1"], "--layers must be a layer range"),
])
def test_bad_lora_input_is_one_line_before_the_model_loads(tiny_run, monkeypatch, capsys, flags, message):
    _no_model_loads(monkeypatch, tiny_run)
    code = main(["lora", str(tiny_run), "--name", "bad", *flags])
    err = capsys.readouterr().err.strip()
    assert code == 1 and message in err and len(err.splitlines()) == 1, err
    assert not (tiny_run / "adapters" / "bad").exists()


def test_a_run_without_a_dictionary_is_one_line(tiny_run, tmp_path, monkeypatch, capsys):
    _no_model_loads(monkeypatch, tiny_run)
    empty = tmp_path / "unfinished"
    empty.mkdir()
    write_run_config(empty, __import__("json").loads((tiny_run / CONFIG_FILE).read_text()))
    (empty / LOG_FILE).write_text("")
    code = main(["lora", str(empty)])
    err = capsys.readouterr().err.strip()
    assert code == 1 and "holds no dictionary" in err and len(err.splitlines()) == 1, err


def _no_model_loads(monkeypatch, run) -> None:
    from saekit.training.config import load_run_config

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded")
    monkeypatch.setattr(type(load_run_config(run).data), "load_model", refuse)
