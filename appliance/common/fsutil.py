"""Crash-safe writes and file digests, used by every tool that writes a finished output.

A finished output never appears half written: it is written under a hidden sibling name
(`.NAME.partial-XXXXXXXX`, same folder, so the same filesystem) and renamed into place, which
POSIX makes atomic. A crash at any moment, kill -9 included, leaves the old target (or none)
plus at most a `.partial-` sibling; never a half-written target.

The overwrite rule, the same for folders and files: an existing target is replaced only when
the caller passes `overwrite=True`; an empty folder counts as no target. Callers refuse early
with their own message (before the expensive work); the check when the new output is moved
into place catches a target that appeared meanwhile. A replaced folder is first renamed aside,
then the new one renamed in, then the old one deleted.

Test: .venv/bin/pytest tests/appliance/test_common_fsutil.py
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from appliance.errors import UserFacingError

PARTIAL = ".partial-"


def partial_prefix(target: Path) -> str:
    """The name prefix of the hidden siblings a write to `target` uses."""
    return f".{Path(target).name}{PARTIAL}"


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Streamed sha256 (hex) of a file's bytes."""
    with open(path, "rb") as fh:
        return sha256_fileobj(fh)


def sha256_fileobj(fh: BinaryIO) -> str:
    """Streamed sha256 (hex) of an open binary file, from its current position to the end."""
    return hashlib.file_digest(fh, "sha256").hexdigest()


def fsync_path(path: Path) -> None:
    """fsync a file or folder by path (a folder's fsync makes renames inside it durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _occupied(target: Path) -> bool:
    if target.is_symlink():
        return True
    if target.is_dir():
        return any(target.iterdir())
    return target.exists()


def _refuse(target: Path) -> None:
    raise UserFacingError(
        f"{target}: exists (it appeared while the new one was being written); not overwriting "
        "it: remove it or choose another output"
    )


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _move_into_place(new: Path, target: Path, overwrite: bool) -> None:
    if not _occupied(target):
        if target.is_dir() and not target.is_symlink():
            target.rmdir()  # empty: nothing to lose
        os.rename(new, target)
    elif not overwrite:
        _refuse(target)
    elif new.is_dir():
        old = target.with_name(f".{target.name}.old-{secrets.token_hex(4)}")
        os.rename(target, old)
        try:
            os.rename(new, target)
        except BaseException:
            os.rename(old, target)
            raise
        _remove(old)
    else:
        os.replace(new, target)
    with contextlib.suppress(OSError):
        fsync_path(target.parent)


@contextlib.contextmanager
def atomic_dir(target: str | os.PathLike[str], *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a new empty folder beside `target`; when the block ends without an exception it
    becomes `target` (see the module's overwrite rule). On an exception, KeyboardInterrupt
    included, the new folder is deleted and `target` is left as it was. The folder is made like
    `mkdir` makes one (mode 0o777 less the umask)."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    while True:
        work = target.with_name(partial_prefix(target) + secrets.token_hex(4))
        try:
            work.mkdir()
            break
        except FileExistsError:
            continue
    try:
        yield work
        _move_into_place(work, target, overwrite)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise


@contextlib.contextmanager
def atomic_file(
    target: str | os.PathLike[str], *, overwrite: bool = False, mode: int = 0o644
) -> Iterator[Path]:
    """Yield the path of a new empty file (mode 0o600 while written) beside `target`; when the
    block ends without an exception it is fsynced, given `mode` and renamed to `target` (see the
    module's overwrite rule). On an exception it is deleted and `target` left as it was."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=partial_prefix(target), dir=target.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        _move_into_place(tmp, target, overwrite)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(
    target: str | os.PathLike[str], data: bytes, *, overwrite: bool = False, mode: int = 0o644
) -> Path:
    """Write `data` to `target` through `atomic_file`; returns `target` as a Path."""
    with atomic_file(target, overwrite=overwrite, mode=mode) as tmp:
        tmp.write_bytes(data)
    return Path(target)


def atomic_write_text(
    target: str | os.PathLike[str], text: str, *, overwrite: bool = False, mode: int = 0o644
) -> Path:
    """Write `text` (UTF-8) to `target` through `atomic_file`; returns `target` as a Path."""
    return atomic_write_bytes(target, text.encode("utf-8"), overwrite=overwrite, mode=mode)
