"""Other designs of the gRPC peer-credential relay, measured against the daemon's own
(:class:`broker.rpc.relay.LoopRelay`) by ``bench/bench_relay.py``.

* :class:`AsyncioRelay`: the design before, two asyncio protocols per connection
  writing into each other's transport, in the event loop grpc.aio runs in;
* :class:`RelayThread`: the daemon's copying (:class:`broker.rpc.relay.Copier`)
  in a thread of its own waiting in ``epoll``, off the event loop;
* :class:`SpliceRelay`: the relay thread, copying with ``os.splice`` through a
  pipe per direction (the bytes never enter user space; four more descriptors
  per connection);
* :class:`HeldGilRelay`: the relay thread calling recv/send through ctypes
  without releasing the GIL around them.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import select
import socket
import threading
from collections.abc import Callable

import structlog

from broker.rpc.relay import CHUNK, Copier, LoopRelay, Pair, Relay

log = structlog.get_logger(__name__)

_SPLICE = os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK


class _Half(asyncio.Protocol):
    def __init__(self, relay: _AsyncioPair) -> None:
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
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.relay.close()

    def pause_writing(self) -> None:
        if self.other is not None and self.other.transport is not None:
            self.other.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.other is not None and self.other.transport is not None:
            self.other.transport.resume_reading()


class _AsyncioPair:
    def __init__(self, owner: AsyncioRelay, on_close: Callable[[], None]) -> None:
        self.owner = owner
        self.on_close = on_close
        self.client = _Half(self)
        self.upstream = _Half(self)
        self.closed = False

    async def start(self, client: socket.socket, upstream: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        await loop.connect_accepted_socket(lambda: self.client, client)
        await loop.create_unix_connection(lambda: self.upstream, sock=upstream)
        self.client.other, self.upstream.other = self.upstream, self.client
        for data in self.client.pending:
            self.upstream.transport.write(data)  # type: ignore[union-attr]
        self.client.pending.clear()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for half in (self.client, self.upstream):
            if half.transport is not None:
                half.transport.close()
        self.owner.pairs.discard(self)
        self.on_close()


class AsyncioRelay:
    """The previous design: the relay's protocols run in the event loop itself."""

    def __init__(self) -> None:
        self.pairs: set[_AsyncioPair] = set()
        self.tasks: set[asyncio.Task[None]] = set()

    def add(
        self, client: socket.socket, upstream: socket.socket, on_close: Callable[[], None]
    ) -> None:
        pair = _AsyncioPair(self, on_close)
        self.pairs.add(pair)
        task = asyncio.get_running_loop().create_task(pair.start(client, upstream))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def close(self) -> None:
        for pair in list(self.pairs):
            pair.close()


