"""Concurrent resource discovery: every connector, every resource type, at once.

Verify, register and list-resources share this engine. Each (connector,
resource type) is one unit of work, bounded by a global and a per-provider
limit and a per-connector timeout; failures become per-unit errors, never
an exception for the whole listing. Successful results are cached per
connector revision for a short TTL.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass

import anyio
import structlog
from anyio.abc import ObjectReceiveStream
from anyio.streams.memory import MemoryObjectSendStream

from broker.clock import Clock
from broker.connectors import check_not_expired, served_types
from broker.errors import BrokerError
from broker.model import Connector, TypeResources
from broker.providers.registry import ProviderRegistry

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class DiscoveryLimits:
    """Defaults sized so a burst stays under provider rate limits (ECR allows ~20 req/s)."""

    #: Units of work running at once across all providers.
    global_concurrency: int = 64
    #: Units of work running at once against one connector type.
    per_provider_concurrency: int = 16
    #: Seconds one (connector, resource type) may take before it reports a timeout.
    timeout: float = 10.0
    #: Seconds a successful listing is reused (0 disables the cache).
    cache_ttl: float = 60.0
    #: Listings kept in the result cache.
    cache_entries: int = 4096


@dataclass(frozen=True)
class Found:
    """One unit's result: which connector, which type, what it reaches or why not."""

    connector: Connector
    result: TypeResources


_CacheKey = tuple[str, int, str, str | None]


class Discovery:
    """Runs provider discovery concurrently with limits, timeouts and a result cache."""

    def __init__(
        self, registry: ProviderRegistry, clock: Clock, limits: DiscoveryLimits | None = None
    ) -> None:
        self._registry = registry
        self._clock = clock
        self.limits = limits or DiscoveryLimits()
        self._global = anyio.Semaphore(self.limits.global_concurrency)
        self._per_provider: dict[str, anyio.Semaphore] = {}
        self._cache: dict[_CacheKey, tuple[float, TypeResources]] = {}

    def _provider_limit(self, connector_type: str) -> anyio.Semaphore:
        sem = self._per_provider.get(connector_type)
        if sem is None:
            sem = anyio.Semaphore(self.limits.per_provider_concurrency)
            self._per_provider[connector_type] = sem
        return sem

    async def discover_one(
        self,
        connector: Connector,
        resource_type: str,
        resource_id: str | None = None,
        *,
        unit_timeout: float | None = None,
        refresh: bool = False,
    ) -> TypeResources:
        """Discover one resource type of one connector; errors are returned, not raised."""
        key: _CacheKey = (connector.id, connector.revision, resource_type, resource_id)
        if not refresh and self.limits.cache_ttl > 0:
            hit = self._cache.get(key)
            if hit is not None and hit[0] > self._clock.monotonic():
                return hit[1]
        limit = unit_timeout if unit_timeout and unit_timeout > 0 else self.limits.timeout
        result = await self._run(connector, resource_type, resource_id, limit)
        if result.error is None and self.limits.cache_ttl > 0:
            if len(self._cache) >= self.limits.cache_entries:
                self._cache.pop(next(iter(self._cache)))
            self._cache[key] = (self._clock.monotonic() + self.limits.cache_ttl, result)
        return result

    async def _run(
        self, connector: Connector, resource_type: str, resource_id: str | None, limit: float
    ) -> TypeResources:
        try:
            check_not_expired(connector, self._clock.now())
            provider = self._registry.get(connector.connector_type)
            async with self._global, self._provider_limit(connector.connector_type):
                with anyio.fail_after(limit):
                    ids = await provider.discover(connector, resource_type, resource_id)
        except TimeoutError:
            return TypeResources(resource_type, error=f"timed out after {_secs(limit)}")
        except BrokerError as exc:
            return TypeResources(resource_type, error=exc.message)
        except Exception as exc:  # a provider bug must not fail the whole listing
            log.error(
                "discovery_failed",
                connector=connector.name,
                resource_type=resource_type,
                error_type=type(exc).__name__,
            )
            return TypeResources(
                resource_type, error=f"internal error while listing ({type(exc).__name__})"
            )
        unique = sorted(set(ids))
        if not unique:
            what = f"'{resource_id}'" if resource_id else "no resources"
            return TypeResources(resource_type, error=f"{what} reachable with these credentials")
        return TypeResources(resource_type, resource_ids=tuple(unique))

    async def discover(
        self,
        connector: Connector,
        resource_type: str | None = None,
        resource_id: str | None = None,
        *,
        unit_timeout: float | None = None,
        refresh: bool = False,
    ) -> list[TypeResources]:
        """Every served resource type of one connector, concurrently, in type order."""
        async with self.stream(
            [connector], resource_type, resource_id, unit_timeout=unit_timeout, refresh=refresh
        ) as results:
            found = [f.result async for f in results]
        types = self._types(connector, resource_type)
        return sorted(found, key=lambda r: types.index(r.resource_type))

    def _types(self, connector: Connector, resource_type: str | None) -> list[str]:
        provider = self._registry.get(connector.connector_type)
        types = list(served_types(provider, connector))
        if resource_type:
            types = [t for t in types if t == resource_type]
        return types

    @asynccontextmanager
    async def stream(
        self,
        connectors: Sequence[Connector],
        resource_type: str | None = None,
        resource_id: str | None = None,
        *,
        unit_timeout: float | None = None,
        refresh: bool = False,
    ) -> AsyncIterator[ObjectReceiveStream[Found]]:
        """Results as they arrive; leaving the block cancels whatever is still running."""
        send, receive = anyio.create_memory_object_stream[Found](math.inf)

        async def unit(connector: Connector, rt: str, out: MemoryObjectSendStream[Found]) -> None:
            async with out:
                result = await self.discover_one(
                    connector, rt, resource_id, unit_timeout=unit_timeout, refresh=refresh
                )
                await out.send(Found(connector, result))

        async with anyio.create_task_group() as tg:
            async with send:
                for connector in connectors:
                    for rt in self._types(connector, resource_type):
                        tg.start_soon(unit, connector, rt, send.clone())
            try:
                async with receive:
                    yield receive
            finally:
                tg.cancel_scope.cancel()

    def forget(self, connector_id: str) -> None:
        """Drop cached listings of a connector (updates also change the revision key)."""
        for key in [k for k in self._cache if k[0] == connector_id]:
            del self._cache[key]


def _secs(seconds: float) -> str:
    return f"{seconds:g}s"
