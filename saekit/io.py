"""Atomic file and directory writing and safe (no-pickle) serialization helpers shared by every stage.

Temporary files and directories are named ``.{target}.saekit-tmp.{pid}.{random}``: a write killed
midway leaves one behind, and the next write of the same target (or :func:`remove_stale_temporaries`
over a directory) recognises it as saekit's by the name and as abandoned by its writer's PID being
gone, and removes it. Nothing else is ever deleted by that sweep.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from saekit.errors import SaekitError

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


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp_path)`` and move the result onto ``path`` only once it is complete."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path.parent, path.name)
    fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(path), dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the mode open() would
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def replace_directory(path: str | Path, build: Callable[[Path], None]) -> Path:
    """Build a directory with ``build(tmp_dir)``, then put it in place of ``path``.

    The existing ``path`` stays untouched until the new one is complete: a failed or killed build
    leaves the old output as it was (and a temporary that the next call removes).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path.parent, path.name)
    tmp = Path(tempfile.mkdtemp(prefix=_temp_prefix(path), dir=path.parent))
    try:
        build(tmp)
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700; give the directory the mode mkdir() would
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=_temp_prefix(path), dir=path.parent))
            os.replace(path, old / path.name)  # two renames; between them a kill leaves the old one beside
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def require_replaceable(out_dir: Path, entries: frozenset[str] | set[str], what: str, choose: str,
                        replaced_by: str = "writing it") -> None:
    """Refuse an output directory that :func:`replace_directory` would replace while it holds anything
    but ``entries`` (what the writer itself puts there): replacing it would delete the user's files.

    ``what`` names the output in the message, ``choose`` the argument to change."""
    if not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise SaekitError(f"{what} {out_dir} is not a directory; choose another {choose}")
    foreign = sorted(path.name for path in out_dir.iterdir() if path.name not in entries)
    if foreign:
        shown = ", ".join(foreign[:5]) + (", ..." if len(foreign) > 5 else "")
        raise SaekitError(f"{what} {out_dir} holds files saekit did not write ({shown}); {replaced_by} "
                          f"replaces the whole directory, so choose a new or empty {choose}, or move them away")


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
