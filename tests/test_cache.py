"""The renewal engine with a FakeClock: single-flight, windows, failures, invalidation, watches."""

from __future__ import annotations

import itertools
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime, timedelta
from typing import Any

import anyio
import pytest

from broker.cache.cache import CacheKey, CredentialCache, Mint
from broker.clock import FakeClock
from broker.errors import (
    BrokerError,
    ConnectorExpired,
    CredentialsRejected,
    NotFound,
    PermissionDenied,
    Unavailable,
    UpstreamError,
)
from broker.model import ClientCredential
from broker.served import ServedMargins
from broker.streams.hub import WatchEvent

HOUR = timedelta(hours=1)
GOOGLE_MARGIN = timedelta(minutes=4)
KEY = CacheKey("c1", 1, "gcp-generic", "project")


class Upstream:
    """A provider's mint: counts calls, and can block, fail or hand out one token forever."""

    def __init__(self, clock: FakeClock, lifetime: timedelta | None = HOUR) -> None:
        self.clock = clock
        self.lifetime = lifetime
        self.calls = 0
        self.call_times: list[datetime] = []
        self.error: BaseException | None = None
        self.gate: anyio.Event | None = None
        self.fixed: ClientCredential | None = None
        self.last: ClientCredential | None = None

    async def __call__(self) -> ClientCredential:
        self.calls += 1
        self.call_times.append(self.clock.now())
        if self.gate is not None:
            await self.gate.wait()
        if self.error is not None:
            raise self.error
        if self.fixed is not None:
            return self.fixed
        now = self.clock.now()
        self.last = ClientCredential(
            connector_type="gcp",
            auth_method="service-account",
            resource_type="gcp-generic",
            resource_id="project",
            config={"token": f"token-{self.calls}"},
            secret_names=frozenset({"token"}),
            expires_at=None if self.lifetime is None else now + self.lifetime,
            issued_at=now,  # a fresh token: the upstream declares its whole lifetime
        )
        return self.last

    def close_gate(self) -> anyio.Event:
        self.gate = anyio.Event()
        return self.gate


async def tick(clock: FakeClock, seconds: float) -> None:
    """Move time and let every woken task run until all are blocked again."""
    await clock.advance(seconds)
    await anyio.wait_all_tasks_blocked()


def outside_margin(credential: ClientCredential, now: datetime) -> bool:
    assert credential.expires_at is not None
    return now < credential.expires_at - GOOGLE_MARGIN


class CheckedCache(CredentialCache):
    """The cache, with every credential it returns checked the way the service checks it:
    independently, against the documented margin (:mod:`broker.served`)."""

    def __init__(self, clock: FakeClock, **kwargs: Any) -> None:
        super().__init__(clock, **kwargs)
        self.margins = ServedMargins(clock)

    async def get(self, key: CacheKey, mint: Mint) -> ClientCredential:
        credential = await super().get(key, mint)
        self.margins.observe(credential)
        return credential


@asynccontextmanager
async def started(
    clock: FakeClock, *, idle_seconds: float = 900.0, max_entries: int = 10_000
) -> AsyncIterator[CheckedCache]:
    cache = CheckedCache(
        clock, idle_seconds=idle_seconds, max_entries=max_entries, rng=random.Random(1)
    )
    async with cache.running():
        yield cache


async def fetch(
    cache: CredentialCache, key: CacheKey, mint: Upstream, into: list[ClientCredential]
) -> None:
    into.append(await cache.get(key, mint))


class Watcher:
    """Collects a watch stream's events in a task."""

    def __init__(self, cache: CredentialCache, key: CacheKey, mint: Upstream) -> None:
        self.cache, self.key, self.mint = cache, key, mint
        self.events: list[WatchEvent] = []
        self.ended = False

    async def run(self) -> None:
        async for event in self.cache.watch(self.key, self.mint):
            self.events.append(event)
        self.ended = True

    @property
    def kinds(self) -> list[str]:
        return [e.kind for e in self.events]

    @property
    def latest(self) -> ClientCredential:
        creds = [e.credential for e in self.events if e.credential is not None]
        return creds[-1]


