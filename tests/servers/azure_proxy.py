"""An HTTP CONNECT proxy on loopback that sends named hosts to local ports.

``NAME.azurecr.io`` cannot resolve here, yet skopeo must ask the docker
helper for that very host. Go clients honour ``HTTPS_PROXY`` for every host
but loopback, so skopeo sends ``CONNECT brokeracr.azurecr.io:443`` here and
this proxy joins it to the ACR stand-in's port; TLS stays end to end (the
stand-in's certificate names the registry host). Hosts not in ``routes`` are
refused (403): nothing leaves the machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from typing import Self

START_TIMEOUT = 10.0


class ConnectProxy:
    def __init__(self, routes: dict[str, int]) -> None:
        #: "host:port" asked for -> local port it is joined to.
        self.routes = dict(routes)
        self.port = 0
        #: Every CONNECT target asked for, in order.
        self.seen: list[str] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            method, target, _ = head.split(b"\r\n", 1)[0].decode().split(" ", 2)
            self.seen.append(target)
            port = self.routes.get(target)
            if method != "CONNECT" or port is None:
                writer.write(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
                await writer.drain()
                return
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            await writer.drain()
            await asyncio.gather(
                _pipe(reader, up_writer), _pipe(up_reader, writer), return_exceptions=True
            )
        except (OSError, ValueError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()

    def start(self) -> Self:
        ready = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            self._server = loop.run_until_complete(
                asyncio.start_server(self._handle, "127.0.0.1", 0)
            )
            self.port = int(self._server.sockets[0].getsockname()[1])
            ready.set()
            loop.run_forever()
            # Tunnels still open (clients' keep-alive connections) end here, inside the loop:
            # left to the garbage collector after the loop closed, they would warn in
            # whichever test runs next.
            loop.run_until_complete(_end_tunnels())
            loop.close()

        self._thread = threading.Thread(target=run, name="connect-proxy", daemon=True)
        self._thread.start()
        if not ready.wait(START_TIMEOUT):
            raise TimeoutError("CONNECT proxy did not start")
        return self

    def stop(self) -> None:
        loop, server = self._loop, self._server
        if loop is not None and server is not None:
            loop.call_soon_threadsafe(server.close)
            loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(START_TIMEOUT)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


async def _end_tunnels() -> None:
    tunnels = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    for task in tunnels:
        task.cancel()
    await asyncio.gather(*tunnels, return_exceptions=True)
    await asyncio.sleep(0)  # the closed transports' connection_lost callbacks


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    finally:
        with contextlib.suppress(OSError):
            writer.close()
