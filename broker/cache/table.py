"""The cache's entry table: LRU order under a bound, each entry's next deadline, the idle rule.

Bookkeeping apart from minting: :class:`broker.cache.cache.CredentialCache`
runs the mints and decides what their outcomes do; this table decides which
entries stay (least recently used go first, never a watched one or one with a
mint in flight), drops keys nobody watched or used for the idle time, and
keeps when each entry next needs attention (:mod:`broker.cache.scheduler`).
"""

from __future__ import annotations

from collections import OrderedDict
from datetime import datetime, timedelta

from broker.cache.entry import CacheCounters, CacheKey, Entry, Mint
from broker.cache.scheduler import Deadlines
from broker.clock import Clock
from broker.streams.hub import Hub


class EntryTable:
    """Entries by key, least recently used first, with their renewal deadlines."""

    def __init__(
        self,
        clock: Clock,
        hub: Hub[CacheKey],
        counters: CacheCounters,
        *,
        max_entries: int,
        idle: timedelta,
    ) -> None:
        #: The cache's hot path reads this dict directly (one lookup, one move_to_end).
        self.entries: OrderedDict[CacheKey, Entry] = OrderedDict()
        self.deadlines: Deadlines[Entry] = Deadlines(clock)
        self._hub = hub
        self._counters = counters
        self._max_entries = max_entries
        self._idle = idle

    def __len__(self) -> int:
        return len(self.entries)

    def touch(self, key: CacheKey, mint: Mint, now: datetime) -> Entry:
        """The entry for ``key`` (created if missing), marked as used now."""
        entry = self.entries.get(key)
        if entry is None:
            entry = self.entries[key] = Entry(key, mint, now)
            self._evict_over_bound(keep=key)
            self.reschedule(entry)
        else:
            entry.mint = mint
            entry.last_used = now
            self.entries.move_to_end(key)
        return entry

    def add(self, entry: Entry) -> None:
        """Hold a new entry that already has its credential (a restored one)."""
        self.entries[entry.key] = entry
        self._evict_over_bound(keep=entry.key)
        self.reschedule(entry)

    def of_connector(self, connector_id: str) -> list[Entry]:
        return [e for k, e in self.entries.items() if k.connector_id == connector_id]

    def drop(self, entry: Entry) -> None:
        entry.dropped = True
        if self.entries.get(entry.key) is entry:
            del self.entries[entry.key]
        self.deadlines.set(entry, None)

    def drop_if_idle(self, entry: Entry, now: datetime) -> bool:
        """Drop an unwatched entry unused for the idle time; True if it went."""
        if self._hub.count(entry.key) or now < entry.last_used + self._idle:
            return False
        self.drop(entry)
        self._counters.evictions += 1
        return True

    def reschedule(self, entry: Entry) -> None:
        watched = self._hub.count(entry.key) > 0
        self.deadlines.set(entry, entry.next_deadline(watched, self._idle))

    def unschedule(self, entry: Entry) -> None:
        self.deadlines.set(entry, None)

    def _evict_over_bound(self, keep: CacheKey) -> None:
        """LRU order, skipping watched keys and keys with a mint in flight."""
        while len(self.entries) > self._max_entries:
            victim = next(
                (
                    e
                    for k, e in self.entries.items()
                    if k != keep and e.flight is None and not self._hub.count(k)
                ),
                None,
            )
            if victim is None:
                return  # all watched or in flight: over the bound until they settle
            self.drop(victim)
            self._counters.evictions += 1
