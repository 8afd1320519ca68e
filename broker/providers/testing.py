"""Test helpers for providers: an in-process HTTP transport (httpx's ``MockTransport`` idea).

A provider talks HTTP through the :class:`~broker.providers.http.Transport`
of its ``ProviderContext``. :class:`InProcessTransport` answers every
request with an aiohttp :class:`~aiohttp.web.Application` running in the
same event loop, over an in-memory byte pipe: no socket, port, TLS
certificate or thread. The provider's own code runs unchanged (URLs, headers,
TLS settings are built as for the network; only the bytes go elsewhere),
and every request is recorded, so a test can say "exactly one attempt".

    app = web.Application()
    app.router.add_get("/version", version)
    async with InProcessTransport(app) as transport:
        provider = KubernetesProvider(ProviderContext(transport=transport))
        await provider.discover(connector, "kubernetes-cluster", None)
    assert transport.count("/version") == 1

AWS clients reach it too: :class:`broker.providers.aws.session.AwsClients`
runs aiobotocore's HTTP over a non-network transport. TLS is not simulated: an
``https://`` URL reaches the application as if the handshake succeeded.
A request for a host outside ``hosts`` (when given) fails as a refused
connection would.
"""

from __future__ import annotations

import asyncio
import errno
from collections.abc import Collection
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import aiohttp
from aiohttp import web
from aiohttp.client_proto import ResponseHandler

from broker.providers.http import Transport

__all__ = ["InProcessTransport", "Sent"]


@dataclass(frozen=True)
class Sent:
    """One request the transport carried: method, host (``host[:port]``), path, and the
    proxy the client chose for it (the request itself still reaches the application)."""

    method: str
    host: str
    path: str
    proxy: str | None = None


class InProcessTransport(Transport):
    """Hands every connection to ``app`` in this process (see the module docstring)."""

    network = False

    def __init__(self, app: web.Application, *, hosts: Collection[str] | None = None) -> None:
        self._app = app
        self._hosts = None if hosts is None else frozenset(h.lower() for h in hosts)
        self._runner: web.AppRunner | None = None
        self._lock = asyncio.Lock()
        #: Every request carried, in order.
        self.sent: list[Sent] = []

    def connector(self, ssl: Any) -> aiohttp.BaseConnector:
        return _InProcessConnector(self)

    def count(self, path: str | None = None, method: str | None = None) -> int:
        """How many requests were carried (for ``path`` / ``method`` only, when given)."""
        return sum(
            1
            for s in self.sent
            if (path is None or s.path == path) and (method is None or s.method == method)
        )

    async def aclose(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> InProcessTransport:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def _server(self) -> web.Server:
        async with self._lock:
            if self._runner is None:
                runner = web.AppRunner(self._app, handle_signals=False, access_log=None)
                await runner.setup()
                self._runner = runner
            server = self._runner.server
            assert server is not None
            return server

    def _reachable(self, host: str) -> bool:
        return self._hosts is None or host.lower() in self._hosts


class _InProcessConnector(aiohttp.BaseConnector):
    """One fresh in-memory connection per request (no keep-alive to reason about)."""

    def __init__(self, transport: InProcessTransport) -> None:
        super().__init__(force_close=True)
        self._transport = transport

    async def _create_connection(
        self,
        req: Any,
        traces: Any,
        timeout: aiohttp.ClientTimeout,  # noqa: ASYNC109 (aiohttp's signature)
    ) -> ResponseHandler:
        url = req.url
        host = url.host or ""
        authority = host if url.is_default_port() else f"{host}:{url.port}"
        if not self._transport._reachable(host) and not self._transport._reachable(authority):
            refused = ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused")
            raise aiohttp.ClientConnectorError(req.connection_key, refused)
        proxy = str(req.proxy) if req.proxy is not None else None
        self._transport.sent.append(Sent(req.method, authority, url.path, proxy))
        server = await self._transport._server()
        loop = asyncio.get_running_loop()
        client = ResponseHandler(loop)
        handler = server()
        near = _Pipe(loop, client, {"peername": (host, url.port)})
        far = _Pipe(loop, handler, {"peername": ("127.0.0.1", 0), "sockname": (host, url.port)})
        near.peer, far.peer = far, near
        handler.connection_made(far)
        client.connection_made(near)
        return client


class _Pipe(asyncio.Transport):
    """One end of an in-memory connection: what is written arrives at the peer's protocol."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, protocol: asyncio.BaseProtocol, extra: dict[str, Any]
    ) -> None:
        super().__init__(extra)
        self._loop = loop
        self._protocol = protocol
        self._closing = False
        self.peer: _Pipe | None = None

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._protocol

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._protocol = protocol

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not self._closing and self.peer is not None:
            self._loop.call_soon(self.peer._receive, bytes(data))

    def writelines(self, list_of_data: Any) -> None:
        self.write(b"".join(bytes(d) for d in list_of_data))

    def _receive(self, data: bytes) -> None:
        if not self._closing:
            protocol = self._protocol
            assert isinstance(protocol, asyncio.Protocol)
            protocol.data_received(data)

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        self._loop.call_soon(self._protocol.connection_lost, None)
        if self.peer is not None:
            self._loop.call_soon(self.peer._hang_up)

    def _hang_up(self) -> None:
        if not self._closing:
            self._closing = True
            self._protocol.connection_lost(None)

    def abort(self) -> None:
        self.close()

    def is_closing(self) -> bool:
        return self._closing

    def can_write_eof(self) -> bool:
        return False

    def write_eof(self) -> None:
        self.close()

    def pause_reading(self) -> None:
        """Flow control is not simulated: everything is in memory already."""

    def resume_reading(self) -> None:
        """See :meth:`pause_reading`."""

    def is_reading(self) -> bool:
        return not self._closing

    def get_write_buffer_size(self) -> int:
        return 0

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        """See :meth:`pause_reading`."""
