"""The ``convert`` subcommand: a dictionary from one format into another (saekit, SAELens, sparsify, circuit-tracer),
or an analysed run into a Neuronpedia upload set."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from saekit.settings import setting


@dataclass(frozen=True)
class ConvertSettings:
    """What ``saekit convert`` records beside the source and the target format."""

    model_name: str | None = setting(None, "the model name to record where the source has none (circuit-tracer's "
                                     "model_name; none: the source's)")


def add_convert_parser(subparsers: argparse._SubParsersAction) -> None:
    from saekit.cli.argtypes import add_force_flag
    from saekit.dashboard.neuronpedia_upload import UploadConfig
    from saekit.dictionaries.formats.detect import CONVERT_TARGETS, READ_FORMATS
    from saekit.settings import add_flags

    convert = subparsers.add_parser(
        "convert", help="write a dictionary in another library's format",
        description="Read SRC (a saekit run or directory of runs, or a dictionary in any format saekit reads: "
                    f"{', '.join(READ_FORMATS)}; the format is detected, or named as FORMAT:PATH) and write it to "
                    "OUT in --to's layout. A directory of per-layer MLP transcoder runs (or one CLT run) becomes a "
                    "circuit-tracer set; an analysed run (saekit analyze, and explain) becomes a Neuronpedia "
                    "upload set.")
    convert.add_argument("source", help="run directory, dictionary directory, FORMAT:PATH, or hf:OWNER/REPO[:PATH] "
                                        "from the local Hugging Face cache")
    convert.add_argument("--to", required=True, choices=CONVERT_TARGETS,
                         help="the target format")
    convert.add_argument("out", type=Path, help="output directory (replaced whole once complete; it may not hold "
                                                "the source, nor files another command wrote unless --force)")
    add_force_flag(convert, "OUT")
    add_flags(convert, ConvertSettings, title="conversion settings (defaults in [])")
    add_flags(convert, UploadConfig, title="--to neuronpedia: the upload set's names and contents")
    convert.set_defaults(handler=_convert)


def _convert(args: argparse.Namespace) -> int:
    from saekit.dashboard.neuronpedia_upload import UploadConfig
    from saekit.jobs.convert import convert
    from saekit.settings import from_args

    settings, upload = from_args(ConvertSettings, args), from_args(UploadConfig, args)
    fmt, count, out = convert(args.source, args.to, args.out, model_name=settings.model_name, upload=upload,
                              force=args.force)
    print(f"{count} dictionar{'y' if count == 1 else 'ies'} ({fmt}) written as {args.to} to {out}")
    return 0
