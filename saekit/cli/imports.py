"""Naming a dictionary on the command line: a run directory, or an imported dictionary in any format.

``add_dictionary_flags`` gives a run-taking command the ``--import-*`` flags; ``run_dirs`` /
``run_dir`` turn its arguments into run directories (importing on first use, see
:mod:`saekit.jobs.imported`). ``saekit import`` does the import alone, with every run-config flag.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from saekit.cli.argtypes import positive_int
from saekit.settings import add_flags, flags_given, updated
from saekit.training.config import TrainConfig

NAME_HELP = ("a run directory, or a dictionary to import: a SAELens, sparsify, circuit-tracer, Gemma Scope or "
             "dictionary_learning path (detected, or FORMAT:PATH), or hf:REPO[:PATH] from the Hugging Face cache")


def add_dictionary_flags(parser: argparse.ArgumentParser) -> None:
    """The flags saying what an imported dictionary's files may not: its model and site, where its run goes."""
    from saekit.jobs.imported import DEFAULT_IMPORTS_DIR, ImportSettings

    group = parser.add_argument_group("imported dictionaries (a name that is not a saekit run)")
    group.add_argument("--import-model", default=None,
                       help="the model it was trained on, where the file names none or another name for it "
                            "(default, a local Hugging Face directory, or a hub id)")
    group.add_argument("--import-site", default=None, help="the site it reads, blocks.N.KIND, where the file says none")
    group.add_argument("--import-target-site", default=None, help="a transcoder's target site, with --import-site")
    group.add_argument("--imports-dir", type=Path, default=DEFAULT_IMPORTS_DIR,
                       help=f"where imported dictionaries' run directories go [{DEFAULT_IMPORTS_DIR}]")
    group.add_argument("--import-stats-tokens", type=positive_int, default=ImportSettings.stats_tokens,
                       help="training-split tokens for the activation means of the mean-ablation baseline "
                            f"[{ImportSettings.stats_tokens}]")


def _settings(args: argparse.Namespace):  # -> ImportSettings
    from saekit.jobs.imported import ImportSettings

    return ImportSettings(model=args.import_model, site=args.import_site, target_site=args.import_target_site,
                          imports_dir=args.imports_dir, stats_tokens=args.import_stats_tokens)


def run_dirs(args: argparse.Namespace, names: list[str]) -> list[Path]:
    """The run directories the names stand for (imports written on first use)."""
    from saekit.jobs.imported import resolve_runs

    return resolve_runs(names, _settings(args))


def run_dir(args: argparse.Namespace, name: str) -> Path:
    """The one run directory a single-dictionary command works on."""
    from saekit.jobs.imported import single_run

    return single_run(name, _settings(args))


def _import(args: argparse.Namespace) -> int:
    from saekit.jobs.imported import ImportSettings, import_dictionary

    given = flags_given(args)
    model, site, target = given.pop("model", None), given.pop("site", None), given.pop("target_site", None)
    base = updated(TrainConfig(), "command line", **given) if given else None
    settings = ImportSettings(model=model, site=site, target_site=target, imports_dir=args.runs_dir,
                              name=args.name, stats_tokens=args.stats_tokens)
    for directory in import_dictionary(args.source, settings, base):
        print(f"imported: {directory}")
    return 0


def add_import_parser(subparsers: argparse._SubParsersAction) -> None:
    """``saekit import SRC``: write the run directory of an imported dictionary, with any run-config flag."""
    from saekit.jobs.imported import DEFAULT_IMPORTS_DIR, ImportSettings

    parser = subparsers.add_parser(
        "import", help="make a run directory from a dictionary in another format (or on the hub)",
        description="Read SRC (" + NAME_HELP + ") and write a saekit run directory for it: config, dictionary, "
                    "activation means. --model and --site replace what the files say; the data flags set the "
                    "corpus and split later evaluation and analysis read. Commands taking a run also take SRC "
                    "directly and import it the same way.")
    parser.add_argument("source", help="the dictionary: PATH, FORMAT:PATH or hf:REPO[:PATH]")
    parser.add_argument("--runs-dir", type=Path, default=DEFAULT_IMPORTS_DIR,
                        help=f"where the run directory goes [{DEFAULT_IMPORTS_DIR}]")
    parser.add_argument("--name", default=None, help="its directory name (default: the source's name and a "
                                                     "fingerprint of the import)")
    parser.add_argument("--stats-tokens", type=positive_int, default=ImportSettings.stats_tokens,
                        help=f"training-split tokens for the activation means [{ImportSettings.stats_tokens}]")
    add_flags(parser, TrainConfig, skip=_not_for_imports())
    parser.set_defaults(handler=_import)


def _not_for_imports() -> tuple[str, ...]:
    """Run-config flags an import has no use for: the file decides the dictionary; nothing is trained."""
    from saekit.settings import flat_fields

    return tuple(spec.flat for spec in flat_fields(TrainConfig)
                 if spec.path[0] in ("dictionary", "optim") or spec.flat in ("name", "layers"))
