"""Explain and score latents end to end; write ``RUN_DIR/autointerp/`` (scores, manifest, report).

For each selected latent: the LLM explainer and the no-LLM baseline each give an explanation;
detection, fuzzing (and embedding, if installed) score both on the same held-out examples; the
intruder test scores the latent itself. All LLM traffic goes through the response cache
(``autointerp/cache`` by default), so a rerun, or a run resumed after a kill, re-sends nothing that
had finished. ``scores.json`` holds everything per latent; ``manifest.json`` says how it was made;
``report.md`` gives means next to their chance levels and the baseline, and names the model.

A run never ends as a silent success on a dead endpoint: a backend with a ``probe()`` (the HTTP one)
is probed before the first latent; a backend that finds its endpoint gone mid-run raises
SaekitError; and a run in which every request failed writes its (missing) scores, then raises.
"""

from __future__ import annotations

import asyncio
import datetime
import platform
from collections.abc import Awaitable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from saekit.autointerp.backends import Backend, BackendChoice, make_backend, one_line
from saekit.autointerp.cache import CachedClient, ResponseCache
from saekit.autointerp.examples import ExampleSet, LatentExamples, SplitConfig, StoreExamples, context_firing
from saekit.autointerp.explain import ExplainConfig, Explanation, baseline_explanation, llm_explanation
from saekit.autointerp.metrics import ScoreResult, mean
from saekit.autointerp.prompts import PromptTemplate, load_prompts
from saekit.autointerp.scorers import (
    Embedder,
    ScoringConfig,
    detection,
    embedding,
    fuzzing,
    intruder,
    load_embedder,
)
from saekit.errors import SaekitError
from saekit.io import read_json, write_json, write_text
from saekit.models.loading import LoadedModel
from saekit.render import markdown_inline, markdown_table

FORMAT_VERSION = 1
AUTOINTERP_DIR = "autointerp"
SCORES, MANIFEST, REPORT, CACHE_DIR = "scores.json", "manifest.json", "report.md", "cache"
EXPLAINERS = ("llm", "baseline")
EXPLANATION_SCORERS = ("detection", "fuzzing", "embedding")
METRICS = ("balanced_accuracy", "f1", "auroc")


@dataclass
class AutointerpConfig:
    """Everything an explain-and-score run needs (the CLI fills it from flags)."""

    latents: int | None = 20  # the first N explainable latents; None: all
    backend: BackendChoice = field(default_factory=BackendChoice)
    split: SplitConfig = field(default_factory=SplitConfig)
    explain: ExplainConfig = field(default_factory=ExplainConfig)
    scoring: ScoringConfig = field(default_factory=ScoringConfig)
    explainers: tuple[str, ...] = EXPLAINERS
    prompts_dir: str | None = None  # None: the templates shipped in saekit/prompts
    cache_dir: str | None = None  # None: OUT_DIR/cache
    latents_in_flight: int = 4
    progress: bool = True

    def validate(self) -> AutointerpConfig:
        unknown = set(self.explainers) - set(EXPLAINERS)
        if unknown or not self.explainers:
            raise SaekitError(f"explainers must be among {EXPLAINERS}, got {self.explainers}")
        if self.latents is not None and self.latents < 1:
            raise SaekitError(f"the number of latents must be at least 1, got {self.latents}")
        self.split.validate()
        if self.backend.kind == "openai":  # before any model loads: a bad URL or missing key fails at once
            self.backend.openai.validate()
        return self

    def public(self) -> dict[str, Any]:
        data = asdict(self)
        data["backend"] = self.backend.public()
        return data


# ---- records: what scores.json holds, as types (their fields, in order, are its keys) ----------------------
@dataclass(frozen=True)
class ExampleCounts:
    """How many examples a latent had to explain from and to score on."""

    train: int
    test_activating: int
    test_nonactivating: int


@dataclass(frozen=True)
class ExplanationRecord:
    """One explainer's explanation of a latent; ``text`` None (with an ``error``) where it gave none."""

    text: str | None
    error: str | None


