"""Shared fixtures: a tiny randomly-initialised Llama saved as a local model directory, and the real default model."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from saekit.models.loading import DEFAULT_GGUF_FILE, LoadedModel, default_gguf_path, load_model

torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def default_tokenizer():
    """The default model's real tokenizer (read from the GGUF file, ~15 s)."""
    return AutoTokenizer.from_pretrained(str(default_gguf_path().parent), gguf_file=DEFAULT_GGUF_FILE)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, default_tokenizer) -> Path:
    """A 2-layer Llama with the default tokenizer, saved like any Hugging Face model directory."""
    directory = tmp_path_factory.mktemp("tiny-llama")
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(default_tokenizer), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         bos_token_id=default_tokenizer.bos_token_id, eos_token_id=default_tokenizer.eos_token_id)
    LlamaForCausalLM(config).save_pretrained(directory)
    default_tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def tiny_loaded(tiny_model_dir) -> LoadedModel:
    return load_model(str(tiny_model_dir))


@pytest.fixture(scope="session")
def default_loaded() -> LoadedModel:
    """The embedded default model, SmolLM2-135M (~35 s to load, once per session)."""
    return load_model("default")
