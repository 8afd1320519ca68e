"""The ``azure`` connector type: Entra identities in, short-lived, scoped credentials out.

* azure-generic -> an ``azure`` ``access-token`` credential for ARM
  (``https://management.azure.com/.default``, or the connector's ARM endpoint);
* blob-container -> an ``azure`` ``sas-token`` credential: a user-delegation
  SAS for that one container with the connector's expiration (or, with
  ``blob_credential=access-token``, a storage-scoped Entra token);
* kubernetes-cluster -> a ``kubernetes`` ``token`` credential: server and CA
  from the cluster's user kubeconfig, and an Entra token for the AKS server
  application (scope ``6dae42f8-.../.default``, as kubelogin asks);
* docker-registry -> a ``docker`` ``password`` credential: user
  ``00000000-0000-0000-0000-000000000000`` and an ACR refresh token from the
  registry's ``/oauth2/exchange``.

Each carries its real expiry: the Entra token's ``expires_on``, the SAS's
signed expiry, the refresh token's ``exp``.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

import aiohttp

from broker.errors import NotFound
from broker.model import AutoConfigured, AutoConfigureOptions, ClientCredential, Connector, Value
from broker.providers import credentials, fanout
from broker.providers.azure import arm, autoconfig, blob, entra, ids, subscriptions
from broker.providers.azure.settings import AKS_SCOPE, STORAGE_SCOPE, AzureSettings
from broker.providers.azure.spec import (
    AUTH_TOKEN,
    BLOB_TOKEN,
    CONNECTOR_TYPE,
    DEFAULT_SAS_LIFETIME,
    RT_AKS,
    RT_BLOB,
    RT_GENERIC,
    RT_REGISTRY,
    SPEC,
)
from broker.providers.base import Provider, ProviderContext
from broker.providers.http import client_session
from broker.providers.memo import PerObject

#: The docker user name ACR takes with a refresh token as password.
ACR_USER = "00000000-0000-0000-0000-000000000000"
#: Storage accounts whose containers are listed at once.
ACCOUNT_CONCURRENCY = 8
#: The ID of a type without instances when the connector names neither subscription nor tenant.
_NO_SCOPE = "default"


class AzureProvider(Provider):
    """Service principals, stored tokens and the daemon's own identity for Azure."""

    spec = SPEC

    def __init__(self, context: ProviderContext | None = None) -> None:
        super().__init__(context)
        self._settings: PerObject[AzureSettings] = PerObject()
        #: One listing's resource types share one subscription enumeration per connector.
        self._subscriptions = subscriptions.SharedEnumeration(self.context.clock)
        #: One session per trust root (connectors may pin their own CA).
        self._sessions: dict[str | None, aiohttp.ClientSession] = {}

    # -- configuration ------------------------------------------------------
    def settings(self, connector: Connector) -> AzureSettings:
        known = self._settings.get(connector)
        if known is None:
            known = AzureSettings.from_connector(connector, self.context.env)
            self._settings.put(connector, known)
        return known

    def _http(self, settings: AzureSettings) -> aiohttp.ClientSession:
        ca = settings.endpoints.certificate_authority
        session = self._sessions.get(ca)
        if session is None or session.closed:
            session = client_session(
                timeout=self.context.request_timeout,
                certificate_authority=ca,
                transport=self.context.transport,
            )
            self._sessions[ca] = session
        return session

    async def aclose(self) -> None:
        self._settings.clear()
        self._subscriptions.clear()
        sessions, self._sessions = self._sessions, {}
        for session in sessions.values():
            await session.close()

    # -- validation -------------------------------------------------------
    def validate(self, connector: Connector) -> None:
        self.settings(connector)

    def canonical_resource_id(self, connector: Connector, resource_type: str, raw: str) -> str:
        self.check_resource_type(resource_type)
        settings = self.settings(connector)
        sub, urls = settings.subscription, settings.endpoints
        if resource_type == RT_GENERIC:
            return ids.canonical_generic(raw, settings.generic_id or _NO_SCOPE, sub is None)
        if resource_type == RT_BLOB:
            return ids.parse_blob(raw, urls.storage_suffix, sub).canonical
        if resource_type == RT_AKS:
            return ids.parse_cluster(raw, sub).canonical
        return ids.parse_registry(raw, urls.acr_suffix, sub)

    def default_resource_id(self, connector: Connector, resource_type: str) -> str | None:
        self.check_resource_type(resource_type)
        if resource_type != RT_GENERIC:
            return None
        return self.settings(connector).generic_id or _NO_SCOPE

    def may_serve_id(self, connector: Connector, resource_type: str, canonical: str) -> bool:
        """Without subscription_id, azure-generic has an instance per Enabled subscription:
        any subscription GUID may be served (which ones are Enabled only ARM knows; the
        tenant, the default ID, stays one of them)."""
        if (
            resource_type == RT_GENERIC
            and connector.resource_id is None
            and self.settings(connector).subscription is None
        ):
            return True  # canonical_resource_id admitted it: the tenant or a subscription GUID
        return super().may_serve_id(connector, resource_type, canonical)

    async def registry_hosts(self, connector: Connector) -> dict[str, str]:
        """docker ``list``: the one registry of a connector fixed on it, else the ACR
        registries ARM lists in the subscription (an error leaves the connector out)."""
        if connector.resource_type not in (None, RT_REGISTRY):
            return {}
        if connector.resource_id is not None:
            return {connector.resource_id: ACR_USER}
        try:
            found = await self.discover(connector, RT_REGISTRY, None)
        except fanout.PartialListing as partial:  # the subscriptions that answered
            found = partial.found
        return dict.fromkeys(found, ACR_USER)

    # -- tokens -------------------------------------------------------------
    async def token(self, connector: Connector, scope: str) -> entra.AccessToken:
        self.implicit_allowed(connector)
        settings = self.settings(connector)
        return await entra.get_token(
            connector,
            settings,
            scope,
            session=self._http(settings),
            now=self.context.clock.now(),
            request_timeout=self.context.request_timeout,
        )

    def _arm(self, settings: AzureSettings, token: entra.AccessToken) -> arm.Arm:
        return arm.Arm(
            self._http(settings), settings.endpoints.arm, token.value, self.context.request_timeout
        )

    def _enabled(self, connector: Connector, mgmt: arm.Arm) -> subscriptions.Enabled:
        """The connector's Enabled subscriptions, enumerated once for concurrent callers."""

        async def fetch() -> list[str]:
            return await arm.enabled_subscriptions(mgmt)

        async def shared() -> list[str]:
            return await self._subscriptions.enabled(connector, fetch)

        return shared

    # -- upstream ---------------------------------------------------------
    async def discover(
        self, connector: Connector, resource_type: str, resource_id: str | None
    ) -> list[str]:
        self.check_resource_type(resource_type)
        settings = self.settings(connector)
        canonical = (
            self.canonical_resource_id(connector, resource_type, resource_id)
            if resource_id
            else None
        )
        session, timeout = self._http(settings), self.context.request_timeout
        if resource_type == RT_BLOB:
            token = await self.token(connector, STORAGE_SCOPE)
            if canonical:
                ref = ids.parse_blob(canonical, settings.endpoints.storage_suffix, None)
                url = settings.endpoints.blob_url(ref.account)
                return [await blob.check_container(url, ref, token, session, timeout)]
            mgmt = self._arm(settings, await self.token(connector, settings.endpoints.arm_scope))
            enabled = self._enabled(connector, mgmt)

            async def containers(sub: str) -> list[str]:
                accounts = await arm.list_storage_accounts(mgmt, sub)
                return await self._containers(settings, accounts, token)

            return await subscriptions.across(settings, enabled, containers)
        mgmt = self._arm(settings, await self.token(connector, settings.endpoints.arm_scope))
        enabled = self._enabled(connector, mgmt)
        if resource_type == RT_GENERIC:
            return await self._generic(settings, mgmt, enabled, canonical)
        if resource_type == RT_AKS:
            if canonical:
                cluster = ids.parse_cluster(canonical, settings.subscription)
                await subscriptions.locate_cluster(mgmt, settings, enabled, cluster)
                return [canonical]
            return await subscriptions.cluster_ids(mgmt, settings, enabled)

        async def registries(sub: str) -> list[str]:
            return await arm.list_registries(mgmt, sub)

        if not canonical:
            return await subscriptions.across(settings, enabled, registries)
        try:
            found = await subscriptions.across(settings, enabled, registries)
        except fanout.PartialListing as partial:
            if canonical not in partial.found:
                raise  # it may be in a subscription that failed
            found = partial.found
        if canonical not in found:
            where = (
                f"subscription '{settings.subscription}'"
                if settings.subscription
                else f"any Enabled subscription connector '{connector.name}' sees"
            )
            raise NotFound(f"ACR registry '{canonical}' is not in {where}")
        return [canonical]

    async def _generic(
        self,
        settings: AzureSettings,
        mgmt: arm.Arm,
        enabled: subscriptions.Enabled,
        canonical: str | None,
    ) -> list[str]:
        """The configured subscription (checked visible); without one, every Enabled
        subscription the identity sees, or the tenant when it sees none."""
        generic = settings.generic_id or _NO_SCOPE
        if settings.subscription is not None:
            subs = await arm.list_subscriptions(mgmt)
            if settings.subscription not in subs:
                raise NotFound(
                    f"subscription '{settings.subscription}' is not visible to connector "
                    f"'{settings.connector}' (it sees {len(subs)})"
                )
            return [generic]
        seen = await enabled()
        if canonical is None:
            return seen or [generic]
        if canonical != generic and canonical not in seen:
            raise NotFound(
                f"subscription '{canonical}' is not an Enabled subscription visible to "
                f"connector '{settings.connector}' (it sees {len(seen)})"
            )
        return [canonical]

    async def _containers(
        self, settings: AzureSettings, accounts: list[str], token: entra.AccessToken
    ) -> list[str]:
        """Every container of ``accounts``, a few accounts at a time; the first error wins."""
        session, timeout = self._http(settings), self.context.request_timeout

        async def one(account: str) -> list[str]:
            url = settings.endpoints.blob_url(account)
            return await blob.list_containers(url, account, token, session, timeout)

        return sorted(await fanout.gather_bounded(accounts, one, ACCOUNT_CONCURRENCY))

    async def mint(
        self, connector: Connector, resource_type: str, resource_id: str
    ) -> ClientCredential:
        self.check_resource_type(resource_type)
        self.implicit_allowed(connector)
        settings = self.settings(connector)
        canonical = self.canonical_resource_id(connector, resource_type, resource_id)
        issued = self.context.clock.now()
        fresh = issued if settings.auth_method != AUTH_TOKEN else None
        urls = settings.endpoints
        session, timeout = self._http(settings), self.context.request_timeout
        if resource_type == RT_GENERIC:
            token = await self.token(connector, urls.arm_scope)
            # The credential names the subscription asked for (the tenant's has none).
            default = settings.generic_id or _NO_SCOPE
            sub = settings.subscription or (canonical if canonical != default else None)
            return self._token_credential(settings, resource_type, canonical, token, fresh, sub)
        if resource_type == RT_BLOB:
            token = await self.token(connector, STORAGE_SCOPE)
            if settings.blob_credential == BLOB_TOKEN:
                return self._token_credential(
                    settings, resource_type, canonical, token, fresh, settings.subscription
                )
            blob_ref = ids.parse_blob(canonical, urls.storage_suffix, None)
            account_url = urls.blob_url(blob_ref.account)
            lifetime = connector.expiration_seconds or DEFAULT_SAS_LIFETIME
            sas = await blob.container_sas(
                account_url,
                blob_ref,
                token,
                lifetime,
                now=issued,
                session=session,
                request_timeout=timeout,
            )
            return ClientCredential(
                connector_type=CONNECTOR_TYPE,
                auth_method="sas-token",
                resource_type=resource_type,
                resource_id=canonical,
                config={
                    "account_url": account_url,
                    "container": blob_ref.container,
                    "container_url": f"{account_url}/{blob_ref.container}",
                    "sas_token": sas.token,
                },
                secret_names=frozenset({"sas_token"}),
                expires_at=sas.expires_at,
                issued_at=issued,
            )
        if resource_type == RT_AKS:
            mgmt = self._arm(settings, await self.token(connector, urls.arm_scope))
            ref = ids.parse_cluster(canonical, settings.subscription)
            known = ref.subscription or settings.subscription
            if ref.resource_group is not None and known is not None:
                sub, group, name = known, ref.resource_group, ref.name
            else:  # resolved by listing (its subscription, or every one in reach)
                enabled = self._enabled(connector, mgmt)
                sub, group, name = await subscriptions.locate_cluster(mgmt, settings, enabled, ref)
            server, ca = await arm.cluster_access(mgmt, sub, group, name)
            token = await self.token(connector, AKS_SCOPE)
            return credentials.kubernetes_token(
                resource_type,
                canonical,
                server=server,
                certificate_authority=ca,
                cluster_name=name,
                token=token.value,
                expires_at=token.expires_at,
                issued_at=fresh,
            )
        token = await self.token(connector, urls.arm_scope)
        refresh = await arm.acr_refresh_token(
            session, urls.acr_url(canonical), canonical, settings.tenant, token.value, timeout
        )
        expires_at = arm.jwt_expiry(refresh) or token.expires_at
        return credentials.docker_login(
            RT_REGISTRY,
            canonical,
            registry=canonical,
            username=ACR_USER,
            password=refresh,
            expires_at=expires_at,
            issued_at=issued,
        )

    def _token_credential(
        self,
        settings: AzureSettings,
        resource_type: str,
        canonical: str,
        token: entra.AccessToken,
        issued: datetime | None,
        subscription: str | None,
    ) -> ClientCredential:
        config: dict[str, Value] = {"token": token.value}
        if settings.tenant:
            config["tenant_id"] = settings.tenant
        if subscription:
            config["subscription_id"] = subscription
        return ClientCredential(
            connector_type=CONNECTOR_TYPE,
            auth_method=AUTH_TOKEN,
            resource_type=resource_type,
            resource_id=canonical,
            config=config,
            secret_names=frozenset({"token"}),
            expires_at=token.expires_at,
            issued_at=issued,
        )

    # -- local environment --------------------------------------------------
    def auto_configure(
        self, options: AutoConfigureOptions, env: Mapping[str, str]
    ) -> AutoConfigured:
        return autoconfig.auto_configure(options, env)
