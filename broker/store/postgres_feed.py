"""The change feed: other daemons' writes, applied here as they commit.

Each write to the PostgreSQL store records a change row and a ``pg_notify``
in its transaction (:mod:`broker.store.postgres`). Every daemon keeps one
dedicated connection LISTENing on that channel and hands each change to its
sink (the service: catalog, then cache and watchers, the same path as a local
write). A notification is only a prompt; the change table is the record:

- A change whose id is not the next one expected (a gap: a notification was
  missed, or a rolled-back write used up an id) is caught up by reading the
  change table from the last applied id.
- Every :data:`CHECK_SECONDS` the listener connection reads the newest change
  id: that proves the connection alive (a silently dead one is replaced) and
  catches up anything a notification did not announce.
- A lost connection is reopened with exponential backoff and jitter
  (:data:`BACKOFF_FIRST_SECONDS` up to :data:`BACKOFF_MAX_SECONDS`); then the
  feed catches up from the last change it applied, so a missed notification is
  never a missed change. Until it has, :meth:`ChangeFeed.degraded_reason` says
  why, and ``broker status`` and health show the daemon ``DEGRADED``.
- Changes older than the retention window are compacted (one daemon at a
  time); a daemon that was away longer than that cannot catch up row by row
  and reloads every connector instead.

Changes are idempotent for the sink (a revision it already holds is skipped),
so a daemon's own writes coming back, or a change read twice, do nothing.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from typing import Protocol

import anyio
import structlog
from anyio.abc import TaskStatus

from broker.clock import Clock
from broker.errors import BrokerError, Unavailable
from broker.store.base import StoreChange
from broker.store.postgres import PostgresStore
from broker.store.postgres_changes import ChangeListener

log = structlog.get_logger(__name__)

#: How often the listener connection is checked (and the change table compared):
#: bounds how long a silently dead connection or a missed notification can go unseen.
CHECK_SECONDS = 2.0
#: First wait before reconnecting after the LISTEN connection is lost; doubles each try.
BACKOFF_FIRST_SECONDS = 0.1
#: Longest wait between reconnection attempts (a restarting database is back in seconds).
BACKOFF_MAX_SECONDS = 5.0
#: Changes read from the table per query while catching up.
CATCH_UP_BATCH = 500
#: Known-but-unapplied changes older than this make the daemon report itself degraded;
#: below it, a change is simply being applied.
DEGRADED_AFTER_SECONDS = 1.0
#: How often a daemon offers to compact the change table (jittered ±50 % so a fleet
#: does not try at once; one at a time does it, the others skip).
COMPACT_EVERY_SECONDS = 600.0


class ChangeSink(Protocol):
    """What the feed needs from the application (the consumer defines the interface)."""

    async def apply_store_change(self, change: StoreChange) -> None:
        """Apply one change made through any daemon (a no-op if already applied)."""

    async def reload_catalog(self) -> None:
        """Read every connector again (the change table no longer reaches back far enough)."""


class _Lost:
    """Queued by the listener's termination callback."""

    def __init__(self, generation: int) -> None:
        self.generation = generation


