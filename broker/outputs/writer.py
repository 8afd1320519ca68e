"""Atomic file replacement: a reader sees the old file or the new one, never part of one.

The temp file is created in the target's directory (a rename within one file
system is atomic), exclusively (``O_EXCL``: never someone else's file or
symlink), mode 0600; owner, group and the configured mode are set on the open
descriptor *before* the first secret byte is written; then the data, fsync,
rename over the target, and fsync of the directory so the rename survives a
crash. Any failure removes the temp file and leaves the old file in place.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
from pathlib import Path

#: Temp files: ``.NAME.broker-XXXXXXXX.tmp`` next to the target (hidden, recognisable).
TEMP_SUFFIX = ".tmp"


def temp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.broker-{secrets.token_hex(4)}{TEMP_SUFFIX}")


def write_atomic(
    path: Path, data: bytes, *, mode: int = 0o600, uid: int | None = None, gid: int | None = None
) -> None:
    """Replace ``path`` with ``data``; raises OSError (the old file untouched)."""
    temp = temp_name(path)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW
    fd = os.open(temp, flags, 0o600)
    try:
        try:
            if uid is not None or gid is not None:
                os.fchown(fd, -1 if uid is None else uid, -1 if gid is None else gid)
            os.fchmod(fd, mode)  # after fchown (which may clear mode bits), before any data
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
    fsync_dir(path.parent)


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def current_digest(path: Path) -> str | None:
    """The digest of what ``path`` holds now (None: missing or unreadable)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)  # a symlink: not ours
    except OSError:
        return None
    with os.fdopen(fd, "rb") as f:
        try:
            return digest(f.read())
        except OSError:
            return None


def fix_ownership(path: Path, *, mode: int, uid: int | None, gid: int | None) -> None:
    """Bring an existing, identical file to the configured owner and mode."""
    info = path.lstat()
    if (uid is not None and info.st_uid != uid) or (gid is not None and info.st_gid != gid):
        os.lchown(path, -1 if uid is None else uid, -1 if gid is None else gid)
    if info.st_mode & 0o7777 != mode:
        os.chmod(path, mode)
