"""Test helpers shared by the autointerp tests (and the kill-and-rerun subprocess): synthetic latents, a fake LLM."""

from __future__ import annotations

import asyncio
import random
import re

from saekit.autointerp.backends import (
    BackendError,
    ChatRequest,
    Completion,
    OpenAICompatibleBackend,
    OpenAIConfig,
    Usage,
)
from saekit.autointerp.examples import Example, LatentExamples

FILLER = [" a", " big", " red", " house", " ran", " to", " and", " then", " we", " saw", " it", " on", " blue", " road"]
KEYWORDS = {0: " cat", 1: " river", 2: " seven", 3: " violin", 4: " copper", 5: " tulip"}


def _context(rng: random.Random, keyword: str | None, length: int = 12) -> Example:
    tokens = [rng.choice(FILLER) for _ in range(length)]
    activations = [0.0] * length
    if keyword is not None:
        for position in rng.sample(range(length), rng.randint(1, 2)):
            tokens[position] = keyword
            activations[position] = round(rng.uniform(1.0, 5.0), 3)
    return Example(tokens, activations)


def synthetic_latent(latent: int, seed: int = 0, train: int = 6, activating: int = 4, nonactivating: int = 4,
                     ) -> LatentExamples:
    """A latent that fires exactly on its keyword token."""
    rng = random.Random(seed * 100 + latent)
    keyword = KEYWORDS[latent]
    return LatentExamples(latent, [_context(rng, keyword) for _ in range(train)],
                          [_context(rng, keyword) for _ in range(activating)],
                          [_context(rng, None) for _ in range(nonactivating)])


def _marked(text: str) -> list[str]:
    return re.findall(r"<<(.*?)>>", text)


class FakeBackend:
    """A deterministic stand-in LLM that understands the keyword task perfectly (or fails on purpose).

    Explains with the keyword of the first marked token; answers detection Yes iff the explanation's
    word is in the text, fuzzing Yes iff it is among the marked tokens; picks the intruder as the
    text whose marked token differs from the majority. ``fail`` (substring -> error message) makes
    matching prompts fail; ``stall`` seconds of sleep per call let a subprocess be killed midway.
    """

    def __init__(self, fail: dict[str, str] | None = None, stall: float = 0.0, log_path: str | None = None,
                 logprobs: bool = True) -> None:
        self.model_id = "fake-llm"
        self.usage = Usage()
        self.calls: list[str] = []
        self.fail = fail or {}
        self.stall = stall
        self.log_path = log_path
        self.logprobs = logprobs

    def settings(self) -> dict:
        return {"backend": "fake"}

    def description(self) -> str:
        return "fake-llm (test double)"

    def close(self) -> None:
        return None

    def _answer(self, system: str, user: str) -> str:
        if "odd one out" in system:
            lines = [ln for ln in user.splitlines() if re.match(r"^\d+\. ", ln)]
            marks = [(_marked(ln) or [""])[0].strip() for ln in lines]
            majority = max(set(marks), key=marks.count)
            return str(next(i for i, m in enumerate(marks, 1) if m != majority))
        if "Write ONE short sentence" in system:
            first = _marked(user)[0].strip()
            return f"The word \"{first}\"."
        explanation = re.search(r"Explanation of the feature: (.*)", user).group(1)
        word = re.findall(r'"\s*([^"]+?)\s*"', explanation)[0]
        text = re.search(r"Text(?: with marked tokens)?: (.*)", user).group(1)
        if "marked tokens" in user.split("\n")[-1] or "Are the marked" in user:
            return "Yes" if any(m.strip() == word for m in _marked(text)) else "No"
        return "Yes" if word in text else "No"

    async def complete(self, request: ChatRequest) -> Completion:
        system = next((c for r, c in request.messages if r == "system"), "")
        user = next(c for r, c in request.messages if r == "user")
        for marker, message in self.fail.items():
            if marker in user or marker in system:
                self.usage.failures += 1
                raise BackendError(message)
        if self.stall:
            await asyncio.sleep(self.stall)
        answer = self._answer(system, user)
        self.calls.append(user)
        if self.log_path:
            with open(self.log_path, "a", encoding="utf-8") as handle:
                handle.write(user.replace("\n", " ")[:200] + "\n")
                handle.flush()
        top = None
        if self.logprobs and request.top_logprobs:
            top = [("Yes", -0.1), ("No", -2.5)] if answer == "Yes" else [("No", -0.2), ("Yes", -1.9)]
        completion = Completion(answer, top, 10, 1)
        self.usage.add(completion)
        return completion


def recording_backend(base_url: str, **overrides) -> tuple[OpenAICompatibleBackend, list[float]]:
    """An OpenAI-compatible backend whose backoff waits are recorded, not slept (the schedule is tested)."""
    sleeps: list[float] = []

    async def record_sleep(seconds: float) -> None:
        sleeps.append(seconds)

    values = dict(base_url=base_url, model="m", api_key_env=None, backoff_s=0.5, max_retries=3, timeout_s=10)
    values.update(overrides)
    return OpenAICompatibleBackend(OpenAIConfig(**values), sleep=record_sleep), sleeps
