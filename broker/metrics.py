"""Prometheus metrics on ``--metrics HOST:PORT`` (``GET /metrics``).

The cache bumps plain integer attributes on its hot path; this module reads
them only when Prometheus scrapes, through a custom collector, so serving a
credential pays nothing for metrics. The scrape handler runs on the daemon's
event loop, the same thread that writes the counters, so a scrape never sees
a half-updated cache.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

import structlog
from aiohttp import web
from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from broker import __version__
from broker.config import parse_host_port
from broker.errors import FailedPrecondition
from broker.upstream_stats import UpstreamStats

log = structlog.get_logger(__name__)

Stats = Callable[[], Mapping[str, float]]

#: Cache stats that are levels, not running totals: name -> (metric, help).
GAUGES: dict[str, tuple[str, str]] = {
    "entries": ("broker_cache_entries", "Credentials held in the cache"),
    "subscribers": ("broker_watch_subscribers", "Open watch streams, over all keys"),
    "renewal_lead_ms_min": (
        "broker_credential_renewal_lead_min_milliseconds",
        "Shortest time before expiry a renewal replaced a credential (-1: none yet)",
    ),
    # A fleet on PostgreSQL: the connection pool and the change feed.
    "store_pool_size": ("broker_store_pool_connections", "Open connections in the store pool"),
    "store_pool_max": ("broker_store_pool_max_connections", "Store pool size limit"),
    "store_pool_in_use": (
        "broker_store_pool_in_use",
        "Store pool connections lent to a call right now",
    ),
    "store_pool_waiting": (
        "broker_store_pool_waiting",
        "Calls waiting for a store pool connection right now",
    ),
    "change_feed_connected": (
        "broker_change_feed_connected",
        "1 while the LISTEN connection to the shared database is up",
    ),
    "change_feed_lag_seconds": (
        "broker_change_feed_lag_seconds",
        "How long this daemon has known of changes made elsewhere that it has not applied "
        "(or been disconnected); 0 when current",
    ),
    "change_feed_lag_changes": (
        "broker_change_feed_lag_changes",
        "Changes made elsewhere this daemon knows of but has not applied",
    ),
    "change_feed_last_change_id": (
        "broker_change_feed_last_change_id",
        "The id of the last change this daemon applied",
    ),
    "watch_streams_open": (
        "broker_watch_streams",
        "Open WatchCredentials gRPC streams (watch_max_streams bounds them)",
    ),
    "outputs": ("broker_outputs", "Configured [[outputs]] files"),
    "persisted_pending": (
        "broker_persisted_credentials_pending",
        "Minted credentials waiting to be written to the persistent cache",
    ),
    "outputs_failing": (
        "broker_outputs_failing",
        "Outputs whose last write or hook failed (retrying); 0 when all are current",
    ),
}
#: Running totals: name -> (metric without _total, help). Alerts use these names.
COUNTERS: dict[str, tuple[str, str]] = {
    "hits": ("broker_cache_hits", "Requests served from the cache without waiting"),
    "misses": ("broker_cache_misses", "Requests that had to wait for a mint"),
    "mints": (
        "broker_credential_mints",
        "Successful upstream mints, first issues and renewals alike",
    ),
    "mint_failures": (
        "broker_credential_mint_failures",
        "Failed upstream mints, first issues and renewals alike",
    ),
    "renewals": (
        "broker_credential_renewals",
        "Successful mints that replaced an earlier credential of the same key",
    ),
    "served_inside_margin": (
        "broker_credentials_served_inside_margin",
        "Credentials served although inside their safety margin; must stay 0",
    ),
    "evictions": ("broker_cache_evictions", "Idle or over-bound credentials dropped"),
    "renewal_lead_ms": (
        "broker_credential_renewal_lead_milliseconds",
        "Sum over renewals of the time left on the replaced credential (mean: / renewals)",
    ),
    "change_feed_reconnects": (
        "broker_change_feed_reconnects",
        "Times the change feed's LISTEN connection was opened again after it was lost",
    ),
    "change_feed_applied": (
        "broker_change_feed_applied",
        "Changes made through any daemon that this daemon applied",
    ),
    "rotations": ("broker_credential_rotations", "Forced rotations that got a new credential"),
    "rotation_failures": (
        "broker_credential_rotation_failures",
        "Forced rotations whose mint failed (the old credential kept serving)",
    ),
    "restored": (
        "broker_persisted_credentials_restored",
        "Credentials served again after a restart without a mint (persistent cache)",
    ),
    "persisted_saved": (
        "broker_persisted_credentials_saved",
        "Minted credentials written to the persistent cache",
    ),
    "persisted_save_failures": (
        "broker_persisted_credentials_save_failures",
        "Minted credentials the store did not take (each costs a mint after a restart)",
    ),
    "persisted_dropped_bad": (
        "broker_persisted_credentials_dropped",
        "Persisted rows that did not open (altered, moved, unparseable): deleted, never served",
    ),
    "watch_streams_refused": (
        "broker_watch_streams_refused",
        "Watch streams refused with RESOURCE_EXHAUSTED: watch_max_streams were open",
    ),
    "watch_streams_stalled": (
        "broker_watch_streams_stalled",
        "Watch streams dropped because their client read nothing for watch_stall_timeout_seconds",
    ),
    "output_writes": ("broker_output_writes", "Output files written (a changed credential)"),
    "output_write_failures": (
        "broker_output_write_failures",
        "Output writes that failed (unwritable path, format refused); each is retried",
    ),
    "output_hook_runs": ("broker_output_hook_runs", "on_change programs started"),
    "output_hook_failures": (
        "broker_output_hook_failures",
        "on_change runs that failed or timed out, and signals that could not be sent",
    ),
    "output_late_writes": (
        "broker_output_late_writes",
        "Output rewrites that came after the previous credential entered its margin although "
        "the new credential had arrived before it",
    ),
    "change_feed_full_reloads": (
        "broker_change_feed_full_reloads",
        "Times this daemon fell behind the change retention and read every connector again",
    ),
}


class CacheCollector(Collector):
    """Reads the cache's counters at scrape time."""

    def __init__(self, stats: Stats) -> None:
        self._stats = stats

    def collect(self) -> Iterable[Metric]:
        info = GaugeMetricFamily(
            "broker_build_info", "The running broker's version", labels=["version"]
        )
        info.add_metric([__version__], 1)
        yield info
        for name, value in sorted(self._stats().items()):
            if name in GAUGES:
                metric, text = GAUGES[name]
                yield GaugeMetricFamily(metric, text, value=value)
            else:
                # A counter added to the cache later is still exported, under a derived name.
                metric, text = COUNTERS.get(name, (f"broker_cache_{name}", f"Cache counter {name}"))
                yield CounterMetricFamily(metric, text, value=value)


