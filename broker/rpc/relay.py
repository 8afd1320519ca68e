"""Byte relays between the public gRPC socket's connections and gRPC's private socket.

Each relayed connection is a pair of non-blocking sockets. When one is
readable, what it has is read into one shared buffer (``recv_into``) and sent
on to the other at once; only what the other cannot take right now is kept,
and its source is not read again until that is written out (flow control: a
slow reader makes the writer wait in its kernel buffer, nothing piles up
here). An end of stream is passed on as ``shutdown(SHUT_WR)``; a connection
is closed once both directions ended, or at the first error on either side,
and its ``on_close`` callback runs.

Two drivers share that logic (:class:`Copier`):

* :class:`LoopRelay`, what the daemon uses: plain reader callbacks on the
  event loop's own selector, no transport or protocol objects, so a chunk
  costs one callback, one ``recv_into`` and one ``send``;
* ``RelayThread`` (``bench/fakeprovider/relays.py``, measured, not shipped): the
  same in a thread of its own waiting in ``epoll``, off the event loop.

``bench/bench_relay.py`` measures them, and the design before (two asyncio
protocols per connection, ``bench/fakeprovider/relays.py``), in the daemon.
Every design pays the same floor, two wake-ups and six system calls per
call, and on a 2-CPU machine a separate thread adds GIL hand-overs to that,
so the loop driver is the one shipped.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import select
import socket
from collections.abc import Callable
from typing import Protocol

import structlog

log = structlog.get_logger(__name__)

#: Bytes read per wake-up and direction (one gRPC frame batch fits several times).
CHUNK = 256 * 1024

_IN = select.EPOLLIN
_OUT = select.EPOLLOUT


class Relay(Protocol):
    """What the acceptor needs of a relay."""

    def add(
        self, client: socket.socket, upstream: socket.socket, on_close: Callable[[], None]
    ) -> None: ...

    def close(self) -> None: ...


class Pair:
    """One relayed connection: side 0 is the client, side 1 gRPC's end."""

    __slots__ = ("closed", "fds", "masks", "on_close", "pending", "reading", "socks")

    def __init__(
        self, client: socket.socket, upstream: socket.socket, on_close: Callable[[], None]
    ) -> None:
        self.socks = (client, upstream)
        self.fds = (client.fileno(), upstream.fileno())
        #: Bytes read from the other side that ``socks[i]`` has not taken yet.
        self.pending: list[bytes] = [b"", b""]
        #: Whether ``socks[i]`` may still send us something.
        self.reading = [True, True]
        #: What is watched on each side (_IN / _OUT; None: nothing, not even hang-ups).
        self.masks: list[int | None] = [_IN, _IN]
        self.on_close = on_close
        self.closed = False


class Copier(abc.ABC):
    """The copying and its bookkeeping. A driver calls :meth:`_forward` when a side is
    readable and :meth:`_flush` when it is writable, and watches what :meth:`_watch`
    asks for."""

    def __init__(self) -> None:
        self._pairs: set[Pair] = set()
        self._buffer = bytearray(CHUNK)
        self._view = memoryview(self._buffer)

    @property
    def connections(self) -> int:
        return len(self._pairs)

    @abc.abstractmethod
    def _watch(self, pair: Pair, side: int, old: int | None, new: int) -> None:
        """Watch ``pair.socks[side]`` for ``new`` (_IN / _OUT) instead of ``old``."""

    @abc.abstractmethod
    def _unwatch(self, pair: Pair) -> None:
        """Stop watching both sockets of ``pair`` (it is being closed)."""

    def _forward(self, pair: Pair, side: int) -> None:
        """``socks[side]`` is readable: pass what it has to the other side."""
        other = 1 - side
        try:
            n = pair.socks[side].recv_into(self._buffer)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close(pair)
            return
        if n == 0:  # end of stream: pass it on once everything before it is written
            pair.reading[side] = False
            if not pair.pending[other]:
                self._end(pair, other)
            self._update(pair, side)
            return
        try:
            sent = pair.socks[other].send(self._view[:n])
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            self._close(pair)
            return
        if sent < n:
            pair.pending[other] = bytes(self._view[sent:n])
            self._update(pair, side)
            self._update(pair, other)

    def _flush(self, pair: Pair, side: int) -> None:
        """``socks[side]`` can take more: write what waits for it."""
        data = pair.pending[side]
        if not data:
            return
        try:
            sent = pair.socks[side].send(data)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close(pair)
            return
        pair.pending[side] = data[sent:]
        if pair.pending[side]:
            return
        source = 1 - side
        if not pair.reading[source]:
            self._end(pair, side)
            if pair.closed:
                return
        self._update(pair, side)
        self._update(pair, source)

    def _end(self, pair: Pair, side: int) -> None:
        """No more bytes for ``socks[side]``: tell it; once both ways ended, close."""
        with contextlib.suppress(OSError):
            pair.socks[side].shutdown(socket.SHUT_WR)
        if not pair.reading[0] and not pair.reading[1]:
            self._close(pair)

    def _update(self, pair: Pair, side: int) -> None:
        if pair.closed:
            return
        other = 1 - side
        mask = (_IN if pair.reading[side] and not pair.pending[other] else 0) | (
            _OUT if pair.pending[side] else 0
        )
        old = pair.masks[side]
        if mask != old:
            pair.masks[side] = mask
            try:
                self._watch(pair, side, old, mask)
            except (OSError, ValueError):
                self._close(pair)

    def _close(self, pair: Pair) -> None:
        if pair.closed:
            return
        pair.closed = True
        self._pairs.discard(pair)
        self._unwatch(pair)
        for sock in pair.socks:
            sock.close()
        try:
            pair.on_close()
        except Exception:
            log.exception("grpc_relay_close_callback_failed")

    def _close_all(self) -> None:
        for pair in list(self._pairs):
            self._close(pair)


class LoopRelay(Copier):
    """Relays on the running event loop, with reader / writer callbacks on the raw sockets."""

    def __init__(self) -> None:
        super().__init__()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False

    def add(
        self, client: socket.socket, upstream: socket.socket, on_close: Callable[[], None]
    ) -> None:
        """Relay between two connected non-blocking sockets; the relay owns (closes) them.
        Call from the event loop."""
        pair = Pair(client, upstream, on_close)
        if self._closed:
            self._close(pair)
            return
        loop = self._loop = self._loop or asyncio.get_running_loop()
        self._pairs.add(pair)
        for side in (0, 1):
            loop.add_reader(pair.fds[side], self._forward, pair, side)

    def close(self) -> None:
        """Close every relayed connection; later ones are closed as they come."""
        self._closed = True
        self._close_all()

    def _watch(self, pair: Pair, side: int, old: int | None, new: int) -> None:
        assert self._loop is not None
        fd = pair.fds[side]
        old = old or 0
        if (old ^ new) & _IN:
            if new & _IN:
                self._loop.add_reader(fd, self._forward, pair, side)
            else:
                self._loop.remove_reader(fd)
        if (old ^ new) & _OUT:
            if new & _OUT:
                self._loop.add_writer(fd, self._flush, pair, side)
            else:
                self._loop.remove_writer(fd)

    def _unwatch(self, pair: Pair) -> None:
        if self._loop is None or self._loop.is_closed():
            return
        for side in (0, 1):
            mask = pair.masks[side] or 0
            if mask & _IN:
                self._loop.remove_reader(pair.fds[side])
            if mask & _OUT:
                self._loop.remove_writer(pair.fds[side])
