"""Thousands of watch streams opened at once are all served.

gRPC core holds new calls until the server's handler loop takes them, and by
default refuses to hold more than 3,000: with grpc.aio, every watch past
about 2,800 then waited forever. The daemon raises that limit
(``broker.rpc.server.MAX_PENDING_CALLS``).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest

from broker.api.v1 import broker_pb2 as pb
from broker.api.v1 import broker_pb2_grpc as pb_grpc
from tests.daemon import running_daemon

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
    from broker.rpc import server

    assert server.MAX_PENDING_CALLS >= 10 * WATCHERS
    assert f"grpc.server.{name}" in Path(server.__file__).read_text()
