"""Which daemon socket the CLI talks to, whether to trust it, and what to say when
talking fails.

No grpc here: both transports use it, grpcio (:mod:`broker.cli.client`) and the
fast path's own (:mod:`broker.cli.wire`), so both say the same words.
"""

from __future__ import annotations

import grp
import os
import pwd
import stat
from pathlib import Path

from broker import errors, pointers
from broker.errors import BrokerError, InvalidArgument, PermissionDenied, Unavailable
from broker.helpers.client import DAEMON_USER_ENV, DEFAULT_DAEMON_USER
from broker.pointers import SYSTEM_GRPC_SOCKET

#: Where the systemd unit and the container image put the socket.
SYSTEM_SOCKET = Path(SYSTEM_GRPC_SOCKET)


class UntrustedSocket(PermissionDenied):
    """The socket's owner is neither root, the current user nor the daemon user."""


class SocketChoice:
    """The socket the CLI will use, and why (for errors that say where it looked).

    A plain class: ``dataclasses`` would load ``inspect`` (~10 ms) into every command.
    """

    __slots__ = ("kind", "path", "source")

    def __init__(self, path: Path, kind: str, source: str) -> None:
        self.path = path
        #: flag, env, pointer or system
        self.kind = kind
        #: Where it came from, in words: "given with --socket", "from the pointer file ...".
        self.source = source

    def __repr__(self) -> str:
        return f"SocketChoice({self.path!r}, {self.kind!r}, {self.source!r})"

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

    def not_answering(self, timeout: float, longer: str | None = None) -> Unavailable:
        hint = f" (wait longer with {longer})" if longer else ""
        return Unavailable(
            f"daemon at {self.path} ({self.source}) did not answer within {timeout:g} s: "
            f"it may be overloaded or stuck; try again, or check its log{hint}"
        )


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
    return checked(find_socket(explicit))


def checked(choice: SocketChoice) -> Path:
    try:
        st = choice.path.stat()
    except FileNotFoundError:
        raise choice.not_running() from None
    except PermissionError:
        raise permission_denied(choice.path) from None
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
    # connect() needs write permission on a Unix socket: checked here, so that EACCES
    # is told apart from a daemon that is not running without connecting twice.
    if not os.access(choice.path, os.W_OK):
        raise permission_denied(choice.path)
    return choice.path


def _group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def permission_denied(path: Path) -> PermissionDenied:
    """EACCES on ``path``: name the group that the socket (or the directory in the way) admits."""
    blocker, bit = path, stat.S_IWGRP
    for parent in reversed(path.parents):  # from / down: the first directory we cannot enter
        if not os.access(parent, os.X_OK):
            blocker, bit = parent, stat.S_IXGRP
            break
    try:
        st = blocker.stat()
    except OSError:
        return PermissionDenied(f"permission denied on {path}")
    if st.st_mode & bit:
        return PermissionDenied(
            f"permission denied on {path}: ask an admin to add you to group "
            f"{_group_name(st.st_gid)}"
        )
    return PermissionDenied(
        f"permission denied on {path}: {blocker} is open only to its owner "
        f"{_user_name(st.st_uid)}; ask an admin to set the daemon's socket_group"
    )


#: Seconds the CLI waits for the daemon to take the connection and answer (HTTP/2 handshake).
CONNECT_TIMEOUT_ENV = "BROKER_CONNECT_TIMEOUT"
DEFAULT_CONNECT_TIMEOUT = 10.0


def connect_timeout() -> float:
    raw = os.environ.get(CONNECT_TIMEOUT_ENV)
    if not raw:
        return DEFAULT_CONNECT_TIMEOUT
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0 < value < 86400:
        raise InvalidArgument(
            f"{CONNECT_TIMEOUT_ENV}: '{raw}' is not a number of seconds", field=CONNECT_TIMEOUT_ENV
        )
    return value


def connect_failure(choice: SocketChoice, path: Path, exc: OSError) -> BrokerError:
    """connect() to ``path`` failed with ``exc``: why, by errno (never by message text)."""
    if isinstance(exc, PermissionError):
        return permission_denied(path)
    if isinstance(exc, (FileNotFoundError, ConnectionRefusedError)):
        return choice.not_running()
    if isinstance(exc, TimeoutError):
        return choice.not_answering(1.0)  # its backlog is full
    return Unavailable(f"cannot connect to {path} ({choice.source}): {exc.strerror or exc}")


def not_grpc(choice: SocketChoice, path: Path) -> Unavailable:
    return Unavailable(
        f"cannot talk to a daemon at {path} ({choice.source}): something "
        "accepts connections there but does not speak the broker's gRPC"
    )


#: gRPC status codes by number (grpc.StatusCode.X.value[0]), for messages without details.
STATUS_NAMES = (
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
)
CANCELLED, UNAVAILABLE = 1, 14
#: broker.rpc.status's mapping by number (tests/test_cli_fast.py holds them equal).
ERRORS_BY_CODE: dict[int, type[BrokerError]] = {
    3: errors.InvalidArgument,
    5: errors.NotFound,
    6: errors.AlreadyExists,
    9: errors.FailedPrecondition,
    10: errors.Aborted,
    7: errors.PermissionDenied,
    16: errors.Unauthenticated,
    14: errors.Unavailable,
}


def call_failure(
    choice: SocketChoice, path: Path, code: int, details: str, from_daemon: bool
) -> BrokerError:
    """A failed call (status ``code``) as the typed error the CLI prints as one line.

    An UNAVAILABLE the daemon wrote (marked, see broker.rpc.status.DAEMON_ERROR) is
    printed as written; one the transport made up means the connection broke.
    """
    name = STATUS_NAMES[code] if 0 <= code < len(STATUS_NAMES) else str(code)
    details = details or f"StatusCode.{name}"
    if code == UNAVAILABLE and not from_daemon:
        return Unavailable(
            f"lost the connection to the daemon at {path} ({choice.source}) "
            f"during the call: {details}"
        )
    if code == CANCELLED:
        return Unavailable("cancelled")
    return ERRORS_BY_CODE.get(code, BrokerError)(details)
