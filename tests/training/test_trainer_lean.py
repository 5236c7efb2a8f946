"""The lean training step: counters on the device, one host read per step, fused Adam, mixed precision."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

from saekit.dictionaries import DictionaryConfig, build_dictionary
from saekit.errors import SaekitError
from saekit.training.checkpoint import load_checkpoint, optimizer_tensors, restore_optimizer, save_checkpoint
from saekit.training.schedule import OptimConfig
from saekit.training.trainer import DictionaryTrainer, NonFiniteLossError


@pytest.fixture(autouse=True, scope="module")
def single_thread():
    """Tiny matmuls: a second thread only adds synchronisation on the shared 2-core machine."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _dictionary(architecture: str = "topk", d_in: int = 16, width: int = 128, dtype=torch.float32, **kwargs):
    torch.manual_seed(0)
    config = DictionaryConfig(architecture, d_in, width, k=kwargs.pop("k", 4), **kwargs)
    return build_dictionary(config).to(dtype)


def _planted(n: int = 80 * 256, d: int = 16, features: int = 64, seed: int = 0, dtype=torch.float32) -> torch.Tensor:
    """Sparse combinations of unit features, scaled to E||x||^2 = 1 (as runs scale their inputs)."""
    generator = torch.Generator().manual_seed(seed)
    directions = torch.nn.functional.normalize(torch.randn(features, d, generator=generator), dim=-1)
    codes = torch.rand(n, features, generator=generator) * (torch.rand(n, features, generator=generator) < 0.05)
    data = codes @ directions
    return (data / data.pow(2).sum(-1).mean().sqrt()).to(dtype)


def _batches(data: torch.Tensor, size: int = 256):
    return [data[i:i + size] for i in range(0, len(data) - size + 1, size)]


def _spy(dictionary) -> list:
    """Record every output of the dictionary's forward."""
    outputs, original = [], dictionary.forward

    def forward(*args, **kwargs):
        outputs.append(original(*args, **kwargs))
        return outputs[-1]
    dictionary.forward = forward
    return outputs


# ---- counters -------------------------------------------------------------------------------------


@pytest.mark.parametrize("architecture", ["relu", "topk", "batchtopk", "jumprelu"])
def test_counters_on_the_device_equal_the_old_cpu_counters(architecture):
    """The old trainer's bookkeeping, recomputed on the CPU from the dense latents of each step."""
    dictionary = _dictionary(architecture, l1_coefficient=1.0)
    config = OptimConfig(lr=3e-3, warmup_steps=1, dead_window_tokens=512)
    trainer = DictionaryTrainer(dictionary, config, total_steps=30)
    outputs = _spy(dictionary)
    width = dictionary.config.width
    since, counts = torch.zeros(width, dtype=torch.long), torch.zeros(width, dtype=torch.long)
    dead = []
    for batch in _batches(_planted())[:30]:
        record = trainer.train_step(batch)
        latents = outputs[-1].latents.detach()
        fired = (latents > 0).sum(0).cpu()
        counts += fired
        since += batch.shape[0]
        since[fired > 0] = 0
        assert torch.equal(trainer.tokens_since_fired.cpu(), since)
        for name in ("fire_counts", "resample_window", "snapshot_window"):
            assert torch.equal(getattr(trainer, name).cpu(), counts), name
        assert record["dead_fraction"] == (since >= config.dead_window_tokens).float().mean().item()
        assert record["l0"] == (latents > 0).sum(-1).float().mean().item()
        dead.append(record["dead_fraction"])
    assert max(dead) > 0 or architecture == "jumprelu"  # the case: latents die (JumpReLU's do not, here)
    assert all(getattr(trainer, name).device == dictionary.W_dec.device for name in trainer.COUNTER_TENSORS)


