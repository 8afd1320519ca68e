"""An injectable clock so timing logic is tested without sleeping."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Protocol

import anyio


class Clock(Protocol):
    """Wall time for expiries, monotonic time for intervals, and a sleep that follows them."""

    def now(self) -> datetime: ...

    def monotonic(self) -> float: ...

    async def sleep(self, seconds: float) -> None: ...


class SystemClock:
    """The real clock."""

    def now(self) -> datetime:
        return datetime.now(UTC)

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await anyio.sleep(max(0.0, seconds))


class FakeClock:
    """A clock that only moves when a test calls :meth:`advance`.

    Sleepers wake when the clock passes their deadline, so background loops
    run deterministically.
    """

    def __init__(self, start: datetime | None = None) -> None:
        self._now = start or datetime(2030, 1, 1, tzinfo=UTC)
        self._mono = 1000.0
        self._sleepers: list[tuple[float, anyio.Event]] = []

    def now(self) -> datetime:
        return self._now

    def monotonic(self) -> float:
        return self._mono

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await anyio.lowlevel.checkpoint()
            return
        event = anyio.Event()
        self._sleepers.append((self._mono + seconds, event))
        await event.wait()

    async def advance(self, seconds: float) -> None:
        """Move time forward, waking sleepers whose deadline passed, and let them run."""
        self._now += timedelta(seconds=seconds)
        self._mono += seconds
        due = [(t, e) for t, e in self._sleepers if t <= self._mono]
        self._sleepers = [(t, e) for t, e in self._sleepers if t > self._mono]
        for _, event in due:
            event.set()
        for _ in range(10):
            await anyio.lowlevel.checkpoint()

    @property
    def sleepers(self) -> int:
        return len(self._sleepers)
