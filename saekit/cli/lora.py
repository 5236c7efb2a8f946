"""The ``lora`` subcommand: train LoRA adapters on the model around a run's frozen dictionary, then evaluate them."""

from __future__ import annotations

import argparse

from saekit.cli.argtypes import DEFAULTS_NOTE, positive_int
from saekit.cli.imports import NAME_HELP, add_dictionary_flags, run_dir
from saekit.settings import add_flags, from_args
from saekit.training.lora import DEFAULT_NAME, AdapterSettings


def add_lora_parser(subparsers: argparse._SubParsersAction) -> None:
    lora = subparsers.add_parser(
        "lora", help="train LoRA adapters on the model around a run's frozen dictionary (KL to the original model)",
        description="Freeze the run's dictionary, splice it in, and train LoRA adapters on the model's layers after "
                    "its site so the spliced model's next-token distribution approaches the original model's "
                    "(Chen, Engels, Tegmark 2025). Writes RUN/adapters/NAME/ (peft safetensors adapter, log, "
                    "checkpoint) and an evaluation against the ORIGINAL model (metrics.json, report.md).")
    lora.add_argument("run", metavar="RUN", help=NAME_HELP)
    lora.add_argument("--name", default=DEFAULT_NAME, help="the adapter's directory under RUN/adapters/ "
                                                          "[%(default)s]")
    lora.add_argument("--resume", action="store_true", help="continue a killed adapter run from its checkpoint")
    lora.add_argument("--eval-tokens", type=positive_int, default=None,
                      help="held-out tokens of the evaluation (default: the run's eval_tokens)")
    add_flags(lora, AdapterSettings, title="LoRA settings (defaults in [])", note=DEFAULTS_NOTE)
    add_dictionary_flags(lora)
    lora.set_defaults(handler=_lora)


def _lora(args: argparse.Namespace) -> int:
    from saekit.evaluation.adapted import evaluate_adapter
    from saekit.training.lora import adapter_dir, plan_adapter, train_adapter

    settings = from_args(AdapterSettings, args).validate()  # range errors name the flag, before anything loads
    run = run_dir(args, args.run)
    adapter_dir(run, args.name)  # a bad name is one line now
    plan = plan_adapter(run, settings)  # no dictionary, layers beyond the model, unknown modules: before the model
    loaded = plan.config.data.load_model(plan.config.run.device)
    out = train_adapter(run, settings, loaded=loaded, name=args.name, resume=args.resume)
    metrics = evaluate_adapter(run, out, loaded=loaded, eval_tokens=args.eval_tokens)
    before, after = metrics["delta_ce_spliced"], metrics["delta_ce_adapted_spliced"]
    print(f"delta CE against the original model: spliced {before['mean']:.4f} ± {before['se']:.4f} -> adapted + "
          f"spliced {after['mean']:.4f} ± {after['se']:.4f} nats (the adapted model is not the original); report: "
          f"{out / 'report.md'}")
    return 0