# -- hits, misses, single-flight ---------------------------------------------------------------
@pytest.mark.anyio
async def test_a_fresh_hit_is_served_without_minting_or_awaiting() -> None:
    clock = FakeClock()
    upstream = Upstream(clock)
    async with started(clock) as cache:
        first = await cache.get(KEY, upstream)
        coro = cache.get(KEY, upstream)
        with pytest.raises(StopIteration) as done:  # completes without suspending once
            coro.send(None)
        assert done.value.value is first
        assert upstream.calls == 1
        stats = cache.stats()
        assert (stats["hits"], stats["misses"], stats["mints"], stats["entries"]) == (1, 1, 1, 1)
        assert first is upstream.last  # as minted: the cache stamps nothing on it


@pytest.mark.anyio
async def test_200_concurrent_cold_callers_cause_exactly_one_mint() -> None:
    clock = FakeClock()
    upstream = Upstream(clock)
    gate = upstream.close_gate()
    results: list[ClientCredential] = []
    async with started(clock) as cache, anyio.create_task_group() as tg:
        for _ in range(200):
            tg.start_soon(fetch, cache, KEY, upstream, results)
        await anyio.wait_all_tasks_blocked()
        assert upstream.calls == 1 and not results
        gate.set()
    assert len(results) == 200 and all(r is results[0] for r in results)
    assert upstream.calls == 1
    assert cache.counters.mints == 1 and cache.counters.misses == 200


@pytest.mark.anyio
async def test_concurrent_waiters_share_one_failure_as_unavailable() -> None:
    clock = FakeClock()
    upstream = Upstream(clock)
    gate = upstream.close_gate()
    upstream.error = UpstreamError("token endpoint returned 503", retryable=True)
    errors: list[BaseException] = []

    async def call(cache: CredentialCache) -> None:
        try:
            await cache.get(KEY, upstream)
        except BrokerError as exc:
            errors.append(exc)

    async with started(clock) as cache, anyio.create_task_group() as tg:
        for _ in range(200):
            tg.start_soon(call, cache)
        await anyio.wait_all_tasks_blocked()
        gate.set()
    assert upstream.calls == 1 and len(errors) == 200
    assert all(isinstance(e, Unavailable) and "503" in str(e) for e in errors)
    assert len({id(e) for e in errors}) == 200  # one instance each: tracebacks do not pile up


@pytest.mark.anyio
async def test_a_caller_giving_up_does_not_cancel_the_shared_mint() -> None:
    clock = FakeClock()
    upstream = Upstream(clock)
    gate = upstream.close_gate()
    results: list[ClientCredential] = []
    impatient = anyio.CancelScope()

    async def give_up(cache: CredentialCache) -> None:
        with impatient:
            await cache.get(KEY, upstream)

    async with started(clock) as cache, anyio.create_task_group() as tg:
        tg.start_soon(give_up, cache)
        await anyio.wait_all_tasks_blocked()
        impatient.cancel()
        await anyio.wait_all_tasks_blocked()
        tg.start_soon(fetch, cache, KEY, upstream, results)
        await anyio.wait_all_tasks_blocked()
        gate.set()
    assert upstream.calls == 1 and len(results) == 1


@pytest.mark.anyio
async def test_unexpected_and_retryable_errors_reach_callers_as_unavailable() -> None:
    clock = FakeClock()
    upstream = Upstream(clock)
    async with started(clock) as cache:
        upstream.error = KeyError("access_token")
        with pytest.raises(Unavailable, match=r"failed: internal error \(reference [0-9a-f]{12}\)"):
            await cache.get(KEY, upstream)
        key2 = CacheKey("c1", 1, "gcs-bucket", "gs://b")
        upstream.error = PermissionDenied("IAM change still propagating", retryable=True)
        with pytest.raises(Unavailable, match="propagating"):
            await cache.get(key2, upstream)


@pytest.mark.anyio
async def test_the_cache_must_be_running_to_mint() -> None:
    clock = FakeClock()
    with pytest.raises(RuntimeError, match="not running"):
        await CredentialCache(clock).get(KEY, Upstream(clock))


