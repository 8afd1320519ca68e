"""10,000 watchers of one key: how long one renewal takes to reach all, and memory per watcher.

In-process (no gRPC), in two layers of the daemon:

* ``CredentialCache.watch``: the hub and its latest-value subscriptions, each
  watcher an asyncio task iterating the watch;
* ``BrokerService.watch_credentials``: what the gRPC handler iterates, on a
  real SQLite store and the ``bench-fake`` provider minting from the fake
  upstream; this layer also writes one audit line per event and watcher (to
  a log file, as the daemon does).

The key's first credential lives long enough for all watchers to subscribe;
later ones are short, so the cache renews every few seconds on its own. Latency
is measured from the moment each renewal reaches the hub (its publish) to the
moment each watcher holds it; ``RENEWALS`` renewals per layer.
Memory: tracemalloc, traced bytes after all watchers got their first
credential minus before they subscribed, divided by the watchers (measured in a
separate pass, as tracing slows everything down). Not included: a gRPC
stream's own buffers in the daemon.

Goal: p99 ≤ 250 ms from renewal to every watcher.
"""

from __future__ import annotations

import asyncio
import gc
import os
import random
import sys
import tempfile
import time
import tracemalloc
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
from common import median, percentile, table
from fakeprovider import PLUGIN_DIR
from fakeprovider.upstream import FakeUpstream

from broker.cache.cache import CacheKey, CredentialCache
from broker.clock import SystemClock
from broker.identity.principal import local_user
from broker.model import ClientCredential
from broker.policy import build_policy
from broker.streams.hub import Hub

sys.path.insert(0, str(PLUGIN_DIR))
from broker_bench_connector import BenchProvider

WATCHERS = int(os.environ.get("BENCH_WATCHERS", "10000"))
RENEWALS = int(os.environ.get("BENCH_RENEWALS", "3"))
#: The first credential: long enough for every watcher to subscribe before a renewal.
FIRST_LIFETIME = 12.0
#: Later ones: the cache renews these every few seconds (jitter removed, see NoJitter).
LIFETIME = 4.0
P99_GOAL_MS = 250.0


class NoJitter(random.Random):
    """Renew points at the centre of the jitter range: renewals arrive on schedule."""

    def uniform(self, a: float, b: float) -> float:
        return (a + b) / 2


