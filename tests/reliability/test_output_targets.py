"""Outputs never destroy inputs: every writer's target cases, generated from one table of writers.

Each writer (a command that writes a directory) is tried against every kind of target a careless user
can give it: a directory of their own files, the input itself, a folder inside the input, a folder
holding the input, a file, a path under a file, a directory another process is writing, one this
process may not write to. Each must end with one line on stderr (no traceback), exit status 1, and
every file under the test's folder as it was: planting ``shutil.rmtree(target)`` before any writer's
refusal makes these fail. ``--force`` replaces a foreign target on purpose, and a writer's own earlier
output is replaced without it.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from saekit.cli import main
from saekit.dictionaries import DictionaryConfig, build_dictionary
from saekit.dictionaries.registry import save_dictionary
from saekit.errors import SaekitError
from saekit.io import OUTPUT_RECORD, write_json
from saekit.training.config import TrainConfig

MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"


def _saved_run(root: Path) -> Path:
    """A run directory: its config beside a saved TopK SAE (what ``saekit train`` leaves)."""
    torch.manual_seed(0)
    dictionary = build_dictionary(DictionaryConfig("topk", 16, 40, k=5)).eval()
    run = root / "run"
    save_dictionary(run / "dictionary", dictionary, {"model": MODEL, "site": "blocks.2.resid_post",
                                                     "target_site": None})
    write_json(run / "config.json", TrainConfig().updated(name="run", site="blocks.2.resid_post").to_dict())
    return run


@dataclass(frozen=True)
class Writer:
    """One command that writes a directory: its argv for a source and a target, and what it reads."""

    name: str
    argv: Callable[[Path, Path], list[str]]  # (source, out) -> the command line
    reads_source: bool = True  # the target may not be, be inside or hold the source
    expect: tuple[tuple[str, str], ...] = ()  # (case, message) where this writer's refusal reads otherwise

    def run(self, source: Path, out: Path, *extra: str) -> int:
        return main([*self.argv(source, out), *extra])


WRITERS = [
    *[Writer(f"convert-{fmt}", lambda src, out, fmt=fmt: ["convert", str(src), "--to", fmt, str(out)])
      for fmt in ("saekit", "saelens", "sparsify")],
    Writer("report", lambda src, out: ["report", str(src), "--out", str(out)], reads_source=False),
    Writer("toy", lambda src, out: ["toy", "hierarchy", "--steps", "1", "--out", str(out)], reads_source=False),
    Writer("evaluate", lambda src, out: ["evaluate", str(src), str(src), "--out", str(out)], reads_source=False),
    Writer("attribute", lambda src, out: ["attribute", str(src), "--prompt", "Hi", "--out", str(out)],
           reads_source=False),
    # A dashboard reads the run's analysis (RUN/analysis), and its default place is inside the run.
    Writer("dashboard", lambda src, out: ["dashboard", str(src), "--out", str(out)],
           expect=(("the-input", "contains the input"), ("inside-the-input", "did not write"))),
]
SUCCEEDS = [w for w in WRITERS if w.name.startswith("convert")]  # the others need an evaluated run or minutes


def _snapshot(root: Path) -> dict[str, str]:
    """Every file and directory under ``root`` with its content hash: what a refusal must leave as it was."""
    found = {}
    for path in sorted(root.rglob("*")):
        relative = str(path.relative_to(root))
        found[relative] = "dir" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def _refused(capsys, writer: Writer, source: Path, out: Path, root: Path, *extra: str) -> str:
    before = _snapshot(root)
    assert writer.run(source, out, *extra) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("saekit: error: ") and "Traceback" not in err, err
    assert _snapshot(root) == before
    return err


def _target(case: str, root: Path, run: Path) -> Path:
    """The target a careless user gives, made on disk as the case needs."""
    if case == "foreign":
        (root / "mine").mkdir()
        (root / "mine" / "thesis.tex").write_text("two years of work")
        return root / "mine"
    if case == "file":
        (root / "notes.txt").write_text("mine")
        return root / "notes.txt"
    if case == "under-a-file":
        (root / "notes.txt").write_text("mine")
        return root / "notes.txt" / "out"
    if case == "the-input":
        return run
    if case == "inside-the-input":
        return run / "dictionary"
    return root  # "holding-the-input"


MESSAGES = {"foreign": "holds thesis.tex, which saekit's", "file": "is a file", "under-a-file": "is a file",
            "the-input": "is the input", "inside-the-input": "is inside the input",
            "holding-the-input": "contains the input"}


@pytest.mark.parametrize("case", list(MESSAGES))
@pytest.mark.parametrize("writer", WRITERS, ids=lambda w: w.name)
def test_a_target_that_would_lose_data_is_refused_in_one_line(tmp_path, capsys, writer, case):
    run = _saved_run(tmp_path)
    err = _refused(capsys, writer, run, _target(case, tmp_path, run), tmp_path)
    # A writer that adds files beside what it reads (report, toy) refuses the input's place as a foreign one.
    expected = MESSAGES[case] if writer.reads_source or case in ("file", "under-a-file") else "did not write"
    assert dict(writer.expect).get(case, expected) in err, err


@pytest.mark.parametrize("writer", SUCCEEDS, ids=lambda w: w.name)
def test_own_output_is_replaced_and_force_replaces_a_foreign_one(tmp_path, capsys, writer):
    run = _saved_run(tmp_path)
    out = tmp_path / "out"
    assert writer.run(run, out) == 0
    assert (out / OUTPUT_RECORD).is_file()
    first = _snapshot(out)
    assert writer.run(run, out) == 0  # its own earlier output: replaced without --force
    assert _snapshot(out) == first
    mine = _target("foreign", tmp_path, run)
    _refused(capsys, writer, run, mine, tmp_path)
    assert writer.run(run, mine, "--force") == 0
    assert not (mine / "thesis.tex").exists() and _snapshot(mine) == first


def test_two_writers_of_one_target_do_not_both_succeed(tmp_path, capsys):
    """Another process writing the target (holding its lock) makes a second writer stop in one line."""
    run = _saved_run(tmp_path)
    out = tmp_path / "out"
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        from saekit.locks import exclusive_output
        with exclusive_output({str(out)!r}):
            print("held", flush=True)
            time.sleep(60)
        """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        err = _refused(capsys, WRITERS[0], run, out, tmp_path)
        assert "is being written by another process" in err
    finally:
        holder.kill()
        holder.wait()
    assert WRITERS[0].run(run, out) == 0  # the lock dies with its holder


