"""Atomic file and directory writing and safe (no-pickle) serialization helpers shared by every stage.

Temporary files and directories are named ``.{target}.saekit-tmp.{pid}.{random}``: a write killed
midway leaves one behind, and the next write of the same target (or :func:`remove_stale_temporaries`
over a directory) recognises it as saekit's by the name and as abandoned by its writer's PID being
gone, and removes it. Nothing else is ever deleted by that sweep.

Outputs never destroy inputs: a command that writes a directory names it as an :class:`OutputTarget` and
claims it (:func:`claim_output`) before any work. The claim refuses, in one line, a target that is a
file, that is equal to, inside or containing anything the command reads, that holds files another
writer made (unless the user passes ``--force``), or that another process is writing; every output
records its writer in ``.saekit-output.json`` so a rerun recognises its own earlier output. An
``OSError`` a user can cause (permissions, a full disk, a file where a directory should be) becomes
one :class:`SaekitError` line naming the path.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from saekit.errors import SaekitError
from saekit.locks import LOCK_FILE, exclusive_output

TEMP_MARK = ".saekit-tmp."
_TEMP_NAME = re.compile(r"^\.(?P<target>.+)\.saekit-tmp\.(?P<pid>\d+)\.[A-Za-z0-9_]+$")


def _temp_prefix(path: Path) -> str:
    return f".{path.name}{TEMP_MARK}{os.getpid()}."


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def remove_stale_temporaries(directory: str | Path, target: str | None = None) -> list[Path]:
    """Remove temporaries in ``directory`` (of ``target`` only, if given) whose writing process is gone."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    pattern = f".{target}{TEMP_MARK}*" if target is not None else f".*{TEMP_MARK}*"
    removed = []
    for candidate in directory.glob(pattern):
        match = _TEMP_NAME.match(candidate.name)
        if match and (target is None or match["target"] == target) and not _pid_alive(int(match["pid"])):
            _remove(candidate)
            removed.append(candidate)
    return removed


FILE_IN_THE_WAY = "a file stands where a directory should be"
OS_REASONS = {errno.EACCES: "permission denied", errno.EPERM: "permission denied",
              errno.EROFS: "the file system is read-only", errno.ENOSPC: "no space left on the disk",
              errno.EDQUOT: "the disk quota is exceeded", errno.EISDIR: "a directory stands where a file should be",
              errno.ENOTDIR: FILE_IN_THE_WAY, errno.EEXIST: FILE_IN_THE_WAY, errno.ENAMETOOLONG: "the name is too long"}


def os_error_line(err: OSError, path: Path, action: str = "write") -> SaekitError:
    """One line for an ``OSError`` the user can cause, naming the path and what to do."""
    reason = OS_REASONS.get(err.errno or 0, err.strerror or type(err).__name__)
    where = err.filename if err.filename else path
    return SaekitError(f"cannot {action} {path}: {reason} ({where}); choose another location, or fix that "
                       "and rerun")


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp_path)`` and move the result onto ``path`` only once it is complete."""
    path = Path(path)
    if path.is_dir():
        raise SaekitError(f"cannot write {path}: it is a directory; name a file")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(path.parent, path.name)
        fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(path), dir=path.parent)
    except OSError as err:
        raise os_error_line(err, path) from err
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the mode open() would
        os.replace(tmp, path)
    except OSError as err:
        Path(tmp).unlink(missing_ok=True)
        if err.errno is None:  # raised by code, not by the system: not the user's to fix
            raise
        raise os_error_line(err, path) from err
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def replace_directory(path: str | Path, build: Callable[[Path], None], writer: str | None = None) -> Path:
    """Build a directory with ``build(tmp_dir)``, then put it in place of ``path``.

    The existing ``path`` stays untouched until the new one is complete: a failed or killed build
    leaves the old output as it was (and a temporary that the next call removes). ``writer`` is
    recorded in the new directory (:data:`OUTPUT_RECORD`), so :func:`claim_output` knows it again.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(path.parent, path.name)
        tmp = Path(tempfile.mkdtemp(prefix=_temp_prefix(path), dir=path.parent))
    except OSError as err:
        raise os_error_line(err, path) from err
    try:
        build(tmp)
        if writer is not None:
            _write_record(tmp, writer)
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700; give the directory the mode mkdir() would
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=_temp_prefix(path), dir=path.parent))
            os.replace(path, old / path.name)  # two renames; between them a kill leaves the old one beside
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except OSError as err:
        shutil.rmtree(tmp, ignore_errors=True)
        if err.errno is None:
            raise
        raise os_error_line(err, path) from err
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


OUTPUT_RECORD = ".saekit-output.json"  # {"writer": ...}: which command made a directory
FORCE_FLAG = "--force"


