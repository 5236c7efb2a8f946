"""The main job: a TopK SAE on a middle layer's residual stream of the default model, trained and evaluated."""

from __future__ import annotations

import shutil
from pathlib import Path

from saekit.evaluation.evaluate import evaluate_run
from saekit.io import read_json, write_json
from saekit.jobs.dashboard import build_quick_dashboard
from saekit.locks import LOCK_FILE, exclusive
from saekit.models.ceiling import forward_against_ceiling
from saekit.models.loading import LoadedModel
from saekit.models.precision import fast_bfloat16
from saekit.models.sites import parse_site
from saekit.render import plain_text
from saekit.rundir import CHECKPOINT_FILE, REPORT_FILE, THROUGHPUT_FILE
from saekit.training.config import TrainConfig
from saekit.training.run import train_run

QUICKSTART = TrainConfig.from_flat({
    "name": "quickstart",
    "model": "default",
    "site": "blocks.14.resid_post",  # the middle of SmolLM2-135M's 30 layers
    "architecture": "topk",
    "expansion_factor": 8,
    "k": 32,
    "train_tokens": 512_000,  # 250 steps: 2.5x the 200k of the fp32, one-thread-at-a-time quickstart, same wall time
    "batch_size": 2048,
    "eval_tokens": 8192,
})


def quickstart_config(name: str = "quickstart") -> TrainConfig:
    """The recipe on this machine: the model in bfloat16 where the CPU or GPU multiplies in it.

    The clean and the spliced losses are both computed in that dtype (the evaluation loads the model as
    the run's data section says); the README's precision section gives the measured effect.
    """
    device = QUICKSTART.run.device
    return QUICKSTART.updated(name=name, model_dtype="bfloat16" if fast_bfloat16(device) else "float32")

def record_forward_ceiling(run_dir: Path, config: TrainConfig, loaded: LoadedModel) -> None:
    """Add to the run's throughput.json the model forward's FLOP/s and its fraction of this machine's matmul
    rate at the model's shapes (measured now, a few seconds); nothing when this session ran no forward."""
    path = run_dir / THROUGHPUT_FILE
    record = read_json(path, "training throughput record") if path.is_file() else {}
    rate = record.get("model_forward_tokens_per_s")
    if not rate or "model_forward_ceiling" in record:  # no forward to measure, or measured when it ran
        return
    through = max(parse_site(site).layer for site in (*config.input_sites, *config.target_sites))
    record["model_forward_ceiling"] = forward_against_ceiling(
        loaded.model, config.data.context_length, through, config.data.model_dtype, rate)
    write_json(path, record)


QUICK_DASHBOARD_TOKENS = 8192
QUICK_DASHBOARD_LATENTS = 500


def run_quickstart(runs_dir: str | Path = "runs", name: str = "quickstart", fresh: bool = False) -> Path:
    """Train (resuming an interrupted quickstart if there is one) and evaluate; returns the run directory."""
    config = quickstart_config(name)
    run_dir = Path(runs_dir) / name
    with exclusive(run_dir):  # held from the start: --fresh must not delete a run another process is writing
        if fresh:
            _discard_contents(run_dir)
        loaded = config.data.load_model(config.run.device)
        resume = (run_dir / CHECKPOINT_FILE).exists()
        train_run(config, runs_dir, resume=resume, loaded=loaded)
        record_forward_ceiling(run_dir, config, loaded)
        evaluate_run(run_dir, loaded=loaded)
        build_quick_dashboard(run_dir, loaded, tokens=QUICK_DASHBOARD_TOKENS, max_latents=QUICK_DASHBOARD_LATENTS)
    return run_dir


def terminal_report(run_dir: str | Path) -> str:
    """The run's ``report.md`` as a terminal should show it: plain text, without the markdown escapes that
    keep data text (corpus snippets, explanations) from becoming markup in the file, which keeps them."""
    return plain_text((Path(run_dir) / REPORT_FILE).read_text(encoding="utf-8"))


def _discard_contents(run_dir: Path) -> None:
    """Everything in the run directory but the lock this process holds on it."""
    for entry in run_dir.iterdir():
        if entry.name == LOCK_FILE:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
