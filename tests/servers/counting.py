"""A loopback HTTP server that only counts: every TCP connection and every request.

It proves that nothing reached a host. Connections are counted as they are
accepted, before any byte is read, so a TLS handshake attempt that never
becomes an HTTP request still counts. It answers like a registry with basic
auth that accepts any password: ``/v2/`` says 401 with a Basic challenge
without credentials and 200 with them.
"""

from __future__ import annotations

import asyncio
import threading

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from tests.servers.threaded import ThreadedAiohttpServer


class CountingServer(ThreadedAiohttpServer):
    """Start with :meth:`start` or as a context manager; read :attr:`connections`."""

    thread_name = "counting server"

    def __init__(self) -> None:
        self.port = 0
        self._lock = threading.Lock()
        self._connections = 0
        self._requests: list[str] = []

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def connections(self) -> int:
        with self._lock:
            return self._connections

    @property
    def requests(self) -> list[str]:
        """``METHOD path`` of every HTTP request seen, in order."""
        with self._lock:
            return list(self._requests)

    async def _serve(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._answer)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        server = runner.server
        assert server is not None
        accepted = server.connection_made

        def counted(handler: RequestHandler, transport: asyncio.Transport) -> None:
            with self._lock:
                self._connections += 1
            accepted(handler, transport)

        server.connection_made = counted  # type: ignore[method-assign]
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        self._runner = runner
        self.port = int(runner.addresses[0][1])

    async def _answer(self, request: web.Request) -> web.Response:
        with self._lock:
            self._requests.append(f"{request.method} {request.path}")
        if "Authorization" not in request.headers:
            return web.Response(status=401, headers={"WWW-Authenticate": 'Basic realm="counting"'})
        return web.json_response({})
