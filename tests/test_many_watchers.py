"""Thousands of watch streams opened at once are all served.

gRPC core holds new calls until the server's handler loop takes them, and by
default refuses to hold more than 3,000: with grpc.aio, every watch past
about 2,800 then waited forever. The daemon raises that limit
(``broker.rpc.server.MAX_PENDING_CALLS``).
"""

from __future__ import annotations

import asyncio
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
import pytest

from broker.api.v1 import broker_pb2 as pb
from broker.api.v1 import broker_pb2_grpc as pb_grpc
from tests.daemon import Daemon, running_daemon
from tests.servers.ports import free_port

WATCHERS = 3500
PER_CONNECTION = 100


async def _watch_all(target: str) -> tuple[int, dict[str, int]]:
    channels = [  # a connection each, as separate watching processes would have
        grpc.aio.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)])
        for _ in range(WATCHERS // PER_CONNECTION)
    ]
    got = 0
    errors: dict[str, int] = {}
    everyone = asyncio.Event()

    async def watcher(stub: pb_grpc.BrokerServiceStub) -> None:
        nonlocal got
        try:
            async for event in stub.WatchCredentials(pb.WatchCredentialsRequest(connector="reg")):
                if event.HasField("credential"):
                    got += 1
                    if got == WATCHERS:
                        everyone.set()
                    await asyncio.Event().wait()
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.CANCELLED:
                errors[exc.code().name] = errors.get(exc.code().name, 0) + 1

    stubs = [pb_grpc.BrokerServiceStub(channel) for channel in channels]
    tasks = [asyncio.create_task(watcher(stubs[i % len(stubs)])) for i in range(WATCHERS)]
    try:
        await asyncio.wait_for(everyone.wait(), 90)
    except TimeoutError:
        pass
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for channel in channels:
            await channel.close()
    return got, errors


def test_thousands_of_watchers_connecting_at_once_are_all_served(tmp_path: Path) -> None:
    with running_daemon(tmp_path / "data", "--log-level", "warning") as daemon:
        daemon.cli(
            "connector",
            "register",
            "reg",
            "--type",
            "docker",
            "username=u",
            "password=p",
            "registry=registry.test:5000",
            "--no-verify",
        )
        got, errors = asyncio.run(_watch_all(f"unix://{daemon.socket}"))
    assert (got, errors) == (WATCHERS, {})


@pytest.mark.parametrize("name", ["max_pending_requests", "max_pending_requests_hard_limit"])
def test_the_limit_is_set_on_the_server(name: str) -> None:
    from broker.config import Settings
    from broker.rpc import server
    from broker.rpc.limits import server_options

    assert server.MAX_PENDING_CALLS >= 10 * WATCHERS
    # Soft and hard limit alike: gRPC refuses at random between the two (bare CANCELLED).
    assert dict(server_options(Settings(grpc_max_pending_calls=12345)))[f"grpc.server.{name}"] == (
        12345
    )


# -- many streams on ONE connection, a forced renewal, a stalled reader ----------------------

#: Credentials live an hour: the renewal is forced (RotateCredentials) once every stream
#: holds its first one, so no stream can open after it.
LIFETIME = 3600.0
#: Many-streams options for a client (README "Many watch streams on one connection").
MANY_STREAMS = [("grpc.http2.max_pings_without_data", 0), ("grpc.keepalive_time_ms", 30_000)]
#: A client whose HTTP/2 window only opens when it reads: a write to a stream it stopped
#: reading waits at once (a grpc.aio client otherwise buffers up to ~4 MiB unread per stream).
READ_PACED = [("grpc.http2.bdp_probe", 0), ("grpc.http2.lookahead_bytes", 1)]


