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


def gigabytes(text: str) -> float:
    """A memory budget in GB: a positive number (NaN refused)."""
    value = float(_number(text, float, "a number of GB"))
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number of GB, got {text!r}")
    return value


def unit_interval(text: str) -> float:
    """A share: a number in (0, 1]."""
    value = float(_number(text, float, "a number in (0, 1]"))
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1], got {text!r}")
    return value


def latent_count(text: str) -> int | None:
    """'all' (None) or a number of latents >= 1."""
    if text.lower() == "all":
        return None
    value = int(_number(text, int, "'all' or a number of latents"))
    if value < 1:
        raise argparse.ArgumentTypeError(f"the number of latents must be at least 1, got {value}")
    return value


def add_force_flag(parser: argparse.ArgumentParser, output: str = "the output directory") -> None:
    """``--force``: replace an output directory that holds files this command did not write."""
    parser.add_argument("--force", action="store_true",
                        help=f"replace {output} even if it holds files this command did not write (they are deleted)")
