"""The ``saekit`` command line: one subcommand per pipeline job; errors print one line and exit 1.

The bottom of the import graph. Each handler imports the stage or job it runs when it is called.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn

from saekit.cli.argtypes import add_force_flag, non_negative_float, non_negative_int, positive_int
from saekit.cli.imports import NAME_HELP, add_dictionary_flags, run_dirs
from saekit.dictionaries.registry import add_option_groups
from saekit.errors import SaekitError
from saekit.evaluation.effective_compute import law_name
from saekit.rundir import REPORT_FILE
from saekit.settings import add_flags, flags_given, from_args, updated
from saekit.training.config import TrainConfig

Handler = Callable[[argparse.Namespace], int]


MATCH_L0_HELP = "compare architectures at this L0 (default: the TopK runs' median L0, else all runs')"


def config_from_args(args: argparse.Namespace, base: TrainConfig | None = None, validate: bool = True) -> TrainConfig:
    """The --config file (or ``base``, or the defaults) with every setting flag given applied."""
    config = TrainConfig.from_file(args.config) if getattr(args, "config", None) else (base or TrainConfig())
    config = updated(config, "command line", **flags_given(args, TrainConfig))
    return config.validate() if validate else config


def _train(args: argparse.Namespace) -> int:
    from saekit.training.distributed import join_group, leave_group
    from saekit.training.run import train_many

    # With --sites the base's own site is never trained: each site's config is validated instead.
    config = config_from_args(args, validate=not args.sites)
    configs = [config]
    if args.sites:
        configs = site_configs(config, expand_sites(args.sites, config.data.model))
    group = join_group(config.run.device, args.distribute)  # None unless started by torchrun
    try:
        for run_dir in train_many(configs, args.runs_dir, resume=args.resume, group=group):
            print(f"trained: {run_dir}")
    finally:
        leave_group(group)
    return 0


def site_configs(config: TrainConfig, entries: list[str]) -> list[TrainConfig]:
    """One run per ``--sites`` entry: ``SITE`` or a transcoder's ``SITE->TARGET``, in ``NAME/SITE``.

    A plain entry of a transcoder config (``--target-site`` set) keeps the target's kind at the entry's
    layer, so ``--sites 'blocks.*.mlp_in' --target-site blocks.0.mlp_out`` is a transcoder per MLP.
    """
    from saekit.models.sites import Site, parse_site

    configs = []
    for entry in entries:
        site, _, target = (part.strip() for part in entry.partition("->"))
        if not target and config.target_site is not None:
            target = Site(parse_site(site).layer, parse_site(config.target_site).kind).name
        configs.append(config.updated(site=site, target_site=target or None, name=f"{config.name}/{site}").validate())
    return configs


def expand_sites(text: str, model: str) -> list[str]:
    """Comma-separated site names (or ``SITE->TARGET`` pairs); ``blocks.*.kind`` means every layer of the model.

    A ``*`` in a pair stands for the same layer on both sides."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    if any("*" in name for name in names):
        from saekit.models.loading import load_model_config  # reads the config file alone, no weights

        n_layers = int(load_model_config(model).num_hidden_layers)
        names = [expanded for name in names
                 for expanded in ([name.replace("*", str(i)) for i in range(n_layers)] if "*" in name else [name])]
    return names


def _sweep(args: argparse.Namespace) -> int:
    from saekit.jobs.sweep import SweepSettings, run_sweep

    settings = from_args(SweepSettings, args)
    config = config_from_args(args)
    widths: list[int | None] = list(settings.widths) if settings.widths else [None]
    summary = run_sweep(config, args.grid, widths, settings.runs_dir, resume=settings.resume,
                        match_l0=settings.match_l0)
    out = Path(settings.runs_dir) / config.name
    print(f"sweep of {len(summary['runs'])} dictionaries: {out / 'summary.md'}, {out / 'pareto.png'}")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from saekit.evaluation.evaluate import evaluate_joint, evaluate_run
    from saekit.evaluation.scaling_fit import resolve_law

    law = resolve_law(args.law, args.law_table)  # a bad table fails here, before any model loads
    runs = run_dirs(args, args.run_dirs)
    if len(runs) == 1:
        metrics = evaluate_run(runs[0], eval_tokens=args.eval_tokens, law=law, generations=args.generations)
        report = runs[0] / REPORT_FILE
    else:
        out = args.out or Path("runs") / ("joint-" + "-".join(d.name for d in runs))
        metrics = evaluate_joint(runs, out, eval_tokens=args.eval_tokens, law=law, generations=args.generations,
                                 force=args.force)
        report = out / REPORT_FILE
    losses = metrics.losses
    print(f"clean CE {losses.ce_clean.mean:.4f}, spliced CE {losses.ce_spliced.mean:.4f}, "
          f"delta CE {losses.delta_ce_spliced.mean:.4f} nats; report: {report}")
    return 0


