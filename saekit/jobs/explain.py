"""Explain and score a run's latents: analyse first if needed, then autointerp, then refresh the dashboard.

A missing analysis store is made first; a store made from another dictionary is refused with one line
(before any explanation is written) asking for ``saekit analyze``, as the dashboard job does.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from saekit.analysis.analyze import analyze_run
from saekit.analysis.store import ANALYSIS_DIR, open_run_store, store_exists
from saekit.autointerp.backends import BackendChoice, LocalConfig, OpenAICompatibleBackend, OpenAIConfig
from saekit.autointerp.examples import SplitConfig
from saekit.autointerp.explain import ExplainConfig
from saekit.autointerp.pipeline import AutointerpConfig, run_autointerp
from saekit.autointerp.scorers import ScoringConfig
from saekit.jobs.dashboard import rebuild_existing_dashboard, run_lock
from saekit.settings import copy_setting, setting


@dataclass(frozen=True)
class ExplainSettings:
    """The settings of ``saekit explain`` (and ``control``): a flat view of :class:`AutointerpConfig`, each
    default read from the config class that holds it; :meth:`autointerp` builds the config."""

    backend: str = copy_setting(BackendChoice, "kind", flag=None, choices=("local", "openai"),
                                help="local: a transformers model in-process (offline); openai: any "
                                     "OpenAI-compatible chat endpoint")
    base_url: str = copy_setting(OpenAIConfig, "base_url", help="endpoint of --backend openai")
    model: str | None = setting(None, f"local: model spec (none: {LocalConfig.model}, the embedded "
                                f"SmolLM2-135M-Instruct); openai: model name (none: {OpenAIConfig.model})")
    api_key_env: str | None = copy_setting(OpenAIConfig, "api_key_env", metavar="NAME",
                                           help="NAME of the environment variable holding the API key (none: "
                                                "no key)")
    latents: int | None = copy_setting(AutointerpConfig, "latents", minimum=1, none="all",
                                       help="explain the first N explainable latents (all: every one)")
    concurrency: int = copy_setting(OpenAIConfig, "concurrency", minimum=1,
                                    help="requests in flight at once (openai backend)")
    max_connection_failures: int = copy_setting(OpenAIConfig, "max_connection_failures", minimum=1, metavar="N",
                                                help="stop the run once N requests in a row got no answer from "
                                                     "the endpoint (openai backend)")
    max_cost: float | None = copy_setting(OpenAIConfig, "max_cost_usd", flag=None, minimum=0, metavar="USD",
                                          help="stop sending requests before the estimated spend passes this "
                                               "(none: no cap)")
    input_price: float = copy_setting(OpenAIConfig, "input_price_per_1m", flag=None, minimum=0, metavar="USD",
                                      help="price per million prompt tokens, for cost accounting")
    output_price: float = copy_setting(OpenAIConfig, "output_price_per_1m", flag=None, minimum=0, metavar="USD",
                                       help="price per million completion tokens")
    top_logprobs: int = copy_setting(ScoringConfig, "top_logprobs", minimum=0, maximum=20,
                                     help="answer-token alternatives to request (0 if the endpoint has no "
                                          "logprobs; no AUROC)")
    negatives: str = copy_setting(SplitConfig, "negatives", choices=("random", "neighbours"),
                                  help="non-activating held-out contexts: random ones, or hard negatives from "
                                       "decoder neighbours (recomputes activations with the run's model)")
    show_activations: bool = copy_setting(ExplainConfig, "show_activations", switch=True,
                                          help="also show the explainer each marked token's activation (0-10); "
                                               "helps capable models")
    prompts_dir: str | None = copy_setting(AutointerpConfig, "prompts_dir", metavar="DIR",
                                           help="directory of prompt templates (explain/detect/fuzz/intruder.txt) "
                                                "replacing the packaged ones (none: the packaged ones)")

    def autointerp(self) -> AutointerpConfig:
        """The :class:`AutointerpConfig` these settings make, validated (a missing API key fails here)."""
        api_key_env = None if str(self.api_key_env).lower() in ("", "none") else self.api_key_env
        openai = OpenAIConfig(base_url=self.base_url, model=self.model or OpenAIConfig.model,
                              api_key_env=api_key_env, concurrency=self.concurrency, max_cost_usd=self.max_cost,
                              max_connection_failures=self.max_connection_failures,
                              input_price_per_1m=self.input_price, output_price_per_1m=self.output_price)
        local = LocalConfig(model=self.model or LocalConfig.model)
        config = AutointerpConfig(latents=self.latents, backend=BackendChoice(self.backend, local, openai),
                                  split=SplitConfig(negatives=self.negatives),
                                  explain=ExplainConfig(show_activations=self.show_activations),
                                  prompts_dir=str(self.prompts_dir) if self.prompts_dir else None)
        config.scoring = replace(config.scoring, top_logprobs=self.top_logprobs)
        return config.validate()


@dataclass
class ExplainResult:
    """Where the explanations went, whether an analysis had to be run, and the refreshed dashboard."""

    autointerp_dir: Path
    analysed: bool
    dashboard: Path | None


def explain_run(run_dir: Path, config: AutointerpConfig) -> ExplainResult:
    """Explain and score ``run_dir``'s analysed latents, holding the run's lock throughout."""
    run_dir = Path(run_dir)
    if config.backend.kind == "openai":  # a dead endpoint fails now, not after a long analysis
        OpenAICompatibleBackend(config.backend.openai).probe()
    with run_lock(run_dir):
        analysed = not store_exists(run_dir / ANALYSIS_DIR)
        if analysed:
            analyze_run(run_dir)
        else:
            open_run_store(run_dir)  # refuses a store of another dictionary before autointerp writes anything
        out = run_autointerp(run_dir, config)
        return ExplainResult(out, analysed, rebuild_existing_dashboard(run_dir))
