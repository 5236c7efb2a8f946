from dataclasses import dataclass, field

import pytest
import torch
from torch import Tensor

from saekit.dictionaries.base import DictionaryConfig
from saekit.dictionaries.registry import build_dictionary
from saekit.evaluation.damage import token_damage
from saekit.evaluation.generation import continuation, generation_prompts, generations_markdown, side_by_side
from saekit.training.splicing import SpliceTarget, spliced_context


@dataclass
class RecordingTarget(SpliceTarget):
    """A splice target that records how many positions each spliced forward handed it."""

    lengths: list[int] = field(default_factory=list)

    def replace(self, x: Tensor, original: Tensor) -> Tensor:
        self.lengths.append(x.shape[1])
        return super().replace(x, original)


def _targets(loaded) -> list[RecordingTarget]:
    """A TopK SAE on layer 0's residual stream and a TopK transcoder for layer 1's MLP, spliced jointly."""
    torch.manual_seed(0)
    sae_site = loaded.adapter.site("blocks.0.resid_post")
    sae = build_dictionary(DictionaryConfig("topk", 32, 64, k=4)).eval()
    transcoder = build_dictionary(DictionaryConfig("topk", 32, 64, d_out=32, k=4)).eval()
    return [RecordingTarget(sae, sae_site, sae_site, torch.zeros(32)),
            RecordingTarget(transcoder, loaded.adapter.site("blocks.1.mlp_in"), loaded.adapter.site("blocks.1.mlp_out"),
                            torch.zeros(32))]


@torch.no_grad()
def _uncached(loaded, targets, prompt: str, max_new_tokens: int, temperature: float, seed: int) -> list[int]:
    """Generation as it was before the KV cache: the whole sequence re-run, and re-spliced, at every step."""
    ids = loaded.prompt_ids(prompt)[None]
    generator = torch.Generator().manual_seed(seed)
    with spliced_context(loaded, targets):
        for _ in range(max_new_tokens):
            logits = loaded.model(input_ids=ids, use_cache=False).logits[0, -1].float()
            if temperature <= 0:
                next_id = int(logits.argmax())
            else:
                next_id = int(torch.multinomial((logits / temperature).softmax(-1), 1, generator=generator))
            ids = torch.cat([ids, torch.tensor([[next_id]])], dim=1)
            if next_id == loaded.eos_token_id:
                break
    return ids[0, len(loaded.prompt_ids(prompt)):].tolist()


@pytest.mark.parametrize("temperature", [0.0, 0.7])
def test_cached_generation_equals_uncached_and_splices_only_new_positions(tiny_loaded, temperature):
    targets = _targets(tiny_loaded)
    prompt, new_tokens = "Hello there", 12
    clean = continuation(tiny_loaded, [], prompt, new_tokens, temperature, seed=5)
    spliced = continuation(tiny_loaded, targets, prompt, new_tokens, temperature, seed=5)
    seen = [target.lengths[:] for target in targets]
    assert clean == _uncached(tiny_loaded, [], prompt, new_tokens, temperature, 5)
    assert spliced == _uncached(tiny_loaded, targets, prompt, new_tokens, temperature, 5)
    assert spliced != clean  # the splice changes the tokens, so the comparison above has something to catch
    assert len(spliced) == new_tokens
    # The prompt's forward splices every position but BOS; each later forward only the one new token.
    prompt_positions = len(tiny_loaded.prompt_ids(prompt)) - 1
    assert seen == [[prompt_positions] + [1] * (new_tokens - 1)] * 2


def test_same_seed_same_text_and_splice_changes_it(tiny_loaded):
    site = tiny_loaded.adapter.site("blocks.0.resid_post")
    torch.manual_seed(0)
    target = SpliceTarget(build_dictionary(DictionaryConfig("topk", 32, 64, k=1)).eval(), site, site, torch.zeros(32))
    first = side_by_side(tiny_loaded, [target], ["Hello there"], max_new_tokens=8, seed=3)
    again = side_by_side(tiny_loaded, [target], ["Hello there"], max_new_tokens=8, seed=3)
    assert first == again
    assert first[0].clean != first[0].spliced  # a 1-latent SAE wrecks a random model's stream
    assert "Hello there" in generations_markdown(first)


def test_generation_prompts_repeat_the_built_in_ones_in_turn():
    assert generation_prompts(0) == []
    assert generation_prompts(3, ("a", "b")) == ["a", "b", "a"]


def test_token_damage_ranks_tokens(default_tokenizer):
    contexts = torch.tensor([[1, 5, 10, 11, 10, 12], [1, 5, 10, 11, 10, 13]])
    delta = torch.zeros(2, 4)
    delta[:, 0] = 2.0  # every prediction of token 10 at position 2 hurt by 2 nats
    delta[1, 3] = 5.0  # one prediction of token 13
    damage = token_damage(contexts, delta, default_tokenizer, min_count=1)
    assert damage.tokens_by_total_increase[0].token_id == 13
    assert damage.tokens_by_total_increase[1].token_id == 10
    assert damage.tokens_by_total_increase[1].mean_delta_nats == 1.0  # 4 nats over 4 occurrences
    assert damage.worst_positions[0].delta_nats == 5.0
