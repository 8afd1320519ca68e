"""The gRPC relay (broker.rpc.relay): bytes both ways, flow control, ends of stream,
errors, shutdown. Real socket pairs; the test's own ends are driven through the loop."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import AsyncIterator, Callable

import pytest

from broker.rpc.relay import LoopRelay

pytestmark = pytest.mark.anyio


def _pair(
    relay: LoopRelay, closed: list[str], tag: str = "x"
) -> tuple[socket.socket, socket.socket]:
    """(client's end, server's end) with the relay in between."""
    client, client_side = socket.socketpair()
    upstream_side, server = socket.socketpair()
    for s in (client, client_side, upstream_side, server):
        s.setblocking(False)
    relay.add(client_side, upstream_side, lambda: closed.append(tag))
    return client, server


async def _wait(check: Callable[[], bool], timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(0.01)


async def _read_all(sock: socket.socket, limit: int) -> bytes:
    """Everything until end of stream (or ``limit`` bytes)."""
    loop = asyncio.get_running_loop()
    out = bytearray()
    async with asyncio.timeout(10):
        while len(out) < limit:
            chunk = await loop.sock_recv(sock, 1 << 20)
            if not chunk:
                break
            out += chunk
    return bytes(out)


@pytest.fixture
async def relay() -> AsyncIterator[LoopRelay]:
    r = LoopRelay()
    yield r
    r.close()


async def test_bytes_go_both_ways(relay: LoopRelay) -> None:
    loop = asyncio.get_running_loop()
    closed: list[str] = []
    client, server = _pair(relay, closed)
    await loop.sock_sendall(client, b"ping")
    assert await loop.sock_recv(server, 100) == b"ping"
    await loop.sock_sendall(server, b"pong")
    assert await loop.sock_recv(client, 100) == b"pong"
    assert relay.connections == 1
    client.close()
    server.close()
    await _wait(lambda: closed == ["x"])
    assert relay.connections == 0


async def test_a_slow_reader_gets_everything_in_order(relay: LoopRelay) -> None:
    """More than the socket buffers hold: the relay waits for the reader, losing nothing."""
    loop = asyncio.get_running_loop()
    closed: list[str] = []
    client, server = _pair(relay, closed)
    data = os.urandom(8 * 1024 * 1024)

    async def write() -> None:
        await loop.sock_sendall(server, data)
        server.shutdown(socket.SHUT_WR)

    writer = asyncio.create_task(write())
    await asyncio.sleep(0.3)  # the buffers are full; the relay holds back the rest
    assert not writer.done()
    assert await _read_all(client, len(data) + 1) == data
    await writer
    client.close()
    await _wait(lambda: closed == ["x"])
    server.close()


async def test_end_of_stream_is_passed_on_and_the_other_way_stays_open(
    relay: LoopRelay,
) -> None:
    loop = asyncio.get_running_loop()
    closed: list[str] = []
    client, server = _pair(relay, closed)
    await loop.sock_sendall(client, b"request")
    client.shutdown(socket.SHUT_WR)
    assert await _read_all(server, 100) == b"request"  # then end of stream
    await loop.sock_sendall(server, b"answer")
    server.shutdown(socket.SHUT_WR)
    assert await _read_all(client, 100) == b"answer"
    await _wait(lambda: closed == ["x"])  # both ways ended: closed
    client.close()
    server.close()


async def test_gone_server_is_an_end_of_stream_then_a_closed_connection(
    relay: LoopRelay,
) -> None:
    closed: list[str] = []
    client, server = _pair(relay, closed)
    server.close()
    assert await _read_all(client, 10) == b""
    assert closed == []  # half-closed, as a socket would be, until the client answers
    client.close()
    await _wait(lambda: closed == ["x"])


async def test_writing_to_a_gone_server_closes_the_connection(relay: LoopRelay) -> None:
    loop = asyncio.get_running_loop()
    closed: list[str] = []
    client, server = _pair(relay, closed)
    server.close()
    assert await _read_all(client, 10) == b""
    await loop.sock_sendall(client, b"anyone?")  # EPIPE for the relay: closed at once
    await _wait(lambda: closed == ["x"])
    client.close()


async def test_close_ends_every_connection(relay: LoopRelay) -> None:
    closed: list[str] = []
    pairs = [_pair(relay, closed, str(i)) for i in range(20)]
    relay.close()
    assert sorted(closed, key=int) == [str(i) for i in range(20)]
    for client, server in pairs:
        assert await _read_all(client, 10) == b""
        assert await _read_all(server, 10) == b""
        client.close()
        server.close()
    late: list[str] = []
    a, b = socket.socketpair()
    relay.add(a, b, lambda: late.append("late"))  # after close: closed at once
    assert late == ["late"] and a.fileno() == -1
