"""The application facade every front end calls (gRPC, local helper endpoint).

Flow: store -> providers -> cache -> front ends. The service validates
requests into connectors, reads and writes them through the catalog (the one
in-memory view of the store, for the hot path), runs discovery, and
issues credentials through the cache, writing one audit event per issue.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace

import structlog

from broker import __version__
from broker.access import Gatekeeper, connector_target
from broker.app.issuer import CredentialIssuer
from broker.app.registries import RegistryRouter, registry_host
from broker.app.resources import ResourceFinder
from broker.app.values import (
    ConnectorUpdate,
    CredentialCache,
    DaemonStatus,
    Issued,
    IssuedEvent,
    ListedResources,
)
from broker.audit import AuditLog
from broker.cache.cache import CacheKey
from broker.catalog import Catalog, Changed
from broker.clock import Clock
from broker.connectors import (
    ConnectorDraft,
    build_connector,
    served_types,
)
from broker.discovery import Discovery, Found
from broker.errors import (
    Aborted,
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
)
from broker.identity.principal import Principal
from broker.model import (
    AuthMethodSpec,
    ClientCredential,
    Connector,
    ConnectorTypeSpec,
    ResourceTypeSpec,
    TypeResources,
)
from broker.outputs.manager import OutputState, OutputsView
from broker.policy import AccessPolicy, Action, Target
from broker.providers.base import Provider
from broker.providers.registry import ProviderRegistry
from broker.served import ServedMargins
from broker.store.base import ConnectorFilter, ConnectorStore, StoreChange
from broker.store.persisted import PersistedKey
from broker.upstream_stats import UpstreamStats

log = structlog.get_logger(__name__)


class BrokerService:
    """Registers, lists and verifies connectors and issues their client credentials."""

    def __init__(
        self,
        store: ConnectorStore,
        registry: ProviderRegistry,
        cache: CredentialCache,
        discovery: Discovery,
        clock: Clock,
        policy: AccessPolicy,
    ) -> None:
        self._store = store
        self._registry = registry
        self._cache = cache
        self._discovery = discovery
        self._clock = clock
        self._started = time.monotonic()
        #: The connector view: loaded once, changed only by acknowledged writes, in order.
        self.catalog = Catalog(store)
        #: Checks reporting why the daemon is degraded (None: fine), e.g. the change feed.
        self.conditions: list[Callable[[], str | None]] = []
        #: Mint counts and latency per connector type, for the metrics endpoint.
        self.upstream = UpstreamStats()
        #: Checks every credential returned to a caller against its documented margin.
        self.margins = ServedMargins(clock)
        self.audit = AuditLog()
        self.gate = Gatekeeper(policy, self.audit)
        self.issuer = CredentialIssuer(
            self.authorized,
            self.provider,
            self.secret_names,
            cache,
            clock,
            self.gate,
            self.audit,
            self.upstream,
            self.margins,
        )
        self.resources = ResourceFinder(
            self.authorized, self.provider, self.list_connectors, discovery, clock, self.gate
        )
        self.registries = RegistryRouter(
            self.list_connectors, self.authorized, self.provider, store, self.gate
        )
        # The front ends' entry points, kept on the facade.
        self.get_credentials = self.issuer.get_credentials
        self.watch_credentials = self.issuer.watch_credentials
        self.rotate_credentials = self.issuer.rotate_credentials
        self.verify = self.resources.verify
        self.list_resources = self.resources.list_resources
        self.registry_connector = self.registries.registry_connector
        self.registry_usernames = self.registries.registry_usernames
        self.set_preferred_registry_connector = self.registries.set_preferred_registry_connector
        #: The file outputs' states (the daemon sets it when [[outputs]] are configured).
        self.outputs: OutputsView | None = None

    # -- connector types --------------------------------------------------
    def list_types(
        self,
        principal: Principal,
        connector_type: str | None = None,
        resource_type: str | None = None,
        auth_method: str | None = None,
    ) -> list[ConnectorTypeSpec]:
        self.gate.require(principal, Action.VIEW, Target())
        specs = []
        for provider in self._registry.all():
            spec = provider.spec
            if connector_type and spec.connector_type != connector_type:
                continue
            if resource_type and spec.resource_type(resource_type) is None:
                continue
            if auth_method and spec.auth_method(auth_method) is None:
                continue
            specs.append(spec)
        return specs

    def describe_type(
        self,
        principal: Principal,
        connector_type: str,
        resource_type: str | None = None,
        auth_method: str | None = None,
    ) -> ConnectorTypeSpec:
        self.gate.require(principal, Action.VIEW, Target())
        spec = self._registry.get(connector_type).spec
        rts: tuple[ResourceTypeSpec, ...] = spec.resource_types
        ams: tuple[AuthMethodSpec, ...] = spec.auth_methods
        if resource_type:
            rt = spec.resource_type(resource_type)
            if rt is None:
                raise NotFound(
                    f"connector type '{connector_type}' has no resource type '{resource_type}'",
                    field="resource_type",
                )
            rts = (rt,)
        if auth_method:
            am = spec.auth_method(auth_method)
            if am is None:
                raise NotFound(
                    f"connector type '{connector_type}' has no auth method '{auth_method}'",
                    field="auth_method",
                )
            ams = (am,)
        return replace(spec, resource_types=rts, auth_methods=ams)

    def provider(self, connector: Connector) -> Provider:
        return self._registry.get(connector.connector_type)

    # -- connectors -------------------------------------------------------
    async def _snapshot(self) -> Mapping[str, Connector]:
        return await self.catalog.view()

    async def get(self, name: str) -> Connector:
        connector = await self.catalog.find(name)
        if connector is None:
            raise NotFound(f"connector '{name}' not found", field="name")
        return connector

    async def authorized(
        self,
        name: str,
        principal: Principal,
        action: Action,
        resource_type: str | None = None,
        resource_id: str | None = None,
    ) -> Connector:
        """The named connector, if the caller may do ``action`` to it.

        A caller without the permission is denied whether or not the connector
        exists, so a denial never tells what exists.
        """
        try:
            connector = await self.get(name)
        except NotFound:
            self.gate.require(principal, action, Target(name))
            raise
        self.gate.require_connector(principal, action, connector, resource_type, resource_id)
        return connector

    async def describe(
        self, name: str, principal: Principal, *, show_secrets: bool = False
    ) -> Connector:
        connector = await self.authorized(name, principal, Action.VIEW)
        if show_secrets:
            self.gate.require_connector(principal, Action.SHOW_SECRETS, connector)
            self.audit.record("secrets_shown", connector=connector.name, **principal.audit_fields())
        return connector

    async def list_visible(
        self, principal: Principal, flt: ConnectorFilter | None = None
    ) -> list[Connector]:
        """The connectors matching ``flt`` that the caller may see."""
        self.gate.require(principal, Action.VIEW, Target())
        return [
            c
            for c in await self.list_connectors(flt)
            if self.gate.allowed(principal, Action.VIEW, connector_target(c))
        ]

    async def list_connectors(self, flt: ConnectorFilter | None = None) -> list[Connector]:
        flt = flt or ConnectorFilter()
        out = []
        for connector in sorted((await self._snapshot()).values(), key=lambda c: c.name):
            if flt.name and flt.name != connector.name:
                continue
            if flt.connector_type and flt.connector_type != connector.connector_type:
                continue
            if flt.auth_method and flt.auth_method != connector.auth_method:
                continue
            if any(connector.labels.get(k) != v for k, v in flt.labels.items()):
                continue
            if not (flt.resource_type or flt.resource_id):
                out.append(connector)
                continue
            try:
                provider = self._registry.get(connector.connector_type)
            except NotFound:  # its plugin is not installed: it serves nothing now
                continue
            if flt.resource_type and flt.resource_type not in served_types(provider, connector):
                continue
            if flt.resource_id and not self._may_serve_id(provider, connector, flt):
                continue
            out.append(connector)
        return out

    @staticmethod
    def _may_serve_id(provider: Provider, connector: Connector, flt: ConnectorFilter) -> bool:
        """Whether the connector's scope admits the ID (multi-instance ones admit any): the
        provider's :meth:`~broker.providers.base.Provider.may_serve_id`, no upstream call."""
        assert flt.resource_id is not None
        for rt in served_types(provider, connector):
            if flt.resource_type and rt != flt.resource_type:
                continue
            try:
                canonical = provider.canonical_resource_id(connector, rt, flt.resource_id)
            except InvalidArgument:  # not an ID of this type
                continue
            if provider.may_serve_id(connector, rt, canonical):
                return True
        return False

    async def _verify_or_refuse(self, connector: Connector, verify: bool) -> list[TypeResources]:
        if not verify:
            return []
        results = await self._discovery.discover(
            connector, connector.resource_type, connector.resource_id, refresh=True
        )
        if results and all(r.error for r in results):
            details = "; ".join(f"{r.resource_type}: {r.error}" for r in results)
            raise FailedPrecondition(
                f"connector '{connector.name}' failed verification, nothing was stored "
                f"(use --no-verify to store it anyway): {details}"
            )
        return results

    async def register(
        self, draft: ConnectorDraft, principal: Principal, *, verify: bool = True
    ) -> tuple[Connector, list[TypeResources]]:
        self.gate.require(principal, Action.MANAGE, Target(draft.name, draft.labels))
        provider = self._registry.get(draft.connector_type)
        connector = build_connector(provider, draft, self._clock)
        if connector.name in await self._snapshot():
            raise AlreadyExists(f"connector '{connector.name}' already exists", field="name")
        results = await self._verify_or_refuse(connector, verify)
        stored = await self.catalog.create(connector, self._secret_names(provider, connector))
        self.audit.record(
            "connector_registered",
            connector=stored.name,
            connector_type=stored.connector_type,
            auth_method=stored.auth_method,
            revision=stored.revision,
            **principal.audit_fields(),
        )
        return stored, results

    async def update(
        self,
        name: str,
        change: ConnectorUpdate,
        principal: Principal,
        *,
        verify: bool = True,
        expected_revision: int | None = None,
    ) -> tuple[Connector, list[TypeResources]]:
        """Apply ``change`` to the connector as read now.

        ``expected_revision``: refuse (Aborted) unless it is still at the revision
        the caller read. Either way the store write is a compare-and-swap on the
        revision read here, so a change made meanwhile (e.g. while verifying) is
        never overwritten: that update is Aborted instead.
        """
        current = await self.authorized(name, principal, Action.MANAGE)
        if expected_revision is not None and expected_revision != current.revision:
            raise Aborted.stale(current.name, expected_revision, current.revision)
        provider = self.provider(current)
        config = dict(current.config)
        auth_method = change.auth_method or current.auth_method
        for key in change.remove_attributes:
            if key not in config:
                raise InvalidArgument(
                    f"connector '{name}' has no attribute '{key}' to remove", field=key
                )
            del config[key]
        config.update(change.config)
        labels = dict(current.labels)
        for key in change.remove_labels:
            labels.pop(key, None)
        labels.update(change.labels)
        resource_type = (
            None if change.clear_resource_type else (change.resource_type or current.resource_type)
        )
        if change.resource_id:
            resource_id: str | None = change.resource_id
        elif (
            change.clear_resource_id
            or change.clear_resource_type
            or resource_type != current.resource_type
        ):
            resource_id = None
        else:
            resource_id = current.resource_id
        draft = ConnectorDraft(
            name=current.name,
            connector_type=current.connector_type,
            auth_method=auth_method,
            resource_type=resource_type,
            resource_id=resource_id,
            config=config,
            labels=labels,
            expiration_seconds=None
            if change.clear_expiration_seconds
            else (change.expiration_seconds or current.expiration_seconds),
            expires_at=None
            if change.clear_expires_at
            else (change.expires_at or current.expires_at),
            description=current.description if change.description is None else change.description,
        )
        connector = build_connector(provider, draft, self._clock, base=current)
        # New labels must stay within what the caller may manage.
        self.gate.require(principal, Action.MANAGE, connector_target(connector))
        results = await self._verify_or_refuse(connector, verify)
        stored = await self.catalog.update(
            connector, self._secret_names(provider, connector), current.revision
        )
        self._cache.invalidate_connector(stored.id, "updated", revision=stored.revision)
        self._discovery.forget(stored.id)
        self.audit.record(
            "connector_updated",
            connector=stored.name,
            revision=stored.revision,
            **principal.audit_fields(),
        )
        return stored, results

    async def delete(self, name: str, principal: Principal) -> Connector:
        current = await self.authorized(name, principal, Action.MANAGE)
        deleted = await self.catalog.delete(current.id)
        self._cache.invalidate_connector(deleted.id, "deleted")
        self._discovery.forget(deleted.id)
        self.audit.record("connector_deleted", connector=deleted.name, **principal.audit_fields())
        return deleted

    async def apply_store_change(self, change: StoreChange) -> None:
        """A write made through another daemon sharing the store (its change feed).

        The same path as a local write: the catalog first, then the cache drops
        the connector's credentials (an update refuses the old revision from now
        on) and its watchers get ``updated`` or ``deleted``.
        """
        self._changed_elsewhere(await self.catalog.apply_change(change))

    async def reload_catalog(self) -> None:
        """Every connector read again (the change feed fell too far behind)."""
        self._changed_elsewhere(await self.catalog.reload())

    def _changed_elsewhere(self, changes: list[Changed]) -> None:
        for changed in changes:
            c = changed.connector
            revision = c.revision if changed.event == "updated" else None
            self._cache.invalidate_connector(c.id, changed.event, revision=revision)
            self._discovery.forget(c.id)
            log.info(
                "connector_changed_elsewhere",
                connector=c.name,
                change=changed.event,
                revision=c.revision,
            )

    @staticmethod
    def _secret_names(provider: Provider, connector: Connector) -> frozenset[str]:
        method = provider.spec.auth_method(connector.auth_method)
        return method.secret_names if method else frozenset()

    def secret_names(self, connector: Connector) -> frozenset[str]:
        return self._secret_names(self.provider(connector), connector)

    # -- the persistent cache ---------------------------------------------
    async def restore_credentials(
        self, persisted: Sequence[tuple[PersistedKey, ClientCredential]]
    ) -> tuple[int, list[PersistedKey]]:
        """Credentials minted before a restart back in the cache (after the catalog
        loaded): how many, and the keys no longer useful (connector gone or changed,
        inside the margin) for the caller to drop."""
        by_id = {c.id: c for c in (await self._snapshot()).values()}
        restored, stale = 0, []
        for pkey, credential in persisted:
            connector = by_id.get(pkey.connector_id)
            if connector is None or connector.revision != pkey.revision:
                stale.append(pkey)
                continue
            key = CacheKey(
                connector.id,
                connector.revision,
                pkey.resource_type,
                pkey.resource_id,
                pkey.variant,
                connector_name=connector.name,
            )
            if await self.issuer.restore(connector, key, credential):
                restored += 1
            else:
                stale.append(pkey)
        return restored, stale

    # -- file outputs -----------------------------------------------------
    def list_outputs(self, principal: Principal) -> list[OutputState]:
        """Paths, formats, last write, next renewal and last error: no secret, so viewers
        may see them, as they see ``status``."""
        self.gate.require(principal, Action.VIEW, Target())
        return self.outputs() if self.outputs is not None else []

    # -- status -----------------------------------------------------------
    async def status(self, principal: Principal) -> DaemonStatus:
        self.gate.require(principal, Action.VIEW, Target())
        stats = self._cache.stats()
        return DaemonStatus(
            version=__version__,
            uptime_seconds=time.monotonic() - self._started,
            connectors=len(await self._snapshot()),
            cached_credentials=int(stats.get("entries", 0)),
            subscribers=int(stats.get("subscribers", 0)),
            connector_types=[p.spec.connector_type for p in self._registry.all()],
            degraded=[reason for check in self.conditions if (reason := check()) is not None],
            store=self._store.location,
        )


__all__ = [
    "BrokerService",
    "ConnectorUpdate",
    "DaemonStatus",
    "Found",
    "Issued",
    "IssuedEvent",
    "ListedResources",
    "registry_host",
]
