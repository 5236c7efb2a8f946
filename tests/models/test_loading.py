import pytest
from transformers import AutoModelForCausalLM, GPT2Config, GPTNeoXConfig, LlamaConfig

from saekit.errors import SaekitError
from saekit.models.architecture import ArchitectureAdapter
from saekit.models.loading import (
    DEFAULT_MODEL_SIZES,
    ModelSizes,
    load_model,
    load_model_config,
    model_sizes,
    sizes_of,
)


def test_loads_a_local_directory(tiny_loaded, tiny_model_dir):
    assert tiny_loaded.adapter.n_layers == 2
    assert tiny_loaded.adapter.d_model == 32
    assert tiny_loaded.bos_token_id == tiny_loaded.tokenizer.bos_token_id
    assert not any(p.requires_grad for p in tiny_loaded.model.parameters())


def test_randomized_weights_differ_from_loaded(tiny_model_dir, tiny_loaded):
    randomized = load_model(str(tiny_model_dir), randomize_weights=True, seed=1)
    before = tiny_loaded.adapter.down_projection(0).weight
    after = randomized.adapter.down_projection(0).weight
    assert (before - after).abs().max() > 1e-3


@pytest.mark.parametrize("spec, message", [
    ("/nonexistent/model.gguf", "GGUF file not found"),
    ("/nonexistent/dir", "model path not found"),
])
def test_missing_model_paths(spec, message):
    with pytest.raises(SaekitError, match=message):
        load_model(spec)


def test_directory_without_config(tmp_path):
    with pytest.raises(SaekitError, match="no config.json"):
        load_model(str(tmp_path))


@pytest.mark.parametrize("config", [
    GPT2Config(n_layer=2, n_embd=32, n_head=4, n_positions=64, vocab_size=100),  # n_inner None: 4 x d_model
    GPT2Config(n_layer=3, n_embd=32, n_inner=48, n_head=4, n_positions=64, vocab_size=100),
    GPTNeoXConfig(num_hidden_layers=2, hidden_size=32, intermediate_size=80, num_attention_heads=4, vocab_size=100),
    LlamaConfig(num_hidden_layers=2, hidden_size=32, intermediate_size=64, num_attention_heads=4, vocab_size=100),
], ids=["gpt2", "gpt2-n_inner", "gpt_neox", "llama"])
def test_model_sizes_from_the_config_match_the_built_model(config):
    """What imports and upload sets read from a config file equals what the adapter finds in the modules."""
    adapter = ArchitectureAdapter(AutoModelForCausalLM.from_config(config))
    sizes = model_sizes(config)
    assert (sizes.layers, sizes.d_model, sizes.d_mlp) == (adapter.n_layers, adapter.d_model, adapter.d_mlp)


def test_the_default_model_sizes_are_what_its_config_says():
    """Config validation takes the default's sizes from DEFAULT_MODEL_SIZES: its GGUF config takes ~8 s to read."""
    assert model_sizes(load_model_config("default")) == DEFAULT_MODEL_SIZES == ModelSizes(30, 576, 1536)
    assert sizes_of("default") is DEFAULT_MODEL_SIZES
