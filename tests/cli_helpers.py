"""What the command-line tests share: running ``saekit ARGV`` in-process and reading its one stderr line.

Imported by name: ``pythonpath = ["tests"]`` in pyproject.toml puts ``tests/`` on ``sys.path``.
"""

from __future__ import annotations

import pytest
from transformers.utils import logging as transformers_logging

from saekit.cli import main


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """``saekit ARGV`` in-process: (exit code, stderr, stdout); argparse's SystemExit becomes the code."""
    capsys.readouterr()
    try:
        code = main(argv)
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 1
    captured = capsys.readouterr()
    return code, captured.err, captured.out


def one_line(capsys: pytest.CaptureFixture[str]) -> str:
    """What the command printed on stderr, which must be one line."""
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


@pytest.fixture
def quiet_model_loading():
    """No "Loading weights" bars: what the CLI prints on stderr is then only its own."""
    transformers_logging.disable_progress_bar()
    yield
    transformers_logging.enable_progress_bar()
