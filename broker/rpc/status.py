"""One mapping from the broker's error tree to gRPC status codes."""

from __future__ import annotations

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


def status_for(exc: errors.BrokerError) -> grpc.StatusCode:
    for cls, code in _CODES:
        if isinstance(exc, cls):
            return code
    return grpc.StatusCode.INTERNAL


_ERRORS: dict[grpc.StatusCode, type[errors.BrokerError]] = {code: cls for cls, code in _CODES}


def error_for(code: grpc.StatusCode, message: str) -> errors.BrokerError:
    """The client side of the mapping: a status back into a typed error."""
    return _ERRORS.get(code, errors.BrokerError)(message)