@dataclass
class LatentRecord:
    """Everything about one latent: its examples, each explainer's explanation and scores, the intruder test."""

    latent: int
    examples: ExampleCounts
    explanations: dict[str, ExplanationRecord]  # by explainer
    scores: dict[str, dict[str, ScoreResult]]  # by explainer, then scorer
    intruder: ScoreResult | None = None  # None: the intruder test was off (absent from scores.json)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        if self.intruder is None:
            del data["intruder"]
        return data

    def errors(self) -> list[str]:
        """Every error message the record holds, explanations first."""
        errors = [e.error for e in self.explanations.values() if e.error]
        for result in [*(s for by in self.scores.values() for s in by.values()), self.intruder]:
            errors += result.errors if result is not None else []
        return errors


@dataclass(frozen=True)
class MeanOver:
    """A mean over the latents that have the value (None: none has it), and how many those are."""

    mean: float | None
    latents: int

    @staticmethod
    def of(values: list[float | None]) -> MeanOver:
        return MeanOver(*mean(values))


@dataclass(frozen=True)
class ScorerSummary:
    """One scorer's metrics (see METRICS) averaged over latents, and the latents it got no answer for."""

    balanced_accuracy: MeanOver
    f1: MeanOver
    auroc: MeanOver
    unanswered_latents: int

    def metric(self, name: str) -> MeanOver:
        return getattr(self, name)


@dataclass(frozen=True)
class ExplainerSummary:
    explained: int  # latents the explainer gave an explanation for
    scorers: dict[str, ScorerSummary]  # only the scorers that scored some


@dataclass(frozen=True)
class Chance:
    balanced_accuracy: float
    auroc: float
    intruder_accuracy: float


@dataclass(frozen=True)
class IntruderSummary:
    accuracy: MeanOver
    k: int
    chance: float


@dataclass(frozen=True)
class ScoresSummary:
    """The means over latents that ``scores.json`` and the report give, next to chance."""

    latents: int
    explainers: dict[str, ExplainerSummary]
    chance: Chance
    intruder: IntruderSummary | None = None  # None: the intruder test was off (absent from scores.json)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        if self.intruder is None:
            del data["intruder"]
        return data


@dataclass
class AutointerpResult:
    """What :func:`score_examples` wrote: the summary and per-latent records, and the manifest (a JSON
    document as written to ``manifest.json``)."""

    summary: ScoresSummary
    manifest: dict[str, Any]
    latents: list[LatentRecord]


@dataclass
class _Context:
    client: CachedClient
    prompts: dict[str, PromptTemplate]
    config: AutointerpConfig
    embedder: Embedder | None
    everyone: list[LatentExamples]


async def _score_explanation(ctx: _Context, explanation: Explanation, examples: LatentExamples,
                             ) -> dict[str, ScoreResult]:
    scoring = ctx.config.scoring
    if explanation.text is None:
        failed = ScoreResult.failed(f"no explanation: {explanation.error}")
        return {name: failed for name in EXPLANATION_SCORERS if _enabled(ctx, name)}
    jobs: dict[str, Awaitable[ScoreResult]] = {}
    if scoring.detection:
        jobs["detection"] = detection(ctx.client, ctx.prompts["detect"], explanation.text, examples, scoring)
    if scoring.fuzzing:
        jobs["fuzzing"] = fuzzing(ctx.client, ctx.prompts["fuzz"], explanation.text, examples, scoring)
    out = dict(zip(jobs, await asyncio.gather(*jobs.values())))
    if ctx.embedder is not None:
        out["embedding"] = embedding(ctx.embedder, explanation.text, examples)
    return out


def _enabled(ctx: _Context, name: str) -> bool:
    if name == "embedding":
        return ctx.embedder is not None
    return bool(getattr(ctx.config.scoring, name))


async def _score_latent(ctx: _Context, examples: LatentExamples) -> LatentRecord:
    explanations: list[Explanation] = []
    if "llm" in ctx.config.explainers:
        explanations.append(await llm_explanation(ctx.client, ctx.prompts["explain"], examples, ctx.config.explain))
    if "baseline" in ctx.config.explainers:
        explanations.append(baseline_explanation(examples, ctx.config.explain))
    scored = await asyncio.gather(*(_score_explanation(ctx, e, examples) for e in explanations))
    record = LatentRecord(
        latent=examples.latent,
        examples=ExampleCounts(train=len(examples.train), test_activating=len(examples.test_activating),
                               test_nonactivating=len(examples.test_nonactivating)),
        explanations={e.explainer: ExplanationRecord(text=e.text, error=e.error) for e in explanations},
        scores={e.explainer: s for e, s in zip(explanations, scored)},
    )
    if ctx.config.scoring.intruder:
        record.intruder = await intruder(ctx.client, ctx.prompts["intruder"], examples, ctx.everyone,
                                         ctx.config.scoring)
    return record


