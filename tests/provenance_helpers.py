"""What the provenance tests of analysis and dashboards share: a small corpus, an untrained run, file snapshots.

Imported by name: ``pythonpath = ["tests"]`` in pyproject.toml puts ``tests/`` on ``sys.path``.
"""

from __future__ import annotations

from pathlib import Path

import torch

from saekit.dictionaries.base import DictionaryConfig
from saekit.dictionaries.registry import build_dictionary, save_dictionary
from saekit.io import TEMP_MARK, write_json
from saekit.training.config import TrainConfig

WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho sigma tau".split()


def write_word_corpus(directory: Path, stride: int = 1) -> Path:
    """Twelve 120-word documents cycling through ``WORDS``, document i starting at word ``i * stride``."""
    for i in range(12):
        (directory / f"doc{i:02d}.txt").write_text(" ".join(WORDS[(i * stride + j) % len(WORDS)] for j in range(120)))
    return directory


def make_run(root: Path, name: str, model_dir: Path, corpus: Path, seed: int, width: int = 64) -> Path:
    """A run directory (config + random TopK dictionary) on the tiny model, without an analysis."""
    config = TrainConfig.from_flat(dict(name=name, model=str(model_dir), site="blocks.1.resid_post",
                                        corpus=str(corpus), eval_fraction=0.3, context_length=16, width=width, k=4,
                                        cache_dir=None))
    run = root / name
    write_json(run / "config.json", config.to_dict())
    torch.manual_seed(seed)
    save_dictionary(run / "dictionary", build_dictionary(DictionaryConfig("topk", 32, width, k=4)),
                    {"model": config.data.model, "site": config.site, "target_site": None})
    return run


def snapshot(directory: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under ``directory`` with its bytes and modification time."""
    return {str(p.relative_to(directory)): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(directory.rglob("*")) if p.is_file()}


def temporaries(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if TEMP_MARK in p.name)
