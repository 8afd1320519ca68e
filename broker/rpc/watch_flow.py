"""Watch streams through gRPC: how many may be open, and how long one may leave an event unread.

A watch handler has at most one message in flight (``context.write`` awaited)
and a latest-value slot behind it (:class:`broker.streams.subscription.
Subscription`): while a client does not read, its HTTP/2 window fills, the
write waits, and newer events only replace the one waiting in the slot. So a
stalled client costs the daemon one message, never a growing queue, and holds
nobody else up (the connection's window is the client transport's, which keeps
taking bytes for the other streams).

Both limits are deliberate, so both end a stream with RESOURCE_EXHAUSTED and
a message naming the setting, logged at most a few times per window
(:class:`broker.logs.RateLimitedLog`); never a silent CANCELLED.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import structlog

from broker.logs import RateLimitedLog

log = structlog.get_logger(__name__)
#: At most 5 lines per reason and 10 s, then one summary with the count left out.
_refusals = RateLimitedLog(log, burst=5, window=10.0)

M = TypeVar("M")


@dataclass(frozen=True)
class WatchLimits:
    """``watch_max_streams`` and ``watch_stall_timeout_seconds`` (broker.config)."""

    max_streams: int = 50_000
    stall_timeout: float = 60.0


class StreamRefused(Exception):
    """A watch stream refused or ended on purpose: RESOURCE_EXHAUSTED with ``message``."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class WatchStreams:
    """Counts the open watch streams and bounds each one's unread time.

    The unread time is checked by one sweep every ``stall_timeout / 4`` (at most 1 s)
    over the writes in flight, not a timer per write: ``asyncio.timeout`` costs about
    25 us a write, a quarter of the daemon's whole cost per delivered event."""

    def __init__(self, limits: WatchLimits | None = None) -> None:
        self.limits = limits or WatchLimits()
        self.open = 0
        #: Streams ended because their client stopped reading (a counter for status).
        self.stalled = 0
        #: Streams refused because ``max_streams`` were open.
        self.refused = 0
        #: Handler tasks with a write in flight, and since when (loop time).
        self._writing: dict[asyncio.Task[Any], float] = {}
        #: Of those, the ones the sweep cancelled for waiting too long.
        self._dropping: set[asyncio.Task[Any]] = set()
        self._sweep_handle: asyncio.TimerHandle | None = None
        self._interval = max(min(self.limits.stall_timeout / 4, 1.0), 0.001)

    def admit(self, peer: Callable[[], str]) -> None:
        """Count one more stream, or refuse it if ``max_streams`` are open already
        (``peer``: who, for the log line, asked only then)."""
        if self.open >= self.limits.max_streams:
            message = (
                f"too many watch streams: {self.open} open, watch_max_streams is "
                f"{self.limits.max_streams}; close some or raise the setting"
            )
            self.refused += 1
            _refusals.warning(
                "watch_refused", key="watch_max_streams", limit="watch_max_streams", peer=peer()
            )
            raise StreamRefused(message)
        self.open += 1

    def release(self) -> None:
        self.open -= 1

    def stats(self) -> dict[str, int]:
        """For the metrics endpoint: streams open now, and the ones refused or dropped."""
        return {
            "watch_streams_open": self.open,
            "watch_streams_refused": self.refused,
            "watch_streams_stalled": self.stalled,
        }

    async def send(
        self, write: Callable[[M], Awaitable[None]], message: M, peer: Callable[[], str]
    ) -> None:
        """``write(message)``, unless the client leaves it unread for ``stall_timeout``:
        then :class:`StreamRefused` (the caller ends the stream with it)."""
        timeout = self.limits.stall_timeout
        task = asyncio.current_task()
        assert task is not None
        loop = task.get_loop()
        self._writing[task] = loop.time()
        if self._sweep_handle is None:
            self._sweep_handle = loop.call_later(self._interval, self._sweep, loop)
        try:
            await write(message)
        except asyncio.CancelledError:
            if task not in self._dropping:
                raise  # the client went away, or the daemon is stopping
            self._dropping.discard(task)
            task.uncancel()
            self.stalled += 1
            _refusals.warning(
                "watch_stalled",
                key="watch_stall_timeout_seconds",
                limit="watch_stall_timeout_seconds",
                peer=peer(),
            )
            raise StreamRefused(
                f"watch stream dropped: the client read nothing for {timeout:g}s "
                "(watch_stall_timeout_seconds); watch again to get the current credential"
            ) from None
        finally:
            del self._writing[task]

    def _sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        """Cancel every write waiting longer than the stall timeout; again while any wait."""
        now, limit = loop.time(), self.limits.stall_timeout
        for task, since in self._writing.items():
            if now - since >= limit and task not in self._dropping:
                self._dropping.add(task)
                task.cancel()
        self._sweep_handle = (
            loop.call_later(self._interval, self._sweep, loop) if self._writing else None
        )
