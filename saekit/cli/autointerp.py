"""The ``explain`` and ``control`` subcommands (``saekit.cli`` calls :func:`add_autointerp_parsers`).

Building the parser imports nothing heavy (no torch or transformers); the handlers import the pipeline.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from saekit.autointerp.backends import BackendChoice, LocalConfig, OpenAIConfig
from saekit.cli.argtypes import latent_count, non_negative_float, positive_int
from saekit.cli.imports import NAME_HELP, add_dictionary_flags, run_dir

if TYPE_CHECKING:
    from saekit.autointerp.pipeline import AutointerpConfig

DEFAULT_LATENTS = 20  # AutointerpConfig.latents (a test keeps them equal)
DEFAULT_ANALYSIS_TOKENS = 32_768  # ControlConfig.analysis_tokens


def _add_backend_flags(parser: argparse.ArgumentParser, takes_imports: bool = False) -> None:
    # The control retrains the run's recipe, which an imported dictionary does not have: runs only.
    if takes_imports:
        parser.add_argument("run_dir", metavar="RUN", help=NAME_HELP)
    else:
        parser.add_argument("run_dir", type=Path)
    parser.add_argument("--backend", choices=("local", "openai"), default="local",
                        help="local: a transformers model in-process (default; offline); openai: any "
                             "OpenAI-compatible chat endpoint")
    parser.add_argument("--base-url", default=OpenAIConfig.base_url, help="endpoint of --backend openai")
    parser.add_argument("--model", default=None,
                        help="local: model spec (default: the embedded SmolLM2-135M-Instruct); "
                             f"openai: model name (default {OpenAIConfig.model})")
    parser.add_argument("--api-key-env", default="OPENAI_API_KEY",
                        help="NAME of the environment variable holding the API key ('none': no key)")
    parser.add_argument("--latents", type=latent_count, default=DEFAULT_LATENTS, metavar="all|N",
                        help=f"explain the first N explainable latents (default {DEFAULT_LATENTS})")
    parser.add_argument("--concurrency", type=positive_int, default=OpenAIConfig.concurrency,
                        help="requests in flight at once (openai backend)")
    parser.add_argument("--max-connection-failures", type=positive_int, default=OpenAIConfig.max_connection_failures,
                        metavar="N", help="stop the run once N requests in a row got no answer from the endpoint "
                                          f"(openai backend; default {OpenAIConfig.max_connection_failures})")
    parser.add_argument("--max-cost", type=non_negative_float, default=None, metavar="USD",
                        help="stop sending requests before the estimated spend passes this")
    parser.add_argument("--input-price", type=non_negative_float, default=0.0, metavar="USD",
                        help="price per million prompt tokens, for cost accounting")
    parser.add_argument("--output-price", type=non_negative_float, default=0.0, metavar="USD",
                        help="price per million completion tokens")
    parser.add_argument("--top-logprobs", type=int, default=20, choices=range(0, 21), metavar="0-20",
                        help="answer-token alternatives to request (0 if the endpoint has no logprobs; no AUROC)")
    parser.add_argument("--negatives", choices=("random", "neighbours"), default="random",
                        help="non-activating held-out contexts: random ones, or hard negatives from decoder "
                             "neighbours (recomputes activations with the run's model)")
    parser.add_argument("--show-activations", action="store_true",
                        help="also show the explainer each marked token's activation (0-10); helps capable models")
    parser.add_argument("--prompts-dir", type=Path, default=None,
                        help="directory of prompt templates (explain/detect/fuzz/intruder.txt) replacing the "
                             "packaged ones")


def config_from_args(args: argparse.Namespace) -> AutointerpConfig:
    from saekit.autointerp.examples import SplitConfig
    from saekit.autointerp.explain import ExplainConfig
    from saekit.autointerp.pipeline import AutointerpConfig

    api_key_env = None if str(args.api_key_env).lower() in ("", "none") else args.api_key_env
    openai = OpenAIConfig(base_url=args.base_url, model=args.model or OpenAIConfig.model, api_key_env=api_key_env,
                          concurrency=args.concurrency, max_cost_usd=args.max_cost,
                          max_connection_failures=args.max_connection_failures,
                          input_price_per_1m=args.input_price, output_price_per_1m=args.output_price)
    local = LocalConfig(model=args.model or LocalConfig.model)
    config = AutointerpConfig(latents=args.latents, backend=BackendChoice(args.backend, local, openai),
                              split=SplitConfig(negatives=args.negatives),
                              explain=ExplainConfig(show_activations=args.show_activations),
                              prompts_dir=str(args.prompts_dir) if args.prompts_dir else None)
    config.scoring = replace(config.scoring, top_logprobs=args.top_logprobs)
    return config.validate()


def run_explain(args: argparse.Namespace) -> int:
    """``saekit explain RUN_DIR``: analyse first if needed, then explain and score; prints the report."""
    from saekit.autointerp.pipeline import REPORT
    from saekit.jobs.explain import explain_run

    config = config_from_args(args)  # bad flags fail before an import loads a model
    run = run_dir(args, args.run_dir)
    result = explain_run(run, config)
    if result.analysed:
        print(f"there was no analysis in {run}; ran `saekit analyze` first")
    print((result.autointerp_dir / REPORT).read_text())
    if result.dashboard is not None:
        print(f"dashboard with explanations: {result.dashboard / 'index.html'}")
    print(f"scores: {result.autointerp_dir / 'scores.json'}; manifest: {result.autointerp_dir / 'manifest.json'}")
    return 0


def run_control(args: argparse.Namespace) -> int:
    """``saekit control RUN_DIR``: the randomized-weights control, side by side with the real run."""
    from saekit.jobs.control import ControlConfig, randomized_control

    config = config_from_args(args)
    report = randomized_control(args.run_dir, ControlConfig(analysis_tokens=args.analysis_tokens, autointerp=config))
    print(report.read_text())
    print(f"report: {report}")
    return 0


def add_autointerp_parsers(subparsers: argparse._SubParsersAction) -> None:
    """Add ``explain RUN_DIR`` and ``control RUN_DIR`` to the main parser's subcommands."""
    explain = subparsers.add_parser("explain", help="explain and score a run's latents with an LLM (offline by "
                                                    "default) and a no-LLM baseline; writes RUN_DIR/autointerp")
    _add_backend_flags(explain, takes_imports=True)
    add_dictionary_flags(explain)
    explain.set_defaults(handler=run_explain)

    control = subparsers.add_parser("control", help="randomized-weights control: train the run's recipe on a "
                                                    "re-initialised model, explain and score both, side by side")
    _add_backend_flags(control)
    control.add_argument("--analysis-tokens", type=positive_int, default=DEFAULT_ANALYSIS_TOKENS,
                         help="tokens streamed to analyse each run (when an analysis is missing)")
    control.set_defaults(handler=run_control)
