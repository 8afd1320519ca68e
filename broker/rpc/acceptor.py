"""Peer credentials for gRPC on a Unix socket, which grpcio does not expose.

grpcio reports a Unix peer as plain ``unix:`` (grpc/grpc#15511), so the
daemon accepts the public socket itself: for each connection it reads
``SO_PEERCRED`` / ``SO_PEERGROUPS``, opens a connection to the gRPC server's
private socket (in a 0700 directory only the daemon's user can enter) from a
socket bound to a unique abstract name, and relays bytes both ways. gRPC
then reports that name as the peer (``unix-abstract:NAME``), which maps back
to the principal. A relay is two asyncio protocols writing into each other's
transport, with flow control passed across, so it adds no task per message.

With workload attestation on (``[attestors]``), the relay attests the caller
before connecting upstream, once per connection; a caller that cannot be
attested (its process gone) gets UNAUTHENTICATED with the reason on each call.

The public socket is accepted by :class:`broker.descriptors.AcceptLoop`: when
descriptors run out (accept() fails with EMFILE, or the upstream socket
cannot be made) it stops accepting and retries after a growing delay, and
says so in a rate-limited log line, never a traceback per attempt.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import shutil
import socket
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import structlog

from broker.descriptors import AcceptLoop, Connections, is_resource_error
from broker.errors import Unauthenticated
from broker.identity.cgroups import boot_ticks
from broker.identity.peercred import peer_principal
from broker.identity.principal import Principal
from broker.logs import RateLimitedLog

if TYPE_CHECKING:
    from broker.identity.attestors.attestation import Attestation

log = structlog.get_logger(__name__)
#: One line per failed connection set-up, at most 5 per 10 s, then a summary.
_failures = RateLimitedLog(log, burst=5, window=10.0)

ABSTRACT_PEER_PREFIX = "unix-abstract:"


class _Half(asyncio.Protocol):
    """One side of a relay: what it reads goes to ``other``'s transport."""

    def __init__(self, relay: _Relay) -> None:
        self.relay = relay
        self.transport: asyncio.Transport | None = None
        self.other: _Half | None = None
        self.pending: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        other = self.other
        if other is not None and other.transport is not None:
            other.transport.write(data)
        else:
            self.pending.append(data)

    def eof_received(self) -> bool:
        other = self.other
        if other is not None and other.transport is not None and other.transport.can_write_eof():
            other.transport.write_eof()
        return True  # keep our write side open until the other half closes it

    def connection_lost(self, exc: Exception | None) -> None:
        self.relay.close()

    def pause_writing(self) -> None:
        if self.other is not None and self.other.transport is not None:
            self.other.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.other is not None and self.other.transport is not None:
            self.other.transport.resume_reading()


class _Relay:
    def __init__(self, acceptor: PeerAcceptor) -> None:
        self.acceptor = acceptor
        self.client = _Half(self)
        self.upstream = _Half(self)
        self.name: str | None = None
        self.closed = False

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for half in (self.client, self.upstream):
            if half.transport is not None:
                half.transport.close()
        if self.name is not None:
            self.acceptor.peers.pop(self.name, None)
            self.acceptor.refused.pop(self.name, None)
        self.acceptor.relays.discard(self)

    async def start(self) -> None:
        """Runs once the client connected: identify it, then connect upstream."""
        client = self.client.transport
        assert client is not None
        client.pause_reading()
        try:
            sock = client.get_extra_info("socket")
            principal = peer_principal(sock, via="grpc unix socket")
            refusal = None
            if self.acceptor.attestation is not None:  # workload attestation: once per connection
                try:
                    principal = await self.acceptor.attestation.principal(
                        principal, started_by=boot_ticks()
                    )
                except Unauthenticated as exc:  # said to each call, not a dropped connection
                    refusal = exc.message
                if self.closed:  # the client hung up meanwhile
                    return
            name = self.acceptor.next_name()
            up = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                up.bind("\0" + name)
                up.setblocking(False)
                loop = asyncio.get_running_loop()
                await loop.sock_connect(up, str(self.acceptor.private_path))
            except BaseException:
                up.close()
                raise
            self.name = name
            if refusal is None:
                self.acceptor.peers[name] = principal
            else:
                self.acceptor.refused[name] = refusal
            await loop.create_unix_connection(lambda: self.upstream, sock=up)
        except Exception as exc:  # one bad connection never hurts the daemon
            _failures.warning("grpc_accept_failed", error=str(exc))
            if is_resource_error(exc) and self.acceptor.listener is not None:
                self.acceptor.listener.pause(exc)  # out of descriptors: let some close first
            self.close()
            return
        if self.closed:
            return
        self.client.other, self.upstream.other = self.upstream, self.client
        for data in self.client.pending:
            self.upstream.transport.write(data)  # type: ignore[union-attr]
        self.client.pending.clear()
        client.resume_reading()


class _ClientSide(_Half):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        task = asyncio.get_running_loop().create_task(self.relay.start())
        self.relay.acceptor.tasks.add(task)
        task.add_done_callback(self.relay.acceptor.tasks.discard)


class PeerAcceptor:
    """Accepts the public gRPC Unix socket and relays to gRPC's private one."""

    def __init__(self, attestation: Attestation | None = None) -> None:
        self._dir = Path(tempfile.mkdtemp(prefix="cb-"))  # 0700, short (socket paths ≤ 107)
        self.private_path = self._dir / "grpc.sock"
        self.attestation = attestation
        self.peers: dict[str, Principal] = {}
        #: Connections whose caller could not be attested: why, for each of their calls.
        self.refused: dict[str, str] = {}
        self.tasks: set[asyncio.Task[None]] = set()
        self.listener: AcceptLoop | None = None
        self._connections = Connections()
        self.relays: set[_Relay] = set()
        self._counter = itertools.count()
        self._prefix = f"credential-broker-{os.getpid()}-{os.urandom(4).hex()}-"

    @property
    def grpc_target(self) -> str:
        return f"unix://{self.private_path}"

    def next_name(self) -> str:
        return f"{self._prefix}{next(self._counter)}"

    def principal(self, peer: str) -> Principal | None:
        """The caller behind gRPC's ``context.peer()``, if it came through this acceptor."""
        if peer.startswith(ABSTRACT_PEER_PREFIX):
            name = peer[len(ABSTRACT_PEER_PREFIX) :]
            found = self.peers.get(name)
            if found is None and name in self.refused:
                raise Unauthenticated(self.refused[name])
            return found
        return None

    async def start(self, listener: socket.socket) -> None:
        def factory() -> _Half:
            relay = _Relay(self)
            relay.client = _ClientSide(relay)
            self.relays.add(relay)
            return relay.client

        def failed(exc: BaseException) -> None:
            _failures.warning("grpc_accept_failed", error=str(exc))

        self.listener = AcceptLoop(
            listener,
            lambda conn: self._connections.start(conn, factory, failed),
            name="grpc",
        )
        await self.listener.start_serving()

    async def stop_accepting(self) -> None:
        if self.listener is not None:
            self.listener.close()

    async def close(self) -> None:
        await self.stop_accepting()
        for relay in list(self.relays):
            relay.close()
        self.relays.clear()
        for task in list(self.tasks):
            task.cancel()
        self._connections.cancel()
        with contextlib.suppress(OSError):
            shutil.rmtree(self._dir)
