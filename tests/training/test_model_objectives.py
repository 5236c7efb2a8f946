"""Training against the model's own loss on the tiny model: kl, e2e_ds, the fine-tune tail; exact resume; refusals."""

from __future__ import annotations

import json

import pytest
import torch
from run_helpers import assert_resume_after_kill_matches
from training.test_run import _config

from saekit.cli import main
from saekit.dictionaries import DictionaryConfig, build_dictionary
from saekit.errors import SaekitError
from saekit.rundir import LOG_FILE
from saekit.training.distributed import ProcessGroup
from saekit.training.model_loop import clean_pass, model_terms, spliced_pass
from saekit.training.objectives import ObjectiveWeights
from saekit.training.run import check_group, train_run

TRANSCODER = dict(site="blocks.0.mlp_in", target_site="blocks.0.mlp_out")


def _log(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / LOG_FILE).read_text().splitlines()]


def _ids(tiny_loaded, contexts: int = 3, length: int = 12) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(10, 1000, (contexts, length), generator=generator)
    ids[:, 0] = tiny_loaded.bos_token_id
    return ids


def test_splicing_the_clean_activations_back_gives_the_clean_logits(tiny_loaded):
    ids = _ids(tiny_loaded)
    batch = clean_pass(tiny_loaded, ids, ["blocks.0.resid_post"], ["blocks.1.resid_pre"])
    clean = batch.activations["blocks.0.resid_post"].view(3, 11, -1)
    logits, downstream = spliced_pass(tiny_loaded, ids, {"blocks.0.resid_post": clean}, ["blocks.1.resid_pre"])
    torch.testing.assert_close(logits, batch.logits, rtol=0, atol=1e-5)
    torch.testing.assert_close(downstream["blocks.1.resid_pre"], batch.downstream["blocks.1.resid_pre"])


def test_a_spliced_zero_is_a_hand_made_zero_ablation_of_every_position_but_bos(tiny_loaded):
    ids = _ids(tiny_loaded)
    batch = clean_pass(tiny_loaded, ids, ["blocks.0.resid_post"], [])
    zeros = torch.zeros_like(batch.activations["blocks.0.resid_post"]).view(3, 11, -1)
    logits, _ = spliced_pass(tiny_loaded, ids, {"blocks.0.resid_post": zeros}, [])

    def ablate(module, args, output):  # the first decoder layer's hidden states, BOS kept
        hidden = output[0] if isinstance(output, tuple) else output
        hidden = torch.cat([hidden[:, :1], torch.zeros_like(hidden[:, 1:])], dim=1)
        return (hidden, *output[1:]) if isinstance(output, tuple) else hidden
    handle = tiny_loaded.model.model.layers[0].register_forward_hook(ablate)
    try:
        with torch.no_grad():
            expected = tiny_loaded.model(input_ids=ids, use_cache=False).logits
    finally:
        handle.remove()
    torch.testing.assert_close(logits.detach(), expected)
    assert not torch.allclose(expected, batch.logits)


def test_a_kl_run_minimises_the_kl_and_leaves_the_model_untouched(tiny_loaded, tiny_model_dir, tmp_path):
    config = _config(tiny_model_dir, tmp_path, objective="kl", lr=1e-2, k=2, train_tokens=256 * 24)
    log = _log(train_run(config, tmp_path / "runs", loaded=tiny_loaded, progress=False))
    assert [r["step"] for r in log] == list(range(1, 25))
    assert all("kl" in r and "downstream" not in r for r in log)
    # What is minimised is the KL and the sparsity term (TopK has none): the reconstruction error is only logged.
    assert log[-1]["loss"] == pytest.approx(log[-1]["kl"], rel=1e-5)
    assert sum(r["kl"] for r in log[-4:]) < 0.9 * sum(r["kl"] for r in log[:4])
    assert all(p.grad is None for p in tiny_loaded.model.parameters())


