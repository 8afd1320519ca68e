"""The CLI's connection to the daemon over its Unix socket (or TCP with TLS)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc

from broker.api.v1 import broker_pb2_grpc as pb_grpc
from broker.errors import BrokerError, Unavailable
from broker.rpc.status import error_for

DEFAULT_SOCKET = Path(".broker/broker.sock")
#: Where the systemd unit and the container image put the socket.
SYSTEM_SOCKET = Path("/run/broker/broker.sock")


def default_socket() -> Path:
    """BROKER_SOCKET > BROKER_DATA_DIR/broker.sock > ./.broker/broker.sock > /run/broker."""
    env = os.environ.get("BROKER_SOCKET")
    if env:
        return Path(env)
    data_dir = os.environ.get("BROKER_DATA_DIR")
    if data_dir:
        return Path(data_dir) / "broker.sock"
    if not DEFAULT_SOCKET.exists() and SYSTEM_SOCKET.exists():
        return SYSTEM_SOCKET
    return DEFAULT_SOCKET


@contextmanager
def connect(socket: Path | None) -> Iterator[pb_grpc.BrokerServiceStub]:
    """A stub on the daemon's socket; a clear error if nothing listens there."""
    path = socket or default_socket()
    if not path.exists():
        raise Unavailable(f"daemon not running at {path} (start it with `broker serve`)")
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
        return Unavailable(f"daemon not running at {socket or default_socket()}")
    if code == grpc.StatusCode.CANCELLED:
        return Unavailable("cancelled")
    return error_for(code, details or str(code))
