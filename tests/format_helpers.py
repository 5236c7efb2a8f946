"""What the format reader tests share: a refusal is one line and leaves the directory as it was.

Imported by name: ``pythonpath = ["tests"]`` in pyproject.toml puts ``tests/`` on ``sys.path``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from saekit.errors import SaekitError


def one_line(excinfo: pytest.ExceptionInfo) -> str:
    """The SaekitError's message, checked to be one non-empty line."""
    message = str(excinfo.value)
    assert message and "\n" not in message
    return message


def refusal(read: Callable[..., Any], directory: Path) -> str:
    """``read(directory)`` refuses in one line and changes nothing in ``directory``; returns the line."""
    before = sorted(p.name for p in directory.iterdir())
    with pytest.raises(SaekitError) as excinfo:
        read(directory)
    assert sorted(p.name for p in directory.iterdir()) == before
    return one_line(excinfo)


def pickle_only(directory: Path, config_name: str, pickle_name: str) -> Path:
    """A dictionary directory whose weights exist only as a pickle (what saekit must never open)."""
    directory.mkdir()
    (directory / config_name).write_text("{}")
    (directory / pickle_name).write_bytes(b"\x80\x04not really")
    return directory