async def _score_all(ctx: _Context, latents: list[LatentExamples]) -> list[LatentRecord]:
    gate = asyncio.Semaphore(max(1, ctx.config.latents_in_flight))

    async def one(examples: LatentExamples) -> LatentRecord:
        async with gate:
            return await _score_latent(ctx, examples)

    tasks = [asyncio.ensure_future(one(examples)) for examples in latents]
    records = []
    try:
        bar = tqdm(asyncio.as_completed(tasks), total=len(tasks), desc="explaining latents", unit="latent",
                   disable=not ctx.config.progress)
        for finished in bar:
            records.append(await finished)
    finally:
        for task in tasks:
            task.cancel()
    return sorted(records, key=lambda r: r.latent)


def summarize(records: list[LatentRecord], config: AutointerpConfig) -> ScoresSummary:
    """Mean of each scorer's metrics over latents (missing values left out, their count reported)."""
    explainers: dict[str, ExplainerSummary] = {}
    for explainer in config.explainers:
        per_scorer: dict[str, ScorerSummary] = {}
        for scorer in EXPLANATION_SCORERS:
            found = [r.scores.get(explainer, {}).get(scorer) for r in records]
            results = [x for x in found if x is not None]
            if not results:
                continue
            means = {metric: MeanOver.of([getattr(x, metric) for x in results]) for metric in METRICS}
            per_scorer[scorer] = ScorerSummary(**means, unanswered_latents=sum(1 for x in results if x.n == 0))
        explained = sum(1 for r in records if (e := r.explanations.get(explainer)) is not None and e.text)
        explainers[explainer] = ExplainerSummary(explained=explained, scorers=per_scorer)
    chance = 1 / (config.scoring.intruder_k + 1)
    intruder_summary = None
    if config.scoring.intruder:
        accuracy = MeanOver.of([r.intruder.accuracy if r.intruder is not None else None for r in records])
        intruder_summary = IntruderSummary(accuracy=accuracy, k=config.scoring.intruder_k, chance=chance)
    return ScoresSummary(latents=len(records), explainers=explainers,
                         chance=Chance(balanced_accuracy=0.5, auroc=0.5, intruder_accuracy=chance),
                         intruder=intruder_summary)


def _fmt(entry: MeanOver | None) -> str:
    if entry is None or entry.mean is None:
        return "n/a"
    return f"{entry.mean:.3f} (n={entry.latents})"


def report_markdown(summary: ScoresSummary, manifest: dict[str, Any]) -> str:
    """``report.md``: the summary's means beside chance; ``manifest`` is the JSON written to ``manifest.json``."""
    backend = manifest["backend"]
    explainers = summary.explainers
    names = [e for e in EXPLAINERS if e in explainers]
    header = {"llm": "LLM explainer", "baseline": "no-LLM baseline"}
    lines = [
        "# Automated interpretability", "",
        f"Explanations and scores produced by **{markdown_inline(backend['description'])}**"
        + (" (a 135M-parameter model: expect modest scores)" if "135M" in backend["description"] else "") + ".",
        f"Latents scored: {summary.latents} of {manifest['latents']['examined']} examined; skipped: "
        + (", ".join(f"{k}: {markdown_inline(v)}" for k, v in manifest["latents"]["skipped"].items()) or "none") + ".",
        "The baseline explains each latent by its most frequent activating tokens, with no LLM; "
        "it is scored by the same scorers and is the floor to read the LLM explainer against.", "",
    ]
    rows = []
    for scorer in EXPLANATION_SCORERS:
        for metric in METRICS:
            scored = [explainers[n].scorers.get(scorer) for n in names]
            cells = [s.metric(metric) if s is not None else None for s in scored]
            if all(c is None or c.mean is None for c in cells):
                continue
            chance = "0.5" if metric != "f1" else "-"
            rows.append([scorer, metric.replace("_", " "), chance, *(_fmt(c) for c in cells)])
    lines.append(markdown_table(["scorer", "metric", "chance", *(header[n] for n in names)], rows))
    if summary.intruder is not None:
        intruder_row = summary.intruder
        lines += ["", f"Intruder test (no explanation; pick the 1 context of another latent among "
                      f"{intruder_row.k + 1}): accuracy {_fmt(intruder_row.accuracy)}, "
                      f"chance {intruder_row.chance:.3f}."]
    usage = manifest["usage"]
    lines += ["", "Explained: " + ", ".join(f"{header[n]} {explainers[n].explained}" for n in names) + ".",
              f"Embedding scorer: {markdown_inline(manifest['embedding'])}.",
              f"LLM requests this run: {usage['requests']} sent, {usage['cache_hits']} answered from the cache, "
              f"{usage['failures']} failed; tokens {usage['prompt_tokens']} in / {usage['completion_tokens']} out; "
              f"estimated cost ${usage['cost_usd']:.4f}.",
              "Missing scores (failed requests, unreadable answers) are left out of the means, never counted as 0.",
              ""]
    return "\n".join(lines)


