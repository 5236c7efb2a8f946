"""Tiny randomly-initialised causal LMs of every architecture family in saekit's table (no downloads).

Each model has 2 layers and width 32, its tokenizer-sized vocabulary, and non-trivial norm weights and
biases (a fresh model's norms are all ones and zeros, which would hide a mistaken scale or bias).
"""

from __future__ import annotations

import torch
from transformers import (
    AutoModelForCausalLM,
    Gemma2Config,
    GemmaConfig,
    GPT2Config,
    GPTNeoXConfig,
    LlamaConfig,
    MistralConfig,
    Olmo2Config,
    OlmoConfig,
    OPTConfig,
    Phi3Config,
    PretrainedConfig,
    Qwen2Config,
    Qwen3Config,
)

from saekit.models.architecture import ArchitectureAdapter
from saekit.models.loading import LoadedModel

D_MODEL = 32
_LLAMA_LIKE = dict(hidden_size=D_MODEL, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                   num_key_value_heads=2)


def _configs(vocab: int, bos: int, eos: int) -> dict[str, PretrainedConfig]:
    ids = dict(bos_token_id=bos, eos_token_id=eos)
    return {
        "llama": LlamaConfig(vocab_size=vocab, **ids, **_LLAMA_LIKE),
        "mistral": MistralConfig(vocab_size=vocab, **ids, sliding_window=4, **_LLAMA_LIKE),
        "qwen2": Qwen2Config(vocab_size=vocab, **ids, **_LLAMA_LIKE),
        "qwen3": Qwen3Config(vocab_size=vocab, **ids, head_dim=8, **_LLAMA_LIKE),
        "gemma": GemmaConfig(vocab_size=vocab, **ids, head_dim=8, **_LLAMA_LIKE),
        # small softcaps and window, so that each of them changes the output
        "gemma2": Gemma2Config(vocab_size=vocab, **ids, head_dim=8, sliding_window=4, attn_logit_softcapping=1.0,
                               final_logit_softcapping=0.5, **_LLAMA_LIKE),
        "olmo": OlmoConfig(vocab_size=vocab, **ids, **_LLAMA_LIKE),
        "olmo2": Olmo2Config(vocab_size=vocab, **ids, **_LLAMA_LIKE),
        "phi3": Phi3Config(vocab_size=vocab, **ids, pad_token_id=0, **_LLAMA_LIKE),
        "gpt2": GPT2Config(vocab_size=vocab, **ids, n_embd=D_MODEL, n_layer=2, n_head=4, n_positions=64),
        "gpt_neox": GPTNeoXConfig(vocab_size=vocab, **ids, hidden_size=D_MODEL, intermediate_size=64,
                                  num_hidden_layers=2, num_attention_heads=4, use_parallel_residual=True),
        "gpt_neox_sequential": GPTNeoXConfig(vocab_size=vocab, **ids, hidden_size=D_MODEL, intermediate_size=64,
                                             num_hidden_layers=2, num_attention_heads=4, use_parallel_residual=False),
        "opt": OPTConfig(vocab_size=vocab, **ids, hidden_size=D_MODEL, ffn_dim=64, num_hidden_layers=2,
                         num_attention_heads=4, word_embed_proj_dim=D_MODEL),
    }


FAMILIES = ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "olmo", "olmo2", "phi3", "gpt2", "gpt_neox",
            "gpt_neox_sequential")


def tiny_model(family: str, vocab: int = 256, seed: int = 0, bos: int = 1, eos: int = 2) -> torch.nn.Module:
    """A 2-layer model of ``family`` (a key of the configs above; ``opt`` is one saekit does not support)."""
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(_configs(vocab, bos, eos)[family], dtype=torch.float32)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.ndim == 1:  # norm scales and all biases: away from their 1s and 0s
                parameter.add_(torch.randn_like(parameter) * 0.2)
            else:
                parameter.normal_(0, 0.1)  # large enough that the norms, softcaps and latents do something
    return model.eval().requires_grad_(False)


def tiny_loaded(family: str, tokenizer, seed: int = 0) -> LoadedModel:
    """``tiny_model(family)`` with ``tokenizer``'s vocabulary, as load_model would return it."""
    model = tiny_model(family, len(tokenizer), seed, tokenizer.bos_token_id, tokenizer.eos_token_id)
    return LoadedModel(f"tiny-{family}", model, tokenizer, ArchitectureAdapter(model))
