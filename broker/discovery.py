"""Concurrent resource discovery: every connector, every resource type, at once.

Verify, register and list-resources share this engine. Each (connector,
resource type) is one unit of work, bounded by a per-provider and a global
limit and a per-unit timeout; failures become per-unit errors, never an
exception for the whole listing. Results are cached per connector revision:
successes for ``cache_ttl``, failures briefly (``failure_ttl``, as resolvers
cache negative answers), so a listing does not re-ask a connector that just
failed; a reused failure says how old it is, and ``refresh`` asks again.
Leaving :meth:`Discovery.stream` early (the client went away) cancels every
unit still queued or running before it returns.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, replace

import anyio
import structlog
from anyio.abc import ObjectReceiveStream
from anyio.streams.memory import MemoryObjectSendStream

from broker.clock import Clock
from broker.connectors import check_not_expired, check_not_tampered, served_types
from broker.errors import BrokerError, InvalidArgument
from broker.model import Connector, TypeResources
from broker.providers.base import Provider
from broker.providers.fanout import PartialListing
from broker.providers.registry import ProviderRegistry

log = structlog.get_logger(__name__)

#: The resource type reported for a connector whose connector type is not installed.
ANY_TYPE = "*"


@dataclass(frozen=True)
class DiscoveryLimits:
    """Defaults sized so 100 connectors answer in about two upstream round trips while one
    burst stays bounded; lower ``per_provider_concurrency`` for rate-limited providers."""

    #: Units of work running at once across all providers.
    global_concurrency: int = 128
    #: Units of work running at once against one connector type.
    per_provider_concurrency: int = 64
    #: Seconds one (connector, resource type) may run before it reports a timeout.
    timeout: float = 5.0
    #: Seconds a successful listing is reused (0 disables the cache).
    cache_ttl: float = 60.0
    #: Seconds a failed listing is reused, shown with its age (0: failures are not kept).
    failure_ttl: float = 10.0
    #: Listings kept in the result cache.
    cache_entries: int = 4096


@dataclass(frozen=True)
class Unit:
    """One piece of work: one resource type (optionally one resource) of one connector."""

    connector: Connector
    resource_type: str
    resource_id: str | None = None


@dataclass(frozen=True)
class Found:
    """One unit's result: which connector, which type, what it reaches or why not."""

    connector: Connector
    result: TypeResources