def _usage(client: CachedClient, backend: Backend) -> dict[str, Any]:
    usage = asdict(backend.usage)
    return {**usage, "requests": client.stats.calls - client.stats.errors, "cache_hits": client.stats.cache_hits,
            "failures": client.stats.errors}


def _backend_config(backend: Backend) -> dict[str, Any]:
    """The backend's own settings, as safe to save as its ``public()`` makes them (key variable names only)."""
    config = getattr(backend, "config", None)
    return config.public() if hasattr(config, "public") else {}


def probe_backend(backend: Backend) -> None:
    """Let a backend that talks to an endpoint check it answers (raises SaekitError); others have no probe."""
    probe = getattr(backend, "probe", None)  # the local backend and test doubles have none
    if callable(probe):
        probe()


def _raise_if_nothing_answered(client: CachedClient, records: list[LatentRecord], scores: Path) -> None:
    """A run whose every request failed is an error (its records, all missing, are already written)."""
    stats = client.stats
    if stats.calls == 0 or stats.errors < stats.calls or stats.cache_hits:
        return
    errors = [e for r in records for e in r.errors()]
    last = one_line(errors[-1])[:300] if errors else "unknown"
    raise SaekitError(f"every one of the {stats.errors} autointerp requests failed (last error: {last}); "
                      f"their scores are recorded as missing in {scores}")


def score_examples(example_set: ExampleSet, out_dir: str | Path, config: AutointerpConfig, backend: Backend,
                   source: dict[str, Any] | None = None) -> AutointerpResult:
    """Explain and score ``example_set`` with ``backend``; write scores, manifest and report to ``out_dir``.

    ``source`` (where the examples came from) is recorded in the manifest as given, JSON.

    Raises SaekitError, before anything is sent, if the backend's endpoint does not answer its probe,
    and after writing, if every request of the run failed.
    """
    config.validate()
    probe_backend(backend)  # first: a mistyped --base-url fails before prompts, cache or embedder load
    out_dir = Path(out_dir)
    prompts = load_prompts(config.prompts_dir)
    cache = ResponseCache(config.cache_dir or out_dir / CACHE_DIR)
    client = CachedClient(backend, cache)
    embedder, embedding_note = (load_embedder() if config.scoring.embedding
                                else (None, "disabled"))
    ctx = _Context(client, prompts, config, embedder, example_set.latents)
    started = datetime.datetime.now(datetime.timezone.utc)
    records = asyncio.run(_score_all(ctx, example_set.latents))
    summary = summarize(records, config)
    manifest = {
        "format_version": FORMAT_VERSION, "created": started.isoformat(timespec="seconds"),
        "python": platform.python_version(), "source": source or {},
        "backend": {"kind": client.settings.get("backend"), "model_id": backend.model_id,
                    "description": backend.description(), "settings": client.settings,
                    "config": _backend_config(backend)},
        "prompts": {name: {"sha256": t.sha256, "source": t.source} for name, t in prompts.items()},
        "embedding": embedding_note if embedder is None else f"{embedding_note}, mean-pooled",
        "sampler": asdict(config.split), "explain": asdict(config.explain), "scoring": asdict(config.scoring),
        "seeds": {"split": config.split.seed, "scoring": config.scoring.seed},
        "latents": {"requested": config.latents, "examined": example_set.examined, "scored": len(records),
                    "skipped": example_set.skipped_counts(),
                    "skipped_latents": {str(k): v for k, v in sorted(example_set.skipped.items())}},
        "cache_dir": str(cache.directory), "usage": _usage(client, backend), "config": config.public(),
    }
    write_json(out_dir / SCORES, {"format_version": FORMAT_VERSION, "model": backend.description(),
                                  "summary": summary.to_json(), "latents": [r.to_json() for r in records]})
    write_json(out_dir / MANIFEST, manifest)
    write_text(out_dir / REPORT, report_markdown(summary, manifest))
    _raise_if_nothing_answered(client, records, out_dir / SCORES)
    return AutointerpResult(summary=summary, manifest=manifest, latents=records)