def test_a_directory_it_may_not_write_is_one_line(tmp_path, capsys):
    """Permissions: one line, no PermissionError traceback. Root may write anywhere a mode allows, so the
    folder is made immutable (``chattr +i``) where the test runs as root, and read-only otherwise."""
    run = _saved_run(tmp_path)
    locked = tmp_path / "locked"
    locked.mkdir()
    if os.geteuid() == 0:
        if subprocess.run(["chattr", "+i", str(locked)], capture_output=True).returncode != 0:
            pytest.skip("this file system cannot make a folder immutable")
    else:
        locked.chmod(0o555)
    try:
        err = _refused(capsys, WRITERS[1], run, locked / "out", tmp_path)
        assert "permission denied" in err, err
        with pytest.raises(SaekitError, match="cannot write .*: permission denied"):
            write_json(locked / "result.json", {"a": 1})
    finally:
        subprocess.run(["chattr", "-i", str(locked)], capture_output=True)
        locked.chmod(0o755)


def test_writing_a_file_where_a_directory_stands_is_one_line(tmp_path, capsys):
    """The io helpers turn an OSError into one line: here ``steer``-like output to a directory's name."""
    (tmp_path / "result.json").mkdir()
    with pytest.raises(SaekitError, match="it is a directory; name a file"):
        write_json(tmp_path / "result.json", {"a": 1})
    (tmp_path / "file").write_text("x")
    with pytest.raises(SaekitError, match="a file stands where a directory should be"):
        write_json(tmp_path / "file" / "result.json", {"a": 1})
    shutil.rmtree(tmp_path / "result.json")