# -- advisory and mandatory windows -----------------------------------------------------------
@pytest.mark.anyio
async def test_stale_callers_get_the_old_credential_while_one_renewal_runs() -> None:
    clock = FakeClock()
    upstream = Upstream(clock)
    async with started(clock, idle_seconds=36_000) as cache:
        old = await cache.get(KEY, upstream)
        gate = upstream.close_gate()
        await tick(clock, 45 * 60)  # past every jittered renew point, before the margin
        served = [await cache.get(KEY, upstream) for _ in range(50)]
        assert all(s is old for s in served)
        assert upstream.calls == 2  # exactly one renewal in flight
        gate.set()
        await anyio.wait_all_tasks_blocked()
        new = await cache.get(KEY, upstream)
        assert new is not old and new.config["token"] == "token-2"
        assert upstream.calls == 2


@pytest.mark.anyio
async def test_inside_the_margin_callers_wait_for_the_renewal() -> None:
    clock = FakeClock()
    upstream = Upstream(clock)
    results: list[ClientCredential] = []
    async with started(clock, idle_seconds=36_000) as cache:
        old = await cache.get(KEY, upstream)
        gate = upstream.close_gate()
        await tick(clock, 57 * 60)  # inside the 4-minute margin
        async with anyio.create_task_group() as tg:
            for _ in range(50):
                tg.start_soon(fetch, cache, KEY, upstream, results)
            await anyio.wait_all_tasks_blocked()
            assert not results  # nobody got the old credential
            assert upstream.calls == 2
            gate.set()
        assert len(results) == 50 and all(r is results[0] and r is not old for r in results)
        assert outside_margin(results[0], clock.now())
        assert cache.margins.inside_margin == 0


class JumpingClock(FakeClock):
    """Wall time can jump ahead of the sleepers (a resumed laptop): the loop lags behind."""

    def __init__(self) -> None:
        super().__init__()
        self.jumped = timedelta(0)

    def now(self) -> datetime:
        return super().now() + self.jumped


@pytest.mark.anyio
async def test_callers_alone_enforce_both_windows_when_the_loop_lags() -> None:
    clock = JumpingClock()
    upstream = Upstream(clock)
    results: list[ClientCredential] = []
    async with started(clock, idle_seconds=36_000) as cache:
        old = await cache.get(KEY, upstream)
        gate = upstream.close_gate()
        clock.jumped = timedelta(minutes=45)  # stale: advisory
        assert all([await cache.get(KEY, upstream) is old for _ in range(20)])
        await anyio.wait_all_tasks_blocked()
        assert upstream.calls == 2  # one renewal, started by the first stale caller
        clock.jumped = timedelta(minutes=57)  # inside the margin: mandatory
        async with anyio.create_task_group() as tg:
            for _ in range(20):
                tg.start_soon(fetch, cache, KEY, upstream, results)
            await anyio.wait_all_tasks_blocked()
            assert not results and upstream.calls == 2
            gate.set()
        assert len(results) == 20 and all(r is not old for r in results)
        assert cache.margins.inside_margin == 0


# -- upstream failure ---------------------------------------------------------------------------
@pytest.mark.anyio
async def test_upstream_failure_serves_until_the_margin_then_surfaces_the_error() -> None:
    clock = FakeClock()
    upstream = Upstream(clock)
    start = clock.now()
    async with started(clock, idle_seconds=36_000) as cache:
        cached = await cache.get(KEY, upstream)
        upstream.error = UpstreamError("oauth2.googleapis.com unreachable", retryable=True)
        served, refused = 0, 0
        while clock.now() < start + timedelta(minutes=70):
            await tick(clock, 20)
            try:
                got = await cache.get(KEY, upstream)
            except Unavailable as exc:
                assert "unreachable" in str(exc)
                assert not outside_margin(cached, clock.now())
                refused += 1
            else:
                assert got is cached and outside_margin(got, clock.now())
                served += 1
        assert served > 0 and refused > 0
        assert cache.margins.inside_margin == 0
        # Background retries with growing gaps, capped at a minute.
        gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(upstream.call_times[1:])]
        assert 8 <= len(gaps) <= 60
        assert max(gaps) <= 60 + 20 and gaps[-1] > gaps[0]

        upstream.error = None
        for _ in range(4):
            await tick(clock, 20)
        fresh = await cache.get(KEY, upstream)
        assert fresh is not cached and outside_margin(fresh, clock.now())


