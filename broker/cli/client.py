"""The CLI's connection to the daemon over its Unix socket, through grpcio.

Which socket, whether to trust it and what failures are called live in
:mod:`broker.cli.locate`; the fast path's own transport is :mod:`broker.cli.wire`.
"""

from __future__ import annotations

import socket as pysocket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc

from broker.api.v1 import broker_pb2_grpc as pb_grpc
from broker.cli.locate import (
    CONNECT_TIMEOUT_ENV,
    SocketChoice,
    checked,
    connect_failure,
    connect_timeout,
    find_socket,
    not_grpc,
)
from broker.cli.locate import checked_socket as checked_socket
from broker.errors import BrokerError, Unavailable
from broker.rpc.status import error_for, from_daemon

#: Connectivity states by the number the core reports (ChannelConnectivity.X.value[0]).
_BY_CODE = {state.value[0]: state for state in grpc.ChannelConnectivity}
_SETTLED = (
    grpc.ChannelConnectivity.READY,
    grpc.ChannelConnectivity.TRANSIENT_FAILURE,
    grpc.ChannelConnectivity.SHUTDOWN,
)
#: Longest single wait for a state change: how soon Ctrl-C is seen while connecting.
_WATCH_SLICE = 0.25


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

    def wait_ready(self, timeout: float, longer: str) -> None:
        """Return once connected; else the error that says why not (``longer``: how to wait
        longer, named in the timeout error).

        Watched in this thread through the channel's core object: ``channel.subscribe()``
        (and ``grpc.channel_ready_future``, built on it) polls from a thread in 0.2 s
        watches, and ``channel.close()`` waits out the pending one, which added 200 ms
        to every command. Here no watch outlives this method.
        """
        core: Any = self.channel._channel  # type: ignore[attr-defined]
        deadline = time.time() + timeout
        state = _BY_CODE[core.check_connectivity_state(True)]
        while state not in _SETTLED and time.time() < deadline:
            core.watch_connectivity_state(state.value[0], min(deadline, time.time() + _WATCH_SLICE))
            state = _BY_CODE[core.check_connectivity_state(False)]
        self.state = state
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
        except OSError as exc:
            return connect_failure(self.choice, self.path, exc)
        finally:
            probe.close()
        return not_grpc(self.choice, self.path)

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
        self.channel.close()


@contextmanager
def connection(
    socket: Path | None, timeout: float | None = None, longer: str = "--timeout"
) -> Iterator[Connection]:
    """A connected channel to the daemon's socket; gRPC errors inside become BrokerErrors.

    ``timeout``: seconds to wait for the connection (default: BROKER_CONNECT_TIMEOUT, 10).
    """
    choice = find_socket(socket)
    conn = Connection(choice, checked(choice))
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
