"""Forced rotation and restore in the renewal engine, with a FakeClock.

Rotation mints now even when the credential is fresh; the old one is served
until the new one is in hand; concurrent rotates and gets share one mint; a
failure leaves the old one serving (on its old schedule) and says why and until
when. Restore takes back a credential minted before a restart without a mint.
"""

from __future__ import annotations

import anyio
import pytest

from broker.cache.persist import CredentialPersister
from broker.clock import FakeClock
from broker.errors import CredentialsRejected, Unavailable, UpstreamError
from broker.store.persisted import LoadedCredentials
from tests.test_cache import HOUR, KEY, Upstream, started, tick

pytestmark = pytest.mark.anyio


async def test_rotate_mints_a_fresh_credential_and_watchers_get_renewed() -> None:
    clock = FakeClock()
    up = Upstream(clock)
    async with started(clock) as cache:
        first = await cache.get(KEY, up)
        events = cache.watch(KEY, up)
        assert (await anext(events)).kind == "issued"
        await tick(clock, 60)
        new, old = await cache.rotate(KEY, up)
        assert old is first and new is not first and up.calls == 2
        assert new.config["token"] == "token-2"
        event = await anext(events)
        assert event.kind == "renewed" and event.credential is new
        assert await cache.get(KEY, up) is new
        assert cache.counters.rotations == 1
        await events.aclose()


async def test_old_credential_served_while_rotating_and_rotations_coalesce() -> None:
    clock = FakeClock()
    up = Upstream(clock)
    async with started(clock) as cache, anyio.create_task_group() as tg:
        first = await cache.get(KEY, up)
        gate = up.close_gate()
        results: list[object] = []

        async def rotate() -> None:
            results.append((await cache.rotate(KEY, up))[0])

        for _ in range(5):
            tg.start_soon(rotate)
        await anyio.wait_all_tasks_blocked()
        # Mid-rotation: gets answer at once with the old credential.
        assert await cache.get(KEY, up) is first
        assert up.calls == 2  # one mint for five rotations
        gate.set()
        await anyio.wait_all_tasks_blocked()
        assert len(results) == 5 and len({id(r) for r in results}) == 1
        assert results[0] is not first and await cache.get(KEY, up) is results[0]


async def test_gets_that_need_a_mint_join_the_rotation() -> None:
    clock = FakeClock()
    up = Upstream(clock)
    async with started(clock) as cache, anyio.create_task_group() as tg:
        gate = up.close_gate()
        got: list[object] = []

        async def get() -> None:
            got.append(await cache.get(KEY, up))

        async def rotate() -> None:
            got.append((await cache.rotate(KEY, up))[0])

        tg.start_soon(rotate)  # nothing cached yet: the rotation is the first mint
        await anyio.wait_all_tasks_blocked()
        for _ in range(5):
            tg.start_soon(get)
        await anyio.wait_all_tasks_blocked()
        gate.set()
        await anyio.wait_all_tasks_blocked()
        assert up.calls == 1 and len(got) == 6 and len({id(c) for c in got}) == 1


async def test_failed_rotation_keeps_the_old_credential_and_says_why() -> None:
    clock = FakeClock()
    up = Upstream(clock)
    async with started(clock) as cache:
        first = await cache.get(KEY, up)
        assert first.expires_at is not None
        watch = cache.watch(KEY, up)  # kept warm: renewed at its renew point
        assert (await anext(watch)).credential is first
        up.error = CredentialsRejected("the upstream refused the service account key")
        with pytest.raises(CredentialsRejected) as info:
            await cache.rotate(KEY, up)
        message = info.value.message
        assert "refused the service account key" in message
        assert first.expires_at.isoformat() in message and "still served" in message
        assert await cache.get(KEY, up) is first
        assert cache.counters.rotation_failures == 1
        # Its schedule is as before: no background retry of a fresh credential.
        await tick(clock, 600)
        assert up.calls == 2
        up.error = None
        await tick(clock, HOUR.total_seconds() * 0.9)  # past the renew point: renewed
        assert up.calls == 3 and (await cache.get(KEY, up)) is not first
        await watch.aclose()


async def test_retryable_rotation_failure_is_unavailable_with_the_old_expiry() -> None:
    clock = FakeClock()
    up = Upstream(clock)
    async with started(clock) as cache:
        first = await cache.get(KEY, up)
        assert first.expires_at is not None
        up.error = UpstreamError("token endpoint answered 503")
        with pytest.raises(Unavailable) as info:  # UNAVAILABLE: worth trying again
            await cache.rotate(KEY, up)
        assert "503" in str(info.value) and first.expires_at.isoformat() in str(info.value)


async def test_restore_serves_without_minting_and_renews_on_schedule() -> None:
    clock = FakeClock()
    up = Upstream(clock)
    async with started(clock) as before:
        minted = await before.get(KEY, up)
    assert up.calls == 1
    await clock.advance(600)
    async with started(clock) as after:
        assert after.restore(KEY, up, minted)
        assert await after.get(KEY, up) is minted and up.calls == 1
        events = after.watch(KEY, up)
        assert (await anext(events)).credential is minted
        await tick(clock, HOUR.total_seconds() * 0.85)
        assert up.calls == 2  # renewed before its margin, as if minted here
        assert (await anext(events)).kind == "renewed"
        await events.aclose()


async def test_restore_refuses_a_credential_inside_its_margin() -> None:
    clock = FakeClock()
    up = Upstream(clock)
    async with started(clock) as before:
        minted = await before.get(KEY, up)
    await clock.advance(HOUR.total_seconds() - 60)
    async with started(clock) as after:
        assert not after.restore(KEY, up, minted)
        assert (await after.get(KEY, up)) is not minted and up.calls == 2


class FailingStore:
    async def save_credentials(self, daemon_id: str, items: object) -> None:
        raise RuntimeError("disk full")

    async def load_credentials(self, daemon_id: str) -> LoadedCredentials:
        raise RuntimeError("unreadable")

    async def drop_credentials(self, daemon_id: str, keys: object) -> None:
        raise RuntimeError("unreadable")


async def test_a_failing_store_never_reaches_callers() -> None:
    clock = FakeClock()
    up = Upstream(clock)
    persister = CredentialPersister(FailingStore(), "d")
    assert await persister.load() == []
    async with started(clock) as cache, anyio.create_task_group() as tg:
        cache.on_minted = persister.minted
        await tg.start(persister.run)
        await cache.get(KEY, up)
        await anyio.wait_all_tasks_blocked()
        assert persister.save_failures == 1 and persister.saved == 0
        assert (await cache.get(KEY, up)) is not None
        tg.cancel_scope.cancel()