class UpstreamCollector(Collector):
    """Mints, failures and upstream latency per connector type."""

    def __init__(self, upstream: UpstreamStats) -> None:
        self._upstream = upstream

    def collect(self) -> Iterable[Metric]:
        mints = CounterMetricFamily(
            "broker_upstream_mints", "Successful upstream mints", labels=["connector_type"]
        )
        failures = CounterMetricFamily(
            "broker_upstream_mint_failures", "Failed upstream mints", labels=["connector_type"]
        )
        latency = HistogramMetricFamily(
            "broker_upstream_mint_seconds",
            "Time one upstream mint took",
            labels=["connector_type"],
        )
        for name, stats in sorted(self._upstream.by_type.items()):
            mints.add_metric([name], stats.mints)
            failures.add_metric([name], stats.failures)
            latency.add_metric([name], stats.cumulative(), stats.latency_sum)
        yield mints
        yield failures
        yield latency


def build_registry(stats: Stats, upstream: UpstreamStats | None = None) -> CollectorRegistry:
    """Cache metrics plus the standard ``process_*`` ones (CPU, memory, fds, start time)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(CacheCollector(stats))
    if upstream is not None:
        registry.register(UpstreamCollector(upstream))
    ProcessCollector(registry=registry)
    return registry


class MetricsServer:
    """An HTTP listener for ``/metrics`` inside the daemon's event loop."""

    def __init__(self, address: str, stats: Stats, upstream: UpstreamStats | None = None) -> None:
        self._host, self._port = parse_host_port("metrics", address)
        self._registry = build_registry(stats, upstream)
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        self.port: int | None = None

    async def _metrics(self, request: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(self._registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    async def start(self) -> None:
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self._port)
        try:
            await site.start()
        except OSError as exc:
            await self._runner.cleanup()
            raise FailedPrecondition(
                f"setting 'metrics': cannot listen on {self._host}:{self._port}: {exc.strerror}"
            ) from None
        server = site._server  # aiohttp exposes the bound port only here
        sockets = getattr(server, "sockets", None) or []
        self.port = sockets[0].getsockname()[1] if sockets else self._port
        log.info("metrics_listening", host=self._host, port=self.port)

    async def stop(self) -> None:
        await self._runner.cleanup()
