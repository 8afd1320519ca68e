"""The discovery engine in process: the real ``slow`` plugin against its HTTP test upstream.

The upstream counts in-flight calls and sees hang-ups, so concurrency, limits,
timeouts and cancellation are observed from outside the engine. Waits are on
the upstream's state (condition variable), never sleeps; the cache runs on a
fake clock.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import anyio
import pytest
from structlog.testing import capture_logs

from broker.clock import FakeClock
from broker.connectors import ConnectorDraft, build_connector
from broker.discovery import Discovery, DiscoveryLimits, Found, Unit
from broker.model import Connector, TypeResources
from broker.providers.base import ProviderContext
from broker.providers.registry import ProviderRegistry
from tests.plugins.broker_slow_connector import RESOURCE_TYPES, SlowProvider, TwinProvider
from tests.plugins.slow_upstream import GOOD_TOKEN, SlowUpstream, canonical_ids
from tests.servers.ports import free_port

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def _upstream() -> Iterator[SlowUpstream]:
    with SlowUpstream() as up:
        yield up


@pytest.fixture
def upstream(_upstream: SlowUpstream) -> Iterator[SlowUpstream]:
    _upstream.reset()
    yield _upstream
    _upstream.release()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(datetime.now(UTC))


@pytest.fixture
async def registry(clock: FakeClock) -> AsyncIterator[ProviderRegistry]:
    context = ProviderContext(clock=clock, request_timeout=30.0)
    reg = ProviderRegistry({"slow": SlowProvider(context), "slow-twin": TwinProvider(context)})
    yield reg
    await reg.aclose()


def make(
    name: str,
    up: SlowUpstream,
    *,
    connector_type: str = "slow",
    token: str = GOOD_TOKEN,
    url: str | None = None,
    resource_type: str | None = None,
    resource_id: str | None = None,
) -> Connector:
    """A connector built the way the daemon builds one, as if stored at revision 1."""
    provider = SlowProvider() if connector_type == "slow" else TwinProvider()
    draft = ConnectorDraft(
        name=name,
        connector_type=connector_type,
        auth_method="token",
        resource_type=resource_type,
        resource_id=resource_id,
        config={"url": url or up.url, "token": token},
        labels={},
        expiration_seconds=None,
        expires_at=None,
    )
    return replace(build_connector(provider, draft, FakeClock()), id=f"id-{name}", revision=1)


async def wait_for(up: SlowUpstream, predicate: Callable[[], bool]) -> None:
    """Wait (off the event loop) until the upstream reaches a state."""
    await anyio.to_thread.run_sync(up.wait_until, predicate)


async def listing(
    engine: Discovery,
    units: list[Unit],
    *,
    unit_timeout: float | None = None,
    refresh: bool = False,
) -> list[Found]:
    async with engine.stream(units, unit_timeout=unit_timeout, refresh=refresh) as results:
        return [f async for f in results]


def by_key(found: list[Found]) -> dict[tuple[str, str], TypeResources]:
    return {(f.connector.name, f.result.resource_type): f.result for f in found}


async def test_every_connector_and_type_runs_at_once(
    upstream: SlowUpstream, registry: ProviderRegistry, clock: FakeClock
) -> None:
    upstream.delay = 0.3
    engine = Discovery(registry, clock)
    connectors = [make(f"c{i}", upstream) for i in range(8)]
    units = engine.plan(connectors)
    assert len(units) == 16  # multi-type: both resource types of each connector

    start = anyio.current_time()
    found = await listing(engine, units)
    elapsed = anyio.current_time() - start

    assert upstream.max_in_flight == 16  # every unit in flight together
    assert elapsed < 0.3 * 16 / 4  # one-by-one would take 4.8 s
    results = by_key(found)
    assert len(results) == 16
    for c in connectors:
        for rt in RESOURCE_TYPES:
            # Canonical (lower case, trimmed), de-duplicated, sorted, both pages followed.
            assert results[(c.name, rt)] == TypeResources(
                rt, resource_ids=tuple(canonical_ids(c.name, rt))
            )


async def test_results_stream_as_they_arrive(
    upstream: SlowUpstream, registry: ProviderRegistry, clock: FakeClock
) -> None:
    engine = Discovery(registry, clock)
    upstream.hold("late")
    units = engine.plan(
        [make("early-1", upstream), make("late", upstream), make("early-2", upstream)]
    )
    async with engine.stream(units) as results:
        first = [await results.receive() for _ in range(4)]
        # Everything else arrived while both calls of "late" are still held upstream.
        assert {f.connector.name for f in first} == {"early-1", "early-2"}
        assert upstream.count("running", "late") == 2
        upstream.release("late")
        rest = [f async for f in results]
    assert {(f.connector.name, f.result.error) for f in rest} == {("late", None)}
    assert len(rest) == 2


async def test_per_provider_and_global_limits_are_respected(
    upstream: SlowUpstream, registry: ProviderRegistry, clock: FakeClock
) -> None:
    upstream.delay = 0.05
    engine = Discovery(
        registry, clock, DiscoveryLimits(global_concurrency=3, per_provider_concurrency=2)
    )
    connectors = [make(f"s{i}", upstream) for i in range(4)]
    connectors += [make(f"t{i}", upstream, connector_type="slow-twin") for i in range(4)]
    found = await listing(engine, engine.plan(connectors))

    assert len(found) == 16 and all(f.result.error is None for f in found)
    assert upstream.max_in_flight == 3
    assert dict(upstream.max_in_flight_by_type) == {"slow": 2, "slow-twin": 2}


async def test_timeout_cancels_the_upstream_call_and_spares_the_others(
    upstream: SlowUpstream, registry: ProviderRegistry, clock: FakeClock
) -> None:
    upstream.hold("hung")
    engine = Discovery(registry, clock)
    units = engine.plan([make("hung", upstream), make("fine", upstream)], "slow-resource")
    results = by_key(await listing(engine, units, unit_timeout=0.3))

    assert results[("hung", "slow-resource")] == TypeResources(
        "slow-resource", error="timed out after 0.3s (raise it with --timeout)"
    )
    assert results[("fine", "slow-resource")].error is None
    await wait_for(upstream, lambda: upstream.count("cancelled", "hung") == 1)
    assert upstream.count("running") == 0


async def test_time_queued_behind_a_limit_does_not_count_towards_the_timeout(
    upstream: SlowUpstream, registry: ProviderRegistry, clock: FakeClock
) -> None:
    upstream.delay = 0.25
    engine = Discovery(registry, clock, DiscoveryLimits(per_provider_concurrency=1, timeout=0.6))
    units = engine.plan([make(f"q{i}", upstream) for i in range(3)], "slow-resource")
    found = await listing(engine, units)
    # 3 x 0.25 s one after another is longer than the timeout, yet none timed out.
    assert [f.result.error for f in found] == [None, None, None]
    assert upstream.max_in_flight == 1


async def test_every_failure_is_an_entry_of_its_own(
    upstream: SlowUpstream, registry: ProviderRegistry, clock: FakeClock
) -> None:
    upstream.failures["broken"] = 503
    upstream.garbage.add("buggy")
    dead = f"http://127.0.0.1:{free_port()}"
    expired_at = clock.now() - timedelta(seconds=1)
    expired = replace(make("expired", upstream), expires_at=expired_at)
    gone = replace(make("gone", upstream), connector_type="not-installed")
    connectors = [
        make("good", upstream),
        make("badtoken", upstream, token="wrong-token"),
        make("broken", upstream),
        make("unreachable", upstream, url=dead),
        make("buggy", upstream),
        expired,
        gone,
    ]
    engine = Discovery(registry, clock)
    results = by_key(await listing(engine, engine.plan(connectors, "slow-resource")))

    errors = {name: r.error for (name, _), r in results.items()}
    assert errors["good"] is None
    assert results[("good", "slow-resource")].resource_ids == tuple(
        canonical_ids("good", "slow-resource")
    )
    assert errors["badtoken"] == (
        f"slow upstream {upstream.url}/discover refused the credentials (HTTP 401)"
    )
    assert errors["broken"] == f"slow upstream {upstream.url}/discover answered HTTP 503"
    assert errors["unreachable"] is not None
    assert errors["unreachable"].startswith(f"cannot reach slow upstream {dead}/discover")
    assert errors["buggy"] == "internal error while listing (KeyError)"
    assert errors["expired"] == (
        f"connector 'expired' credentials expired at {expired_at.strftime('%Y-%m-%dT%H:%M:%SZ')}; "
        "renew them with `broker connector update expired KEY=VALUE... --expires-at TIME` "
        "(TIME: RFC 3339 or +DURATION, e.g. +12h)"
    )
    assert results[("gone", "*")].error == (
        "unknown connector type 'not-installed' (known: slow, slow-twin)"
    )
    assert upstream.count(connector="expired") == 0  # never asked: known expired


async def test_cache_ttl_refresh_revision_and_errors(
    upstream: SlowUpstream, registry: ProviderRegistry, clock: FakeClock
) -> None:
    engine = Discovery(registry, clock, DiscoveryLimits(cache_ttl=60, failure_ttl=0))
    conn = make("cached", upstream)
    failing = make("failing", upstream, token="wrong-token")

    async def calls_for(*connectors: Connector, refresh: bool = False) -> int:
        before = len(upstream.calls)
        found = await listing(engine, engine.plan(connectors), refresh=refresh)
        assert len(found) == 2 * len(connectors)
        return len(upstream.calls) - before

    assert await calls_for(conn, failing) == 4
    assert await calls_for(conn) == 0  # served from the cache
    assert await calls_for(failing) == 2  # failure_ttl=0: failures are not kept
    await clock.advance(59)
    assert await calls_for(conn) == 0
    await clock.advance(2)  # TTL passed
    assert await calls_for(conn) == 2
    assert await calls_for(conn, refresh=True) == 2
    assert await calls_for(conn) == 0
    assert await calls_for(replace(conn, revision=2)) == 2  # an update is a new revision
    engine.forget(conn.id)
    assert await calls_for(replace(conn, revision=2)) == 2
    assert await calls_for(replace(conn, revision=2)) == 0


async def test_a_failure_is_reused_for_the_failure_ttl_with_its_age(
    upstream: SlowUpstream, registry: ProviderRegistry, clock: FakeClock
) -> None:
    """As resolvers cache negative answers: asked once within the TTL, again after it,
    and at once with refresh; the reused failure says how old it is."""
    engine = Discovery(registry, clock, DiscoveryLimits(cache_ttl=60, failure_ttl=10))
    failing = make("failing", upstream, token="wrong-token")
    units = engine.plan([failing])

    async def asked(*, refresh: bool = False) -> tuple[int, list[str]]:
        before = len(upstream.calls)
        found = await listing(engine, units, refresh=refresh)
        errors = sorted(f.result.error or "" for f in found)
        return len(upstream.calls) - before, errors

    calls, fresh = await asked()
    assert calls == 2 and all(e and "ago" not in e for e in fresh)
    await clock.advance(3.5)
    calls, reused = await asked()
    assert calls == 0
    assert reused == [f"{e} (failed 3s ago, kept for 10s; --refresh asks again)" for e in fresh]
    assert await asked(refresh=True) == (2, fresh)  # and that answer is kept from now
    await clock.advance(9.9)
    assert (await asked())[0] == 0
    await clock.advance(0.2)  # the TTL passed
    assert await asked() == (2, fresh)
    assert engine.cached(units[0]) is not None


async def test_a_resource_id_narrows_the_listing_in_canonical_form(
    upstream: SlowUpstream, registry: ProviderRegistry, clock: FakeClock
) -> None:
    engine = Discovery(registry, clock)
    connectors = [
        make("one", upstream),
        make("two", upstream, resource_type="slow-resource"),
        # Scoped to another resource: not asked about this one at all.
        make("pinned", upstream, resource_type="slow-resource", resource_id="other-1"),
    ]
    units = engine.plan(connectors, None, "  ONE-RESOURCE-2 ")
    assert [(u.connector.name, u.resource_type, u.resource_id) for u in units] == [
        ("one", "slow-resource", "one-resource-2"),
        ("one", "slow-other", "one-resource-2"),
        ("two", "slow-resource", "one-resource-2"),
    ]
    results = by_key(await listing(engine, units))
    assert results[("one", "slow-resource")] == TypeResources(
        "slow-resource", resource_ids=("one-resource-2",)
    )
    assert results[("one", "slow-other")].error == (
        "'one-resource-2' is not reachable with these credentials"
    )
    assert results[("two", "slow-resource")].error == (
        "'one-resource-2' is not reachable with these credentials"
    )


async def test_leaving_the_stream_cancels_running_and_queued_units(
    upstream: SlowUpstream, registry: ProviderRegistry, clock: FakeClock
) -> None:
    upstream.hold()
    engine = Discovery(registry, clock, DiscoveryLimits(per_provider_concurrency=2))
    units = engine.plan([make(f"h{i}", upstream) for i in range(5)], "slow-resource")
    with capture_logs() as logs, anyio.fail_after(5):
        async with engine.stream(units):
            await wait_for(upstream, lambda: upstream.count("running") == 2)
        # Out of the block: the task group has closed, so no unit is left running.
        assert logs[-1] == {
            "event": "discovery_cancelled",
            "log_level": "info",
            "units": 5,
            "finished": 0,
            "cancelled": 5,
        }
    await wait_for(upstream, lambda: upstream.count("cancelled") == 2)
    upstream.release()
    assert upstream.count() == 2  # the three queued units never started


async def test_a_deadline_around_the_consumer_cancels_the_fan_out(
    upstream: SlowUpstream, registry: ProviderRegistry, clock: FakeClock
) -> None:
    upstream.hold("slow")
    engine = Discovery(registry, clock)
    units = engine.plan([make("quick", upstream), make("slow", upstream)])
    received: list[Found] = []
    with pytest.raises(TimeoutError):
        with anyio.fail_after(0.5):
            async with engine.stream(units) as results:
                async for found in results:
                    received.append(found)
    assert {f.connector.name for f in received} == {"quick"}
    await wait_for(upstream, lambda: upstream.count("cancelled", "slow") == 2)
    assert upstream.count("running") == 0


async def test_verify_discovers_the_types_of_one_connector_concurrently(
    upstream: SlowUpstream, registry: ProviderRegistry, clock: FakeClock
) -> None:
    upstream.hold("multi")
    engine = Discovery(registry, clock)
    async with anyio.create_task_group() as tg:
        out: list[list[TypeResources]] = []

        async def verify() -> None:
            out.append(await engine.discover(make("multi", upstream), refresh=True))

        tg.start_soon(verify)
        await wait_for(upstream, lambda: upstream.count("running", "multi") == 2)
        upstream.release("multi")
    # In the type order the connector type declares, whichever answered first.
    assert [r.resource_type for r in out[0]] == list(RESOURCE_TYPES)
    assert all(r.error is None for r in out[0])
    # Verification always asks upstream and leaves the listing cache alone.
    before = upstream.count()
    await engine.discover(make("multi", upstream))
    assert upstream.count() == before + 2
    await listing(engine, engine.plan([make("multi", upstream)]))
    assert upstream.count() == before + 4


async def test_a_busy_provider_does_not_starve_another_of_global_slots(
    upstream: SlowUpstream, registry: ProviderRegistry, clock: FakeClock
) -> None:
    upstream.hold("busy-0", "busy-1", "busy-2")
    engine = Discovery(
        registry, clock, DiscoveryLimits(global_concurrency=2, per_provider_concurrency=1)
    )
    connectors = [make(f"busy-{i}", upstream) for i in range(3)]
    connectors.append(make("other", upstream, connector_type="slow-twin"))
    async with engine.stream(engine.plan(connectors, "slow-resource")) as results:
        # Two "slow" units wait for their provider's one slot; they hold no global slot
        # meanwhile, so the twin unit gets the second one and answers.
        with anyio.fail_after(5):
            first = await results.receive()
        assert first.connector.name == "other" and first.result.error is None
        assert upstream.count("running") == 1
        upstream.release()
        assert len([f async for f in results]) == 3
