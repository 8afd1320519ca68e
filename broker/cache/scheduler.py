"""Deadlines for many items with one sleeper, instead of one task per key.

A heap of ``(when, seq, item)`` plus, per item, the one deadline that counts
(rescheduling pushes a new heap row; the old one is skipped when it surfaces).
One loop calls :meth:`Deadlines.pop_due` and then :meth:`Deadlines.wait`, which
sleeps on the injected clock until the earliest deadline, or until a new,
earlier one is set. With a FakeClock the loop moves only when a test
advances time.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Hashable
from datetime import datetime
from typing import Generic, TypeVar

import anyio

from broker.clock import Clock

T = TypeVar("T", bound=Hashable)


class Deadlines(Generic[T]):
    """At most one pending deadline per item; cheap to move, cheap to cancel."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._heap: list[tuple[datetime, int, T]] = []
        self._current: dict[T, tuple[datetime, int]] = {}
        self._seq = itertools.count()
        #: Set to wake the loop early; created by the loop (an Event needs a running loop).
        self._wake: anyio.Event | None = None
        #: The deadline the loop sleeps towards (None: none, it sleeps until woken).
        self._sleeping_until: datetime | None = None

    def __len__(self) -> int:
        return len(self._current)

    def when(self, item: T) -> datetime | None:
        row = self._current.get(item)
        return row[0] if row else None

    def set(self, item: T, when: datetime | None) -> None:
        """Make ``when`` the item's only deadline (None cancels it)."""
        row = self._current.get(item)
        if when is None:
            self._current.pop(item, None)
            return
        if row is not None and row[0] == when:
            return
        seq = next(self._seq)
        self._current[item] = (when, seq)
        heapq.heappush(self._heap, (when, seq, item))
        if self._wake is not None and (self._sleeping_until is None or when < self._sleeping_until):
            self._wake.set()
        if len(self._heap) > 2 * len(self._current) + 64:
            self._compact()

    def pop_due(self, now: datetime) -> list[T]:
        """Remove and return every item whose deadline is at or before ``now``, earliest first."""
        due: list[T] = []
        while self._heap and self._heap[0][0] <= now:
            when, seq, item = heapq.heappop(self._heap)
            if self._current.get(item) == (when, seq):
                del self._current[item]
                due.append(item)
        return due

    async def wait(self) -> None:
        """Sleep until the earliest deadline, or until :meth:`set` makes an earlier one."""
        self._drop_stale_top()
        wake = self._wake = anyio.Event()
        if not self._heap:
            self._sleeping_until = None
            await wake.wait()
            return
        when = self._heap[0][0]
        self._sleeping_until = when
        delay = (when - self._clock.now()).total_seconds()
        if delay <= 0:
            await anyio.lowlevel.checkpoint()
            return
        async with anyio.create_task_group() as tg:

            async def sleeper() -> None:
                await self._clock.sleep(delay)
                tg.cancel_scope.cancel()

            tg.start_soon(sleeper)
            await wake.wait()
            tg.cancel_scope.cancel()

    def _drop_stale_top(self) -> None:
        while self._heap:
            when, seq, item = self._heap[0]
            if self._current.get(item) == (when, seq):
                return
            heapq.heappop(self._heap)

    def _compact(self) -> None:
        """Drop superseded rows once they outnumber live ones (rescheduling leaves them)."""
        self._heap = [(w, s, i) for i, (w, s) in self._current.items()]
        heapq.heapify(self._heap)
