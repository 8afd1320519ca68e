"""Open files: the start-up limit, a descriptor budget, and accept loops that back off.

Every connection a client opens costs the daemon a descriptor, and the
descriptors it needs itself (the store, upstream calls, gRPC: three per
connection on the public socket, see :mod:`broker.rpc.acceptor`) come from
the same ``RLIMIT_NOFILE``. So:

- at start-up the soft limit is raised to the hard limit
  (:func:`raise_nofile_limit`);
- the helper and SDK endpoints each get a connection cap, lowered if need
  be so that both caps together leave ``fd_reserve`` descriptors free
  (:func:`plan_caps`); connections beyond a cap are refused at once;
- every listening socket is accepted by :class:`AcceptLoop`, which on
  EMFILE/ENFILE (or any other accept error) stops watching the socket and
  retries after a delay that doubles up to :data:`MAX_BACKOFF_SECONDS`. asyncio's
  own accept loop waits a fixed second but logs every failure with a
  traceback; this one logs through a :class:`~broker.logs.RateLimitedLog`.
"""

from __future__ import annotations

import asyncio
import errno
import os
import resource
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog

from broker.logs import RateLimitedLog

log = structlog.get_logger(__name__)

#: accept() failures that mean "out of descriptors or memory": wait before trying again.
RESOURCE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
#: First and longest wait after a failed accept().
MIN_BACKOFF_SECONDS = 0.05
MAX_BACKOFF_SECONDS = 2.0
#: Connections accepted per wake-up of one listener, so one busy socket cannot starve the rest.
ACCEPTS_PER_WAKEUP = 64
#: Connections over a cap that are answered (an error response) before being closed; beyond
#: this many at once, further ones are closed straight away.
REFUSE_SLOTS = 16

#: Shared by every accept loop: one line per failure, at most 5 per 10 s, then a summary.
accept_log = RateLimitedLog(log, burst=5, window=10.0)


