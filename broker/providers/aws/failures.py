"""Turning botocore failures into broker errors a user can act on.

Three outcomes matter to callers: the stored keys are bad (permanent:
CredentialsRejected naming the access key ID, never the secret), the keys
lack a permission (PermissionDenied naming the IAM action and resource), or
AWS is briefly unavailable (UpstreamError, retryable). Messages from AWS are
kept (clipped): they name ARNs, never secrets.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    HTTPClientError,
    NoCredentialsError,
    ParamValidationError,
    ReadTimeoutError,
)

from broker.errors import (
    BrokerError,
    CredentialsRejected,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    UpstreamError,
)

REJECTED_CODES = frozenset(
    {
        "InvalidClientTokenId",
        "SignatureDoesNotMatch",
        "UnrecognizedClientException",
        "InvalidAccessKeyId",
        "AuthFailure",
        "ExpiredToken",
        "ExpiredTokenException",
        "InvalidToken",
        "IncompleteSignature",
    }
)
DENIED_CODES = frozenset(
    {
        "AccessDenied",
        "AccessDeniedException",
        "UnauthorizedOperation",
        "AuthorizationError",
        "Forbidden",
        "403",
    }
)
THROTTLED_CODES = frozenset(
    {
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestLimitExceeded",
        "TooManyRequestsException",
        "SlowDown",
        "RequestThrottled",
        "PriorRequestNotComplete",
        "ServiceUnavailable",
        "InternalError",
        "InternalFailure",
        "ServerException",
        "IDPCommunicationError",
    }
)
INVALID_CODES = frozenset(
    {
        "ValidationError",
        "ValidationException",
        "InvalidParameterValue",
        "InvalidParameterException",
        "MalformedPolicyDocument",
        "PackedPolicyTooLarge",
    }
)
NOT_FOUND_CODES = frozenset(
    {"NoSuchBucket", "NotFound", "404", "ResourceNotFoundException", "NoSuchEntity"}
)
_MESSAGE_LIMIT = 300


@dataclass(frozen=True)
class Call:
    """What is being attempted, for error messages: whose keys, which action, on what."""

    connector: str
    access_key_id: str
    action: str
    resource: str = "*"


def translate(exc: Exception, call: Call) -> BrokerError:
    """The broker error for one failed AWS call."""
    if isinstance(exc, BrokerError):
        return exc
    if isinstance(exc, ClientError):
        return _client_error(exc, call)
    if isinstance(exc, NoCredentialsError):
        return FailedPrecondition(
            f"connector '{call.connector}': no AWS credentials found in the daemon's "
            "environment (implicit auth)"
        )
    if isinstance(exc, ParamValidationError):
        return InvalidArgument(f"connector '{call.connector}': {call.action}: {_clip(str(exc))}")
    if isinstance(
        exc,
        EndpointConnectionError
        | ConnectTimeoutError
        | ReadTimeoutError
        | ConnectionClosedError
        | HTTPClientError,
    ):
        return UpstreamError(
            f"connector '{call.connector}': {call.action} failed: cannot reach AWS "
            f"({type(exc).__name__}: {_clip(str(exc))})",
            retryable=True,
        )
    if isinstance(exc, TimeoutError | OSError):
        return UpstreamError(
            f"connector '{call.connector}': {call.action} failed: {type(exc).__name__}",
            retryable=True,
        )
    return UpstreamError(
        f"connector '{call.connector}': {call.action} failed: {_clip(str(exc))}",
        retryable=False,
    )


@asynccontextmanager
async def aws_call(call: Call) -> AsyncIterator[None]:
    """Run a block of AWS calls; failures leave as broker errors."""
    try:
        yield
    except (BotoCoreError, ClientError, TimeoutError, OSError) as exc:
        raise translate(exc, call) from None


def _client_error(exc: ClientError, call: Call) -> BrokerError:
    error = exc.response.get("Error", {})
    code = str(error.get("Code") or "")
    message = _clip(str(error.get("Message") or ""))
    status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
    detail = f"{code}: {message}" if message else code
    if code in REJECTED_CODES:
        return CredentialsRejected(
            f"AWS rejected the credentials of connector '{call.connector}' "
            f"(access key ID {call.access_key_id}): {detail}"
        )
    if code in DENIED_CODES or (status == 403 and code not in THROTTLED_CODES):
        return PermissionDenied(
            f"the credentials of connector '{call.connector}' (access key ID "
            f"{call.access_key_id}) lack permission {call.action} on {call.resource}: {detail}"
        )
    if code in INVALID_CODES:
        return InvalidArgument(
            f"connector '{call.connector}': AWS refused {call.action} on {call.resource}: {detail}"
        )
    if code in NOT_FOUND_CODES or status == 404:
        return NotFound(
            f"connector '{call.connector}': {call.resource} was not found ({call.action}: {detail})"
        )
    if code in THROTTLED_CODES or status == 429 or status >= 500:
        return UpstreamError(
            f"connector '{call.connector}': {call.action} failed, AWS is busy or "
            f"unavailable: {detail}",
            retryable=True,
        )
    return UpstreamError(
        f"connector '{call.connector}': {call.action} on {call.resource} failed: {detail}",
        retryable=False,
    )


def _clip(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _MESSAGE_LIMIT else text[:_MESSAGE_LIMIT] + "..."
