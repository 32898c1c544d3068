"""One-line errors and all-or-nothing outputs shared by every stage.

A stage either finishes and leaves complete outputs, or stops with a single line naming the
file, row or key at fault, a non-zero exit code, and nothing half-written.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

EXIT_USER_ERROR = 2


class PipelineError(Exception):
    """A problem with the user's input (params, data, files). Shown as one line, never a traceback."""


def stage_main(func: Callable[[], None]) -> Callable[[], None]:
    """Wrap a stage's `main` so that a PipelineError ends the process with one line on stderr."""

    @functools.wraps(func)
    def wrapper() -> None:
        try:
            func()
        except PipelineError as exc:
            print(f"error: {exc}", file=sys.stderr)
            sys.exit(EXIT_USER_ERROR)

    return wrapper


@contextlib.contextmanager
def atomic_dir(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a fresh temporary directory that replaces `target` only if the block succeeds.

    The temporary directory is a sibling of `target` so the final rename stays on one filesystem.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
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
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, target)
