"""The degraded model in words: continuations of the same prompts, clean and spliced, side by side.

Sampling uses the same seed for both, so differences come from the splice and not from chance.
Generation runs without a KV cache: the splice keeps position 0 (BOS) clean, which needs the whole
sequence in every forward pass.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass

import torch

from saekit.evaluation.splice import SpliceTarget, spliced_context
from saekit.models.loading import LoadedModel
from saekit.render import markdown_table

DEFAULT_PROMPTS = (
    "In the beginning God created",
    "The Python interpreter reads a file and",
    "A wise man once said that",
    "To open a file for reading, call",
)


@dataclass
class SideBySide:
    prompt: str
    clean: str
    spliced: str


@torch.no_grad()
def _sample(loaded: LoadedModel, prompt: str, max_new_tokens: int, temperature: float, seed: int) -> str:
    ids = loaded.prompt_ids(prompt)[None].to(loaded.device)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(max_new_tokens):
        logits = loaded.model(input_ids=ids, use_cache=False).logits[0, -1].float().cpu()
        if temperature <= 0:
            next_id = int(logits.argmax())
        else:
            next_id = int(torch.multinomial((logits / temperature).softmax(-1), 1, generator=generator))
        ids = torch.cat([ids, torch.tensor([[next_id]], device=ids.device)], dim=1)
        if next_id == loaded.eos_token_id:
            break
    prompt_length = 1 + len(loaded.tokenizer(prompt, add_special_tokens=False).input_ids)
    return loaded.tokenizer.decode(ids[0, prompt_length:], skip_special_tokens=True)


def side_by_side(
    loaded: LoadedModel, targets: list[SpliceTarget], prompts: tuple[str, ...] | list[str] = DEFAULT_PROMPTS,
    max_new_tokens: int = 32, temperature: float = 0.7, seed: int = 0,
) -> list[SideBySide]:
    """Sample each prompt's continuation from the clean and the spliced model with the same seed."""
    results = []
    for index, prompt in enumerate(prompts):
        texts = []
        for context in (nullcontext(), spliced_context(loaded, targets)):
            with context:
                texts.append(_sample(loaded, prompt, max_new_tokens, temperature, seed + index))
        results.append(SideBySide(prompt, *texts))
    return results


def generations_markdown(rows: list[SideBySide]) -> str:
    # Markup in a sample stays text (markdown_table escapes every cell); quotes stay raw and readable.
    return markdown_table(["prompt", "clean model", "dictionary spliced in"],
                          [(r.prompt, r.clean, r.spliced) for r in rows])
