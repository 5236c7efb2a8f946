import pytest
import torch

from saekit.activations.source import ActivationSource, token_mask
from saekit.activations.spec import ActivationSpec, DataConfig
from saekit.errors import SaekitError


def _spec(tiny_model_dir, **overrides):
    values = dict(model=str(tiny_model_dir), context_length=16, contexts_per_chunk=8, outlier_norm_factor=None)
    values.update(overrides)
    return ActivationSpec(DataConfig(**values), ("blocks.1.resid_post", "blocks.1.mlp_out"))


def test_chunks_exclude_bos_and_are_cached(tiny_loaded, tiny_model_dir, tmp_path):
    spec = _spec(tiny_model_dir)
    source = ActivationSource(spec, tmp_path, lambda: tiny_loaded, model_batch_contexts=3)
    chunk = source.chunk(0)
    assert chunk["blocks.1.resid_post"].shape == (8 * 15, 32)  # BOS dropped from each context
    assert chunk["blocks.1.mlp_out"].shape == (8 * 15, 32)
    assert source.chunk_path(0).is_file()

    def must_not_load():
        raise AssertionError("a cached chunk must not load the model")

    cached = ActivationSource(spec, tmp_path, must_not_load)
    torch.testing.assert_close(cached.chunk(0), chunk)
    # Chunk 1 computed by a fresh source (contexts 8..15) differs from chunk 0 and is reproducible.
    fresh = ActivationSource(spec, tmp_path / "other", lambda: tiny_loaded)
    assert not torch.equal(fresh.chunk(1)["blocks.1.resid_post"], chunk["blocks.1.resid_post"])
    torch.testing.assert_close(fresh.chunk(1), source.chunk(1))


def test_spec_changes_change_the_cache_key(tiny_model_dir):
    assert _spec(tiny_model_dir).key() != _spec(tiny_model_dir, context_length=32).key()
    assert _spec(tiny_model_dir).key() == _spec(tiny_model_dir).key()
    # The randomized-weights control computes other activations, so it must never share a cache entry.
    assert _spec(tiny_model_dir).key() != _spec(tiny_model_dir, randomize_weights=True).key()
    assert _spec(tiny_model_dir, randomize_weights=True).key() != \
        _spec(tiny_model_dir, randomize_weights=True, randomization_seed=1).key()


def test_token_mask_drops_bos_and_outliers():
    x = torch.ones(2, 5, 4)
    x[1, 3] *= 100  # one huge-norm token
    x[:, 0] *= 50  # BOS, large too, but it must not set the median
    keep = token_mask({"s": x}, exclude_bos=True, outlier_norm_factor=10.0)
    assert keep[:, 0].sum() == 0
    assert not keep[1, 3]
    assert keep.sum() == 2 * 4 - 1


def test_corpus_too_small(tiny_loaded, tiny_model_dir, tmp_path):
    for index in range(10):
        (tmp_path / f"doc{index}.txt").write_text(f"Document number {index} has only a few words.")
    spec = _spec(tiny_model_dir, corpus=str(tmp_path), eval_fraction=0.2)
    source = ActivationSource(spec, None, lambda: tiny_loaded)
    with pytest.raises(SaekitError, match="ran out"):
        source.chunk(0)


def test_bfloat16_model_gives_float32_activations_close_to_float32s(tiny_model_dir, tmp_path):
    """The model dtype is part of the cache key; bf16 activations are stored as float32 and stay close."""
    full, half = _spec(tiny_model_dir), _spec(tiny_model_dir, model_dtype="bfloat16")
    assert full.key() != half.key()
    chunks = {}
    for name, spec in (("float32", full), ("bfloat16", half)):
        loaded = spec.data.load_model()
        assert next(loaded.model.parameters()).dtype == getattr(torch, name)
        chunks[name] = ActivationSource(spec, None, lambda loaded=loaded: loaded).chunk(0)["blocks.1.resid_post"]
    assert chunks["bfloat16"].dtype == torch.float32
    relative = (chunks["bfloat16"] - chunks["float32"]).norm() / chunks["float32"].norm()
    assert 0 < relative < 0.02  # bf16 rounding (8 bits of mantissa) through two layers, not a different model
