"""The composition root: builds every layer from settings and runs them.

Startup order: store -> providers -> cache -> service (its catalog loaded) ->
listeners, then readiness. Shutdown is the reverse and ordered: health
NOT_SERVING, stop accepting, drain in-flight calls (bounded), cancel background
work, close upstream sessions and the store — the cleanup shielded from
cancellation.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import signal
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import cast

import anyio
import structlog

from broker import __version__
from broker.cache.cache import CredentialCache
from broker.cache.persist import CredentialPersister, PersistedStore, daemon_id
from broker.clock import Clock, SystemClock
from broker.config import Settings, reload_outputs, reload_policy
from broker.descriptors import raise_nofile_limit
from broker.discovery import Discovery, DiscoveryLimits
from broker.errors import BrokerError
from broker.local.endpoint import HelperEndpoint
from broker.local.guard import endpoint_guards
from broker.local.sdk import SdkEndpoints
from broker.logs import configure
from broker.notify import Notifier
from broker.outputs.manager import OutputManager
from broker.pointers import write_pointers
from broker.policy import build_policy
from broker.providers.base import ProviderContext
from broker.providers.registry import ProviderRegistry
from broker.rpc.server import GrpcServer
from broker.service import BrokerService
from broker.store.base import CHANGE_FEED_HEALTH, ConnectorStore
from broker.store.crypto import SecretBox, load_secret_key
from broker.store.factory import make_store
from broker.store.postgres import PostgresStore
from broker.store.postgres_feed import ChangeFeed
from broker.systemd_credentials import check_key_credential

log = structlog.get_logger(__name__)


#: Allocations between young-generation collections. The default (700) makes a
#: renewal fanned out to 10,000 watchers pay ~150 ms of GC; a daemon holding
#: mostly long-lived objects can collect far less often.
GC_GEN0_THRESHOLD = 20_000


def tune_gc() -> None:
    """Freeze start-up objects (modules, specs) out of GC scans and collect less often."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_GEN0_THRESHOLD, 20, 20)


def reload_policy_now(settings: Settings, service: BrokerService) -> None:
    """SIGHUP: swap in the config file's policy; a bad one keeps the old and says why."""
    try:
        rules = reload_policy(settings)
    except BrokerError as exc:
        log.error("policy_reload_failed", error=exc.message, kept="the previous policy")
        return
    service.gate.replace(build_policy(os.getuid(), rules, attesting=_attesting(settings)))
    log.info("policy_reloaded", rules=len(rules), source=str(settings.config_file))


async def reload_outputs_now(settings: Settings, outputs: OutputManager) -> None:
    """SIGHUP: apply the config file's [[outputs]]; a bad one keeps the old and says why."""
    try:
        specs = reload_outputs(settings)
    except BrokerError as exc:
        log.error("outputs_reload_failed", error=exc.message, kept="the previous outputs")
        return
    await outputs.replace(specs)


def _attesting(settings: Settings) -> bool:
    return settings.attestors is not None and settings.attestors.enabled


def _write_pointers(settings: Settings, env: Mapping[str, str]) -> None:
    """Tell this user's clients where the sockets are; never fatal (clients have --socket)."""
    try:
        written = write_pointers(settings, env)
    except OSError as exc:
        log.warning("pointer_files_not_written", error=str(exc))
    else:
        if written:
            log.info("pointer_files_written", files=written)


#: How often the change feed's state is copied to the gRPC health service.
FEED_HEALTH_SECONDS = 0.5


async def report_feed_health(feed: ChangeFeed, server: GrpcServer) -> None:
    """The change feed as a named gRPC health service: NOT_SERVING while it is behind.

    The server itself stays SERVING (it serves the connectors it knows); ``broker
    health`` and ``broker status`` show DEGRADED.
    """
    from grpc_health.v1 import health_pb2

    serving: bool | None = None
    while True:
        now_serving = feed.degraded_reason() is None
        if now_serving != serving:
            serving = now_serving
            status = health_pb2.HealthCheckResponse
            await server.health.set(
                CHANGE_FEED_HEALTH, status.SERVING if serving else status.NOT_SERVING
            )
            if not serving:
                log.warning("daemon_degraded", reason=feed.degraded_reason())
            else:
                log.info("daemon_caught_up")
        await anyio.sleep(FEED_HEALTH_SECONDS)