def raise_nofile_limit() -> tuple[int, int, int]:
    """Raise the soft ``RLIMIT_NOFILE`` to the hard limit: (soft before, soft now, hard)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard
    if hard == resource.RLIM_INFINITY:
        try:  # Linux refuses a soft limit above fs.nr_open, even when the hard one is "unlimited"
            target = int(open("/proc/sys/fs/nr_open").read())  # noqa: SIM115
        except (OSError, ValueError):
            target = 1 << 20
    now = soft
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            now = target
        except (ValueError, OSError) as exc:
            log.warning("nofile_limit_not_raised", soft=soft, hard=hard, error=str(exc))
    # Only a change is news; an unchanged limit must not precede a start-up error.
    (log.info if now != soft else log.debug)("nofile_limit", soft_before=soft, soft=now, hard=hard)
    return soft, now, hard


def nofile_limit() -> int:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return (1 << 20) if soft == resource.RLIM_INFINITY else int(soft)


def open_fds() -> int:
    """Descriptors this process has open now (0 where /proc is not available)."""
    try:
        return max(len(os.listdir("/proc/self/fd")) - 1, 0)  # minus listdir's own
    except OSError:
        return 0


@dataclass(frozen=True)
class FdBudget:
    """How the open-file limit is shared: caps for the HTTP endpoints, the rest kept free."""

    limit: int
    in_use: int
    reserve: int
    helper: int
    sdk: int
    lowered: bool


def plan_caps(limit: int, in_use: int, fd_reserve: int, helper: int, sdk: int) -> FdBudget:
    """Connection caps that fit: ``helper + sdk`` (plus the refusal slots of each) never
    exceed ``limit - in_use - reserve``. The reserve is ``fd_reserve``, but at most half
    the limit, so a small limit still leaves the endpoints something."""
    reserve = min(fd_reserve, limit // 2)
    room = limit - in_use - reserve - 2 * REFUSE_SLOTS
    if helper + sdk <= room:
        return FdBudget(limit, in_use, reserve, helper, sdk, lowered=False)
    room = max(room, 2)
    helper_cap = max(1, room * helper // (helper + sdk))
    sdk_cap = max(1, room - helper_cap)
    return FdBudget(limit, in_use, reserve, helper_cap, sdk_cap, lowered=True)


class AcceptLoop(asyncio.AbstractServer):
    """Accepts a listening socket and hands each connection to ``on_accept``.

    On an accept() error it stops watching the socket and tries again after
    a delay that starts at :data:`MIN_BACKOFF_SECONDS` and doubles up to
    :data:`MAX_BACKOFF_SECONDS`, so running out of descriptors costs one
    accept() call per delay, never a busy loop. Pending connections wait in
    the kernel's backlog meanwhile. After a calm spell (no failure for twice
    the longest delay) the next failure starts again from the shortest delay.
    """

    def __init__(
        self, sock: socket.socket, on_accept: Callable[[socket.socket], None], *, name: str
    ) -> None:
        self._sock = sock
        self._on_accept = on_accept
        self.name = name
        self._loop: asyncio.AbstractEventLoop | None = None
        self._watching = False
        self._retry: asyncio.TimerHandle | None = None
        self._delay = 0.0
        self._last_failure = float("-inf")
        self._closed = False
        self._closed_event = asyncio.Event()
        #: accept() calls that failed (for tests: a busy loop would make this huge)
        self.failures = 0

    @property
    def sockets(self) -> tuple[socket.socket, ...]:
        return () if self._closed else (self._sock,)

    @property
    def backoff(self) -> float:
        """The wait after the latest failure (0 before any)."""
        return self._delay

    def get_loop(self) -> asyncio.AbstractEventLoop:
        assert self._loop is not None
        return self._loop

    def is_serving(self) -> bool:
        return not self._closed and self._loop is not None

    async def start_serving(self) -> None:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
            self._sock.setblocking(False)
            self._watch()

    async def serve_forever(self) -> None:
        await self.start_serving()
        await self._closed_event.wait()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._unwatch()
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        self._sock.close()
        self._closed_event.set()

    async def wait_closed(self) -> None:
        await self._closed_event.wait()

    def _watch(self) -> None:
        if not self._watching and not self._closed and self._loop is not None:
            self._loop.add_reader(self._sock.fileno(), self._ready)
            self._watching = True

    def _unwatch(self) -> None:
        if self._watching and self._loop is not None:
            self._loop.remove_reader(self._sock.fileno())
        self._watching = False

    def _ready(self) -> None:
        for _ in range(ACCEPTS_PER_WAKEUP):
            if self._closed or not self._watching:
                return
            try:
                conn, _ = self._sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue  # the client gave up while queued
            except OSError as exc:
                self.failures += 1
                self.pause(exc)
                return
            try:
                conn.setblocking(False)
                self._on_accept(conn)
            except Exception as exc:  # one connection's trouble never stops the listener
                conn.close()
                accept_log.warning(
                    "connection_setup_failed",
                    key=f"setup:{self.name}",
                    group={"listener": self.name},
                    error=_describe(exc),
                )

    def pause(self, exc: BaseException) -> None:
        """Stop accepting for a while (also called when a connection cannot get a
        descriptor it needs after accept, e.g. the gRPC relay's upstream socket)."""
        if self._closed or self._retry is not None:
            return
        assert self._loop is not None
        now = self._loop.time()
        if now - self._last_failure > 2 * MAX_BACKOFF_SECONDS:
            self._delay = MIN_BACKOFF_SECONDS
        else:
            self._delay = min(self._delay * 2, MAX_BACKOFF_SECONDS)
        self._last_failure = now
        self._unwatch()
        self._retry = self._loop.call_later(self._delay, self._resume)
        accept_log.warning(
            "accept_paused",
            key=f"accept:{self.name}",
            group={"listener": self.name},
            error=_describe(exc),
            retry_in_seconds=round(self._delay, 3),
        )

    def _resume(self) -> None:
        self._retry = None
        self._watch()


def _describe(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.strerror} (errno {exc.errno})"
    return f"{type(exc).__name__}: {exc}"


def is_resource_error(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in RESOURCE_ERRNOS


class Connections:
    """Turns accepted sockets into asyncio transports, one small task each."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()

    @property
    def pending(self) -> int:
        return len(self._tasks)

    def start(
        self,
        conn: socket.socket,
        factory: Callable[[], asyncio.BaseProtocol],
        on_error: Callable[[BaseException], None] | None = None,
    ) -> None:
        loop = asyncio.get_running_loop()
        task = loop.create_task(loop.connect_accepted_socket(factory, conn))
        self._tasks.add(task)

        def done(t: asyncio.Task[Any]) -> None:
            self._tasks.discard(t)
            if t.cancelled():
                conn.close()
                return
            exc = t.exception()
            if exc is not None:
                conn.close()
                if on_error is not None:
                    on_error(exc)

        task.add_done_callback(done)

    def cancel(self) -> None:
        for task in list(self._tasks):
            task.cancel()
