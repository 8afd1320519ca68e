"""Peer credentials for gRPC on a Unix socket, which grpcio does not expose.

grpcio reports a Unix peer as plain ``unix:`` (grpc/grpc#15511), so the
daemon accepts the public socket itself: for each connection it reads
``SO_PEERCRED`` / ``SO_PEERGROUPS``, opens a connection to the gRPC server's
private socket (in a 0700 directory only the daemon's user can enter) from a
socket bound to a unique abstract name, and relays bytes both ways. gRPC
then reports that name as the peer (``unix-abstract:NAME``), which maps back
to the principal. The bytes are copied by reader callbacks on the event loop
itself (:mod:`broker.rpc.relay`: no transports, no thread; the designs are
compared in ``bench/bench_relay.py``).

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
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import structlog

from broker.descriptors import AcceptLoop, is_resource_error
from broker.errors import Unauthenticated
from broker.identity.cgroups import boot_ticks
from broker.identity.peercred import peer_principal
from broker.identity.principal import Principal
from broker.logs import RateLimitedLog
from broker.rpc.relay import LoopRelay, Relay

if TYPE_CHECKING:
    from broker.identity.attestors.attestation import Attestation

log = structlog.get_logger(__name__)
#: One line per failed connection set-up, at most 5 per 10 s, then a summary.
_failures = RateLimitedLog(log, burst=5, window=10.0)

ABSTRACT_PEER_PREFIX = "unix-abstract:"


class _Setup:
    """One accepted connection until it is relayed: identify the caller, connect upstream."""

    def __init__(self, acceptor: PeerAcceptor, conn: socket.socket) -> None:
        self.acceptor = acceptor
        self.conn = conn

    async def run(self) -> None:
        conn = self.conn
        up = None
        name = None
        try:
            principal = peer_principal(conn, via="grpc unix socket")
            refusal = None
            if self.acceptor.attestation is not None:  # workload attestation: once per connection
                try:
                    principal = await self.acceptor.attestation.principal(
                        principal, started_by=boot_ticks()
                    )
                except Unauthenticated as exc:  # said to each call, not a dropped connection
                    refusal = exc.message
            name = self.acceptor.next_name()
            up = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            up.bind("\0" + name)
            up.setblocking(False)
            try:
                up.connect(str(self.acceptor.private_path))
            except BlockingIOError:  # gRPC's backlog is full: wait for it
                await asyncio.get_running_loop().sock_connect(up, str(self.acceptor.private_path))
            if refusal is None:
                self.acceptor.peers[name] = principal
            else:
                self.acceptor.refused[name] = refusal
            relay = self.acceptor.relay
            assert relay is not None
            relay.add(conn, up, lambda: self.acceptor.forget(name))
        except BaseException as exc:  # one bad connection never hurts the daemon
            conn.close()
            if up is not None:
                up.close()
            if name is not None:
                self.acceptor.forget(name)
            if not isinstance(exc, Exception):
                raise  # cancelled: the acceptor is closing
            _failures.warning("grpc_accept_failed", error=str(exc))
            if is_resource_error(exc) and self.acceptor.listener is not None:
                self.acceptor.listener.pause(exc)  # out of descriptors: let some close first


class PeerAcceptor:
    """Accepts the public gRPC Unix socket and relays to gRPC's private one."""

    def __init__(
        self,
        attestation: Attestation | None = None,
        relay: Callable[[], Relay] = LoopRelay,
    ) -> None:
        self._dir = Path(tempfile.mkdtemp(prefix="cb-"))  # 0700, short (socket paths ≤ 107)
        self.private_path = self._dir / "grpc.sock"
        self.attestation = attestation
        self.peers: dict[str, Principal] = {}
        #: Connections whose caller could not be attested: why, for each of their calls.
        self.refused: dict[str, str] = {}
        self.tasks: set[asyncio.Task[None]] = set()
        self.listener: AcceptLoop | None = None
        #: Copies the bytes of every connection (made by start()).
        self.relay: Relay | None = None
        self._relay_factory = relay  # bench/bench_relay.py measures other designs through it
        self._counter = itertools.count()
        self._prefix = f"credential-broker-{os.getpid()}-{os.urandom(4).hex()}-"

    @property
    def grpc_target(self) -> str:
        return f"unix://{self.private_path}"

    def next_name(self) -> str:
        return f"{self._prefix}{next(self._counter)}"

    def forget(self, name: str) -> None:
        """A relayed connection closed: its name no longer maps to a caller."""
        self.peers.pop(name, None)
        self.refused.pop(name, None)

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
        self.relay = self._relay_factory()
        self.listener = AcceptLoop(listener, self._accepted, name="grpc")
        await self.listener.start_serving()

    def _accepted(self, conn: socket.socket) -> None:
        task = asyncio.get_running_loop().create_task(_Setup(self, conn).run())
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def stop_accepting(self) -> None:
        if self.listener is not None:
            self.listener.close()

    async def close(self) -> None:
        await self.stop_accepting()
        for task in list(self.tasks):
            task.cancel()
        if self.relay is not None:
            self.relay.close()  # closes every relayed connection
        with contextlib.suppress(OSError):
            shutil.rmtree(self._dir)