async def run_daemon(
    settings: Settings,
    *,
    env: Mapping[str, str] | None = None,
    clock: Clock | None = None,
    on_ready: Callable[[], None] | None = None,
) -> None:
    """Serve until SIGTERM / SIGINT."""
    env = dict(os.environ) if env is None else env
    clock = clock or SystemClock()
    configure(settings.log_level, settings.log_format)
    settings.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)

    check_key_credential(settings, env)  # the unit's LoadCredential= key: a clear error
    key = load_secret_key(settings.data_dir, env, key_file=settings.secret_key_file)
    raise_nofile_limit()  # soft to hard: the connection caps below are fitted to it
    store = make_store(
        settings.database_url or settings.database_path,
        SecretBox(key),
        clock,
        pool_size=settings.database_pool_size,
    )
    async with contextlib.AsyncExitStack() as stack:
        # Each part is closed (in reverse, shielded from cancellation) once opened,
        # whatever fails after it: a start-up error never leaves a pool or socket behind.
        stack.callback(log.info, "daemon_stopped")  # last, however it ends
        await store.open()
        stack.push_async_callback(_shielded(store.close))
        registry = ProviderRegistry.discover(
            ProviderContext(
                clock=clock,
                enable_implicit_auth=settings.enable_implicit_auth_methods,
                env=env,
                request_timeout=settings.request_timeout_seconds,
            )
        )
        stack.push_async_callback(_shielded(registry.aclose))
        await _serve(settings, env, clock, store, registry, stack, on_ready)


async def _restore_cache(
    settings: Settings, store: ConnectorStore, service: BrokerService
) -> CredentialPersister:
    """Serve what this daemon minted before its restart (persist_cache), before it is ready."""
    began = time.monotonic()
    persister = CredentialPersister(cast(PersistedStore, store), daemon_id(settings.data_dir))
    loaded = await persister.load()
    restored, stale = await service.restore_credentials(loaded)
    await persister.drop(stale)
    log.info(
        "persisted_credentials_restored",
        restored=restored,
        dropped_stale=len(stale),
        dropped_bad=persister.dropped_bad,
        daemon_id=persister.daemon_id,
        seconds=round(time.monotonic() - began, 3),
    )
    return persister


def _shielded(close: Callable[[], Awaitable[None]]) -> Callable[[], Awaitable[None]]:
    async def run() -> None:
        with anyio.CancelScope(shield=True):
            await close()

    return run