@contextmanager
def _fake_daemon(tmp_path: Path, **settings: str) -> Iterator[tuple[Daemon, Any]]:
    from bench.fakeprovider import plugin_env
    from bench.fakeprovider.upstream import FakeUpstream

    env = {**plugin_env(), **{f"BROKER_{k.upper()}": v for k, v in settings.items()}}
    with (
        FakeUpstream(lifetime=LIFETIME) as upstream,
        running_daemon(tmp_path / "data", "--log-level", "warning", env=env) as daemon,
    ):
        daemon.cli(
            "connector", "register", "fake", "--type", "bench-fake",
            f"url={upstream.url}", f"token={upstream.token}",
            "--resource-type", "bench-resource", "--resource-id", "r1", "--no-verify",
        )  # fmt: skip
        yield daemon, upstream


class Watchers:
    """``n`` watch streams on one channel; per stream, the kinds and tokens received and when."""

    def __init__(self, channel: grpc.aio.Channel, n: int) -> None:
        self.stub = pb_grpc.BrokerServiceStub(channel)
        self.n = n
        self.events: list[list[tuple[str, str, float]]] = [[] for _ in range(n)]
        self.errors: dict[str, int] = {}
        self.calls: list[Any] = []

    def _count(self, kind: str, want: int) -> int:
        return sum(1 for got in self.events if sum(k == kind for k, _, _ in got) >= want)

    async def run(self, i: int, *, stop_after: int = 0) -> None:
        call = self.stub.WatchCredentials(pb.WatchCredentialsRequest(connector="fake"))
        self.calls.append(call)
        try:
            while True:
                event = await call.read()
                if event is grpc.aio.EOF:
                    return
                kind = pb.CredentialEvent.Kind.Name(event.kind).lower()
                self.events[i].append((kind, event.credential.config["token"], time.time()))
                if stop_after and len(self.events[i]) >= stop_after:
                    await asyncio.Event().wait()  # stops reading
        except grpc.aio.AioRpcError as exc:
            self.errors[exc.code().name] = self.errors.get(exc.code().name, 0) + 1

    async def renew(self) -> None:
        """Force the renewal every stream should get (a rotation, as an admin would)."""
        await self.stub.RotateCredentials(pb.RotateCredentialsRequest(connector="fake"))

    async def until(self, kind: str, count: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self._count(kind, 1) < count and time.monotonic() < deadline:
            await asyncio.sleep(0.05)


async def _one_channel(target: str, n: int) -> Watchers:
    async with grpc.aio.insecure_channel(target, options=MANY_STREAMS) as channel:
        watchers = Watchers(channel, n)
        tasks = [asyncio.create_task(watchers.run(i)) for i in range(n)]  # all at once
        try:
            await watchers.until("issued", n, 30)
            await watchers.renew()
            await watchers.until("renewed", n, 30)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    return watchers


ONE_CHANNEL = 2000


def test_thousands_of_streams_on_one_channel_all_get_issued_and_the_renewal(
    tmp_path: Path,
) -> None:
    """2,000 streams opened at once on ONE connection, through the daemon's own socket and
    relay: none cancelled, all get ``issued`` and then the forced renewal (gRPC's default
    pending-call limits cancelled 746 of them here)."""
    with _fake_daemon(tmp_path) as (daemon, upstream):
        watchers = asyncio.run(_one_channel(f"unix://{daemon.socket}", ONE_CHANNEL))
        assert upstream.mints["r1"] == 2  # one issued, one renewal: shared by every stream
    assert watchers.errors == {}
    firsts = {got[0][:2] for got in watchers.events}
    seconds = {got[1][:2] if len(got) > 1 else None for got in watchers.events}
    assert [len(firsts), len(seconds)] == [1, 1], (firsts, seconds)
    assert next(iter(firsts))[0] == "issued" and next(iter(seconds)) == ("renewed", "tok-r1-2")


async def _with_a_stalled_reader(daemon: Daemon, n: int) -> tuple[Watchers, float, list[str]]:
    target = f"unix://{daemon.socket}"
    async with grpc.aio.insecure_channel(target, options=[*MANY_STREAMS, *READ_PACED]) as ch:
        watchers = Watchers(ch, n)
        tasks = [asyncio.create_task(watchers.run(i)) for i in range(n - 1)]
        tasks.append(asyncio.create_task(watchers.run(n - 1, stop_after=1)))  # the stalled one
        try:
            await watchers.until("issued", n, 20)
            await watchers.renew()
            await watchers.until("renewed", n - 1, 20)
            renewed_by = time.time()
            # The daemon ends its side once the renewal waited 1 s for the stalled reader.
            deadline = time.monotonic() + 10
            while "watch_stalled" not in daemon.log() and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            dropped = time.time()
            stalled = watchers.calls[n - 1]
            tasks[-1].cancel()  # ... and then it reads again: what was left for it?
            await asyncio.gather(tasks[-1], return_exceptions=True)
            late: list[str] = []
            try:  # bounded: a stream never dropped would wait here for its next event
                async with asyncio.timeout(10):
                    while (event := await stalled.read()) is not grpc.aio.EOF:
                        late.append(pb.CredentialEvent.Kind.Name(event.kind).lower())
            except grpc.aio.AioRpcError as exc:
                late.append(f"{exc.code().name}: {exc.details()}")
            except TimeoutError:
                late.append("still open")
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    return watchers, dropped - renewed_by, late


def test_a_stalled_reader_never_holds_the_others_and_is_dropped_after_its_timeout(
    tmp_path: Path,
) -> None:
    n = 100
    metrics = f"127.0.0.1:{free_port()}"
    settings = {"watch_stall_timeout_seconds": "1", "metrics": metrics}
    with _fake_daemon(tmp_path, **settings) as (daemon, _upstream):
        watchers, drop_after, late = asyncio.run(_with_a_stalled_reader(daemon, n))
        log = daemon.log()
        scraped = urllib.request.urlopen(f"http://{metrics}/metrics", timeout=10).read().decode()
    assert "\nbroker_watch_streams_stalled_total 1.0\n" in scraped
    renewals = [t for got in watchers.events[:-1] for k, _, t in got if k == "renewed"]
    assert len(renewals) == n - 1
    assert max(renewals) - min(renewals) < 1.0  # all promptly, none waited for the stalled one
    assert [k for k, _, _ in watchers.events[-1]] == ["issued"]
    assert late == [
        "renewed",  # the one message that waited for it, then the documented status
        "RESOURCE_EXHAUSTED: watch stream dropped: the client read nothing for 1s "
        "(watch_stall_timeout_seconds); watch again to get the current credential",
    ]
    assert '"limit": "watch_stall_timeout_seconds"' in log
    assert drop_after < 5  # 1 s after the renewal, give or take a loaded machine


async def _three_watches(target: str) -> tuple[int, str]:
    async with grpc.aio.insecure_channel(target, options=MANY_STREAMS) as channel:
        stub = pb_grpc.BrokerServiceStub(channel)
        calls = [
            stub.WatchCredentials(pb.WatchCredentialsRequest(connector="reg")) for _ in range(2)
        ]
        for call in calls:  # both hold their credential: both streams are open
            assert (await call.read()).kind == pb.CredentialEvent.ISSUED
        third = stub.WatchCredentials(pb.WatchCredentialsRequest(connector="reg"))
        try:
            await third.read()
        except grpc.aio.AioRpcError as exc:
            return exc.code().value[0], exc.details() or ""
        finally:
            for call in calls:
                call.cancel()
    return 0, "not refused"


def test_past_watch_max_streams_a_watch_gets_resource_exhausted_naming_it(tmp_path: Path) -> None:
    env = {"BROKER_WATCH_MAX_STREAMS": "2"}
    with running_daemon(tmp_path / "data", "--log-level", "warning", env=env) as daemon:
        daemon.cli(
            "connector", "register", "reg", "--type", "docker",
            "username=u", "password=p", "registry=registry.test:5000", "--no-verify",
        )  # fmt: skip
        code, details = asyncio.run(_three_watches(f"unix://{daemon.socket}"))
        log = daemon.log()
    assert (code, details) == (
        grpc.StatusCode.RESOURCE_EXHAUSTED.value[0],
        "too many watch streams: 2 open, watch_max_streams is 2; close some or raise the setting",
    )
    assert '"event": "watch_refused"' in log and '"limit": "watch_max_streams"' in log
