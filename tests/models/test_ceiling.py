"""The matmul ceiling at a model's shapes, and the quickstart's record of its forward against it."""

from __future__ import annotations

import pytest
from transformers import GPT2Config, LlamaConfig, LlamaForCausalLM

from saekit.evaluation.report import _ceiling_lines
from saekit.io import read_json, write_json
from saekit.jobs.quickstart import record_forward_ceiling
from saekit.models.ceiling import ModelShapes, block_rate, forward_against_ceiling, shapes_from_config
from saekit.rundir import THROUGHPUT_FILE
from saekit.training.config import TrainConfig

# d 64, d_ff 128, 3 layers, 4 heads of 16, 2 kv heads: the count by hand is in tests/models/test_flops.py
TINY = dict(vocab_size=100, hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
            num_key_value_heads=2, head_dim=16, max_position_embeddings=64, tie_word_embeddings=False)


def test_shapes_from_a_config():
    assert shapes_from_config(LlamaConfig(**TINY)) == ModelShapes(64, 4, 2, 16, 128, 100, True)
    gpt2 = shapes_from_config(GPT2Config(n_embd=32, n_layer=2, n_head=2, vocab_size=50))
    assert (gpt2.d, gpt2.n_heads, gpt2.n_kv_heads, gpt2.d_ff, gpt2.gated) == (32, 2, 2, 128, False)
    assert [name for name, _, _ in gpt2.block()] == ["q", "k", "v", "o", "up", "down"]
    # Llama's block: q 64->64, k and v 64->32 (GQA), o 64->64, gate and up 64->128, down 128->64
    assert ModelShapes(64, 4, 2, 16, 128, 100, True).block() == [
        ("q", 64, 64), ("k", 64, 32), ("v", 64, 32), ("o", 64, 64), ("gate", 64, 128), ("up", 64, 128),
        ("down", 128, 64)]


def test_forward_against_the_ceiling_counts_the_blocks_run():
    model = LlamaForCausalLM(LlamaConfig(**TINY))
    record = forward_against_ceiling(model, 32, through_layer=1, dtype="float32", tokens_per_s=1000.0, tokens=64,
                                     seconds=0.01)
    # blocks 0 and 1 at 32 tokens a context, no unembedding: 2 x (24576 + 49152 + 4224) = 155904 FLOPs a token
    assert record["flops_per_token"] == 155904
    assert record["gflops_per_s"] == pytest.approx(155904 * 1000 / 1e9)
    assert record["ceiling_gflops_per_s"] > 0
    assert record["ceiling_fraction"] == pytest.approx(record["gflops_per_s"] / record["ceiling_gflops_per_s"])
    assert (record["through_layer"], record["ceiling_dtype"]) == (1, "float32")


def test_block_rate_refuses_no_dtype_it_cannot_make():
    with pytest.raises(AttributeError):
        block_rate(ModelShapes(8, 2, 2, 4, 16, 10, True), 8, "float33", seconds=0.001)


def test_the_quickstart_records_the_forward_only_when_it_ran_one(tiny_loaded, tiny_model_dir, tmp_path):
    config = TrainConfig.from_flat(dict(name="q", model=str(tiny_model_dir), site="blocks.0.resid_post",
                                        cache_dir=None))
    path = tmp_path / THROUGHPUT_FILE
    write_json(path, {"model_forward_tokens_per_s": None, "wall_seconds": 3.0})
    record_forward_ceiling(tmp_path, config, tiny_loaded)
    assert read_json(path, "throughput") == {"model_forward_tokens_per_s": None, "wall_seconds": 3.0}
    write_json(path, {"model_forward_tokens_per_s": 2000.0})
    record_forward_ceiling(tmp_path, config, tiny_loaded)
    ceiling = read_json(path, "throughput")["model_forward_ceiling"]
    # the tiny model (d 32, d_ff 64, 4 heads of 8, 2 kv heads) through block 0 at 128-token contexts:
    # q 2*32*32 + k, v 2*32*16 each + o 2*32*32 = 6144; MLP 3*2*32*64 = 12288; attention 2*4*8*129 = 8256
    assert ceiling["flops_per_token"] == 6144 + 12288 + 8256
    assert ceiling["through_layer"] == 0
    marked = {"model_forward_tokens_per_s": 2000.0, "model_forward_ceiling": {"ceiling_fraction": 0.5}}
    write_json(path, marked)  # measured when the forward ran: a later resume leaves it alone
    record_forward_ceiling(tmp_path, config, tiny_loaded)
    assert read_json(path, "throughput") == marked


def test_the_report_states_the_fraction():
    lines = _ceiling_lines({"through_layer": 14, "flops_per_token": 111e6, "gflops_per_s": 50.0,
                            "ceiling_gflops_per_s": 200.0, "ceiling_fraction": 0.25, "ceiling_dtype": "float32",
                            "ceiling_threads": 2})
    assert "blocks 0-14, 111.0 MFLOP" in lines[0] and "50.0 GFLOP/s: 25% of" in lines[0]
    assert "(200.0 GFLOP/s, 2 threads" in lines[0]
    assert _ceiling_lines(None) == [] and _ceiling_lines({"ceiling_fraction": None}) == []
