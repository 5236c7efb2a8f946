import torch

from saekit.dictionaries.base import DictionaryConfig
from saekit.dictionaries.registry import build_dictionary
from saekit.evaluation.damage import token_damage
from saekit.evaluation.generation import generations_markdown, side_by_side
from saekit.evaluation.splice import SpliceTarget


def test_same_seed_same_text_and_splice_changes_it(tiny_loaded):
    site = tiny_loaded.adapter.site("blocks.0.resid_post")
    torch.manual_seed(0)
    target = SpliceTarget(build_dictionary(DictionaryConfig("topk", 32, 64, k=1)).eval(), site, site, torch.zeros(32))
    first = side_by_side(tiny_loaded, [target], ["Hello there"], max_new_tokens=8, seed=3)
    again = side_by_side(tiny_loaded, [target], ["Hello there"], max_new_tokens=8, seed=3)
    assert first == again
    assert first[0].clean != first[0].spliced  # a 1-latent SAE wrecks a random model's stream
    assert "Hello there" in generations_markdown(first)


def test_token_damage_ranks_tokens(default_tokenizer):
    contexts = torch.tensor([[1, 5, 10, 11, 10, 12], [1, 5, 10, 11, 10, 13]])
    delta = torch.zeros(2, 4)
    delta[:, 0] = 2.0  # every prediction of token 10 at position 2 hurt by 2 nats
    delta[1, 3] = 5.0  # one prediction of token 13
    damage = token_damage(contexts, delta, default_tokenizer, min_count=1)
    assert damage["tokens_by_total_increase"][0]["token_id"] == 13
    assert damage["tokens_by_total_increase"][1]["token_id"] == 10
    assert damage["tokens_by_total_increase"][1]["mean_delta_nats"] == 1.0  # 4 nats over 4 occurrences
    assert damage["worst_positions"][0]["delta_nats"] == 5.0