class ChangeFeed:
    """One daemon's subscription to the shared store's changes."""

    def __init__(
        self,
        store: PostgresStore,
        sink: ChangeSink,
        clock: Clock,
        *,
        retention_seconds: float,
        check_seconds: float = CHECK_SECONDS,
        compact_every_seconds: float = COMPACT_EVERY_SECONDS,
        on_change_applied: Callable[[StoreChange], None] | None = None,
    ) -> None:
        self._store = store
        self._sink = sink
        self._clock = clock
        self._retention = retention_seconds
        self._check_seconds = check_seconds
        self._compact_every = compact_every_seconds
        self._on_applied = on_change_applied
        # Notifications and "connection lost", queued by the listener's callbacks (which
        # must not block) for the feed's task; opened by start(), closed by close().
        self._send, self._receive = anyio.create_memory_object_stream[StoreChange | _Lost](0)
        self._send.close()
        self._receive.close()
        self._listener: ChangeListener | None = None
        self._generation = 0
        self._last_applied = 0
        self._known_latest = 0
        #: Monotonic time since when the daemon knows of changes it has not applied
        #: (or since its connection was lost); None when it is up to date.
        self._behind_since: float | None = None
        self._next_compact = 0.0
        self.reconnects = 0
        self.applied = 0
        self.full_reloads = 0

    # -- state ---------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._listener is not None and self._listener.alive

    @property
    def last_applied(self) -> int:
        return self._last_applied

    @property
    def listener_pid(self) -> int | None:
        """The database backend serving the LISTEN connection (for operators and tests)."""
        return self._listener.backend_pid if self.connected and self._listener else None

    def lag_seconds(self) -> float:
        if self._behind_since is None:
            return 0.0
        return max(0.0, self._clock.monotonic() - self._behind_since)

    def lag_changes(self) -> int:
        return max(0, self._known_latest - self._last_applied)

    def degraded_reason(self) -> str | None:
        """Why this daemon may not show every write made elsewhere yet; None when current."""
        if not self.connected:
            return (
                f"change feed: not connected to {self._store.location} for "
                f"{self.lag_seconds():.1f} s (reconnecting; writes made through other "
                "daemons are applied once it is back)"
            )
        lag = self.lag_seconds()
        if lag >= DEGRADED_AFTER_SECONDS:
            return (
                f"change feed: catching up, {self.lag_changes()} change(s) behind for {lag:.1f} s"
            )
        return None

    def stats(self) -> dict[str, float]:
        return {
            "change_feed_connected": 1 if self.connected else 0,
            "change_feed_lag_seconds": round(self.lag_seconds(), 3),
            "change_feed_lag_changes": self.lag_changes(),
            "change_feed_reconnects": self.reconnects,
            "change_feed_applied": self.applied,
            "change_feed_full_reloads": self.full_reloads,
            "change_feed_last_change_id": self._last_applied,
        }

    # -- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        """LISTEN, then note the newest change: call before the catalog is first read.

        Anything committed after that point is announced or found in the table,
        and applying a change the first read already saw is a no-op, so no write
        can fall between the read and the feed.
        """
        self._send, self._receive = anyio.create_memory_object_stream[StoreChange | _Lost](math.inf)
        await self._connect()
        self._last_applied = self._known_latest = await self._store.latest_change_id()
        self._next_compact = self._clock.monotonic() + self._compact_delay()
        log.info("change_feed_started", store=self._store.location, change_id=self._last_applied)

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Apply changes until cancelled, reconnecting with backoff whenever needed."""
        task_status.started()
        backoff = BACKOFF_FIRST_SECONDS
        while True:
            try:
                if not self.connected:
                    await self._connect()
                    self.reconnects += 1
                    log.info("change_feed_reconnected", store=self._store.location)
                backoff = BACKOFF_FIRST_SECONDS
                await self._catch_up()
                await self._follow()
            except BrokerError as exc:
                await self._disconnected(exc.message)
                delay = backoff * random.uniform(0.5, 1.5)  # noqa: S311 (jitter)
                backoff = min(backoff * 2, BACKOFF_MAX_SECONDS)
                await self._clock.sleep(delay)

    async def close(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            await listener.close()
        self._send.close()
        self._receive.close()

    # -- inside ----------------------------------------------------------------------

    async def _connect(self) -> None:
        self._generation += 1
        generation = self._generation
        self._listener = await self._store.listen(
            self._send.send_nowait, lambda: self._send.send_nowait(_Lost(generation))
        )

    async def _disconnected(self, why: str) -> None:
        if self._behind_since is None:
            self._behind_since = self._clock.monotonic()
        listener, self._listener = self._listener, None
        if listener is not None:
            log.warning("change_feed_disconnected", store=self._store.location, error=why)
            await listener.close()
        else:
            log.warning("change_feed_unavailable", store=self._store.location, error=why)

    async def _follow(self) -> None:
        """Apply notified changes; check the connection when none came for a while."""
        while True:
            item: StoreChange | _Lost | None = None
            with anyio.move_on_after(self._check_seconds):
                item = await self._receive.receive()
            if item is None:
                await self._check()
            elif isinstance(item, _Lost):
                if item.generation == self._generation:
                    raise Unavailable("the LISTEN connection to the database was closed")
            else:
                await self._notified(item)

    async def _notified(self, change: StoreChange) -> None:
        if change.change_id <= self._last_applied:
            return
        self._known_latest = max(self._known_latest, change.change_id)
        if self._behind_since is None:
            self._behind_since = self._clock.monotonic()
        if change.change_id == self._last_applied + 1:
            await self._apply(change)
            self._caught_up()
        else:  # a gap: a missed notification or a rolled-back id; the table knows
            await self._catch_up()

    async def _check(self) -> None:
        listener = self._listener
        if listener is None:
            raise Unavailable("the change feed is not connected")
        latest = await listener.latest_change_id()
        self._known_latest = max(self._known_latest, latest)
        if latest > self._last_applied:
            log.info("change_feed_missed_notification", behind=latest - self._last_applied)
            await self._catch_up()
        if self._clock.monotonic() >= self._next_compact:
            self._next_compact = self._clock.monotonic() + self._compact_delay()
            try:
                await self._store.compact_changes(self._retention)
            except BrokerError as exc:
                log.warning("change_compaction_failed", error=exc.message)

    async def _catch_up(self) -> None:
        """Apply every change after the last applied one, from the change table."""
        if self._behind_since is None:
            self._behind_since = self._clock.monotonic()
        while True:
            batch = await self._store.changes_after(self._last_applied, CATCH_UP_BATCH)
            if batch.compacted_through > self._last_applied:
                await self._reload(batch.compacted_through)
                continue
            for change in batch.changes:
                self._known_latest = max(self._known_latest, change.change_id)
                await self._apply(change)
            if len(batch.changes) < CATCH_UP_BATCH:
                break
        self._caught_up()

    async def _reload(self, compacted_through: int) -> None:
        """Too far behind for the table: read everything (changes after are replayed)."""
        position = await self._store.latest_change_id()
        log.warning(
            "change_feed_reloading",
            store=self._store.location,
            last_applied=self._last_applied,
            compacted_through=compacted_through,
            reason="changes this daemon missed were compacted; reading every connector",
        )
        await self._sink.reload_catalog()
        self.full_reloads += 1
        self._last_applied = max(self._last_applied, position)
        self._known_latest = max(self._known_latest, position)

    async def _apply(self, change: StoreChange) -> None:
        await self._sink.apply_store_change(change)
        self._last_applied = change.change_id
        self.applied += 1
        if self._on_applied is not None:
            self._on_applied(change)

    def _caught_up(self) -> None:
        if self._last_applied >= self._known_latest and self.connected:
            self._behind_since = None

    def _compact_delay(self) -> float:
        return self._compact_every * random.uniform(0.5, 1.5)  # noqa: S311 (jitter)