def test_the_kl_gradient_reaching_the_dictionary_is_the_finite_difference_through_the_model(tiny_loaded):
    ids = _ids(tiny_loaded, contexts=4, length=16)
    batch = clean_pass(tiny_loaded, ids, ["blocks.1.resid_post"], [])
    x = batch.activations["blocks.1.resid_post"]
    torch.manual_seed(0)
    dictionary = build_dictionary(DictionaryConfig("topk", 32, 128, k=4))
    tiny_loaded.model.requires_grad_(False)

    def kl() -> torch.Tensor:
        reconstruction = dictionary(x, x).reconstruction.view(4, 15, 32)
        return model_terms(tiny_loaded, batch, {"blocks.1.resid_post": reconstruction}, ObjectiveWeights(0, 1, 0),
                           [])["kl"]
    kl().backward()
    latent = int(dictionary(x, x).latents.abs().sum(0).argmax())  # an active latent: its decoder row matters
    for j in range(3):
        with torch.no_grad():  # the decoder row enters linearly and moves no TopK choice: a smooth direction
            dictionary.W_dec[latent, j] += 0.03
            up = kl().item()
            dictionary.W_dec[latent, j] -= 0.06
            down = kl().item()
            dictionary.W_dec[latent, j] += 0.03
        assert float(dictionary.W_dec.grad[latent, j]) == pytest.approx((up - down) / 0.06, rel=0.1)


def test_a_kl_transcoder_run_trains(tiny_loaded, tiny_model_dir, tmp_path):
    config = _config(tiny_model_dir, tmp_path, objective="kl", lr=3e-3, train_tokens=256 * 16, **TRANSCODER)
    log = _log(train_run(config, tmp_path / "runs", loaded=tiny_loaded, progress=False))
    assert sum(r["kl"] for r in log[-3:]) < sum(r["kl"] for r in log[:3])


def test_e2e_ds_adds_the_downstream_error_and_the_tail_switches_to_kl_and_mse(tiny_loaded, tiny_model_dir, tmp_path):
    config = _config(tiny_model_dir, tmp_path, name="e2e", objective="e2e_ds", site="blocks.0.resid_post",
                     downstream_sites=("blocks.1.resid_post",), train_tokens=256 * 8)
    log = _log(train_run(config, tmp_path / "runs", loaded=tiny_loaded, progress=False))
    assert all(r["downstream"] > 0 for r in log)
    tail = _config(tiny_model_dir, tmp_path, name="tail", finetune_fraction=0.25, train_tokens=256 * 16)
    log = _log(train_run(tail, tmp_path / "runs", loaded=tiny_loaded, progress=False))
    assert [r["step"] for r in log if "kl" in r] == [13, 14, 15, 16]  # the last quarter of the steps
    assert log[-1]["loss"] == pytest.approx(log[-1]["reconstruction"] + log[-1]["kl"], rel=1e-5)


def test_a_killed_kl_run_resumes_exactly(tiny_model_dir, tmp_path):
    reference = _config(tiny_model_dir, tmp_path, name="whole", objective="kl", train_tokens=256 * 24,
                        checkpoint_every=3, read_every=1)
    killed = _config(tiny_model_dir, tmp_path, name="killed", objective="kl", train_tokens=256 * 24,
                     checkpoint_every=3, read_every=1)
    assert_resume_after_kill_matches(reference, killed, tmp_path / "runs")


@pytest.mark.parametrize(("flags", "message"), [
    (["--objective", "ce"], "objective must be one of mse, kl, e2e_ds"),
    (["--finetune-fraction", "0"], "finetune_fraction must be > 0"),
    (["--finetune-fraction", "1.5"], "finetune_fraction must be"),
    (["--objective", "e2e_ds"], "objective e2e_ds needs downstream_sites"),
    (["--objective", "e2e_ds", "--downstream-sites", "blocks.0.resid_pre"], "is not after the training site"),
    (["--downstream-sites", "blocks.1.resid_post"], "downstream_sites are used only by objective e2e_ds"),
])
def test_bad_objective_settings_are_one_line_before_any_model_loads(tmp_path, capsys, flags, message):
    code = main(["train", "--model", str(tmp_path / "no-model-here"), "--site", "blocks.1.resid_post",
                 "--runs-dir", str(tmp_path / "runs"), *flags])
    err = capsys.readouterr().err.strip()
    assert code == 1 and message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "runs").exists()


def test_torchrun_groups_that_cannot_split_the_contexts_are_refused(tiny_model_dir, tmp_path):
    config = _config(tiny_model_dir, tmp_path, objective="kl")
    with pytest.raises(SaekitError, match="--distribute sites is not supported for it: use --distribute data"):
        check_group([config], ProcessGroup(rank=0, world_size=2, mode="sites"))
    odd = config.updated(batch_size=220, context_length=16)  # ceil(220 / 15) = 15 contexts a step
    with pytest.raises(SaekitError, match=r"steps on 15 whole contexts \(batch_size=220, context_length=16\), "
                                          "which do not split over 2 processes"):
        check_group([odd], ProcessGroup(rank=0, world_size=2))
    check_group([config.updated(batch_size=225, context_length=16)], ProcessGroup(rank=0, world_size=3))
