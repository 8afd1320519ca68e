"""Pointer files: where this user's daemon listens, for clients started anywhere.

``broker serve`` (once its listeners are up) and ``broker login`` record the
absolute paths of the gRPC socket and of the helper socket in two one-line
files, ``socket`` and ``helper-socket``, in ``$XDG_RUNTIME_DIR/credential-broker/``
when that runtime directory exists, else in ``~/.config/credential-broker/``.
Readers look in both, the runtime directory first. So ``broker status`` works
from any directory, and the CLI never has to guess a socket from the
current directory (a socket planted there could collect what it sends).

Pointers are not removed when the daemon stops: a stale one only makes the
client say the daemon is not running at that path, and name the pointer.

Reading lives in :mod:`broker.helpers.client`, which every helper imports
anyway (one module fewer to load per docker / kubectl call); this module adds
writing, for the daemon and ``broker login``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING

from broker.helpers.client import (
    DIR_NAME,
    GRPC_POINTER,
    HELPER_POINTER,
    SYSTEM_GRPC_SOCKET,
    SYSTEM_HELPER_SOCKET,
    pointer_dirs,
    read_pointer,
)

if TYPE_CHECKING:
    from broker.config import Settings

__all__ = [
    "DIR_NAME",
    "GRPC_POINTER",
    "HELPER_POINTER",
    "SYSTEM_GRPC_SOCKET",
    "SYSTEM_HELPER_SOCKET",
    "pointer_dirs",
    "read_pointer",
    "write_pointer",
    "write_pointers",
]


def write_pointer(name: str, socket_path: str, env: Mapping[str, str] | None = None) -> str:
    """Record ``socket_path`` (made absolute) in pointer file ``name``; return that file.

    Atomic (a private temporary file renamed into place, mode 0600, in a 0700
    directory), and only under a base directory owned by the current user:
    root started with someone else's HOME must not leave root-owned files
    there. Raises OSError when the pointer cannot be written.
    """
    directory = pointer_dirs(env)[0]
    base = os.path.dirname(directory)
    if os.path.basename(base) == ".config":
        base = os.path.dirname(base)  # the home directory owns ~/.config
    owner = os.stat(base).st_uid
    if owner != os.geteuid():
        raise PermissionError(f"{base} belongs to uid {owner}, not to this user")
    os.makedirs(directory, mode=0o700, exist_ok=True)
    if os.stat(directory).st_mode & 0o077:
        os.chmod(directory, 0o700)
    target = os.path.join(directory, name)
    tmp = os.path.join(directory, f".{name}.{os.getpid()}.{os.urandom(4).hex()}")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
    fd = os.open(tmp, flags, 0o600)
    try:
        try:
            os.fchmod(fd, 0o600)
            os.write(fd, os.path.abspath(socket_path).encode() + b"\n")
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, target)
    except BaseException:
        if os.path.lexists(tmp):
            os.unlink(tmp)
        raise
    return target


def write_pointers(settings: Settings, env: Mapping[str, str] | None = None) -> list[str]:
    """The daemon's pointers to its gRPC and helper sockets; [] when not needed.

    A daemon on the system paths (/run/broker, as under systemd or in the
    image) needs none: clients find those on their own, and the service
    account's home gets no files.
    """
    grpc_socket = os.path.abspath(settings.socket_path)
    helper_socket = os.path.abspath(settings.local_socket_path)
    if (grpc_socket, helper_socket) == (SYSTEM_GRPC_SOCKET, SYSTEM_HELPER_SOCKET):
        return []
    return [
        write_pointer(GRPC_POINTER, grpc_socket, env),
        write_pointer(HELPER_POINTER, helper_socket, env),
    ]
