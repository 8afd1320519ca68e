"""The error tree shared by every layer.

Errors carry what went wrong in words a user can act on (naming the field,
connector or resource at fault) and whether trying again may help. No layer
below the RPC front end knows about gRPC status codes; one mapping in
``broker.rpc.status`` turns these into codes.
"""

from __future__ import annotations


class BrokerError(Exception):
    """Base of every error the broker raises on purpose."""

    #: Whether the same call may succeed later (network blips, throttling).
    retryable: bool = False

    def __init__(self, message: str, *, field: str | None = None, retryable: bool | None = None):
        super().__init__(message)
        self.message = message
        self.field = field
        if retryable is not None:
            self.retryable = retryable

    def __str__(self) -> str:
        return self.message


class InvalidArgument(BrokerError):
    """The request itself is wrong: a bad attribute, resource ID, or option."""


class NotFound(BrokerError):
    """A named connector, connector type, resource type or auth method does not exist."""


class AlreadyExists(BrokerError):
    """A connector with that name exists already."""


class FailedPrecondition(BrokerError):
    """The request is well formed but the system is not in a state to serve it."""


class ConnectorExpired(FailedPrecondition):
    """The connector's own stored credential has passed its ``expires_at``."""


class ConnectorTampered(FailedPrecondition):
    """The connector's stored record was changed outside the broker (integrity check failed).

    Its secrets are withheld and nothing is sent upstream until it is
    re-registered or updated with its secrets.
    """

    @classmethod
    def of(cls, name: str) -> ConnectorTampered:
        return cls(
            f"connector '{name}' is tampered: it failed its integrity check, its stored record "
            "was changed outside the broker (secrets withheld, nothing sent); re-register or "
            "update it with its secrets"
        )


class CredentialsRejected(FailedPrecondition):
    """The upstream service refused the connector's stored credentials.

    Permanent: retrying with the same credentials only hammers the provider.
    """


class Aborted(BrokerError):
    """A write lost a race: the connector changed since the caller read it.

    Retryable after reading it again (the caller decides whether its change
    still applies to what it reads now).
    """

    retryable = True

    @classmethod
    def stale(cls, name: str, expected: int, actual: int) -> Aborted:
        return cls(
            f"connector '{name}' is at revision {actual}, not the expected revision "
            f"{expected}: it was changed since it was read; read it again and retry",
            field="expected_revision",
        )


class PermissionDenied(BrokerError):
    """The caller, or the connector's credentials, lack a permission."""


class Unauthenticated(BrokerError):
    """The caller did not prove who it is (e.g. a missing or revoked token)."""


class Unavailable(BrokerError):
    """An upstream service or the daemon cannot answer right now."""

    retryable = True


class UpstreamError(Unavailable):
    """A provider call failed; ``retryable`` says whether backing off may help."""