def test_counters_checkpoint_on_the_cpu_and_restore_onto_the_device():
    dictionary = _dictionary()
    trainer = DictionaryTrainer(dictionary, OptimConfig(lr=3e-3, dead_window_tokens=512), total_steps=10)
    for batch in _batches(_planted())[:5]:
        trainer.train_step(batch)
    saved = trainer.state_tensors()
    assert all(tensor.device.type == "cpu" for tensor in saved.values())
    other = DictionaryTrainer(_dictionary(), OptimConfig(lr=3e-3, dead_window_tokens=512), total_steps=10)
    other.load_state(saved, trainer.state_scalars())
    for name in trainer.COUNTER_TENSORS:
        restored = getattr(other, name)
        assert torch.equal(restored.cpu(), saved[name]) and restored.device == other.dictionary.W_dec.device
        assert restored.data_ptr() != saved[name].data_ptr()  # a copy: training one does not move the other
    assert other.step == trainer.step == 5


# ---- one host read per step ---------------------------------------------------------------------


@pytest.mark.parametrize("architecture", ["topk", "batchtopk", "relu", "gated"])
def test_a_step_reads_the_device_once(architecture, monkeypatch):
    dictionary = _dictionary(architecture)
    trainer = DictionaryTrainer(dictionary, OptimConfig(lr=3e-3), total_steps=10)
    batches = _batches(_planted())
    trainer.train_step(batches[0])  # a first step may calibrate (JumpReLU-style) and initialise Adam
    reads = {"tolist": 0, "item": 0, "__bool__": 0, "__float__": 0, "__int__": 0, "cpu": 0}
    for name in reads:
        original = getattr(torch.Tensor, name)

        def counting(self, *args, _name=name, _original=original, **kwargs):
            reads[_name] += 1
            return _original(self, *args, **kwargs)
        monkeypatch.setattr(torch.Tensor, name, counting)
    record = trainer.train_step(batches[1])
    monkeypatch.undo()
    assert reads == {"tolist": 1, "item": 0, "__bool__": 0, "__float__": 0, "__int__": 0, "cpu": 0}
    assert all(isinstance(value, (int, float)) for value in record.values())


def test_the_record_keeps_its_keys_and_order():
    trainer = DictionaryTrainer(_dictionary("topk", extra={"aux_k": 4}), OptimConfig(lr=3e-3), total_steps=10)
    record = trainer.train_step(_batches(_planted())[0])
    assert list(record) == ["reconstruction", "aux_k", "loss", "step", "tokens", "lr", "sparsity_scale", "fvu", "l0",
                            "dead_fraction"]
    assert record["loss"] == pytest.approx(record["reconstruction"] + record["aux_k"])


def test_deferred_reads_give_the_same_records_in_one_copy():
    batches = _batches(_planted())
    immediate = DictionaryTrainer(_dictionary(), OptimConfig(lr=3e-3), total_steps=10)
    expected = [immediate.train_step(batch) for batch in batches[:6]]
    deferred = DictionaryTrainer(_dictionary(), OptimConfig(lr=3e-3), total_steps=10)
    assert all(deferred.train_step(batch, read=False) is None for batch in batches[:6])
    assert deferred.read_pending() == expected and deferred.read_pending() == []
    poisoned = batches[6].clone()
    poisoned[0, 0] = math.nan
    deferred.train_step(poisoned, read=False)  # no wait for the device, so no check yet
    with pytest.raises(NonFiniteLossError, match="at step 6"):
        deferred.read_pending()


def test_a_non_finite_loss_raises_before_anything_changes():
    dictionary = _dictionary()
    trainer = DictionaryTrainer(dictionary, OptimConfig(lr=3e-3), total_steps=10)
    batches = _batches(_planted())
    for batch in batches[:3]:
        trainer.train_step(batch)
    weights = {name: p.detach().clone() for name, p in dictionary.named_parameters()}
    moments = {p: {k: v.clone() for k, v in s.items()} for p, s in trainer.optimizer.state.items()}
    counters = {name: t.clone() for name, t in trainer.state_tensors().items()}
    poisoned = batches[3].clone()
    poisoned[0, 0] = math.nan
    with pytest.raises(NonFiniteLossError, match="at step 3"):
        trainer.train_step(poisoned)
    assert trainer.step == 3 and trainer.tokens_seen == 3 * 256
    for name, parameter in dictionary.named_parameters():
        assert torch.equal(parameter, weights[name]), name
    for parameter, state in trainer.optimizer.state.items():
        assert all(torch.equal(state[k], v) for k, v in moments[parameter].items())
    for name, tensor in trainer.state_tensors().items():
        assert torch.equal(tensor, counters[name]), name