def _generate(args: argparse.Namespace) -> int:
    from saekit.evaluation.evaluate import load_splice_targets
    from saekit.evaluation.generation import DEFAULT_PROMPTS, generations_markdown, side_by_side
    from saekit.training.config import load_run_config

    runs = run_dirs(args, args.run_dirs)
    config = load_run_config(runs[0])
    loaded = config.data.load_model(config.run.device)
    targets = [target for d in runs for target in load_splice_targets(d, loaded, config.run.device)]
    # side_by_side refuses an acausal splice (a crosscoder) before sampling anything.
    rows = side_by_side(loaded, targets, args.prompt or DEFAULT_PROMPTS, args.max_new_tokens, args.temperature,
                        args.seed)
    print(generations_markdown(rows))
    return 0


def _report(args: argparse.Namespace) -> int:
    from saekit.evaluation.summary import summarize

    summary = summarize(run_dirs(args, args.run_dirs), args.out, args.match_l0, force=args.force)
    print(f"summary of {len(summary['runs'])} runs: {args.out / 'summary.md'} and {args.out / 'summary.html'}")
    return 0


def _quickstart(args: argparse.Namespace) -> int:
    from saekit.jobs.quickstart import run_quickstart, terminal_report

    run_dir = run_quickstart(args.runs_dir, args.name, fresh=args.fresh)
    print(terminal_report(run_dir))  # the file keeps its markdown escapes; a terminal gets plain text
    print(f"run directory: {run_dir}\ndashboard: {run_dir / 'dashboard' / 'index.html'}")
    return 0