@pytest.mark.anyio
async def test_short_lived_tokens_recover_within_a_quarter_lifetime_of_the_upstream_return() -> (
    None
):
    clock = FakeClock()
    upstream = Upstream(clock, lifetime=timedelta(seconds=20))  # margin: 3/4 of it, 15 s
    async with started(clock) as cache:
        cached = await cache.get(KEY, upstream)
        upstream.error = UpstreamError("token server stopped", retryable=True)
        for _ in range(4):
            await tick(clock, 1)
            assert await cache.get(KEY, upstream) is cached  # 5 s: still outside the margin
        for _ in range(30):
            await tick(clock, 1)
            with pytest.raises(Unavailable, match="stopped"):
                await cache.get(KEY, upstream)
        upstream.error = None
        for _ in range(6):  # retries are at most 5 s apart for 20-second tokens
            await tick(clock, 1)
        fresh = await cache.get(KEY, upstream)
        assert fresh is not cached
        assert cache.margins.inside_margin == 0


@pytest.mark.anyio
@pytest.mark.parametrize(
    "error",
    [
        CredentialsRejected("the service account key was revoked"),
        ConnectorExpired("connector 'c1' credentials expired; update it with fresh ones"),
    ],
)
async def test_a_permanent_error_stops_background_retries(error: BrokerError) -> None:
    clock = FakeClock()
    upstream = Upstream(clock)
    async with started(clock, idle_seconds=36_000) as cache, anyio.create_task_group() as tg:
        watcher = Watcher(cache, KEY, upstream)
        tg.start_soon(watcher.run)
        await anyio.wait_all_tasks_blocked()
        upstream.error = error
        for _ in range(3 * 180):  # three hours, watched, nobody calls get
            await tick(clock, 20)
        assert upstream.calls == 2  # the first renewal attempt, and no retry after it
        assert watcher.kinds == ["issued", "error"]
        assert watcher.events[-1].error == error.message
        with pytest.raises(type(error)):
            await cache.get(KEY, upstream)  # a caller may try once more after the hold...
        assert upstream.calls == 3
        with pytest.raises(type(error)):
            await cache.get(KEY, upstream)  # ...but not again within it
        assert upstream.calls == 3
        tg.cancel_scope.cancel()


@pytest.mark.anyio
async def test_a_permanent_error_keeps_serving_a_valid_credential_until_its_margin() -> None:
    clock = FakeClock()
    upstream = Upstream(clock)
    async with started(clock, idle_seconds=36_000) as cache:
        cached = await cache.get(KEY, upstream)
        upstream.error = CredentialsRejected("key revoked")
        await tick(clock, 45 * 60)
        assert upstream.calls == 2
        assert await cache.get(KEY, upstream) is cached
        await tick(clock, 11 * 60 + 1)  # into the margin
        with pytest.raises(CredentialsRejected):
            await cache.get(KEY, upstream)
        assert cache.margins.inside_margin == 0


# -- invalidation -------------------------------------------------------------------------------
@pytest.mark.anyio
async def test_update_ends_watches_and_the_old_revision_is_never_served_again() -> None:
    clock = FakeClock()
    old_mint, new_mint, other_mint = Upstream(clock), Upstream(clock), Upstream(clock)
    other = CacheKey("c2", 1, "gcp-generic", "project")
    async with started(clock) as cache, anyio.create_task_group() as tg:
        await cache.get(KEY, old_mint)
        await cache.get(other, other_mint)
        watcher = Watcher(cache, KEY, old_mint)
        tg.start_soon(watcher.run)
        await anyio.wait_all_tasks_blocked()
        cache.invalidate_connector("c1", "updated")
        await anyio.wait_all_tasks_blocked()
        assert watcher.kinds == ["issued", "updated"] and watcher.ended
        with pytest.raises(Unavailable, match="updated"):
            await cache.get(KEY, old_mint)
        assert old_mint.calls == 1
        new = await cache.get(CacheKey("c1", 2, "gcp-generic", "project"), new_mint)
        assert new_mint.calls == 1 and new.config["token"] == "token-1"
        assert await cache.get(other, other_mint) is not None and other_mint.calls == 1
        assert cache.stats()["entries"] == 2 and cache.stats()["subscribers"] == 0


