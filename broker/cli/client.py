"""The CLI's connection to the daemon over its Unix socket (or TCP with TLS)."""

from __future__ import annotations

import os
import pwd
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from broker import pointers
from broker.api.v1 import broker_pb2_grpc as pb_grpc
from broker.errors import BrokerError, InvalidArgument, PermissionDenied, Unavailable
from broker.helpers.client import DAEMON_USER_ENV, DEFAULT_DAEMON_USER
from broker.pointers import SYSTEM_GRPC_SOCKET
from broker.rpc.status import error_for

#: Where the systemd unit and the container image put the socket.
SYSTEM_SOCKET = Path(SYSTEM_GRPC_SOCKET)


class UntrustedSocket(PermissionDenied):
    """The socket's owner is neither root, the current user nor the daemon user."""


@dataclass(frozen=True)
class SocketChoice:
    """The socket the CLI will use, and why (for errors that say where it looked)."""

    path: Path
    #: flag, env, pointer or system
    kind: str
    #: Where it came from, in words: "given with --socket", "from the pointer file ...".
    source: str

    def not_running(self) -> Unavailable:
        advice = {
            "flag": "check the path, or whether that daemon has stopped",
            "env": "check the path, or whether that daemon has stopped",
            "pointer": (
                "that daemon has stopped or moved since it wrote the pointer; start it again "
                "with `broker serve`, or name another with --socket / BROKER_SOCKET"
            ),
            "system": (
                "if the broker runs as a service, check `systemctl status credential-broker`; "
                "name a running daemon's socket with --socket / BROKER_SOCKET; or start "
                "your own with `broker serve`, which writes the pointer"
            ),
        }[self.kind]
        return Unavailable(f"daemon not running at {self.path} ({self.source}): {advice}")


def find_socket(explicit: Path | None = None) -> SocketChoice:
    """--socket > BROKER_SOCKET > BROKER_DATA_DIR/broker.sock > pointer file > /run/broker.

    Never the current directory: a socket planted in a shared directory would
    collect whatever the next command there sends (``password=@file`` included).
    """
    if explicit is not None:
        return SocketChoice(explicit, "flag", "given with --socket")
    env = os.environ.get("BROKER_SOCKET")
    if env:
        return SocketChoice(Path(env), "env", "from BROKER_SOCKET")
    data_dir = os.environ.get("BROKER_DATA_DIR")
    if data_dir:
        return SocketChoice(Path(data_dir) / "broker.sock", "env", "from BROKER_DATA_DIR")
    found = pointers.read_pointer(pointers.GRPC_POINTER)
    if found:
        return SocketChoice(Path(found[0]), "pointer", f"from the pointer file {found[1]}")
    looked = " or ".join(os.path.join(d, pointers.GRPC_POINTER) for d in pointers.pointer_dirs())
    return SocketChoice(
        SYSTEM_SOCKET,
        "system",
        f"the system default: no --socket, BROKER_SOCKET, BROKER_DATA_DIR or {looked}",
    )


def default_socket() -> Path:
    return find_socket().path


def _daemon_uid() -> tuple[str, int | None]:
    name = os.environ.get(DAEMON_USER_ENV) or DEFAULT_DAEMON_USER
    if name.isdigit():
        return name, int(name)
    try:
        return name, pwd.getpwnam(name).pw_uid
    except KeyError:
        if os.environ.get(DAEMON_USER_ENV):
            raise InvalidArgument(f"{DAEMON_USER_ENV}: there is no user '{name}'") from None
        return name, None


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def checked_socket(explicit: Path | None = None) -> Path:
    """The socket to use: it exists, and root, you or the daemon user owns it.

    Whoever owns a socket file bound it (only root can give one away), so a
    socket owned by anyone else may be an impostor waiting for secrets.
    """
    choice = find_socket(explicit)
    try:
        st = choice.path.stat()
    except FileNotFoundError:
        raise choice.not_running() from None
    except OSError as exc:
        raise Unavailable(
            f"cannot use socket {choice.path} ({choice.source}): {exc.strerror}"
        ) from None
    if not stat.S_ISSOCK(st.st_mode):
        raise Unavailable(f"{choice.path} ({choice.source}) is not a Unix socket")
    me = os.geteuid()
    if st.st_uid not in (0, me):
        daemon_user, daemon_uid = _daemon_uid()
        if st.st_uid != daemon_uid:
            raise UntrustedSocket(
                f"refusing socket {choice.path} ({choice.source}): it is owned by "
                f"{_user_name(st.st_uid)} (uid {st.st_uid}), not by root, you "
                f"({_user_name(me)}) or the daemon user {daemon_user}; if that account runs "
                f"your daemon, set {DAEMON_USER_ENV}={_user_name(st.st_uid)}"
            )
    return choice.path


@contextmanager
def connect(socket: Path | None) -> Iterator[pb_grpc.BrokerServiceStub]:
    """A stub on the daemon's socket; a clear error if nothing (trusted) listens there."""
    path = checked_socket(socket)
    channel = grpc.insecure_channel(f"unix://{path.resolve()}")
    try:
        yield pb_grpc.BrokerServiceStub(channel)  # type: ignore[no-untyped-call]
    finally:
        channel.close()


def rpc_error(exc: grpc.RpcError, socket: Path | None) -> BrokerError:
    """Turn a gRPC failure into the typed error the CLI prints as one line."""
    code: Any = exc.code() if hasattr(exc, "code") else None
    details = str(exc.details() if hasattr(exc, "details") else exc)
    if code == grpc.StatusCode.UNAVAILABLE and "connect" in (details or "").lower():
        return find_socket(socket).not_running()
    if code == grpc.StatusCode.CANCELLED:
        return Unavailable("cancelled")
    return error_for(code, details or str(code))