_CacheKey = tuple[str, int, str, str | None]
#: Until when a listing is live, when it was made, the listing.
_Cached = tuple[float, float, TypeResources]


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
        self._cache: dict[_CacheKey, _Cached] = {}

    def _provider_limit(self, connector_type: str) -> anyio.Semaphore:
        sem = self._per_provider.get(connector_type)
        if sem is None:
            sem = anyio.Semaphore(self.limits.per_provider_concurrency)
            self._per_provider[connector_type] = sem
        return sem

    # -- one unit -------------------------------------------------------------
    async def discover_one(
        self,
        unit: Unit,
        *,
        unit_timeout: float | None = None,
        refresh: bool = False,
        cache: bool = True,
    ) -> TypeResources:
        """Discover one unit; errors are returned, not raised. Successes are cached for
        ``cache_ttl``; failures only for ``failure_ttl`` (short: the user is probably fixing
        the connector, but an endpoint already failing is not asked again by every listing).
        ``cache=False`` neither reads nor writes the cache (connectors not stored yet)."""
        hit = self.cached(unit) if cache and not refresh else None
        if hit is not None:
            return hit
        limit = unit_timeout if unit_timeout and unit_timeout > 0 else self.limits.timeout
        result = await self._run(unit, limit)
        ttl = self.limits.cache_ttl if result.error is None else self.limits.failure_ttl
        if cache and ttl > 0:
            key = _key(unit)
            self._cache.pop(key, None)
            if len(self._cache) >= self.limits.cache_entries:
                self._cache.pop(next(iter(self._cache)))
            now = self._clock.monotonic()
            self._cache[key] = (now + ttl, now, result)
        return result

    def cached(self, unit: Unit) -> TypeResources | None:
        """The unit's listing if the cache holds a live one; a failure says how old it is."""
        hit = self._cache.get(_key(unit))
        if hit is None:
            return None
        until, made, result = hit
        now = self._clock.monotonic()
        if until <= now:
            return None
        if result.error is not None:
            age = max(0, math.floor(now - made))
            return replace(
                result,
                error=f"{result.error} (failed {age}s ago, kept for {_secs(until - made)}; "
                "--refresh asks again)",
            )
        return result

    async def _run(self, unit: Unit, limit: float) -> TypeResources:
        connector, rt = unit.connector, unit.resource_type
        try:
            check_not_tampered(connector)
            check_not_expired(connector, self._clock.now())
            provider = self._registry.get(connector.connector_type)
            # Provider slot first: units queued behind a busy provider must not hold
            # global slots that other providers' units could use.
            async with self._provider_limit(connector.connector_type), self._global:
                # The timeout starts once the unit runs: waiting in the queue is not the
                # connector's fault. Expiry cancels the provider call (and its HTTP request).
                with anyio.fail_after(limit):
                    ids = await provider.discover(connector, rt, unit.resource_id)
        except TimeoutError:
            return TypeResources(
                rt, error=f"timed out after {_secs(limit)} (raise it with --timeout)"
            )
        except PartialListing as exc:  # some scopes (subscriptions) failed: both are shown
            found = sorted({_canonical(provider, connector, rt, i) for i in exc.found})
            return TypeResources(rt, resource_ids=tuple(found), error=exc.message)
        except BrokerError as exc:
            return TypeResources(rt, error=exc.message)
        except Exception as exc:  # a provider bug must not fail the whole listing
            log.error(
                "discovery_failed",
                connector=connector.name,
                resource_type=rt,
                error_type=type(exc).__name__,
            )
            return TypeResources(rt, error=f"internal error while listing ({type(exc).__name__})")
        unique = sorted({_canonical(provider, connector, rt, i) for i in ids})
        if not unique and unit.resource_id is None and connector.resource_type is None:
            # A multi-type connector serves every type of its cloud: an account with no EKS
            # clusters (yet) is healthy, and the listing says "none found", not an error.
            return TypeResources(rt, resource_ids=())
        if not unique:
            what = f"'{unit.resource_id}' is not" if unit.resource_id else "no resources"
            return TypeResources(rt, error=f"{what} reachable with these credentials")
        return TypeResources(rt, resource_ids=tuple(unique))

    # -- planning -------------------------------------------------------------
    def units(self, connector: Connector, resource_type: str | None = None) -> list[Unit]:
        """One unit per served resource type (just ``resource_type`` if given)."""
        try:
            types = served_types(self._registry.get(connector.connector_type), connector)
        except BrokerError:  # type not installed: one unit that reports it
            return [Unit(connector, connector.resource_type or ANY_TYPE)]
        return [Unit(connector, t) for t in types if not resource_type or t == resource_type]

    def plan(
        self,
        connectors: Iterable[Connector],
        resource_type: str | None = None,
        resource_id: str | None = None,
    ) -> list[Unit]:
        """The units of a listing. With ``resource_id``, only the types it is an ID of (in
        canonical form) and only connectors whose scope admits it: another connector not
        reaching it is no error of that connector."""
        units: list[Unit] = []
        for connector in connectors:
            for unit in self.units(connector, resource_type):
                if not resource_id:
                    units.append(unit)
                    continue
                try:
                    provider = self._registry.get(connector.connector_type)
                    rid = provider.canonical_resource_id(connector, unit.resource_type, resource_id)
                except BrokerError:
                    continue
                if connector.resource_id is None or connector.resource_id == rid:
                    units.append(Unit(connector, unit.resource_type, rid))
        return units

    # -- fan-out --------------------------------------------------------------
    async def discover(
        self,
        connector: Connector,
        resource_type: str | None = None,
        resource_id: str | None = None,
        *,
        unit_timeout: float | None = None,
        refresh: bool = False,
    ) -> list[TypeResources]:
        """Every served resource type of one connector, concurrently, in type order.

        For verify, register and update: always asked upstream (``refresh`` is implied)
        and never cached, since the connector may be a draft not stored at this revision.
        """
        del refresh
        units = [
            Unit(connector, u.resource_type, resource_id)
            for u in self.units(connector, resource_type)
        ]
        async with self.stream(units, unit_timeout=unit_timeout, cache=False) as results:
            found = [f.result async for f in results]
        order = [u.resource_type for u in units]
        return sorted(found, key=lambda r: order.index(r.resource_type))

    @asynccontextmanager
    async def stream(
        self,
        units: Sequence[Unit],
        *,
        unit_timeout: float | None = None,
        refresh: bool = False,
        cache: bool = True,
    ) -> AsyncIterator[ObjectReceiveStream[Found]]:
        """Results as they arrive; leaving the block cancels whatever is still queued or
        running, and returns only once every unit has stopped."""
        send, receive = anyio.create_memory_object_stream[Found](math.inf)
        finished = 0

        async def run(unit: Unit, out: MemoryObjectSendStream[Found]) -> None:
            nonlocal finished
            async with out:
                result = await self.discover_one(
                    unit, unit_timeout=unit_timeout, refresh=refresh, cache=cache
                )
                finished += 1
                with suppress(anyio.BrokenResourceError):  # the consumer left already
                    await out.send(Found(unit.connector, result))

        use_cache = cache and not refresh
        try:
            async with anyio.create_task_group() as tg:
                async with send:
                    for unit in units:
                        # Cache hits go straight out: no task, no limit slot.
                        hit = self.cached(unit) if use_cache else None
                        if hit is not None:
                            finished += 1
                            send.send_nowait(Found(unit.connector, hit))
                        else:
                            tg.start_soon(run, unit, send.clone())
                try:
                    async with receive:
                        yield receive
                finally:
                    tg.cancel_scope.cancel()
        finally:
            # Logged after the task group closed: every unit has really stopped here.
            complete = finished == len(units)
            (log.debug if complete else log.info)(
                "discovery_finished" if complete else "discovery_cancelled",
                units=len(units),
                finished=finished,
                cancelled=len(units) - finished,
            )

    def forget(self, connector_id: str) -> None:
        """Drop cached listings of a connector (updates also change the revision key)."""
        for key in [k for k in self._cache if k[0] == connector_id]:
            del self._cache[key]


def _key(unit: Unit) -> _CacheKey:
    c = unit.connector
    return (c.id, c.revision, unit.resource_type, unit.resource_id)


def _canonical(provider: Provider, connector: Connector, resource_type: str, raw: str) -> str:
    """The canonical form of a discovered ID, so it can be fed back to get-credentials as is.
    A provider that cannot parse its own output is a bug: keep the ID and say so."""
    try:
        return provider.canonical_resource_id(connector, resource_type, raw)
    except InvalidArgument:
        log.warning(
            "discovered_id_not_canonical",
            connector=connector.name,
            resource_type=resource_type,
            resource_id=raw,
        )
        return raw.strip()


def _secs(seconds: float) -> str:
    return f"{seconds:g}s"
