"""One mapping from the broker's error tree to gRPC status codes."""

from __future__ import annotations

from typing import Any

import grpc

from broker import errors

_CODES: tuple[tuple[type[errors.BrokerError], grpc.StatusCode], ...] = (
    (errors.InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.NotFound, grpc.StatusCode.NOT_FOUND),
    (errors.AlreadyExists, grpc.StatusCode.ALREADY_EXISTS),
    (errors.FailedPrecondition, grpc.StatusCode.FAILED_PRECONDITION),
    (errors.Aborted, grpc.StatusCode.ABORTED),
    (errors.PermissionDenied, grpc.StatusCode.PERMISSION_DENIED),
    (errors.Unauthenticated, grpc.StatusCode.UNAUTHENTICATED),
    (errors.Unavailable, grpc.StatusCode.UNAVAILABLE),
)


#: Trailing metadata on every error the daemon itself answers with. A client tells by it
#: an UNAVAILABLE the daemon wrote (an upstream is down: print it as written) from one
#: gRPC made up because the connection broke, without reading the message text.
DAEMON_ERROR = (("broker-error", "1"),)


def from_daemon(exc: grpc.RpcError) -> bool:
    """Whether a failed call's status was written by the daemon (see DAEMON_ERROR)."""
    trailers: Any = exc.trailing_metadata() if hasattr(exc, "trailing_metadata") else None
    return any(item[0] == DAEMON_ERROR[0][0] for item in trailers or ())


def status_for(exc: errors.BrokerError) -> grpc.StatusCode:
    for cls, code in _CODES:
        if isinstance(exc, cls):
            return code
    return grpc.StatusCode.INTERNAL


_ERRORS: dict[grpc.StatusCode, type[errors.BrokerError]] = {code: cls for cls, code in _CODES}


def error_for(code: grpc.StatusCode, message: str) -> errors.BrokerError:
    """The client side of the mapping: a status back into a typed error."""
    return _ERRORS.get(code, errors.BrokerError)(message)
