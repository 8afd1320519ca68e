"""Unix socket files the daemon listens on: stale-file cleanup, group and 0660 mode."""

from __future__ import annotations

import grp
import os
import socket
from pathlib import Path

from broker.errors import FailedPrecondition, InvalidArgument

SOCKET_MODE = 0o660


def prepare_socket_path(path: Path) -> None:
    """Make the directory; remove a stale socket, refuse to steal a live one."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o750)
    if path.exists() or path.is_symlink():
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(str(path))
        except OSError:
            path.unlink()
        else:
            raise FailedPrecondition(f"another daemon is already listening on {path}")
        finally:
            probe.close()


def secure_socket(path: Path, group: str | None) -> None:
    if group:
        try:
            gid = grp.getgrnam(group).gr_gid
        except KeyError:
            raise InvalidArgument(
                f"setting 'socket_group': no group '{group}'", field="socket_group"
            ) from None
        os.chown(path, -1, gid)
    os.chmod(path, SOCKET_MODE)
