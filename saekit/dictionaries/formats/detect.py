"""Which format a path holds, and reading any of them: the one entry point for imported dictionaries.

A path is named by its files, the first row of :mod:`.table`'s table that recognises them (the formats and their
files are listed there), or by a prefix such as ``saelens:PATH``. ``read_dictionaries`` returns one
(dictionary, source) per dictionary found, in layer order.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from saekit.dictionaries.base import Dictionary
from saekit.dictionaries.formats.table import (
    CONVERT_TARGETS,
    FORMATS,
    READ_FORMATS,
    WRITE_FORMATS,
    reader,
)
from saekit.errors import SaekitError

__all__ = ["CONVERT_TARGETS", "READ_FORMATS", "WRITE_FORMATS", "detect_format",
           "read_dictionaries", "split_prefix"]


def split_prefix(name: str) -> tuple[str | None, Path]:
    """``saelens:PATH`` -> ("saelens", PATH); a plain path -> (None, PATH).

    ``WORD:PATH`` where WORD is no format, PATH exists and the name as a whole does not, is a misspelt
    prefix (``saelen:dir``): refused naming the formats, rather than reported as a missing path."""
    prefix, _, rest = name.partition(":")
    if rest and prefix in READ_FORMATS:
        return prefix, Path(rest)
    if rest and re.fullmatch(r"[A-Za-z][\w-]+", prefix) and Path(rest).exists() and not Path(name).exists():
        raise SaekitError(f"unknown format {prefix!r} in {name}; name one of {', '.join(READ_FORMATS)} "
                          "(or hf:REPO[:PATH]), or leave the prefix out to detect it")
    return None, Path(name)


def detect_format(path: Path) -> str:
    """The format a path holds; one line naming what was looked for if none."""
    if not path.exists():
        raise SaekitError(f"{path} does not exist; give a run directory or a dictionary directory")
    found = next((fmt.name for fmt in FORMATS if fmt.detect(path)), None)
    if found is not None:
        return found
    if not path.is_dir():
        raise SaekitError(f"{path} is a file; give the directory that holds the dictionary's files")
    raise SaekitError(f"{path} holds no dictionary saekit knows ({', '.join(fmt.describe for fmt in FORMATS)}); "
                      "name the format with a prefix such as saelens:PATH if the files are renamed")


def read_dictionaries(name: str | Path, fmt: str | None = None) -> tuple[str, list[tuple[Dictionary, dict[str, Any]]]]:
    """The format and every (dictionary, source) a path holds; ``fmt`` (or a ``FORMAT:`` prefix) skips detection."""
    prefix, path = split_prefix(str(name))
    fmt = fmt or prefix or detect_format(path)
    return fmt, reader(fmt)(path)