# ---- fused Adam -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("architecture", "dtype", "tolerance"), [("relu", torch.float32, 1e-5),
                                                                  ("topk", torch.float64, 1e-9)])
def test_fused_adam_equals_foreach_and_plain_adam_over_ten_steps(architecture, dtype, tolerance):
    """topk in float64: in float32 an ulp of difference can flip a near-tie of the top-k."""
    batches = _batches(_planted(dtype=dtype))[:10]
    results = {}
    for variant in ("fused", "foreach", "plain"):
        dictionary = _dictionary(architecture, dtype=dtype)
        trainer = DictionaryTrainer(dictionary, OptimConfig(lr=3e-3, warmup_steps=2), total_steps=10)
        assert trainer.optimizer.defaults["fused"] is True  # the CPU has fused Adam
        if variant != "fused":
            trainer.optimizer = torch.optim.Adam(dictionary.parameters(), lr=trainer.base_lr,
                                                 betas=trainer.config.betas, foreach=variant == "foreach")
        log = [trainer.train_step(batch) for batch in batches]
        results[variant] = (log, dict(dictionary.named_parameters()))
    plain_log, plain_weights = results["plain"]
    for variant in ("fused", "foreach"):
        log, weights = results[variant]
        for name, value in plain_weights.items():
            torch.testing.assert_close(weights[name], value, rtol=tolerance, atol=tolerance, msg=f"{variant} {name}")
        assert log[-1]["loss"] == pytest.approx(plain_log[-1]["loss"], rel=tolerance * 10)


def _checkpoint(trainer: DictionaryTrainer, path) -> None:
    """What run.py's RunState.save writes, through the same helpers."""
    names = [name for name, _ in trainer.dictionary.named_parameters()]
    tensors, meta = optimizer_tensors(trainer.optimizer, names)
    tensors.update({f"dictionary.{k}": v for k, v in trainer.dictionary.state_dict().items()})
    tensors.update({f"trainer.{k}": v for k, v in trainer.state_tensors().items()})
    save_checkpoint(path, tensors, {**trainer.state_scalars(), "optimizer": meta})


def _restore(trainer: DictionaryTrainer, path) -> None:
    """What run.py's RunState.restore does."""
    tensors, meta = load_checkpoint(path)
    names = [name for name, _ in trainer.dictionary.named_parameters()]
    trainer.dictionary.load_state_dict({k[11:]: v for k, v in tensors.items() if k.startswith("dictionary.")})
    restore_optimizer(trainer.optimizer, names, tensors, meta["optimizer"])
    trainer.load_state({k[8:]: v for k, v in tensors.items() if k.startswith("trainer.")}, meta)


def test_a_checkpoint_restores_into_fused_adam_exactly(tmp_path):
    """W_enc starts as a transposed copy (not contiguous) while checkpoints store moments contiguous:
    fused Adam walks them as flat memory, so the restore must give the moments the parameter's layout."""
    batches = _batches(_planted())[:12]
    config = OptimConfig(lr=3e-3, warmup_steps=2)
    whole = DictionaryTrainer(_dictionary(width=512, k=8), config, total_steps=12)
    assert not whole.dictionary.W_enc.is_contiguous()
    for batch in batches:
        whole.train_step(batch)
    first = DictionaryTrainer(_dictionary(width=512, k=8), config, total_steps=12)
    for batch in batches[:6]:
        first.train_step(batch)
    _checkpoint(first, tmp_path / "checkpoint.safetensors")
    resumed = DictionaryTrainer(_dictionary(width=512, k=8), config, total_steps=12)
    _restore(resumed, tmp_path / "checkpoint.safetensors")
    for batch in batches[6:]:
        resumed.train_step(batch)
    expected = dict(whole.dictionary.named_parameters())
    for name, actual in resumed.dictionary.named_parameters():
        assert torch.equal(actual, expected[name]), name


