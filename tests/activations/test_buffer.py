import torch

from saekit.activations.buffer import shuffled_batches


def _chunks(n_chunks=6, size=100):
    return [{"a": torch.arange(i * size, (i + 1) * size).float()[:, None],
             "b": -torch.arange(i * size, (i + 1) * size).float()[:, None]} for i in range(n_chunks)]


def test_batches_are_deterministic_aligned_and_mixed():
    first = list(shuffled_batches(_chunks(), batch_size=32, buffer_tokens=250, seed=3))
    again = list(shuffled_batches(_chunks(), batch_size=32, buffer_tokens=250, seed=3))
    other = list(shuffled_batches(_chunks(), batch_size=32, buffer_tokens=250, seed=4))
    assert all(torch.equal(x["a"], y["a"]) for x, y in zip(first, again))
    assert not all(torch.equal(x["a"], y["a"]) for x, y in zip(first, other))
    for batch in first:
        assert batch["a"].shape == (32, 1)
        torch.testing.assert_close(batch["a"], -batch["b"])  # rows stay paired across keys
    # The first batch already mixes tokens from several chunks (contexts).
    assert len(set((first[0]["a"] // 100).long().flatten().tolist())) >= 2


def test_every_token_appears_at_most_once_and_almost_all_appear():
    seen = torch.cat([b["a"] for b in shuffled_batches(_chunks(), 32, 250, 0)]).flatten().long()
    assert seen.unique().numel() == seen.numel()
    assert seen.numel() > 600 - 32