class RelayThread(Copier):
    """Relays any number of socket pairs in one daemon thread; ``close()`` ends them all.

    ``on_close`` callbacks run in that thread: they must be thread-safe (a
    ``dict.pop`` is).
    """

    def __init__(self, name: str = "grpc-relay") -> None:
        super().__init__()
        self._epoll = select.epoll()
        self._wake = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._epoll.register(self._wake, select.EPOLLIN)
        self._by_fd: dict[int, tuple[Pair, int]] = {}
        self._incoming: collections.deque[Pair | None] = collections.deque()
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def add(
        self, client: socket.socket, upstream: socket.socket, on_close: Callable[[], None]
    ) -> None:
        """Relay between two connected non-blocking sockets; the relay owns (closes) them."""
        pair = self._pair(client, upstream, on_close)
        if self._stopped:
            pair.closed = True
            client.close()
            upstream.close()
            on_close()
            return
        self._incoming.append(pair)
        os.eventfd_write(self._wake, 1)

    def _pair(
        self, client: socket.socket, upstream: socket.socket, on_close: Callable[[], None]
    ) -> Pair:
        return Pair(client, upstream, on_close)

    def close(self, timeout: float = 5.0) -> None:
        """Close every relayed connection and stop the thread."""
        if not self._stopped:
            self._stopped = True
            self._incoming.append(None)
            with contextlib.suppress(OSError):
                os.eventfd_write(self._wake, 1)
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    def _run(self) -> None:
        try:
            while self._loop_once():
                pass
        except Exception:  # never expected; the connections end, the daemon keeps running
            log.exception("grpc_relay_failed")
        finally:
            self._close_all()
            for pair in self._incoming:
                if pair is not None:
                    self._close(pair)
            self._epoll.close()
            os.close(self._wake)

    def _loop_once(self) -> bool:
        by_fd = self._by_fd
        for fd, events in self._epoll.poll():
            if fd == self._wake:
                if not self._take_incoming():
                    return False
                continue
            found = by_fd.get(fd)
            if found is None:
                continue
            pair, side = found
            if events & select.EPOLLOUT:
                self._flush(pair, side)
            if pair.closed:
                continue
            if events & select.EPOLLIN:
                self._forward(pair, side)
            elif events & select.EPOLLERR:
                self._close(pair)
            elif events & select.EPOLLHUP:
                self._hung_up(pair, side)
        return True

    def _take_incoming(self) -> bool:
        with contextlib.suppress(BlockingIOError):
            os.eventfd_read(self._wake)
        while self._incoming:
            pair = self._incoming.popleft()
            if pair is None:
                return False
            self._pairs.add(pair)
            for side in (0, 1):
                self._by_fd[pair.fds[side]] = (pair, side)
            try:
                for side in (0, 1):
                    self._epoll.register(pair.fds[side], select.EPOLLIN)
            except OSError:
                self._close(pair)
        return True

    def _hung_up(self, pair: Pair, side: int) -> None:
        """``socks[side]``'s peer closed while we were not reading it (its bytes wait for
        the other side): park it until they are written, then read what it left."""
        if pair.pending[1 - side] and not pair.pending[side]:
            pair.masks[side] = None  # epoll reports a hang-up whatever the mask: unregister
            with contextlib.suppress(OSError):
                self._epoll.unregister(pair.fds[side])
        else:
            self._close(pair)

    def _watch(self, pair: Pair, side: int, old: int | None, new: int) -> None:
        if old is None:
            self._epoll.register(pair.fds[side], new)
        else:
            self._epoll.modify(pair.fds[side], new)

    def _unwatch(self, pair: Pair) -> None:
        for side in (0, 1):
            fd = pair.fds[side]
            if self._by_fd.get(fd, (None,))[0] is pair:
                del self._by_fd[fd]
                if pair.masks[side] is not None:
                    with contextlib.suppress(OSError, ValueError):
                        self._epoll.unregister(fd)


