"""The CLI's connection to the daemon over its Unix socket (or TCP with TLS)."""

from __future__ import annotations

import grp
import os
import pwd
import socket as pysocket
import stat
import threading
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
from broker.rpc.status import error_for, from_daemon

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
    return _checked(find_socket(explicit))


def _checked(choice: SocketChoice) -> Path:
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


_SETTLED = (
    grpc.ChannelConnectivity.READY,
    grpc.ChannelConnectivity.TRANSIENT_FAILURE,
    grpc.ChannelConnectivity.SHUTDOWN,
)


class Connection:
    """A channel to the daemon, and what gRPC reports about its connection.

    The connectivity state says whether connecting failed (then one plain
    ``connect()`` says why); once connected, an UNAVAILABLE the daemon wrote
    (marked, see :data:`broker.rpc.status.DAEMON_ERROR`) is printed as it
    wrote it, and one gRPC made up means the connection broke during the call.
    """

    def __init__(self, choice: SocketChoice, path: Path) -> None:
        self.choice = choice
        self.path = path
        self.channel = grpc.insecure_channel(f"unix://{path.resolve()}")
        self.state: grpc.ChannelConnectivity | None = None
        self._changed = threading.Condition()
        self.channel.subscribe(self._on_state, try_to_connect=True)

    def _on_state(self, state: grpc.ChannelConnectivity) -> None:
        with self._changed:
            self.state = state
            self._changed.notify_all()

    def wait_ready(self, timeout: float, longer: str) -> None:
        """Return once connected; else the error that says why not (``longer``: how to wait
        longer, named in the timeout error)."""
        with self._changed:
            self._changed.wait_for(lambda: self.state in _SETTLED, timeout)
            state = self.state
        if state is grpc.ChannelConnectivity.READY:
            return
        if state is grpc.ChannelConnectivity.TRANSIENT_FAILURE:
            raise self.connect_failed()
        raise self.choice.not_answering(timeout, longer)

    def connect_failed(self) -> BrokerError:
        """gRPC could not connect: one plain connect() tells why (errno, not message text)."""
        probe = pysocket.socket(pysocket.AF_UNIX, pysocket.SOCK_STREAM)
        probe.settimeout(1.0)
        try:
            probe.connect(str(self.path))
        except PermissionError:
            return permission_denied(self.path)
        except (FileNotFoundError, ConnectionRefusedError):
            return self.choice.not_running()
        except TimeoutError:
            return self.choice.not_answering(1.0)  # its backlog is full
        except OSError as exc:
            return Unavailable(
                f"cannot connect to {self.path} ({self.choice.source}): {exc.strerror or exc}"
            )
        finally:
            probe.close()
        return Unavailable(
            f"cannot talk to a daemon at {self.path} ({self.choice.source}): something "
            "accepts connections there but does not speak the broker's gRPC"
        )

    def error(self, exc: grpc.RpcError) -> BrokerError:
        """A failed call as the typed error the CLI prints as one line."""
        code: Any = exc.code() if hasattr(exc, "code") else None
        details = str(exc.details() if hasattr(exc, "details") else exc) or str(code)
        if code == grpc.StatusCode.UNAVAILABLE and not from_daemon(exc):
            # gRPC's own UNAVAILABLE: the connection broke after it was made.
            return Unavailable(
                f"lost the connection to the daemon at {self.path} ({self.choice.source}) "
                f"during the call: {details}"
            )
        if code == grpc.StatusCode.CANCELLED:
            return Unavailable("cancelled")
        return error_for(code, details)

    def close(self) -> None:
        self.channel.unsubscribe(self._on_state)
        self.channel.close()


@contextmanager
def connection(
    socket: Path | None, timeout: float | None = None, longer: str = "--timeout"
) -> Iterator[Connection]:
    """A connected channel to the daemon's socket; gRPC errors inside become BrokerErrors.

    ``timeout``: seconds to wait for the connection (default: BROKER_CONNECT_TIMEOUT, 10).
    """
    choice = find_socket(socket)
    conn = Connection(choice, _checked(choice))
    try:
        if timeout is None:
            timeout, longer = connect_timeout(), f"{CONNECT_TIMEOUT_ENV}=SECONDS"
        conn.wait_ready(timeout, longer)
        try:
            yield conn
        except grpc.RpcError as exc:
            raise conn.error(exc) from None
    finally:
        conn.close()


@contextmanager
def connect(socket: Path | None) -> Iterator[pb_grpc.BrokerServiceStub]:
    """A stub on the daemon's socket; a clear error if nothing (trusted) answers there."""
    with connection(socket) as conn:
        yield pb_grpc.BrokerServiceStub(conn.channel)  # type: ignore[no-untyped-call]


def rpc_error(exc: grpc.RpcError) -> BrokerError:
    """A gRPC failure outside :func:`connect` (whose own errors are typed already)."""
    code: Any = exc.code() if hasattr(exc, "code") else None
    details = str(exc.details() if hasattr(exc, "details") else exc) or str(code)
    if code == grpc.StatusCode.CANCELLED:
        return Unavailable("cancelled")
    return error_for(code, details)
