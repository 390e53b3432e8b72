"""Atomic file and folder writes.

Data artifacts (corpus shards, manifests, tokenizers) are read by other jobs,
possibly while a rebuild is running. Writing to a temporary name in the same
folder and then renaming means a reader sees either the old file or the new
one, never a half-written one: rename within one filesystem is atomic.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import IO, Iterator


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", encoding: str | None = "utf-8") -> Iterator[IO]:
    """Open a temporary file next to `path`; on success rename it onto `path`.

    If the block raises, the temporary file is removed and `path` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode, encoding=None if "b" in mode else encoding) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write `text` to `path` atomically (UTF-8)."""
    with atomic_open(path, "w") as f:
        f.write(text)


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder next to `path`; on success it replaces `path`.

    A folder cannot be renamed onto a non-empty folder, so an existing `path`
    is first moved aside and deleted after the swap. The window between the two
    renames is tiny, and `path` is never observed half-written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        yield tmp
        old = None
        if path.exists():
            old = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".old"))
            os.replace(path, old / path.name)
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def looks_local(name: str | os.PathLike) -> bool:
    """True when `name` can only be a local path, never a hub id ("name" or "org/name"): it exists,
    is absolute, starts with "." or "~", or has a backslash, a trailing slash or more than one "/"."""
    text = str(name)
    return (
        Path(text).expanduser().exists()
        or os.path.isabs(text)
        or text.startswith((".", "~"))
        or "\\" in text
        or text.endswith("/")
        or text.count("/") > 1
    )


def check_writable(folder: str | os.PathLike, what: str) -> Path:
    """Create `folder` and write a probe file into it, so an unwritable output location fails
    before any work is done; `what` names the setting in the error (e.g. "out_dir")."""
    path = Path(folder).expanduser()
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as err:
        raise PermissionError(
            f"{what}={str(folder)!r} is not a writable folder ({err.strerror}): "
            f"choose another {what} (e.g. {what}=runs/eval) or fix its permissions"
        ) from None
    return path