class GcPauses:
    """Every garbage collection's (start, end, generation), from gc.callbacks."""

    def __init__(self) -> None:
        self.pauses: list[tuple[float, float, int]] = []
        self._start = 0.0
        gc.callbacks.append(self._callback)

    def _callback(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._start = time.perf_counter()
        else:
            self.pauses.append((self._start, time.perf_counter(), info["generation"]))

    def within(self, begin: float, end: float) -> tuple[float, int]:
        """Seconds of collection and how many full (gen 2) ones between begin and end."""
        inside = [(s, e, g) for s, e, g in self.pauses if s >= begin and e <= end]
        return sum(e - s for s, e, _ in inside), sum(g == 2 for _, _, g in inside)


GC = GcPauses()


class Stamped:
    """Wraps the cache's hub publish: when each renewal reached the hub."""

    def __init__(self, cache: CredentialCache) -> None:
        self.published: list[float] = []
        hub = cache._hub  # the one seam between the cache and its watchers
        original = hub.publish

        def publish(key: Any, event: Any) -> int:
            if event.kind == "renewed":
                self.published.append(time.perf_counter())
            return original(key, event)

        hub.publish = publish  # type: ignore[method-assign]


class Result:
    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.per_watcher = float("nan")
        self.gc_seconds = 0.0
        self.full_collections = 0
        self.stats: dict[str, int] = {}


async def fan_out(
    watch: Callable[[], AsyncIterator[Any]], stamped: Stamped, *, trace_memory: bool
) -> Result:
    """Run WATCHERS watchers until RENEWALS renewals reached them all."""
    result = Result()
    got_first = 0
    renewed: list[list[float]] = [[] for _ in range(RENEWALS)]
    all_first = anyio.Event()
    done = anyio.Event()

    async def watcher() -> None:
        """Holds the newest credential, as a sidecar would, until the benchmark ends."""
        nonlocal got_first
        seen = 0
        async with aclosing(watch()) as events:
            async for event in events:
                if event.kind == "issued":
                    got_first += 1
                    if got_first == WATCHERS:
                        all_first.set()
                elif event.kind == "renewed" and seen < RENEWALS:
                    renewed[seen].append(time.perf_counter())
                    seen += 1
                    if seen == RENEWALS and len(renewed[-1]) == WATCHERS:
                        done.set()

    if trace_memory:
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
    async with anyio.create_task_group() as tg:
        for _ in range(WATCHERS):
            tg.start_soon(watcher)
        with anyio.fail_after(FIRST_LIFETIME / 2):
            await all_first.wait()
        if trace_memory:
            result.per_watcher = (tracemalloc.get_traced_memory()[0] - before) / WATCHERS
            tracemalloc.stop()
            tg.cancel_scope.cancel()
            return result
        with anyio.fail_after(FIRST_LIFETIME + RENEWALS * LIFETIME * 2):
            await done.wait()
        tg.cancel_scope.cancel()
    for stamp, times in zip(stamped.published[-RENEWALS:], renewed, strict=True):
        result.latencies.extend((t - stamp) * 1000 for t in times)
        seconds, full = GC.within(stamp, max(times))
        result.gc_seconds += seconds / RENEWALS
        result.full_collections += full
    return result


def lifetimes() -> Callable[[str], float]:
    """First mint of each resource: FIRST_LIFETIME; every later one: LIFETIME."""
    seen: set[str] = set()

    def lifetime(resource: str) -> float:
        if resource in seen:
            return LIFETIME
        seen.add(resource)
        return FIRST_LIFETIME

    return lifetime


async def cache_layer(trace_memory: bool) -> Result:
    clock = SystemClock()
    cache = CredentialCache(clock, rng=NoJitter())
    stamped = Stamped(cache)
    key = CacheKey("conn", 1, "bench-resource", "watched")
    lifetime = lifetimes()

    async def mint() -> ClientCredential:
        life = lifetime("watched")
        return ClientCredential(
            "bench-fake",
            "token",
            "bench-resource",
            "watched",
            {"token": f"t{time.time()}"},
            frozenset({"token"}),
            expires_at=datetime.now(UTC) + timedelta(seconds=life),
        )

    async with cache.running():
        result = await fan_out(lambda: cache.watch(key, mint), stamped, trace_memory=trace_memory)
        result.stats = cache.stats()
        return result


async def service_layer(tmp: Path, upstream: FakeUpstream, trace_memory: bool, name: str) -> Result:
    from broker.connectors import ConnectorDraft
    from broker.discovery import Discovery, DiscoveryLimits
    from broker.providers.base import ProviderContext
    from broker.providers.registry import ProviderRegistry
    from broker.service import BrokerService
    from broker.store.crypto import SecretBox
    from broker.store.sqlite import SqliteStore

    clock = SystemClock()
    store = SqliteStore(tmp / f"{name}.sqlite", SecretBox(os.urandom(32)), clock)
    await store.open()
    registry = ProviderRegistry({"bench-fake": BenchProvider(ProviderContext(clock=clock))})
    cache = CredentialCache(clock, rng=NoJitter())
    stamped = Stamped(cache)
    discovery = Discovery(
        registry,
        clock,
        DiscoveryLimits(global_concurrency=1, per_provider_concurrency=1, timeout=5, cache_ttl=60),
    )
    service = BrokerService(store, registry, cache, discovery, clock, build_policy(os.getuid(), ()))
    root = local_user(uid=os.getuid())
    try:
        async with cache.running():
            await service.register(
                ConnectorDraft(
                    name=name,
                    connector_type="bench-fake",
                    auth_method="token",
                    resource_type=None,
                    resource_id=None,
                    config={"url": upstream.url, "token": upstream.token},
                    labels={},
                    expiration_seconds=None,
                    expires_at=None,
                ),
                verify=False,
            )
            result = await fan_out(
                lambda: service.watch_credentials(name, "bench-resource", name, principal=root),
                stamped,
                trace_memory=trace_memory,
            )
            result.stats = cache.stats()
            return result
    finally:
        await registry.aclose()
        await store.close()


def hub_only() -> float:
    """Bytes per subscription in the hub alone (the Subscription and its set slot)."""
    hub: Hub[str] = Hub()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    subs = [hub.subscribe("k") for _ in range(WATCHERS)]
    per = (tracemalloc.get_traced_memory()[0] - before) / WATCHERS
    tracemalloc.stop()
    del subs
    return per


def main() -> None:
    from broker.logs import configure

    rows = []
    with tempfile.TemporaryDirectory() as tmp, FakeUpstream(lifetime=lifetimes()) as upstream:
        log_path = Path(tmp) / "daemon.log"
        with log_path.open("w") as log:
            saved, sys.stderr = sys.stderr, log  # the audit lines go to a file, as in the daemon
            try:
                configure("info", "json")
            finally:
                sys.stderr = saved
            from broker.daemon import tune_gc

            tune_gc()  # the daemon's GC settings (frozen start-up objects, fewer young GCs)
            wall = time.perf_counter()
            cache_mem = asyncio.run(cache_layer(trace_memory=True))
            cache_run = asyncio.run(cache_layer(trace_memory=False))
            svc_mem = asyncio.run(service_layer(Path(tmp), upstream, True, "mem"))
            svc_run = asyncio.run(service_layer(Path(tmp), upstream, False, "lat"))
            wall = time.perf_counter() - wall
        audit_lines = sum(1 for line in log_path.open() if "credential_issued" in line)
    hub_mem = hub_only()

    for label, run, mem in (
        ("CredentialCache.watch (hub + subscriptions)", cache_run, cache_mem),
        ("BrokerService.watch_credentials (+ audit line per event)", svc_run, svc_mem),
    ):
        lat = run.latencies
        p99 = percentile(lat, 99)
        rows.append(
            [
                label,
                WATCHERS,
                len(lat) // WATCHERS,
                f"{median(lat):.0f}",
                f"{p99:.0f}",
                f"{max(lat):.0f}",
                f"{run.gc_seconds * 1000:.0f} ({run.full_collections} full)",
                f"{mem.per_watcher / 1024:.1f}",
                f"p99 ≤ {P99_GOAL_MS:g} ms {'✓' if p99 <= P99_GOAL_MS else '✗'}",
            ]
        )
    print(
        table(
            [
                "layer (in-process, no gRPC)",
                "watchers",
                "renewals",
                "p50 ms",
                "p99 ms",
                "max ms",
                "GC ms per renewal",
                "KiB per watcher",
                "goal",
            ],
            rows,
        )
    )
    print(
        f"\nLatency: from each renewal's publish to the hub until each watcher holds it. "
        f"Memory: tracemalloc, per watcher, including its task and the watch generator; the "
        f"hub's share alone (Subscription + set slot) is {hub_mem:.0f} bytes. GC: time in "
        f"collections between a renewal's publish and its last delivery. Mints: "
        f"{cache_run.stats['mints']} / {svc_run.stats['mints']}; audit lines written by the "
        f"service layer: {audit_lines:,}. Wall time {wall:.0f} s."
    )


if __name__ == "__main__":
    main()
