"""The degraded model in words: continuations of the same prompts, clean and spliced, side by side.

Sampling uses the same seed for both, so differences come from the splice and not from chance.

Generation uses the model's KV cache: the prompt runs once, then each step runs the new token alone.
The splice is applied to the positions a forward computes, and only to those: in the prompt's forward
every position but BOS (which stays clean, as in evaluation), in each later forward the one new
position. The cached keys and values of earlier positions were computed with the splice in place, so
this is exactly the uncached generation that re-splices the whole sequence at every step (tested).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from saekit.errors import SaekitError
from saekit.evaluation.results import SideBySide
from saekit.models.loading import LoadedModel, cached_forward_keywords
from saekit.render import markdown_table
from saekit.training.splicing import SpliceTarget, spliced_context

DEFAULT_PROMPTS = (
    "In the beginning God created",
    "The Python interpreter reads a file and",
    "A wise man once said that",
    "To open a file for reading, call",
)


ACAUSAL = ("a crosscoder reads every layer before writing any, so it cannot be spliced into token-by-token "
           "generation")


def _require_causal(targets: Sequence[SpliceTarget]) -> None:
    if not all(target.causal for target in targets):
        raise SaekitError(f"{ACAUSAL}; evaluate it with saekit evaluate")


@dataclass
class _Forward:
    """Where the forward being run starts in the sequence: 0 for the prompt, its cached length after."""

    start: int = 0


def _next_token(logits: Tensor, temperature: float, generator: torch.Generator) -> int:
    # On the CPU, so the seeded generator draws the same numbers on every device.
    logits = logits.float().cpu()
    if temperature <= 0:
        return int(logits.argmax())
    return int(torch.multinomial((logits / temperature).softmax(-1), 1, generator=generator))


@torch.no_grad()
def continuation(loaded: LoadedModel, targets: Sequence[SpliceTarget], prompt: str, max_new_tokens: int = 32,
                 temperature: float = 0.7, seed: int = 0) -> list[int]:
    """The sampled token ids after ``prompt`` (ending at EOS if sampled), ``targets`` spliced in (none: clean)."""
    _require_causal(targets)
    generator = torch.Generator().manual_seed(seed)
    forward = _Forward()
    ids = loaded.prompt_ids(prompt)[None].to(loaded.device)
    cache_name, last_only = cached_forward_keywords(loaded.model)
    cache = None
    sampled: list[int] = []
    with spliced_context(loaded, targets, start=lambda: forward.start):
        for _ in range(max_new_tokens):
            output = loaded.model(input_ids=ids, use_cache=True, **{cache_name: cache}, **last_only)
            cache = getattr(output, cache_name)
            sampled.append(_next_token(output.logits[0, -1], temperature, generator))
            if sampled[-1] == loaded.eos_token_id:
                break
            forward.start += ids.shape[1]
            ids = torch.tensor([[sampled[-1]]], device=ids.device)
    return sampled


def generation_prompts(count: int, prompts: Sequence[str] = DEFAULT_PROMPTS) -> list[str]:
    """``count`` prompts: ``prompts`` in turn, repeated if more are asked for (side_by_side gives each its seed)."""
    return [prompts[index % len(prompts)] for index in range(count)]


def side_by_side(
    loaded: LoadedModel, targets: list[SpliceTarget], prompts: Sequence[str] = DEFAULT_PROMPTS,
    max_new_tokens: int = 32, temperature: float = 0.7, seed: int = 0,
) -> list[SideBySide]:
    """Sample each prompt's continuation from the clean and the spliced model with the same seed."""
    _require_causal(targets)  # before any sampling, not after the first clean continuation
    results = []
    for index, prompt in enumerate(prompts):
        texts = [loaded.tokenizer.decode(continuation(loaded, spliced, prompt, max_new_tokens, temperature,
                                                      seed + index), skip_special_tokens=True)
                 for spliced in ([], targets)]
        results.append(SideBySide(prompt, *texts))
    return results


def generations_markdown(rows: list[SideBySide]) -> str:
    # Markup in a sample stays text (markdown_table escapes every cell); quotes stay raw and readable.
    return markdown_table(["prompt", "clean model", "dictionary spliced in"],
                          [(r.prompt, r.clean, r.spliced) for r in rows])