def run_autointerp(run_dir: str | Path, config: AutointerpConfig | None = None, backend: Backend | None = None,
                   loaded: LoadedModel | None = None, subject: LoadedModel | None = None) -> Path:
    """Explain and score a run's analysed latents; writes and returns ``RUN_DIR/autointerp``.

    ``loaded`` is the explainer/scorer model for the local backend (loaded from the config if None);
    ``subject`` the run's own model, needed only for hard negatives (``split.negatives='neighbours'``).
    """
    from saekit.analysis.store import ANALYSIS_DIR

    config = (config or AutointerpConfig()).validate()
    run_dir = Path(run_dir)
    analysis_dir = run_dir / ANALYSIS_DIR
    store = StoreExamples(analysis_dir, config.split)
    if config.split.negatives == "neighbours":
        store.set_firing(context_firing(run_dir, analysis_dir, subject))
    example_set = store.select(config.latents)
    own_backend = backend is None
    backend = backend or make_backend(config.backend, loaded)
    source = {"run_dir": str(run_dir), "analysis": {k: store.manifest.get(k) for k in
                                                     ("model", "site", "target_site", "latents_analysed",
                                                      "tokens_counted", "run")}}
    try:
        score_examples(example_set, run_dir / AUTOINTERP_DIR, config, backend, source)
    finally:
        if own_backend:
            backend.close()
    return run_dir / AUTOINTERP_DIR


def load_scores(run_dir: str | Path) -> dict[str, Any] | None:
    """``scores.json`` as the JSON document it is (files of any version read it; None: autointerp has not run)."""
    path = Path(run_dir) / AUTOINTERP_DIR / SCORES
    return read_json(path, "autointerp scores") if path.is_file() else None


def scores_for_dashboard(run_dir: str | Path) -> dict[int, dict[str, Any]]:
    """Per latent id: explanations and headline scores for the dashboard ({} if autointerp has not run).

    Read from ``scores.json`` leniently, key by key (a file of an older format still shows what it has), into
    the JSON-shaped view the dashboard pages and uploads take.

    Each value: ``{"explanation": str|None, "baseline": str|None, "model": str, "scores": {explainer:
    {scorer: {"balanced_accuracy", "f1", "auroc", "n"}}}, "intruder": {"accuracy", "chance", "n"}|None,
    "errors": [str]}``.
    """
    data = load_scores(run_dir)
    if data is None:
        return {}
    out: dict[int, dict[str, Any]] = {}
    for record in data["latents"]:
        explanations = record.get("explanations", {})
        scores = {explainer: {scorer: {k: result.get(k) for k in (*METRICS, "n")}
                              for scorer, result in by_scorer.items()}
                  for explainer, by_scorer in record.get("scores", {}).items()}
        errors = [x["error"] for x in explanations.values() if x.get("error")]
        errors += [e for by_scorer in record.get("scores", {}).values() for result in by_scorer.values()
                   for e in result.get("errors", [])]
        intruder_result = record.get("intruder")
        out[int(record["latent"])] = {
            "explanation": (explanations.get("llm") or {}).get("text"),
            "baseline": (explanations.get("baseline") or {}).get("text"),
            "model": data.get("model"), "scores": scores,
            "intruder": None if intruder_result is None else {k: intruder_result.get(k)
                                                              for k in ("accuracy", "chance", "n")},
            "errors": list(dict.fromkeys(errors))[:5],
        }
    return out
