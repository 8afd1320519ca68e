"""The contract every connector type implements.

Providers only mint, verify and discover; they never decide *when* (that is
the cache's policy). They raise :mod:`broker.errors` types, with
``UpstreamError(retryable=...)`` for failed upstream calls and
``CredentialsRejected`` when the upstream refuses the stored credentials.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any, Protocol

from broker.clock import Clock, SystemClock
from broker.errors import FailedPrecondition, InvalidArgument
from broker.model import (
    AutoConfigured,
    AutoConfigureOptions,
    ClientCredential,
    Connector,
    ConnectorTypeSpec,
)
from broker.providers.http import NETWORK, Transport
from broker.variants import VARIANT_SDK_SESSION

__all__ = [
    "VARIANT_SDK_SESSION",
    "AwsClientFactory",
    "Provider",
    "ProviderContext",
    "Transport",
]


class AwsClientFactory(Protocol):
    """Makes AWS API clients, as aiobotocore's ``AioSession.create_client`` does: an async
    context manager yielding a client. Declared here (not in the aws provider) so the
    context stays free of any one provider's imports."""

    def create_client(
        self,
        service_name: str,
        *,
        region_name: str,
        endpoint_url: str | None,
        aws_access_key_id: str,
        aws_secret_access_key: str,
        aws_session_token: str | None,
        config: Any,
    ) -> AbstractAsyncContextManager[Any]: ...


@dataclass(frozen=True)
class ProviderContext:
    """What the daemon hands every provider: settings and injected I/O seams.

    Timing is not a provider's business: one upstream call is one attempt
    bounded by ``request_timeout`` (no library retries), and the cache decides
    when to try again (:mod:`broker.cache.policy`).
    """

    clock: Clock = field(default_factory=SystemClock)
    #: Whether implicit auth methods (the daemon's own identity) may be used.
    enable_implicit_auth: bool = False
    #: The environment providers read (daemon side), injectable for tests.
    env: Mapping[str, str] = field(default_factory=dict)
    #: Upper bound on one upstream HTTP call, in seconds.
    request_timeout: float = 10.0
    #: Where HTTP connections go (every provider's, AWS clients' included). The network
    #: by default; tests pass :class:`broker.providers.testing.InProcessTransport`.
    transport: Transport = NETWORK
    #: Makes AWS clients; None: an aiobotocore session isolated from the daemon's AWS
    #: files, talking through ``transport``. Tests may pass stubbed clients' factory.
    aws_clients: AwsClientFactory | None = None