async def _serve(
    settings: Settings,
    env: Mapping[str, str],
    clock: Clock,
    store: ConnectorStore,
    registry: ProviderRegistry,
    stack: contextlib.AsyncExitStack,
    on_ready: Callable[[], None] | None,
) -> None:
    """Build the cache, service and front ends on an open store; serve until a signal."""
    cache = CredentialCache(
        clock, max_entries=settings.cache_max_entries, idle_seconds=settings.cache_idle_seconds
    )
    discovery = Discovery(
        registry,
        clock,
        DiscoveryLimits(
            global_concurrency=settings.discovery_concurrency,
            per_provider_concurrency=settings.discovery_per_provider,
            timeout=settings.discovery_timeout_seconds,
            cache_ttl=settings.discovery_cache_ttl_seconds,
            failure_ttl=settings.discovery_failure_ttl_seconds,
        ),
    )
    policy = build_policy(os.getuid(), settings.policy_rules, attesting=_attesting(settings))
    service = BrokerService(store, registry, cache, discovery, clock, policy)
    attestation = None
    if settings.attestors is not None and settings.attestors.enabled:
        from broker.identity.attestors.attestation import Attestation

        attestation = Attestation.from_settings(settings.attestors)
    helper_guard, sdk_guard = endpoint_guards(settings)
    sdk = SdkEndpoints(service, clock, guard=sdk_guard)
    server = GrpcServer(settings, service, sdk, attestation)
    helpers = HelperEndpoint(service, helper_guard, attestation)
    notifier = Notifier.from_env(env)
    # [[outputs]]: files kept current, written as the daemon's own user (an admin by the
    # built-in rules: the config file is the admin's decision); failures show in status.
    outputs = OutputManager(settings.outputs, service.watch_credentials, clock, dict(env))
    service.outputs = outputs.states
    service.conditions.append(outputs.degraded_reason)
    feed = None
    if isinstance(store, PostgresStore):  # a fleet: other daemons' writes arrive here
        feed = ChangeFeed(
            store, service, clock, retention_seconds=settings.change_retention_seconds
        )
        service.conditions.append(feed.degraded_reason)
    metrics = None
    if settings.metrics:
        from broker.metrics import MetricsServer

        metrics = MetricsServer(
            settings.metrics,
            lambda: {
                **cache.stats(),
                **service.margins.stats(),
                **(store.stats() if isinstance(store, PostgresStore) else {}),
                **(feed.stats() if feed is not None else {}),
                **outputs.stats(),
                **(persister.stats() if persister is not None else {}),
                **server.watches.stats(),
            },
            service.upstream,
        )
    # The connector view, loaded once before any listener accepts a call: no first
    # calls racing to load it, and every call sees every write acknowledged before.
    if feed is not None:  # LISTEN before the view is read: no write falls in between
        await feed.start()
        stack.push_async_callback(_shielded(feed.close))
    await service.catalog.load()
    persister = await _restore_cache(settings, store, service) if settings.persist_cache else None
    if attestation is not None:  # a bad kubeconfig stops the start, naming it
        await attestation.start()
        stack.push_async_callback(_shielded(attestation.aclose))
        log.info(
            "attestation_on",
            attestors=[a.name for a in attestation.attestors],
            cache_seconds=attestation.cache_seconds,
        )
    if metrics is not None:  # first, outside the task group: a plain error, no socket yet
        await metrics.start()
        stack.push_async_callback(_shielded(metrics.stop))
    async with anyio.create_task_group() as tg:
        await tg.start(cache.run)
        if persister is not None:  # minted credentials written behind, in batches
            cache.on_minted = persister.minted
            await tg.start(persister.run)
        await tg.start(outputs.run)
        if feed is not None:
            await tg.start(feed.run)
            tg.start_soon(report_feed_health, feed, server)
        # Handlers before the first socket exists: a client may signal the daemon as
        # soon as it can see it, and a SIGTERM must still shut down in order.
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
            try:
                await server.start()
                await helpers.start(settings.local_socket_path, settings.socket_group)
                _write_pointers(settings, env)
                tune_gc()
                log.info(
                    "daemon_ready",
                    version=__version__,
                    connector_types=[p.spec.connector_type for p in registry.all()],
                    pid=os.getpid(),
                    event_loop=type(asyncio.get_running_loop()).__module__.split(".")[0],
                )
                if on_ready is not None:
                    on_ready()
                notifier.ready(f"serving on {settings.socket_path}")
                await tg.start(notifier.run_watchdog)
                async for signum in signals:
                    if signum == signal.SIGHUP:
                        reload_policy_now(settings, service)
                        await reload_outputs_now(settings, outputs)
                        continue
                    log.info("daemon_stopping", signal=signal.Signals(signum).name)
                    break
            finally:
                # Ordered, and also after a failed start: NOT_SERVING, stop accepting,
                # drain, then cancel background work.
                notifier.stopping("draining in-flight calls")
                with anyio.CancelScope(shield=True):
                    await helpers.stop()
                    await sdk.stop()
                    await server.stop(settings.shutdown_grace_seconds)
                tg.cancel_scope.cancel()