def test_a_plain_adam_checkpoint_restores_into_a_fused_optimizer(tmp_path):
    batches = _batches(_planted())[:6]
    config = OptimConfig(lr=3e-3, warmup_steps=2)
    plain = DictionaryTrainer(_dictionary(), config, total_steps=6)
    plain.optimizer = torch.optim.Adam(plain.dictionary.parameters(), lr=plain.base_lr, betas=config.betas,
                                       foreach=False)
    for batch in batches[:3]:
        plain.train_step(batch)
    _checkpoint(plain, tmp_path / "checkpoint.safetensors")
    resumed = DictionaryTrainer(_dictionary(), config, total_steps=6)
    _restore(resumed, tmp_path / "checkpoint.safetensors")
    assert resumed.optimizer.param_groups[0]["fused"] is True  # the checkpoint's variant does not win
    for batch in batches[3:]:
        plain.train_step(batch)
        resumed.train_step(batch)
    expected = dict(plain.dictionary.named_parameters())
    for name, actual in resumed.dictionary.named_parameters():
        torch.testing.assert_close(actual, expected[name], rtol=1e-5, atol=1e-6, msg=name)


# ---- mixed precision ------------------------------------------------------------------------------

# Held-out FVU after 60 steps of 256 tokens on the planted toy (d 16, 64 features, width 128): bf16
# autocast against fp32. Measured (torch 2.13, CPU): fp32 0.184 / 0.186 / 0.194 for topk / batchtopk /
# relu, bf16 within 0.0003 of each; the bound leaves room for other builds' bf16 kernels.
BF16_FVU_TOLERANCE = 0.02


@pytest.mark.parametrize("architecture", ["topk", "batchtopk", "relu"])
def test_bf16_autocast_keeps_fp32_master_weights_and_fp32_fvu(architecture):
    data = _planted()
    batches, held = _batches(data[:-1024])[:60], data[-1024:]
    fvus = {}
    for dtype in (None, torch.bfloat16):
        dictionary = _dictionary(architecture, l1_coefficient=0.3)
        trainer = DictionaryTrainer(dictionary, OptimConfig(lr=3e-3, warmup_steps=5), total_steps=60,
                                    autocast_dtype=dtype)
        log = [trainer.train_step(batch) for batch in batches]
        assert all(math.isfinite(record["loss"]) for record in log)
        assert all(p.dtype == torch.float32 for p in dictionary.parameters())
        assert all(v.dtype == torch.float32 for s in trainer.optimizer.state.values() for v in s.values()
                   if v.dim() > 0)
        with torch.no_grad():
            reconstruction = dictionary.eval()(held).reconstruction
        fvus[dtype] = ((reconstruction - held).pow(2).sum() / (held - held.mean(0)).pow(2).sum()).item()
    assert fvus[None] < 0.5, fvus  # it learned something
    assert abs(fvus[torch.bfloat16] - fvus[None]) <= BF16_FVU_TOLERANCE, fvus


def test_autocast_accepts_only_bfloat16():
    with pytest.raises(SaekitError, match="float16"):
        DictionaryTrainer(_dictionary(), OptimConfig(), total_steps=1, autocast_dtype=torch.float16)


# ---- torch.compile --------------------------------------------------------------------------------


def test_a_compiled_forward_trains_like_the_eager_one():
    """5-25 s on the 2-core CPU (compiling; less with inductor's disk cache); skipped where compile is unavailable."""
    batches = _batches(_planted())[:4]
    logs = {}
    for compiled in (False, True):
        trainer = DictionaryTrainer(_dictionary(), OptimConfig(lr=3e-3, warmup_steps=1), total_steps=4,
                                    compile=compiled)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            logs[compiled] = [trainer.train_step(batch) for batch in batches]
        if compiled and trainer._compiled is None:
            pytest.skip(f"torch.compile unavailable here: {[str(w.message) for w in caught]}")
    for eager, compiled in zip(logs[False], logs[True]):
        assert compiled["loss"] == pytest.approx(eager["loss"], rel=1e-5)


def test_a_forward_that_fails_to_compile_falls_back_to_eager_once():
    trainer = DictionaryTrainer(_dictionary(), OptimConfig(lr=3e-3), total_steps=4)

    def broken(*args, **kwargs):
        raise RuntimeError("no C++ compiler")
    trainer._compiled = broken
    batches = _batches(_planted())
    with pytest.warns(UserWarning, match="no C\\+\\+ compiler"):
        record = trainer.train_step(batches[0])
    assert trainer._compiled is None and record["step"] == 1
    trainer.train_step(batches[1])
