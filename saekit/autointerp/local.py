"""Chat completion from an installed transformers causal LM, in-process: chat template, greedy decoding, logprobs.

Shared by the in-process backend and the loopback OpenAI-compatible server, so both answer a
prompt identically. Decoding is greedy with a KV cache; every generated position reports the
log-probability of its token and the ``top_logprobs`` most likely alternatives (full softmax).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import torch

from saekit.errors import SaekitError
from saekit.models.loading import LoadedModel, cached_forward_keywords

Messages = tuple[tuple[str, str], ...]


@dataclass
class TokenLogprobs:
    """One generated position: the chosen token, its log-probability and the most likely alternatives."""

    token: str
    logprob: float
    top: list[tuple[str, float]] = field(default_factory=list)


@dataclass
class Generation:
    text: str
    positions: list[TokenLogprobs]
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop" (end-of-sequence token) or "length"


class ChatModel:
    """Greedy chat completion with one transformers model; calls are serialised by a lock (thread-safe)."""

    def __init__(self, loaded: LoadedModel, max_context: int | None = None) -> None:
        self.loaded = loaded
        self.name = loaded.name
        self.tokenizer = loaded.tokenizer
        self.model = loaded.model
        config = self.model.config
        self.max_context = max_context or int(getattr(config, "max_position_embeddings", 2048) or 2048)
        stop = {self.tokenizer.eos_token_id}
        generation_eos = getattr(getattr(self.model, "generation_config", None), "eos_token_id", None)
        stop.update(generation_eos if isinstance(generation_eos, list) else [generation_eos])
        self.stop_ids = {int(i) for i in stop if i is not None}
        self.lock = threading.Lock()
        # The KV cache's keyword, and unembedding only the last position where the model allows it.
        self._cache_name, self._last_only = cached_forward_keywords(self.model)

    @property
    def has_chat_template(self) -> bool:
        return bool(getattr(self.tokenizer, "chat_template", None))

    def prompt_text(self, messages: Messages) -> str:
        chat = [{"role": role, "content": content} for role, content in messages]
        if self.has_chat_template:
            return self.tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
        lines = [f"{role.capitalize()}: {content}" for role, content in messages]
        return "\n\n".join(lines) + "\n\nAssistant:"

    def prompt_ids(self, messages: Messages) -> list[int]:
        text = self.prompt_text(messages)
        # The chat template already holds any BOS/special tokens; without one, add the tokenizer's own.
        ids = self.tokenizer(text, add_special_tokens=not self.has_chat_template)["input_ids"]
        return [int(i) for i in ids]

    def _token(self, token_id: int) -> str:
        return self.tokenizer.decode([token_id], skip_special_tokens=False)

    def _position(self, logprobs: torch.Tensor, token_id: int, top: int) -> TokenLogprobs:
        alternatives: list[tuple[str, float]] = []
        if top > 0:
            values, indices = logprobs.topk(min(top, logprobs.shape[0]))
            alternatives = [(self._token(int(i)), float(v)) for v, i in zip(values.tolist(), indices.tolist())]
        return TokenLogprobs(self._token(token_id), float(logprobs[token_id]), alternatives)

    @torch.no_grad()
    def generate(self, messages: Messages, max_tokens: int, top_logprobs: int = 0) -> Generation:
        if max_tokens < 1:
            raise SaekitError(f"max_tokens must be at least 1, got {max_tokens}")
        prompt = self.prompt_ids(messages)
        if len(prompt) + max_tokens > self.max_context:
            raise SaekitError(f"prompt of {len(prompt)} tokens + {max_tokens} new exceeds the model's context "
                              f"of {self.max_context}")
        with self.lock:
            device = self.loaded.device
            out = self.model(input_ids=torch.tensor([prompt], device=device), use_cache=True, **self._last_only)
            positions: list[TokenLogprobs] = []
            generated: list[int] = []
            finish = "length"
            for step in range(max_tokens):
                logprobs = out.logits[0, -1].float().log_softmax(-1).cpu()
                token_id = int(logprobs.argmax())
                positions.append(self._position(logprobs, token_id, top_logprobs))
                if token_id in self.stop_ids:
                    finish = "stop"
                    break
                generated.append(token_id)
                if step + 1 < max_tokens:
                    cache = {self._cache_name: getattr(out, self._cache_name)}
                    out = self.model(input_ids=torch.tensor([[token_id]], device=device), use_cache=True, **cache)
        text = self.tokenizer.decode(generated, skip_special_tokens=True)
        return Generation(text, positions, len(prompt), len(positions), finish)
