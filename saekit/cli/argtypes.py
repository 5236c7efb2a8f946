"""Argument types shared by the subcommands' parsers: each rejects bad input with a message naming it."""

from __future__ import annotations

import argparse


def _number(text: str, kind: type, what: str) -> int | float:
    try:
        return kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None


def positive_int(text: str) -> int:
    value = int(_number(text, int, "a positive number"))
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def non_negative_int(text: str) -> int:
    value = int(_number(text, int, "a whole number >= 0"))
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {text!r}")
    return value


def non_negative_float(text: str) -> float:
    value = float(_number(text, float, "a number"))
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}")
    return value


def add_force_flag(parser: argparse.ArgumentParser, output: str = "the output directory") -> None:
    """``--force``: replace an output directory that holds files this command did not write."""
    parser.add_argument("--force", action="store_true",
                        help=f"replace {output} even if it holds files this command did not write (they are deleted)")


DEFAULTS_NOTE = " (defaults in [])"  # after a settings group's heading, where a command has no --config