@dataclass(frozen=True)
class OutputTarget:
    """A directory a command writes (whole, or file by file), and what writing it must not destroy."""

    path: Path
    writer: str  # the command that writes it, as recorded in OUTPUT_RECORD ("convert", "dashboard", ...)
    flag: str = "--out"  # the argument that chose it, named in refusals
    inputs: tuple[Path, ...] = ()  # what the command reads: the target may not be, be inside or hold any of it
    entries: frozenset[str] = frozenset()  # what this writer put there before outputs recorded their writer
    force: bool = False  # replace a non-empty target that is not this writer's output

    def check(self) -> None:
        """Refuse, in one line, a target that writing would destroy user data in (see module docstring)."""
        path = self.path.resolve()
        if path.exists() and not path.is_dir():
            raise SaekitError(f"{self.flag} {self.path} is a file; name a directory to write to")
        check_disjoint(self.path, self.inputs, self.flag)
        foreign = self.foreign_entries()
        if foreign and not self.force:
            shown = ", ".join(foreign[:5]) + (", ..." if len(foreign) > 5 else "")
            raise SaekitError(f"{self.flag} {self.path} holds {shown}, which saekit's {self.writer} did not write; "
                              "writing it replaces those, so choose a new or empty directory, or pass "
                              f"{FORCE_FLAG} to replace it")
        _require_writable(path, self.flag)

    def foreign_entries(self) -> list[str]:
        """What the target holds that is not this writer's earlier output ([] for a new, empty or own directory)."""
        if not self.path.is_dir():
            return []
        record = self.path / OUTPUT_RECORD
        if record.is_file():
            try:
                writer = json.loads(record.read_text(encoding="utf-8")).get("writer")
            except (ValueError, AttributeError, OSError):
                writer = None
            return [] if writer == self.writer else [f"a saekit {writer} output" if writer else OUTPUT_RECORD]
        return sorted(p.name for p in self.path.iterdir() if p.name not in self.entries and p.name != LOCK_FILE)


def check_disjoint(output: Path, inputs: tuple[Path, ...] | list[Path], flag: str = "--out") -> None:
    """Refuse an output that is, is inside or contains one of ``inputs`` (symbolic links resolved)."""
    path = Path(output).resolve()
    for given in inputs:
        source = Path(given).resolve()
        relation = ("is" if path == source else "is inside" if source in path.parents
                    else "contains" if path in source.parents else None)
        if relation is not None:
            raise SaekitError(f"{flag} {output} {relation} the input {source}; writing there would replace what "
                              "the command reads, so choose a directory outside it")


def _require_writable(path: Path, flag: str) -> None:
    """A target (or its nearest existing parent) this process may write in."""
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        raise SaekitError(f"{flag} {path}: {existing} is a file, so no directory can be made there; choose "
                          "another location")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise SaekitError(f"{flag} {path}: permission denied in {existing}; choose a directory you can write to")


def _write_record(directory: Path, writer: str) -> None:
    write_json(directory / OUTPUT_RECORD, {"writer": writer})


@contextmanager
def claim_output(target: OutputTarget) -> Iterator[Path]:
    """Check ``target`` and hold its lock for the block (one writer at a time); yields its path.

    Checked again once the lock is held: another writer may have finished into it meanwhile."""
    target.check()
    with exclusive_output(target.path, f"{target.flag} {target.writer} output"):
        target.check()
        yield target.path


def write_directory(target: OutputTarget, build: Callable[[Path], None]) -> Path:
    """Claim ``target``, then build it whole in a temporary and swap it in (:func:`replace_directory`)."""
    with claim_output(target):
        return replace_directory(target.path, build, writer=target.writer)


def mark_output(target: OutputTarget) -> None:
    """Record the writer in a directory written file by file (a whole replacement records it itself)."""
    target.path.mkdir(parents=True, exist_ok=True)
    _write_record(target.path, target.writer)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_json(path: str | Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def read_json(path: str | Path, what: str = "JSON file") -> Any:
    path = Path(path)
    if not path.is_file():
        raise SaekitError(f"{what} not found: {path}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise SaekitError(f"{what} {path} is corrupt ({err}); delete it or restore it from a checkpoint") from err


def save_tensors(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    contiguous = {name: t.detach().contiguous().cpu() for name, t in tensors.items()}
    atomic_write(path, lambda tmp: save_file(contiguous, str(tmp), metadata=metadata))


def load_tensors(path: str | Path, what: str = "weights file") -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise SaekitError(f"{what} not found: {path}")
    try:
        return load_file(str(path))
    except Exception as err:  # safetensors raises several types for truncated or foreign files
        raise SaekitError(f"{what} {path} is corrupt or not safetensors ({err}); retrain or restore it") from err