class OneLineParser(argparse.ArgumentParser):
    """argparse with its errors on one line (no usage block): what was wrong, and where help is.

    Subcommand parsers inherit the class, so every ``saekit`` command reports bad flags this way.
    """

    def error(self, message: str) -> NoReturn:
        print(f"{self.prog}: error: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(2)


def build_parser() -> argparse.ArgumentParser:
    from saekit.jobs.sweep import SweepSettings

    parser = OneLineParser(prog="saekit", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    # Raw descriptions: the architecture options' groups (add_option_groups) are laid-out text.
    train = sub.add_parser("train", help="train a dictionary on a model's activations",
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    train.add_argument("--config", help="JSON run config (a run's config.json; flags override it; default: none, "
                       "the settings' defaults)")
    train.add_argument("--runs-dir", default="runs", help="where run directories go [runs]")
    train.add_argument("--resume", action="store_true", help="continue from the run's last checkpoint")
    train.add_argument("--sites", help="train one dictionary per site from one forward pass: comma-separated, "
                       "blocks.*.resid_post = every layer; "
                       "transcoders as SITE->TARGET (blocks.*.mlp_in->blocks.*.mlp_out) "
                       "or with --target-site, whose kind is then taken at each site's layer; runs go to "
                       "RUNS_DIR/NAME/SITE (default: none, one run at --site)")
    train.add_argument("--distribute", choices=("data", "sites"), default="data",
                       help="under torchrun: 'data' splits every batch over the processes (one run, or several "
                       "stepping together), 'sites' deals the runs (--sites) out to the processes [data]")
    add_flags(train, TrainConfig)
    add_option_groups(train)
    train.set_defaults(handler=_train)

    sweep = sub.add_parser("sweep", help="train a grid of architectures x sparsity x widths in one pass; compare",
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    sweep.add_argument("--grid", required=True,
                       help="e.g. 'topk:k=16,32;jumprelu:l0_coefficient=0.0015;relu:l1_coefficient=0.1,0.15'; a "
                       "setting is a flag's name or one of the architecture's options below")
    sweep.add_argument("--config", help="JSON run config shared by the grid (flags override it; default: none, the "
                                        "settings' defaults)")
    add_flags(sweep, SweepSettings, title="sweep settings (defaults in [])")
    add_flags(sweep, TrainConfig)
    add_option_groups(sweep)
    sweep.set_defaults(handler=_sweep)

    evaluate = sub.add_parser("evaluate", help="evaluate runs: one alone, or several spliced jointly and alone")
    evaluate.add_argument("run_dirs", nargs="+", metavar="RUN", help=NAME_HELP)
    add_dictionary_flags(evaluate)
    evaluate.add_argument("--eval-tokens", type=positive_int, default=None,
                          help="held-out tokens (default: the run's eval_tokens)")
    evaluate.add_argument("--law", type=law_name, default="chinchilla",
                          help="scaling-law preset for effective compute: chinchilla (default) or besiroglu")
    evaluate.add_argument("--law-table", type=Path, default=None, metavar="CSV",
                          help="fit the scaling law to your own model family: a CSV with columns params,tokens,loss "
                               "(one row per trained model); replaces --law (default: none)")
    evaluate.add_argument("--out", type=Path, default=None, help="output directory of a joint evaluation "
                          "(default: runs/joint-NAME-NAME...)")
    add_force_flag(evaluate, "--out")
    evaluate.add_argument("--generations", type=non_negative_int, default=4, metavar="N",
                          help="side-by-side samples (clean vs spliced, 32 tokens each) in the report; beyond the "
                               "4 built-in prompts they repeat with new seeds; 0 samples none [4]")
    evaluate.set_defaults(handler=_evaluate)

    generate = sub.add_parser("generate", help="sample the same prompts from the clean and spliced model")
    generate.add_argument("run_dirs", nargs="+", metavar="RUN", help=NAME_HELP)
    add_dictionary_flags(generate)
    generate.add_argument("--prompt", action="append", help="a prompt (repeatable); default: a built-in set")
    generate.add_argument("--max-new-tokens", type=positive_int, default=32, help="tokens sampled per prompt "
                          "[%(default)s]")
    generate.add_argument("--temperature", type=non_negative_float, default=0.7,
                          help="sampling temperature; 0: greedy [%(default)s]")
    generate.add_argument("--seed", type=non_negative_int, default=0, help="sampling seed [%(default)s]")
    generate.set_defaults(handler=_generate)

    report = sub.add_parser("report", help="compare evaluated runs: markdown + HTML with plots")
    report.add_argument("run_dirs", nargs="+", metavar="RUN", help=NAME_HELP)
    add_dictionary_flags(report)
    report.add_argument("--out", type=Path, default=Path("runs/summary"), help="output directory [runs/summary]")
    add_force_flag(report, "--out")
    report.add_argument("--match-l0", type=float, default=None, help=MATCH_L0_HELP)
    report.set_defaults(handler=_report)

    quick = sub.add_parser("quickstart",
                           help="train and evaluate a TopK SAE on the default model (~3-5 min on 2 CPU cores)")
    quick.add_argument("--runs-dir", default="runs", help="where the run directory goes [%(default)s]")
    quick.add_argument("--name", default="quickstart", help="the run's name [%(default)s]")
    quick.add_argument("--fresh", action="store_true", help="discard an earlier quickstart run of this name")
    quick.set_defaults(handler=_quickstart)

    _add_optional_commands(sub)
    return parser


def _add_optional_commands(sub: argparse._SubParsersAction) -> None:
    """The analysis, autointerp, toy, circuit, convert, import, lora, probe and serve subcommands, each in its own
    ``saekit/cli`` module."""
    from saekit.cli.analysis import add_analysis_parsers
    from saekit.cli.autointerp import add_autointerp_parsers
    from saekit.cli.circuits import add_circuit_parsers
    from saekit.cli.convert import add_convert_parser
    from saekit.cli.imports import add_import_parser
    from saekit.cli.lora import add_lora_parser
    from saekit.cli.probe import add_probe_parsers
    from saekit.cli.reliability import add_reliability_parser
    from saekit.cli.serve import add_serve_parser
    from saekit.cli.toy import add_toy_parser

    add_analysis_parsers(sub)
    add_autointerp_parsers(sub)
    add_toy_parser(sub)
    add_circuit_parsers(sub)
    add_convert_parser(sub)
    add_import_parser(sub)
    add_lora_parser(sub)
    add_probe_parsers(sub)
    add_reliability_parser(sub)
    add_serve_parser(sub)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except SaekitError as err:
        print(f"saekit: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("saekit: interrupted; rerun with --resume to continue from the last checkpoint", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
