"""What determines a run's activations (and nothing else): the data config, and the cache key it gives.

:class:`DataConfig` is the ``data`` section of a run config: the model (and whether its weights are
randomized), the corpus and its train/eval split, the context length and the token filters. Together
with the sites read (:class:`ActivationSpec`) it decides every activation bit for bit, so its hash
names the activation cache directory: two runs share cached chunks exactly when they would compute
the same ones, and the randomized-weights control gets its own chunks without any special case.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from saekit.errors import SaekitError
from saekit.models.loading import LoadedModel, check_model_spec, load_model
from saekit.settings import NON_EMPTY, SEED, setting, to_dict

CACHE_FORMAT_VERSION = 1
MODEL_DTYPES = ("float32", "bfloat16", "float16")


def model_dtype_name(value: str) -> str | None:
    """A rule check: a dtype the model can run in."""
    return None if value in MODEL_DTYPES else f"one of {', '.join(MODEL_DTYPES)}"


@dataclass(frozen=True)
class DataConfig:
    """The model, corpus and token filters that decide the activations."""

    model: str = setting("default", "the model: 'default' (embedded SmolLM2-135M), a .gguf file, a local "
                         "Hugging Face directory or a hub id", **NON_EMPTY)
    model_dtype: str = setting("float32", "dtype of the model's weights and forward: float32, bfloat16 or float16 "
                               "(activations are kept as float32; see the README on precision)",
                               check=model_dtype_name, invalid=("float8", "fp32"))
    randomize_weights: bool = setting(False, "re-initialise the model's weights (the randomized-weights control)")
    randomization_seed: int = setting(0, "seed of the re-initialisation when randomize_weights is on", **SEED)
    corpus: str = setting("default", "the text: 'default' (Debian corpus), a .txt file, a directory of .txt "
                          "files, a .jsonl file, or hf:NAME[:CONFIG][:SPLIT]", **NON_EMPTY)
    text_field: str = setting("text", "the text field of a .jsonl or hf: corpus", **NON_EMPTY)
    eval_fraction: float = setting(0.05, "share of documents held out for evaluation (split by document hash)",
                                   above=0, below=1)
    context_length: int = setting(128, "tokens per context, BOS included", minimum=2)
    seed: int = setting(0, "seed of the train/eval split and the context order", flag="data_seed", **SEED)
    exclude_bos: bool = setting(True, "leave BOS positions out of training and of every metric")
    outlier_norm_factor: float | None = setting(
        10.0, "drop tokens whose norm exceeds this many times the chunk median (none: keep all)", above=1)
    contexts_per_chunk: int = setting(64, "contexts per cached activation chunk", minimum=1)

    def check_paths(self) -> None:
        """The model and corpus files named here exist (checked before anything loads)."""
        check_model_spec(self.model)
        if self.corpus != "default" and not self.corpus.startswith("hf:") \
                and not Path(self.corpus).expanduser().exists():
            raise SaekitError(f"corpus not found: {self.corpus}; give 'default', a .txt/.jsonl file, a directory "
                              "or hf:NAME")

    def load_model(self, device: str = "cpu") -> LoadedModel:
        """The model these activations come from, randomized when the config says so."""
        return load_model(self.model, device=device, dtype=getattr(torch, self.model_dtype),
                          randomize_weights=self.randomize_weights, seed=self.randomization_seed)


@dataclass(frozen=True)
class ActivationSpec:
    """A data config and the sites read from it: everything that determines the activations."""

    data: DataConfig
    sites: tuple[str, ...]

    def key(self) -> str:
        payload = json.dumps({**self.manifest(), "version": CACHE_FORMAT_VERSION}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]

    def manifest(self) -> dict:
        return {**to_dict(self.data), "sites": list(self.sites)}
