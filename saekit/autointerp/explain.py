"""Explanations of a latent: an LLM reading its marked training examples, and the no-LLM token baseline.

Activating tokens are those at or above a fraction of the example's peak activation; they are
marked ``<<like this>>`` (runs of adjacent activating tokens share one pair of markers). The
explainer may also see each marked token's activation on a 0-10 scale relative to the latent's
strongest training activation. The baseline needs no model: the latent's most frequent activating
tokens, "fires on: ..." -- scored by the same scorers, it is the floor every LLM score is read against.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

from saekit.autointerp.backends import BackendError, ChatRequest
from saekit.autointerp.cache import CachedClient
from saekit.autointerp.examples import Example, LatentExamples
from saekit.autointerp.prompts import PromptTemplate

OPEN, CLOSE = "<<", ">>"


@dataclass(frozen=True)
class ExplainConfig:
    """How examples are shown to the explainer and how long its answer may be."""

    fraction_of_max: float = 0.1  # a token is "activating" at >= this fraction of its example's peak
    show_activations: bool = False  # per-token 0-10 activations after each example (confuses very small models)
    max_examples: int = 14
    max_tokens: int = 64
    max_chars: int = 300
    baseline_tokens: int = 5


@dataclass
class Explanation:
    """One explanation (None when the explainer failed) and who wrote it."""

    explainer: str  # "llm" or "baseline"
    text: str | None
    error: str | None = None


def active_positions(example: Example, fraction_of_max: float) -> list[int]:
    peak = example.max_activation
    if peak <= 0:
        return []
    return [i for i, a in enumerate(example.activations) if a > 0 and a >= fraction_of_max * peak]


def clean_token(token: str) -> str:
    return token.replace("\r", "").replace("\n", "\\n").replace("\t", " ")


def render(tokens: list[str], marked: Iterable[int] = ()) -> str:
    """Join tokens into one line, wrapping each run of marked positions in ``<<`` ``>>``."""
    marked = set(marked)
    out: list[str] = []
    for i, token in enumerate(tokens):
        text = clean_token(token)
        starts = i in marked and (i - 1) not in marked
        ends = i in marked and (i + 1) not in marked
        if starts:
            stripped = text.lstrip(" ")
            out.append(text[:len(text) - len(stripped)] + OPEN)
            text = stripped
        out.append(text)
        if ends:
            out.append(CLOSE)
    return "".join(out).strip()


def _activation_note(example: Example, positions: list[int], scale: float) -> str:
    parts = [f"{json.dumps(clean_token(example.tokens[i]))} {round(10 * example.activations[i] / scale)}"
             for i in positions]
    return "activations (0-10): " + ", ".join(parts)


def explainer_examples_text(examples: LatentExamples, config: ExplainConfig) -> str:
    shown = examples.train[:config.max_examples]
    scale = max((e.max_activation for e in shown), default=1.0) or 1.0
    lines = []
    for number, example in enumerate(shown, 1):
        positions = active_positions(example, config.fraction_of_max)
        lines.append(f"Example {number}: {render(example.tokens, positions)}")
        if config.show_activations and positions:
            lines.append(f"  {_activation_note(example, positions, scale)}")
    return "\n".join(lines)


def clean_explanation(text: str, max_chars: int) -> str:
    """First non-empty line of the answer, without a leading label, quotes or markers."""
    line = next((ln.strip() for ln in text.strip().splitlines() if ln.strip()), "")
    line = re.sub(r"^(explanation|answer)\s*[:\-]\s*", "", line, flags=re.IGNORECASE)
    line = line.replace(OPEN, "").replace(CLOSE, "").strip().strip('"').strip("'").strip()
    if len(line) > max_chars:
        cut = line[:max_chars]
        line = cut[:cut.rfind(" ")] if " " in cut else cut
    return line


async def llm_explanation(client: CachedClient, template: PromptTemplate, examples: LatentExamples,
                          config: ExplainConfig) -> Explanation:
    messages = template.render(examples=explainer_examples_text(examples, config))
    try:
        completion = await client.complete(ChatRequest(messages, config.max_tokens))
    except BackendError as err:
        return Explanation("llm", None, str(err))
    text = clean_explanation(completion.text, config.max_chars)
    if not text:
        return Explanation("llm", None, f"empty explanation (raw answer {completion.text[:80]!r})")
    return Explanation("llm", text)


def baseline_explanation(examples: LatentExamples, config: ExplainConfig) -> Explanation:
    """The most frequent activating tokens of the training examples (ties: larger total activation first)."""
    counts: Counter[str] = Counter()
    totals: Counter[str] = Counter()
    for example in examples.train:
        for i in active_positions(example, config.fraction_of_max):
            counts[example.tokens[i]] += 1
            totals[example.tokens[i]] += example.activations[i]
    if not counts:
        return Explanation("baseline", None, "no activating tokens in the training examples")
    ranked = sorted(counts, key=lambda t: (-counts[t], -totals[t], t))[:config.baseline_tokens]
    return Explanation("baseline", "fires on: " + ", ".join(json.dumps(clean_token(t)) for t in ranked))
