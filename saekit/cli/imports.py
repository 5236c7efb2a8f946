"""Naming a dictionary on the command line: a run directory, or an imported dictionary in any format.

``add_dictionary_flags`` gives a run-taking command the ``--import-*`` flags; ``run_dirs`` /
``run_dir`` turn its arguments into run directories (importing on first use, see
:mod:`saekit.jobs.imported`). ``saekit import`` does the import alone, with every run-config flag.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from saekit.jobs.imported import ImportSettings
from saekit.settings import add_flags, copy_setting, flags_given, from_args, updated
from saekit.training.config import TrainConfig

NAME_HELP = ("a run directory, or a dictionary to import: a SAELens, sparsify, circuit-tracer, Gemma Scope or "
             "dictionary_learning path (detected, or FORMAT:PATH), or hf:REPO[:PATH] from the Hugging Face cache")


def add_dictionary_flags(parser: argparse.ArgumentParser) -> None:
    """The flags saying what an imported dictionary's files may not: its model and site, where its run goes."""
    add_flags(parser, ImportSettings, skip=("import_name",),
              title="imported dictionaries (a name that is not a saekit run; defaults in [])")


def _settings(args: argparse.Namespace) -> ImportSettings:
    return from_args(ImportSettings, args)


def run_dirs(args: argparse.Namespace, names: list[str]) -> list[Path]:
    """The run directories the names stand for (imports written on first use)."""
    from saekit.jobs.imported import resolve_runs

    return resolve_runs(names, _settings(args))


def run_dir(args: argparse.Namespace, name: str) -> Path:
    """The one run directory a single-dictionary command works on."""
    from saekit.jobs.imported import single_run

    return single_run(name, _settings(args))


@dataclass
class ImportCommand:
    """``saekit import``'s own names for the import settings (the model and sites are run-config flags)."""

    runs_dir: Path = copy_setting(ImportSettings, "imports_dir", flag=None, help="where the run directory goes")
    name: str | None = copy_setting(ImportSettings, "name", flag=None, help="its directory name (none: the "
                                    "source's name and a fingerprint of the import)")
    stats_tokens: int = copy_setting(ImportSettings, "stats_tokens", flag=None,
                                     help="training-split tokens for the activation means")


def _import(args: argparse.Namespace) -> int:
    from saekit.jobs.imported import import_dictionary

    command = from_args(ImportCommand, args)
    given = flags_given(args, TrainConfig)
    model, site, target = given.pop("model", None), given.pop("site", None), given.pop("target_site", None)
    base = updated(TrainConfig(), "command line", **given) if given else None
    settings = ImportSettings(model=model, site=site, target_site=target, imports_dir=command.runs_dir,
                              name=command.name, stats_tokens=command.stats_tokens)
    for directory in import_dictionary(args.source, settings, base):
        print(f"imported: {directory}")
    return 0


def add_import_parser(subparsers: argparse._SubParsersAction) -> None:
    """``saekit import SRC``: write the run directory of an imported dictionary, with any run-config flag."""
    parser = subparsers.add_parser(
        "import", help="make a run directory from a dictionary in another format (or on the hub)",
        description="Read SRC (" + NAME_HELP + ") and write a saekit run directory for it: config, dictionary, "
                    "activation means. --model and --site replace what the files say; the data flags set the "
                    "corpus and split later evaluation and analysis read. Commands taking a run also take SRC "
                    "directly and import it the same way.")
    parser.add_argument("source", help="the dictionary: PATH, FORMAT:PATH or hf:REPO[:PATH]")
    add_flags(parser, ImportCommand, title="import settings (defaults in [])")
    add_flags(parser, TrainConfig, skip=_not_for_imports())
    parser.set_defaults(handler=_import)


def _not_for_imports() -> tuple[str, ...]:
    """Run-config flags an import has no use for: the file decides the dictionary; nothing is trained."""
    from saekit.settings import flat_fields

    return tuple(spec.flat for spec in flat_fields(TrainConfig)
                 if spec.path[0] in ("dictionary", "optim") or spec.flat in ("name", "layers"))