@pytest.mark.anyio
async def test_a_mint_in_flight_during_an_update_is_discarded() -> None:
    clock = FakeClock()
    upstream = Upstream(clock)
    gate = upstream.close_gate()
    errors: list[BaseException] = []

    async def call(cache: CredentialCache) -> None:
        try:
            await cache.get(KEY, upstream)
        except BrokerError as exc:
            errors.append(exc)

    async with started(clock) as cache:
        async with anyio.create_task_group() as tg:
            tg.start_soon(call, cache)
            await anyio.wait_all_tasks_blocked()
            cache.invalidate_connector("c1", "updated", revision=2)
        assert len(errors) == 1 and isinstance(errors[0], Unavailable)
        gate.set()
        await anyio.wait_all_tasks_blocked()
        assert cache.stats()["entries"] == 0 and cache.counters.mints == 0
        with pytest.raises(Unavailable):
            await cache.get(KEY, upstream)  # a request that resolved revision 1 too late


@pytest.mark.anyio
async def test_delete_ends_watches_and_refuses_the_connector() -> None:
    clock = FakeClock()
    upstream = Upstream(clock)
    async with started(clock) as cache, anyio.create_task_group() as tg:
        watcher = Watcher(cache, KEY, upstream)
        tg.start_soon(watcher.run)
        await anyio.wait_all_tasks_blocked()
        cache.invalidate_connector("c1", "deleted")
        await anyio.wait_all_tasks_blocked()
        assert watcher.kinds == ["issued", "deleted"] and watcher.ended
        with pytest.raises(NotFound):
            await cache.get(CacheKey("c1", 7, "gcp-generic", "project"), upstream)
        late = [e async for e in cache.watch(KEY, upstream)]
        assert [e.kind for e in late] == ["deleted"]
        assert upstream.calls == 1


# -- idle eviction and the LRU bound --------------------------------------------------------------
@pytest.mark.anyio
async def test_idle_keys_are_dropped_and_not_renewed() -> None:
    clock = FakeClock()
    upstream = Upstream(clock)
    async with started(clock, idle_seconds=600) as cache:
        await cache.get(KEY, upstream)
        await tick(clock, 599)
        assert cache.stats()["entries"] == 1
        await tick(clock, 2)
        assert cache.stats()["entries"] == 0 and cache.counters.evictions == 1
        for _ in range(12):
            await tick(clock, 600)
        assert upstream.calls == 1


@pytest.mark.anyio
async def test_recently_used_keys_are_renewed_in_the_background_until_idle() -> None:
    clock = FakeClock()
    upstream = Upstream(clock)
    async with started(clock, idle_seconds=3600) as cache:
        await cache.get(KEY, upstream)
        for _ in range(50 * 2):
            await tick(clock, 30)
        assert upstream.calls == 2  # renewed with no get() call
        for _ in range(3 * 120):
            await tick(clock, 30)
        assert upstream.calls == 2 and cache.stats()["entries"] == 0


@pytest.mark.anyio
async def test_the_bound_evicts_the_least_recently_used_unwatched_key() -> None:
    clock = FakeClock()
    upstream = Upstream(clock)
    keys = [CacheKey("c1", 1, "gcs-bucket", f"gs://b{i}") for i in range(6)]
    async with started(clock, max_entries=3) as cache, anyio.create_task_group() as tg:
        for key in keys[:3]:
            await cache.get(key, upstream)
        await cache.get(keys[0], upstream)  # keys[1] is now the least recently used
        await cache.get(keys[3], upstream)
        assert cache.stats()["entries"] == 3 and cache.counters.evictions == 1
        calls = upstream.calls
        await cache.get(keys[1], upstream)  # evicted: minted again (and evicts keys[2])
        assert upstream.calls == calls + 1
        watcher = Watcher(cache, keys[0], upstream)
        tg.start_soon(watcher.run)
        await anyio.wait_all_tasks_blocked()
        await cache.get(keys[3], upstream)
        await cache.get(keys[1], upstream)  # keys[0] is least recently used, but watched
        await cache.get(keys[4], upstream)
        assert cache.stats()["entries"] == 3
        calls = upstream.calls
        await cache.get(keys[0], upstream)
        assert upstream.calls == calls  # still cached
        await cache.get(keys[3], upstream)
        assert upstream.calls == calls + 1  # this one went instead
        tg.cancel_scope.cancel()


