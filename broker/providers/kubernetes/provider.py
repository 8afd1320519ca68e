"""The ``kubernetes`` connector type: one generic API server.

With the ``token`` and ``password`` methods a connector holds a credential it
cannot shorten, so ``mint`` returns the stored credential: long-lived, or
expiring with the connector's ``expires_at`` (or a JWT token's own ``exp``,
whichever is first). With ``service-account-token`` the stored credential is
only a bootstrap: ``mint`` asks the cluster for a fresh bound token of the
configured service account (TokenRequest, :mod:`.tokens`) and hands out that
token alone, expiring when the cluster's answer says. The resource is
single-instance: its ID is the cluster name, and asking for any other cluster
is refused by name.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

from broker.errors import InvalidArgument
from broker.model import AutoConfigured, AutoConfigureOptions, ClientCredential, Connector
from broker.providers.base import Provider
from broker.providers.kubernetes import kubeconfig
from broker.providers.kubernetes.client import fetch_version
from broker.providers.kubernetes.settings import ClusterSettings, cluster_identity, same_server
from broker.providers.kubernetes.spec import (
    AUTH_SERVICE_ACCOUNT_TOKEN,
    CONNECTOR_TYPE,
    DEFAULT_TOKEN_SECONDS,
    MIN_TOKEN_SECONDS,
    RESOURCE_TYPE,
    SPEC,
)
from broker.providers.kubernetes.tokens import MintedToken, request_token
from broker.token_times import stored_window


class KubernetesProvider(Provider):
    """Verifies with GET /version and hands out the stored credential."""

    spec = SPEC

    def validate(self, connector: Connector) -> None:
        ClusterSettings.from_connector(connector)

    def canonical_resource_id(self, connector: Connector, resource_type: str, raw: str) -> str:
        """The cluster name, from the name itself or from the connector's server URL."""
        self.check_resource_type(resource_type)
        server, name = cluster_identity(connector.config)
        wanted = raw.strip()
        if wanted == name or ("://" in wanted and same_server(wanted, server)):
            return name
        raise InvalidArgument(
            f"connector '{connector.name}' serves only kubernetes cluster '{name}' "
            f"({server}); resource_id '{wanted}' names another cluster",
            field="resource_id",
        )

    def default_resource_id(self, connector: Connector, resource_type: str) -> str | None:
        self.check_resource_type(resource_type)
        return cluster_identity(connector.config)[1]

    async def discover(
        self, connector: Connector, resource_type: str, resource_id: str | None
    ) -> list[str]:
        """Prove the credentials work with GET /version; the one resource is the cluster.

        service-account-token: mint a token (proving the bootstrap identity's RBAC and
        the account), then GET /version with it when it is meant for this API server
        (no audiences configured)."""
        self.check_resource_type(resource_type)
        if resource_id is not None:
            self.canonical_resource_id(connector, resource_type, resource_id)
        settings = ClusterSettings.from_connector(connector)
        if settings.auth_method == AUTH_SERVICE_ACCOUNT_TOKEN:
            minted = await self._mint_token(settings, MIN_TOKEN_SECONDS)
            if settings.audiences:
                return [settings.cluster_name]
            settings = replace(
                settings, token=minted.token, client_certificate=None, client_key=None
            )
        await fetch_version(
            settings,
            self.context.request_timeout,
            transport=self.context.transport,
            env=self.context.env,
        )
        return [settings.cluster_name]

    async def mint(
        self, connector: Connector, resource_type: str, resource_id: str
    ) -> ClientCredential:
        """The stored credential for the cluster, expiring when the connector's does."""
        self.check_resource_type(resource_type)
        name = self.canonical_resource_id(connector, resource_type, resource_id)
        settings = ClusterSettings.from_connector(connector)
        if settings.auth_method == AUTH_SERVICE_ACCOUNT_TOKEN:
            requested_at = self.context.clock.now()
            seconds = connector.expiration_seconds or DEFAULT_TOKEN_SECONDS
            minted = await self._mint_token(settings, seconds)
            return ClientCredential(
                connector_type=CONNECTOR_TYPE,
                auth_method=connector.auth_method,
                resource_type=RESOURCE_TYPE,
                resource_id=name,
                config=settings.minted_config(minted.token),
                secret_names=frozenset({"token"}),
                expires_at=minted.expires_at,
                # The request the cluster answered with a fresh token: its whole lifetime.
                issued_at=min(requested_at, minted.expires_at),
            )
        config = settings.client_config()
        method = self.spec.auth_method(connector.auth_method)
        secret_names = method.secret_names if method is not None else frozenset()
        # Handed through: nobody declared when it was issued, unless a JWT token says so.
        issued_at, expires_at = stored_window(settings.token or "", connector.expires_at)
        return ClientCredential(
            connector_type=CONNECTOR_TYPE,
            auth_method=connector.auth_method,
            resource_type=RESOURCE_TYPE,
            resource_id=name,
            config=config,
            secret_names=frozenset(k for k in config if k in secret_names),
            expires_at=expires_at,
            issued_at=issued_at,
        )

    async def _mint_token(self, settings: ClusterSettings, seconds: int) -> MintedToken:
        return await request_token(
            settings,
            seconds,
            self.context.request_timeout,
            now=self.context.clock.now(),
            transport=self.context.transport,
            env=self.context.env,
        )

    def auto_configure(
        self, options: AutoConfigureOptions, env: Mapping[str, str]
    ) -> AutoConfigured:
        """A configuration from a kubeconfig context (the ``context`` option or the current)."""
        return kubeconfig.auto_configure(options, env)
