"""One-line errors and all-or-nothing outputs shared by every stage.

A stage either finishes and leaves complete outputs, or stops with a single line naming the
file, row or key at fault, a non-zero exit code, and nothing half-written.
"""

from __future__ import annotations

import contextlib
import functools
import glob
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

EXIT_USER_ERROR = 2


class PipelineError(Exception):
    """A problem with the user's input (params, data, files). Shown as one line, never a traceback."""


def stage_main(func: Callable[..., None]) -> Callable[..., None]:
    """Wrap a stage's `main` so that a PipelineError ends the process with one line on stderr."""

    @functools.wraps(func)
    def wrapper(*args: object) -> None:
        try:
            func(*args)
        except PipelineError as exc:
            print(f"error: {exc}", file=sys.stderr)
            sys.exit(EXIT_USER_ERROR)

    return wrapper


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _temporary_prefix(target: Path) -> str:
    # The creating process's id is in the name, so a later run can tell a dead run's leftovers from a live one's.
    return f".{target.name}.{os.getpid()}."


def remove_stale_temporaries(target: Path) -> None:
    """Delete the temporaries that processes killed while writing `target` left beside it (kill -9 runs no
    cleanup); those of a process still running are kept."""
    for stale in target.parent.glob(f".{glob.escape(target.name)}.*.tmp"):
        middle = stale.name[len(target.name) + 2 : -len(".tmp")].split(".")
        if len(middle) == 2 and middle[0].isdigit() and not _alive(int(middle[0])):
            if stale.is_dir() and not stale.is_symlink():
                shutil.rmtree(stale, ignore_errors=True)
            else:
                stale.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


def _permissions_of_the_umask(folder: Path) -> None:
    """Files rw and folders rwx for whom the umask allows (a file its owner may run: rwx)."""
    mask = _umask()
    for path in [folder, *folder.rglob("*")]:
        if path.is_symlink():
            continue
        if path.is_dir():
            path.chmod(0o777 & ~mask)
        else:
            executable = 0o111 if path.stat().st_mode & 0o100 else 0
            path.chmod((0o666 | executable) & ~mask)


@contextlib.contextmanager
def atomic_dir(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a fresh temporary directory that replaces `target` only if the block succeeds.

    The temporary directory is a sibling of `target` so the final rename stays on one filesystem. What it
    holds gets the permissions of files and folders made under the user's umask: mkdtemp makes the folder
    private, and some writers (safetensors' model.safetensors) make their file private too.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(target)
    tmp = Path(tempfile.mkdtemp(prefix=_temporary_prefix(target), suffix=".tmp", dir=target.parent))
    tmp.chmod(0o777 & ~_umask())
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _permissions_of_the_umask(tmp)
    if target.is_dir() and not target.is_symlink():
        shutil.rmtree(target)
    elif target.exists() or target.is_symlink():
        target.unlink()
    os.replace(tmp, target)


@contextlib.contextmanager
def atomic_file(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path that replaces `target` only if the block succeeds."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(target)
    fd, name = tempfile.mkstemp(prefix=_temporary_prefix(target), suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(name)
    tmp.chmod(0o666 & ~_umask())
    try:
        yield tmp
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, target)