class Provider(abc.ABC):
    """One connector type. Subclasses set :attr:`spec` and implement the abstract methods."""

    spec: ConnectorTypeSpec

    def __init__(self, context: ProviderContext | None = None) -> None:
        self.context = context or ProviderContext()

    # -- validation -------------------------------------------------------
    def validate(self, connector: Connector) -> None:
        """Cross-attribute checks beyond the schema (e.g. "token or client certificate").

        Raise :class:`InvalidArgument` naming the attribute. The schema itself
        (unknown / missing / typed attributes, expiration bounds) is checked
        before this is called.
        """

    @abc.abstractmethod
    def canonical_resource_id(self, connector: Connector, resource_type: str, raw: str) -> str:
        """Turn any accepted input format into the one canonical form, or raise InvalidArgument."""

    def default_resource_id(self, connector: Connector, resource_type: str) -> str | None:
        """The ID of the one resource of a type without instances (None if it has instances)."""
        return None

    async def resolve_default_resource_id(
        self, connector: Connector, resource_type: str
    ) -> str | None:
        """Like :meth:`default_resource_id`, for types whose default needs an upstream call."""
        return self.default_resource_id(connector, resource_type)

    def may_serve_id(self, connector: Connector, resource_type: str, canonical: str) -> bool:
        """Whether the connector's scope admits ``canonical`` (an ID of ``resource_type`` in
        canonical form), decided without an upstream call: a *may serve* answer, as for
        filtering connectors by a resource ID. A connector fixed on one ID, or a type without
        instances, admits only that one; otherwise any well-formed ID. Providers whose
        instance-less type has several instances for some connectors override this."""
        fixed = connector.resource_id or self.default_resource_id(connector, resource_type)
        return fixed is None or fixed == canonical

    def registry_resource_id(self, connector: Connector, host: str) -> str | None:
        """The docker-registry resource ID this connector uses for a registry host docker
        asks about (the credential helper only knows the host), or None if it does not
        serve that host. Providers whose IDs carry more than the host override this."""
        if "docker-registry" not in self.spec.resource_type_names:
            return None
        if connector.resource_type not in (None, "docker-registry"):
            return None
        try:
            rid = self.canonical_resource_id(connector, "docker-registry", host)
        except InvalidArgument:
            return None
        return rid if self.may_serve_id(connector, "docker-registry", rid) else None

    async def registry_hosts(self, connector: Connector) -> dict[str, str]:
        """docker ``list``: every registry host ``get`` serves through this connector, with
        the user name its logins carry. Providers whose registries are not one host per
        connector override this."""
        if connector.resource_type not in (None, "docker-registry"):
            return {}
        if "docker-registry" not in self.spec.resource_type_names:
            return {}
        rid = connector.resource_id or await self.resolve_default_resource_id(
            connector, "docker-registry"
        )
        if rid is None:
            return {}
        host = rid.split("/", 1)[0]
        if self.registry_resource_id(connector, host) is None:
            return {}
        return {host: str(connector.config.get("username", ""))}

    # -- credential variants ----------------------------------------------
    def variant_for(self, connector: Connector, resource_type: str, variant: str) -> str:
        """Which credential answers a request for ``variant``: "" when the plain one already
        qualifies (the two share a cache entry), else the variant, minted apart by
        :meth:`mint_variant`. Raises FailedPrecondition when the connector cannot issue it."""
        if not variant:
            return ""
        raise FailedPrecondition(
            f"connector '{connector.name}' is of type '{self.spec.connector_type}', which "
            f"cannot issue '{variant}' credentials"
        )

    async def mint_variant(
        self, connector: Connector, resource_type: str, resource_id: str, variant: str
    ) -> ClientCredential:
        """Mint the ``variant`` form of a credential (see :meth:`variant_for`)."""
        raise FailedPrecondition(
            f"connector type '{self.spec.connector_type}' cannot issue '{variant}' credentials"
        )

    # -- upstream ---------------------------------------------------------
    @abc.abstractmethod
    async def discover(
        self, connector: Connector, resource_type: str, resource_id: str | None
    ) -> list[str]:
        """List the canonical IDs of reachable resources of one type.

        With ``resource_id`` set, check just that one and return it. An empty
        list means nothing is reachable; the caller reports it as an error.
        """

    @abc.abstractmethod
    async def mint(
        self, connector: Connector, resource_type: str, resource_id: str
    ) -> ClientCredential:
        """Issue a client credential for one resource, as short-lived as the method allows.

        Set ``expires_at`` whenever the credential dies (for one handed through, the
        connector's ``expires_at``), and ``issued_at`` to when the upstream issued it,
        as the upstream declared it (a fresh token: when it was asked for). Leave
        ``issued_at`` None when nobody declared it: the credential then keeps its
        kind's whole safety margin (see :mod:`broker.cache.policy`), so a short-lived
        token needs ``issued_at`` to be servable at all.
        """

    # -- local environment --------------------------------------------------
    def auto_configure(
        self, options: AutoConfigureOptions, env: Mapping[str, str]
    ) -> AutoConfigured:
        """Build a configuration from the caller's local environment (files, env vars)."""
        raise FailedPrecondition(
            f"connector type '{self.spec.connector_type}' does not support auto-configuration"
        )

    async def aclose(self) -> None:
        """Release sessions and pools when the daemon stops."""

    # -- helpers for subclasses -------------------------------------------
    def check_resource_type(self, resource_type: str) -> None:
        """Refuse a resource type this connector type does not offer, naming those it does."""
        if self.spec.resource_type(resource_type) is None:
            raise InvalidArgument(
                f"connector type '{self.spec.connector_type}' has no resource type "
                f"'{resource_type}' (it offers: {', '.join(self.spec.resource_type_names)})",
                field="resource_type",
            )

    def implicit_allowed(self, connector: Connector) -> None:
        """Refuse implicit auth unless the daemon enabled it."""
        method = self.spec.auth_method(connector.auth_method)
        if method is not None and method.implicit and not self.context.enable_implicit_auth:
            raise InvalidArgument(
                f"auth method '{connector.auth_method}' uses the daemon's own credentials and "
                "is disabled; start the daemon with BROKER_ENABLE_IMPLICIT_AUTH_METHODS=true "
                "to allow it",
                field="auth_method",
            )
