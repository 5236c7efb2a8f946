import pytest

from saekit.errors import SaekitError
from saekit.models.loading import load_model


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
