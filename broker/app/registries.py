"""Which connector answers docker for a registry host, and what ``list`` shows.

Only connectors the caller may get credentials from are candidates, so a
stranger is told "not found" and never learns which connectors exist.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import structlog

from broker.access import Gatekeeper, connector_target
from broker.connectors import check_not_tampered, served_types
from broker.errors import BrokerError, FailedPrecondition, InvalidArgument, NotFound
from broker.identity.principal import Principal
from broker.model import Connector
from broker.policy import Action, Target
from broker.providers.base import Provider
from broker.store.base import ConnectorStore

log = structlog.get_logger(__name__)

#: Store setting prefix: registry host -> the connector docker should use for it.
PREFERRED_REGISTRY = "preferred.docker-registry."


def registry_host(server_url: str) -> str:
    """``https://host:port/v1/`` -> ``host:port``: what docker passes is a URL or a host."""
    text = server_url.strip()
    if "://" in text:
        text = text.split("://", 1)[1]
    host = text.split("/", 1)[0].lower()
    if not host:
        raise InvalidArgument("registry server URL is empty", field="server_url")
    return host


class RegistryRouter:
    """The docker credential helper's view: registry hosts -> connectors."""

    def __init__(
        self,
        connectors: Callable[[], Awaitable[list[Connector]]],
        lookup: Callable[[str, Principal, Action], Awaitable[Connector]],
        provider: Callable[[Connector], Provider],
        store: ConnectorStore,
        gate: Gatekeeper,
    ) -> None:
        self.list_connectors = connectors
        self.authorized = lookup
        self.provider = provider
        self._store = store
        self.gate = gate

    async def registry_connector(self, server_url: str, principal: Principal) -> tuple[str, str]:
        """The connector serving a registry host docker asks about, and its resource ID.

        Several candidates and no preference recorded by ``broker login docker`` is an
        error that names them; none is NotFound ("credentials not found" to docker).
        """
        host = registry_host(server_url)
        candidates: list[tuple[Connector, str]] = []
        for connector in await self.list_connectors():
            rid = self.provider(connector).registry_resource_id(connector, host)
            target = connector_target(connector, "docker-registry", rid)
            # Only what the caller may use: others' connectors are not even named.
            if rid is not None and self.gate.allowed(principal, Action.GET, target):
                candidates.append((connector, rid))
        preferred = await self._store.get_setting(PREFERRED_REGISTRY + host)
        for connector, rid in candidates:
            if connector.name == preferred:
                return connector.name, rid
        if not candidates:
            raise NotFound(f"no connector serves registry '{host}'", field="server_url")
        if len(candidates) > 1:
            names = ", ".join(c.name for c, _ in candidates)
            raise FailedPrecondition(
                f"several connectors serve registry '{host}' ({names}); choose one with "
                f"`broker login docker NAME --resource-id {host}`"
            )
        connector, rid = candidates[0]
        return connector.name, rid

    async def registry_usernames(self, principal: Principal) -> dict[str, str]:
        """``list`` for docker: every registry host ``get`` serves the caller (docker
        registries, ECR, gcr.io / Artifact Registry) -> the user name its login carries.

        Only connectors the caller may get credentials from, as for ``get``. A connector
        whose hosts cannot be worked out now (e.g. ECR's account, upstream down) is left
        out rather than failing the whole list.
        """
        out: dict[str, str] = {}
        for connector in await self.list_connectors():
            try:
                check_not_tampered(connector)
                provider = self.provider(connector)
                if "docker-registry" not in served_types(provider, connector):
                    continue
                hosts = await provider.registry_hosts(connector)
            except BrokerError as exc:
                log.info("registry_hosts_unknown", connector=connector.name, error=exc.message)
                continue
            for host, user in hosts.items():
                rid = provider.registry_resource_id(connector, host)
                target = connector_target(connector, "docker-registry", rid)
                if rid is not None and self.gate.allowed(principal, Action.GET, target):
                    out.setdefault(host, user)
        return out

    async def set_preferred_registry_connector(
        self, host: str, name: str | None, principal: Principal
    ) -> None:
        """Record (or clear) which connector answers docker for a registry host."""
        if name is None:
            self.gate.require(principal, Action.MANAGE, Target())
        else:
            connector = await self.authorized(name, principal, Action.MANAGE)
            rid = self.provider(connector).registry_resource_id(connector, registry_host(host))
            if rid is None:
                raise InvalidArgument(
                    f"connector '{name}' does not serve registry '{host}'", field="resource_id"
                )
        await self._store.set_setting(PREFERRED_REGISTRY + registry_host(host), name)