# -- watches ------------------------------------------------------------------------------------
@pytest.mark.anyio
async def test_watched_keys_are_renewed_before_expiry_without_any_get() -> None:
    clock = FakeClock()
    upstream = Upstream(clock)
    async with started(clock, idle_seconds=60) as cache, anyio.create_task_group() as tg:
        watcher = Watcher(cache, KEY, upstream)
        tg.start_soon(watcher.run)
        await anyio.wait_all_tasks_blocked()
        for _ in range(4 * 120):
            await tick(clock, 30)
            assert outside_margin(watcher.latest, clock.now())
        assert watcher.kinds[0] == "issued"
        assert set(watcher.kinds[1:]) == {"renewed"} and len(watcher.kinds) >= 5
        assert upstream.calls == len(watcher.events)  # every mint reached the watcher once
        # The renewal lead time metric: every renewal finished well before the old expiry.
        renewals = cache.counters.renewals
        assert renewals == len(watcher.events) - 1
        assert cache.counters.renewal_lead_ms_min > 0
        assert cache.counters.renewal_lead_ms >= renewals * cache.counters.renewal_lead_ms_min
        tg.cancel_scope.cancel()


@pytest.mark.anyio
async def test_a_slow_watcher_sees_only_the_latest_and_blocks_nobody() -> None:
    clock = FakeClock()
    upstream = Upstream(clock)
    async with started(clock) as cache, anyio.create_task_group() as tg:
        fast = Watcher(cache, KEY, upstream)
        tg.start_soon(fast.run)
        await anyio.wait_all_tasks_blocked()
        slow = cache.watch(KEY, upstream)
        assert (await anext(slow)).kind == "issued"
        for _ in range(5 * 60):
            await tick(clock, 60)
        assert len(fast.events) >= 6
        caught_up = await anext(slow)
        assert caught_up.kind == "renewed" and caught_up.credential is fast.latest
        assert cache.subscribers(KEY) == 2
        await slow.aclose()
        assert cache.subscribers(KEY) == 1
        tg.cancel_scope.cancel()


@pytest.mark.anyio
async def test_an_unchanged_credential_is_not_re_sent_and_not_served_in_its_margin() -> None:
    clock = FakeClock()
    upstream = Upstream(clock)
    upstream.fixed = ClientCredential(
        connector_type="gcp",
        auth_method="oauth2-token",
        resource_type="gcp-generic",
        resource_id="project",
        config={"token": "stored"},
        expires_at=clock.now() + HOUR,
    )
    async with started(clock) as cache, anyio.create_task_group() as tg:
        watcher = Watcher(cache, KEY, upstream)
        tg.start_soon(watcher.run)
        await anyio.wait_all_tasks_blocked()
        for _ in range(55 * 3):
            await tick(clock, 20)
            assert watcher.kinds == ["issued"]
            assert await cache.get(KEY, upstream) == watcher.latest
        assert 5 < upstream.calls < 40  # asked again with backoff, no storm
        for _ in range(3 * 3):
            await tick(clock, 20)
        assert watcher.kinds == ["issued", "error"]
        assert "inside its safety margin" in (watcher.events[-1].error or "")
        with pytest.raises(Unavailable):
            await cache.get(KEY, upstream)
        assert cache.margins.inside_margin == 0
        tg.cancel_scope.cancel()


