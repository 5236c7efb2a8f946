"""torchrun with 2 gloo processes on the CPU: data- and site-parallel runs equal one-process runs, and resume.

Every run here is a real ``python -m torch.distributed.run`` (torchrun) of ``saekit train`` on the
tiny model, each process with one thread, so the one-process reference sums in the same order.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from run_helpers import ONE_THREAD, train_flags

from saekit.io import load_tensors
from saekit.rundir import CHECKPOINT_FILE, LOG_FILE, THROUGHPUT_FILE
from saekit.training.config import TrainConfig
from saekit.training.run import read_checkpoint_step

KILL_AT = Path(__file__).parents[1] / "reliability" / "kill_at.py"
SITES = "blocks.0.resid_post,blocks.1.resid_post"


def _config(tiny_model_dir, tmp_path, name: str) -> TrainConfig:
    return TrainConfig.from_flat(dict(
        name=name, model=str(tiny_model_dir), site="blocks.1.resid_post", context_length=16, contexts_per_chunk=8,
        model_batch_contexts=8, expansion_factor=4, k=4, train_tokens=256 * 24, batch_size=256,
        shuffle_buffer_tokens=1024, checkpoint_every=4, warmup_steps=2, cache_dir=str(tmp_path / f"cache-{name}"),
        eval_tokens=256))


def _train(config: TrainConfig, runs_dir: Path, *extra: str, processes: int = 1,
           kill_at: tuple[str, int] | None = None) -> subprocess.CompletedProcess:
    saekit = [*train_flags(config, runs_dir), *extra]
    if kill_at is not None:
        program = [str(KILL_AT), kill_at[0], str(kill_at[1]), "--", *saekit]
    else:
        program = ["-m", "saekit", *saekit]
    if processes == 1:
        command = [sys.executable, *program]
    else:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
                   *program]
    return subprocess.run(command, env=ONE_THREAD, capture_output=True, text=True, timeout=600)


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_tensors(run_dir / "dictionary" / "weights.safetensors")


def _assert_same_weights(actual: Path, expected: Path) -> None:
    expected_weights = _weights(expected)
    for name, value in _weights(actual).items():
        torch.testing.assert_close(value, expected_weights[name], rtol=1e-4, atol=1e-5, msg=name)


def _log(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / LOG_FILE).read_text().splitlines()]


@pytest.fixture(scope="module")
def one_process(tiny_model_dir, tmp_path_factory):
    """The one-process reference: one run, and one run per site from one forward."""
    tmp_path = tmp_path_factory.mktemp("one-process")
    config = _config(tiny_model_dir, tmp_path, "single")
    for extra in ((), ("--sites", SITES)):
        result = _train(config, tmp_path / "runs", *extra)
        assert result.returncode == 0, result.stderr[-3000:]
    return tmp_path / "runs"


@pytest.fixture(scope="module")
def data_parallel(tiny_model_dir, tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("data-parallel")
    config = _config(tiny_model_dir, tmp_path, "single")
    result = _train(config, tmp_path / "runs", processes=2)
    assert result.returncode == 0, result.stderr[-3000:]
    return config, tmp_path


def test_data_parallel_equals_one_process(one_process, data_parallel):
    config, tmp_path = data_parallel
    run_dir = tmp_path / "runs" / "single"
    _assert_same_weights(run_dir, one_process / "single")
    log, reference = _log(run_dir), _log(one_process / "single")
    assert [r["step"] for r in log] == list(range(1, config.total_steps + 1))
    # The loss is a mean over the global batch: the two ranks' mean equals it.
    for ours, theirs in zip(log, reference):
        assert ours["reconstruction"] == pytest.approx(theirs["reconstruction"], rel=1e-4)
    throughput = json.loads((run_dir / THROUGHPUT_FILE).read_text())
    assert throughput["processes"] == 2 and throughput["distribute"] == "data"
    # Each rank ran the model on half of the contexts (64 rows of 16 tokens per chunk pair, 24 steps).
    assert 0 < throughput["model_forward_tokens"] < config.total_steps * config.optim.batch_size


def test_data_parallel_resume_after_kill_equals_uninterrupted(tiny_model_dir, tmp_path, data_parallel):
    config, uninterrupted = data_parallel
    config = config.updated(cache_dir=str(tmp_path / "cache"))
    # Rank 0 (the only writer) is killed as it is about to write its third checkpoint; torchrun ends rank 1.
    killed = _train(config, tmp_path / "runs", processes=2, kill_at=("saekit.training.run:save_checkpoint", 3))
    assert killed.returncode != 0
    run_dir = tmp_path / "runs" / "single"
    assert read_checkpoint_step(run_dir / CHECKPOINT_FILE) == 2 * config.run.checkpoint_every
    resumed = _train(config, tmp_path / "runs", "--resume", processes=2)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    _assert_same_weights(run_dir, uninterrupted / "runs" / "single")
    assert [r["step"] for r in _log(run_dir)] == list(range(1, config.total_steps + 1))


def test_site_parallel_equals_one_process_and_resumes(tiny_model_dir, tmp_path, one_process):
    config = _config(tiny_model_dir, tmp_path, "single")
    # Each rank owns one site's run; both are killed at their second checkpoint, then resumed.
    killed = _train(config, tmp_path / "runs", "--sites", SITES, "--distribute", "sites", processes=2,
                    kill_at=("saekit.training.run:save_checkpoint", 2))
    assert killed.returncode != 0
    resumed = _train(config, tmp_path / "runs", "--sites", SITES, "--distribute", "sites", "--resume",
                     processes=2)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    for site in SITES.split(","):
        run_dir = tmp_path / "runs" / "single" / site
        _assert_same_weights(run_dir, one_process / "single" / site)
        assert [r["step"] for r in _log(run_dir)] == list(range(1, config.total_steps + 1))


def test_group_refusals_are_one_line(tiny_model_dir, tmp_path):
    config = _config(tiny_model_dir, tmp_path, "uneven").updated(batch_size=255, train_tokens=255 * 4)
    result = _train(config, tmp_path / "runs", processes=2)
    assert result.returncode != 0
    assert "batch_size=255 does not split over 2 processes" in result.stderr
    lonely = _train(_config(tiny_model_dir, tmp_path, "lonely"), tmp_path / "runs", "--distribute", "sites",
                    processes=2)
    assert lonely.returncode != 0 and "there are 1 runs for 2 processes" in lonely.stderr


def _shard_worker(rank: int, store_path: str, out_dir: str) -> None:
    """One rank of an in-test gloo group: a data-parallel trainer step on a fixed global batch."""
    import torch.distributed as dist

    from saekit.dictionaries import DictionaryConfig, build_dictionary
    from saekit.io import save_tensors
    from saekit.training.distributed import ProcessGroup
    from saekit.training.schedule import OptimConfig
    from saekit.training.trainer import DictionaryTrainer

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store_path}", rank=rank, world_size=2)
    try:
        torch.manual_seed(0)
        dictionary = build_dictionary(DictionaryConfig(architecture="topk", d_in=16, width=64, k=4))
        seen: list[int] = []
        dictionary.register_forward_pre_hook(lambda _, args: seen.append(args[0].shape[0]))
        trainer = DictionaryTrainer(dictionary, OptimConfig(autocast="none", warmup_steps=1), 10,
                                    group=ProcessGroup(rank, 2))
        x = torch.randn(64, 16, generator=torch.Generator().manual_seed(1))
        record = trainer.train_step(x)
        grads = {f"grad.{n}": p.grad for n, p in dictionary.named_parameters() if p.grad is not None}
        save_tensors(Path(out_dir) / f"rank{rank}.safetensors",
                     {**grads, **{f"weight.{n}": p for n, p in dictionary.named_parameters()},
                      "rows": torch.tensor(seen), "fire_counts": trainer.fire_counts,
                      "loss": torch.tensor(record["loss"])})
    finally:
        dist.destroy_process_group()


def test_trainer_steps_on_its_shard_and_averages_gradients(tmp_path):
    import torch.multiprocessing as mp

    from saekit.dictionaries import DictionaryConfig, build_dictionary
    from saekit.training.schedule import OptimConfig
    from saekit.training.trainer import DictionaryTrainer

    mp.spawn(_shard_worker, args=(str(tmp_path / "store"), str(tmp_path)), nprocs=2, join=True)
    ranks = [load_tensors(tmp_path / f"rank{rank}.safetensors") for rank in range(2)]
    torch.manual_seed(0)
    dictionary = build_dictionary(DictionaryConfig(architecture="topk", d_in=16, width=64, k=4))
    trainer = DictionaryTrainer(dictionary, OptimConfig(autocast="none", warmup_steps=1), 10)
    x = torch.randn(64, 16, generator=torch.Generator().manual_seed(1))
    record = trainer.train_step(x)
    for result in ranks:
        assert result["rows"].tolist() == [32]  # each rank's forward saw half of the 64 rows
        torch.testing.assert_close(result["fire_counts"], trainer.fire_counts)  # summed over ranks
        assert float(result["loss"]) == pytest.approx(record["loss"], rel=1e-5)
        for name, parameter in dictionary.named_parameters():
            torch.testing.assert_close(result[f"weight.{name}"], parameter.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ranks[0]["grad.W_enc"], ranks[1]["grad.W_enc"])


def test_a_kl_run_data_parallel_equals_one_process(tiny_model_dir, tmp_path):
    """Each process runs the model on half of every step's 18 contexts; the dictionary ends where one process's
    does, and the logged KL (the mean over the whole step) is the one process's."""
    config = _config(tiny_model_dir, tmp_path, "kl").updated(objective="kl", train_tokens=256 * 8, lr=1e-2)
    for processes in (1, 2):
        result = _train(config, tmp_path / f"runs-{processes}", processes=processes)
        assert result.returncode == 0, result.stderr[-3000:]
    one, two = tmp_path / "runs-1" / "kl", tmp_path / "runs-2" / "kl"
    _assert_same_weights(two, one)
    for ours, theirs in zip(_log(two), _log(one), strict=True):
        assert ours["kl"] == pytest.approx(theirs["kl"], rel=1e-4)
        assert ours["tokens"] == theirs["tokens"]

