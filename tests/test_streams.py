"""Latest-value subscriptions and the hub: slow consumers never block, repeats are skipped."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import anyio
import pytest

from broker.model import ClientCredential
from broker.streams.hub import Hub, WatchEvent
from broker.streams.subscription import Subscription

T0 = datetime(2030, 1, 1, tzinfo=UTC)


def cred(n: int, *, issued: int = 0) -> ClientCredential:
    return ClientCredential(
        connector_type="gcp",
        auth_method="service-account",
        resource_type="gcp-generic",
        resource_id="project",
        config={"token": f"token-{n}"},
        secret_names=frozenset({"token"}),
        expires_at=T0 + timedelta(hours=n),
        issued_at=T0 + timedelta(seconds=issued),
    )


def renewed(n: int, *, issued: int = 0) -> WatchEvent:
    return WatchEvent("renewed", cred(n, issued=issued))


async def nothing_waiting(sub: Subscription) -> bool:
    """True when ``receive`` would block: nothing new is waiting."""
    got: list[WatchEvent] = []
    async with anyio.create_task_group() as tg:

        async def take() -> None:
            got.append(await sub.receive())

        tg.start_soon(take)
        await anyio.wait_all_tasks_blocked()
        tg.cancel_scope.cancel()
    return not got


@pytest.mark.anyio
async def test_a_slow_consumer_only_sees_the_newest_event() -> None:
    sub = Subscription()
    for n in range(1, 6):
        sub.offer(renewed(n))
    assert await sub.receive() == renewed(5)
    assert await nothing_waiting(sub)


@pytest.mark.anyio
async def test_identical_credentials_are_not_re_sent() -> None:
    sub = Subscription()
    sub.offer(renewed(1))
    assert (await sub.receive()).credential == cred(1)
    # Same expiry and config, minted at another time: nothing new for the consumer.
    sub.offer(renewed(1, issued=30))
    assert await nothing_waiting(sub)
    sub.offer(renewed(2))
    assert (await sub.receive()).credential == cred(2)


@pytest.mark.anyio
async def test_a_credential_delivered_another_way_is_not_re_sent() -> None:
    sub = Subscription()
    sub.delivered(WatchEvent("issued", cred(1)))
    sub.offer(renewed(1))
    assert await nothing_waiting(sub)


@pytest.mark.anyio
async def test_repeated_errors_are_sent_once_and_recovery_always_shows() -> None:
    sub = Subscription()
    sub.offer(renewed(1))
    await sub.receive()
    sub.offer(WatchEvent("error", error="upstream down"))
    assert (await sub.receive()).error == "upstream down"
    sub.offer(WatchEvent("error", error="upstream down"))
    assert await nothing_waiting(sub)
    sub.offer(WatchEvent("error", error="still down, differently"))
    assert (await sub.receive()).error == "still down, differently"
    sub.offer(renewed(1))  # the same credential as before the errors: news now
    assert (await sub.receive()).credential == cred(1)


@pytest.mark.anyio
async def test_a_terminal_event_is_never_overwritten_and_ends_the_stream() -> None:
    sub = Subscription()
    sub.offer(renewed(1))
    sub.offer(WatchEvent("deleted"))
    sub.offer(renewed(2))
    assert (await sub.receive()).kind == "deleted"
    with pytest.raises(anyio.EndOfStream):
        await sub.receive()
    assert sub.closed


@pytest.mark.anyio
async def test_close_wakes_a_waiting_consumer() -> None:
    sub = Subscription()
    ended = anyio.Event()

    async def consume() -> None:
        with pytest.raises(anyio.EndOfStream):
            await sub.receive()
        ended.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(consume)
        await anyio.wait_all_tasks_blocked()
        assert not ended.is_set()
        sub.close()
    assert ended.is_set()


@pytest.mark.anyio
async def test_close_delivers_the_waiting_event_first() -> None:
    sub = Subscription()
    sub.offer(renewed(3))
    sub.close()
    sub.offer(renewed(4))  # after close: dropped
    assert (await sub.receive()).credential == cred(3)
    with pytest.raises(anyio.EndOfStream):
        await sub.receive()


@pytest.mark.anyio
async def test_publish_never_waits_for_a_stalled_subscriber() -> None:
    hub: Hub[str] = Hub()
    stalled = hub.subscribe("key")
    fast = hub.subscribe("key")
    hub.subscribe("other")
    seen: list[WatchEvent] = []

    async def consume() -> None:
        while True:
            seen.append(await fast.receive())

    async with anyio.create_task_group() as tg:
        tg.start_soon(consume)
        for n in range(1, 101):
            assert hub.publish("key", renewed(n)) == 2  # synchronous: cannot block
            await anyio.wait_all_tasks_blocked()
        tg.cancel_scope.cancel()
    assert [e.credential for e in seen] == [cred(n) for n in range(1, 101)]
    assert await stalled.receive() == renewed(100)
    assert await nothing_waiting(stalled)


@pytest.mark.anyio
async def test_ten_thousand_subscribers_get_one_publish() -> None:
    hub: Hub[str] = Hub()
    subs = [hub.subscribe("key") for _ in range(10_000)]
    assert hub.total == 10_000 and hub.count("key") == 10_000
    assert hub.publish("key", renewed(1)) == 10_000
    for sub in subs[::997]:
        assert (await sub.receive()).credential == cred(1)


@pytest.mark.anyio
async def test_unsubscribe_and_close_keep_counts_right() -> None:
    hub: Hub[tuple[str, int]] = Hub()
    a = hub.subscribe(("c1", 1))
    b = hub.subscribe(("c1", 2))
    c = hub.subscribe(("c2", 1))
    hub.unsubscribe(("c1", 1), a)
    hub.unsubscribe(("c1", 1), a)  # idempotent
    assert hub.total == 2 and hub.count(("c1", 1)) == 0
    assert hub.publish(("c1", 1), renewed(1)) == 0

    closed = hub.close_where(lambda k: k[0] == "c1", WatchEvent("updated"))
    assert closed == 1
    assert hub.total == 1 and hub.watched_keys() == [("c2", 1)]
    assert (await b.receive()).kind == "updated"
    with pytest.raises(anyio.EndOfStream):
        await b.receive()
    hub.unsubscribe(("c1", 2), b)  # already gone: no double count
    assert hub.total == 1
    hub.close(("c2", 1))
    with pytest.raises(anyio.EndOfStream):
        await c.receive()
    assert hub.total == 0


# -- watch streams through gRPC: deliberate limits end a stream with a named reason ---------


def test_past_watch_max_streams_a_stream_is_refused_naming_the_setting() -> None:
    from structlog.testing import capture_logs

    from broker.rpc.watch_flow import StreamRefused, WatchLimits, WatchStreams

    streams = WatchStreams(WatchLimits(max_streams=2))
    streams.admit(lambda: "p1")
    streams.admit(lambda: "p2")
    with capture_logs() as logs, pytest.raises(StreamRefused) as refused:
        streams.admit(lambda: "p3")
    assert refused.value.message == (
        "too many watch streams: 2 open, watch_max_streams is 2; close some or raise the setting"
    )
    assert [(e["event"], e["limit"]) for e in logs] == [("watch_refused", "watch_max_streams")]
    streams.release()
    streams.admit(lambda: "p3")  # a closed stream makes room
    assert streams.stats() == {
        "watch_streams_open": 2,
        "watch_streams_refused": 1,
        "watch_streams_stalled": 0,
    }


@pytest.mark.anyio
async def test_a_write_left_unread_past_the_stall_timeout_ends_the_stream() -> None:
    from broker.rpc.watch_flow import StreamRefused, WatchLimits, WatchStreams

    streams = WatchStreams(WatchLimits(stall_timeout=0.01))
    sent: list[str] = []

    async def taken(message: str) -> None:
        sent.append(message)

    async def never_read(message: str) -> None:
        await anyio.Event().wait()  # the client's window stays full

    await streams.send(taken, "renewed", lambda: "peer")
    with pytest.raises(StreamRefused, match=r"read nothing for 0\.01s \(watch_stall_timeout"):
        await streams.send(never_read, "renewed again", lambda: "peer")
    assert (sent, streams.stats()["watch_streams_stalled"]) == (["renewed"], 1)