@pytest.mark.anyio
async def test_a_watch_reports_errors_and_recovers() -> None:
    clock = FakeClock()
    upstream = Upstream(clock)
    upstream.error = UpstreamError("connection refused", retryable=True)
    async with started(clock) as cache, anyio.create_task_group() as tg:
        watcher = Watcher(cache, KEY, upstream)
        tg.start_soon(watcher.run)
        await anyio.wait_all_tasks_blocked()
        assert watcher.kinds == ["error"] and "refused" in (watcher.events[0].error or "")
        await tick(clock, 5)
        assert watcher.kinds == ["error"]  # the same error again is not re-sent
        assert upstream.calls >= 2
        upstream.error = None
        for _ in range(10):
            await tick(clock, 5)
        assert watcher.kinds == ["error", "issued"]
        tg.cancel_scope.cancel()


@pytest.mark.anyio
async def test_cancelling_a_watch_unsubscribes_and_stops_keeping_the_key_warm() -> None:
    clock = FakeClock()
    upstream = Upstream(clock)
    async with started(clock, idle_seconds=600) as cache:
        async with anyio.create_task_group() as tg:
            watcher = Watcher(cache, KEY, upstream)
            tg.start_soon(watcher.run)
            await anyio.wait_all_tasks_blocked()
            assert cache.subscribers(KEY) == 1 and cache.stats()["subscribers"] == 1
            tg.cancel_scope.cancel()
        assert watcher.kinds == ["issued"]
        assert cache.subscribers(KEY) == 0 and cache.stats()["subscribers"] == 0
        for _ in range(12):
            await tick(clock, 600)
        assert upstream.calls == 1 and cache.stats()["entries"] == 0


@pytest.mark.anyio
async def test_long_lived_credentials_are_cached_until_the_connector_changes() -> None:
    clock = FakeClock()
    upstream = Upstream(clock, lifetime=None)
    async with started(clock, idle_seconds=10**9) as cache, anyio.create_task_group() as tg:
        watcher = Watcher(cache, KEY, upstream)
        tg.start_soon(watcher.run)
        await anyio.wait_all_tasks_blocked()
        first = await cache.get(KEY, upstream)
        for _ in range(10):
            await tick(clock, 86_400)
            assert await cache.get(KEY, upstream) is first
        assert upstream.calls == 1 and watcher.kinds == ["issued"]
        cache.invalidate_connector("c1", "updated")
        await anyio.wait_all_tasks_blocked()
        assert watcher.kinds == ["issued", "updated"]


@pytest.mark.anyio
async def test_stopping_the_cache_fails_waiters_and_ends_watches() -> None:
    clock = FakeClock()
    upstream = Upstream(clock)
    errors: list[BaseException] = []
    other = CacheKey("c2", 1, "gcp-generic", "project")
    cache = CredentialCache(clock)

    async def call() -> None:
        try:
            await cache.get(KEY, upstream)
        except BrokerError as exc:
            errors.append(exc)

    async with anyio.create_task_group() as tg, cache.running():
        watcher = Watcher(cache, other, Upstream(clock))
        tg.start_soon(watcher.run)
        await anyio.wait_all_tasks_blocked()
        upstream.close_gate()
        tg.start_soon(call)
        await anyio.wait_all_tasks_blocked()
    assert len(errors) == 1 and "shutting down" in str(errors[0])
    assert watcher.ended and watcher.kinds == ["issued"]


# -- spreading renewals -------------------------------------------------------------------------
@pytest.mark.anyio
async def test_equal_lifetimes_minted_together_renew_spread_out() -> None:
    clock = FakeClock()
    upstream = Upstream(clock)
    keys = [CacheKey("c1", 1, "gcs-bucket", f"gs://b{i}") for i in range(300)]
    async with started(clock, idle_seconds=36_000) as cache:
        for key in keys:
            await cache.get(key, upstream)
        for _ in range(50 * 6):
            await tick(clock, 10)
    renewals = upstream.call_times[len(keys) :]
    assert len(renewals) == len(keys)
    buckets: dict[int, int] = {}
    for t in renewals:
        minute = int((t - upstream.call_times[0]).total_seconds() // 60)
        buckets[minute] = buckets.get(minute, 0) + 1
    # The +/- 10 % window of a 56-minute servable lifetime spans about 11 minutes.
    assert len(buckets) >= 10
    assert max(buckets.values()) <= 2 * len(keys) / len(buckets)