class SpliceRelay(RelayThread):
    """The relay thread copying with splice(2): socket -> pipe -> socket, in the kernel.

    ``pending[i]`` is the number of bytes waiting in the pipe towards side i.
    """

    def __init__(self) -> None:
        self._pipes: dict[Pair, tuple[tuple[int, int], tuple[int, int]]] = {}
        super().__init__(name="grpc-relay-splice")

    def _pair(
        self, client: socket.socket, upstream: socket.socket, on_close: Callable[[], None]
    ) -> Pair:
        pipes = (os.pipe2(os.O_NONBLOCK), os.pipe2(os.O_NONBLOCK))  # towards client, upstream

        def closed() -> None:
            for r, w in pipes:
                os.close(r)
                os.close(w)
            on_close()

        pair = Pair(client, upstream, closed)
        self._pipes[pair] = pipes
        return pair

    def _forward(self, pair: Pair, side: int) -> None:
        other = 1 - side
        r, w = self._pipes[pair][other]
        try:
            n = os.splice(pair.fds[side], w, CHUNK, flags=_SPLICE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close(pair)
            return
        if n == 0:
            pair.reading[side] = False
            if not pair.pending[other]:
                self._end(pair, other)
            self._update(pair, side)
            return
        try:
            sent = os.splice(r, pair.fds[other], n, flags=_SPLICE)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            self._close(pair)
            return
        if sent < n:
            pair.pending[other] = n - sent  # type: ignore[call-overload]
            self._update(pair, side)
            self._update(pair, other)

    def _flush(self, pair: Pair, side: int) -> None:
        left: int = pair.pending[side]  # type: ignore[assignment]
        if not left:
            return
        r, _ = self._pipes[pair][side]
        try:
            sent = os.splice(r, pair.fds[side], left, flags=_SPLICE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close(pair)
            return
        pair.pending[side] = left - sent  # type: ignore[call-overload]
        if pair.pending[side]:
            return
        source = 1 - side
        if not pair.reading[source]:
            self._end(pair, side)
            if pair.closed:
                return
        self._update(pair, side)
        self._update(pair, source)

    def _close(self, pair: Pair) -> None:
        self._pipes.pop(pair, None)
        with contextlib.suppress(Exception):
            super()._close(pair)


class HeldGilRelay(RelayThread):
    """The relay thread calling recv(2) / send(2) through ``ctypes.PyDLL``, which keeps
    the GIL across the call: a non-blocking socket call takes a microsecond or two, and
    each GIL release and re-take is a chance for another thread to win it (futex
    traffic). One release per wake-up remains: the wait in epoll."""

    def __init__(self) -> None:
        import ctypes

        libc = ctypes.PyDLL(None, use_errno=True)
        self._recv = libc.recv
        self._recv.restype = ctypes.c_ssize_t
        self._recv.argtypes = (ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
        self._send = libc.send
        self._send.restype = ctypes.c_ssize_t
        self._send.argtypes = (ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
        self._get_errno = ctypes.get_errno
        self._string_at = ctypes.string_at
        self._cbuf = (ctypes.c_char * CHUNK)()
        self._addr = ctypes.addressof(self._cbuf)
        self._flags = socket.MSG_DONTWAIT | socket.MSG_NOSIGNAL
        super().__init__(name="grpc-relay-heldgil")

    def _forward(self, pair: Pair, side: int) -> None:
        import errno

        other = 1 - side
        n = self._recv(pair.fds[side], self._addr, CHUNK, self._flags)
        if n < 0:
            if self._get_errno() in (errno.EAGAIN, errno.EINTR):
                return
            self._close(pair)
            return
        if n == 0:
            pair.reading[side] = False
            if not pair.pending[other]:
                self._end(pair, other)
            self._update(pair, side)
            return
        sent = self._send(pair.fds[other], self._addr, n, self._flags)
        if sent < 0:
            if self._get_errno() not in (errno.EAGAIN, errno.EINTR):
                self._close(pair)
                return
            sent = 0
        if sent < n:
            pair.pending[other] = self._string_at(self._addr + sent, n - sent)
            self._update(pair, side)
            self._update(pair, other)


class BlockingRelay:
    """Two threads per connection, each a blocking ``recv_into`` / ``sendall`` loop: no
    epoll wait per chunk (two system calls per chunk instead of three), at the price
    of two threads per connection."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._socks: set[socket.socket] = set()
        self._closed = False

    def add(
        self, client: socket.socket, upstream: socket.socket, on_close: Callable[[], None]
    ) -> None:
        client.setblocking(True)
        upstream.setblocking(True)
        with self._lock:
            if self._closed:
                client.close()
                upstream.close()
                on_close()
                return
            self._socks.update((client, upstream))
        left = [2]

        def done() -> None:
            with self._lock:
                left[0] -= 1
                last = left[0] == 0
                if last:
                    self._socks.difference_update((client, upstream))
            if last:
                client.close()
                upstream.close()
                on_close()

        for src, dst in ((client, upstream), (upstream, client)):
            threading.Thread(target=self._copy, args=(src, dst, done), daemon=True).start()

    @staticmethod
    def _copy(src: socket.socket, dst: socket.socket, done: Callable[[], None]) -> None:
        buf = bytearray(CHUNK)
        view = memoryview(buf)
        try:
            while n := src.recv_into(buf):
                dst.sendall(view[:n])
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
        finally:
            done()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            socks = list(self._socks)
        for s in socks:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)


#: By the name the benchmarks use.
DESIGNS: dict[str, Callable[[], Relay]] = {
    "loop": LoopRelay,
    "asyncio": AsyncioRelay,
    "thread": RelayThread,
    "splice": SpliceRelay,
    "heldgil": HeldGilRelay,
    "blocking": BlockingRelay,
}
