"""Which resources a connector reaches, as the caller may see them: verify and listing.

Discovery (:mod:`broker.discovery`) fans out to the providers; this narrows a
request to a type or one resource, checks the caller's rules, and keeps only the
resource IDs those rules cover.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import replace

from broker.access import Gatekeeper, connector_target
from broker.app.values import ListedResources
from broker.clock import Clock
from broker.connectors import check_not_expired, check_not_tampered, resolve_resource, served_types
from broker.discovery import Discovery, Found
from broker.errors import InvalidArgument
from broker.identity.principal import Principal
from broker.model import Connector, TypeResources
from broker.policy import Action, Target
from broker.providers.base import Provider
from broker.store.base import ConnectorFilter


class ResourceFinder:
    """``verify`` and ``list_resources`` for the facade."""

    def __init__(
        self,
        authorized: Callable[[str, Principal, Action], Awaitable[Connector]],
        provider: Callable[[Connector], Provider],
        list_connectors: Callable[[ConnectorFilter], Awaitable[list[Connector]]],
        discovery: Discovery,
        clock: Clock,
        gate: Gatekeeper,
    ) -> None:
        self._authorized = authorized
        self._provider = provider
        self._list_connectors = list_connectors
        self._discovery = discovery
        self._clock = clock
        self._gate = gate

    async def verify(
        self,
        name: str,
        principal: Principal,
        resource_type: str | None = None,
        resource_id: str | None = None,
    ) -> list[TypeResources]:
        connector = await self._authorized(name, principal, Action.VERIFY)
        check_not_tampered(connector)
        check_not_expired(connector, self._clock.now())
        rid = None
        if resource_type or resource_id:
            resource_type, rid = await self._resolve_optional(connector, resource_type, resource_id)
            self._gate.require_connector(principal, Action.VERIFY, connector, resource_type, rid)
        results = await self._discovery.discover(connector, resource_type, rid, refresh=True)
        return [self.visible_result(principal, Action.VERIFY, connector, r) for r in results]

    def visible_result(
        self, principal: Principal, action: Action, connector: Connector, result: TypeResources
    ) -> TypeResources:
        """Only the resources the caller's rules cover (a type outside them: none)."""
        target = connector_target(connector, result.resource_type)
        if not self._gate.allowed(principal, action, target):
            return replace(result, resource_ids=())
        policy = self._gate.policy
        ids = tuple(
            r for r in result.resource_ids if policy.allows_resource(principal, action, target, r)
        )
        return result if len(ids) == len(result.resource_ids) else replace(result, resource_ids=ids)

    async def _resolve_optional(
        self, connector: Connector, resource_type: str | None, resource_id: str | None
    ) -> tuple[str, str | None]:
        """Verify narrows to a type (all its instances) or to one resource."""
        provider = self._provider(connector)
        if resource_id:
            return await resolve_resource(provider, connector, resource_type, resource_id)
        types = served_types(provider, connector)
        if resource_type not in types:
            raise InvalidArgument(
                f"connector '{connector.name}' does not serve resource type '{resource_type}' "
                f"(it serves: {', '.join(types)})",
                field="resource_type",
            )
        assert resource_type is not None
        return resource_type, connector.resource_id

    @asynccontextmanager
    async def list_resources(
        self,
        flt: ConnectorFilter,
        principal: Principal,
        *,
        exclude_errors: bool = False,
        unit_timeout: float | None = None,
        refresh: bool = False,
    ) -> AsyncIterator[AsyncIterator[ListedResources]]:
        """Stream (connector, resource type) results as they arrive, across all connectors.

        The fan-out lives as long as the block: leaving it (the client hung up) cancels
        every unit still running before this returns.
        """
        self._gate.require(principal, Action.VIEW, Target())
        connectors = [
            c
            for c in await self._list_connectors(flt)
            if self._gate.allowed(principal, Action.LIST_RESOURCES, connector_target(c))
        ]
        units = self._discovery.plan(connectors, flt.resource_type, flt.resource_id)
        async with self._discovery.stream(
            units, unit_timeout=unit_timeout, refresh=refresh
        ) as stream:
            yield self._listed(stream, exclude_errors, principal)

    async def _listed(
        self, stream: AsyncIterator[Found], exclude_errors: bool, principal: Principal
    ) -> AsyncIterator[ListedResources]:
        """A plain filter (no task group or cancel scope), safe to abandon mid-iteration."""
        async for found in stream:
            listed = found.result
            if exclude_errors and listed.error:
                if not listed.resource_ids:
                    continue
                listed = replace(listed, error=None)  # a partial listing: what was found
            result = self.visible_result(principal, Action.LIST_RESOURCES, found.connector, listed)
            yield ListedResources(found.connector, result)
