"""The per-resource credential cache: single-flight mints, renewal ahead of expiry, watches.

Providers only mint; this module decides *when*, following the pure rules of
:mod:`broker.cache.policy`:

* fresh: served from memory (the hot path: a dict lookup and one comparison);
* stale: served, while one background renewal runs (advisory window);
* invalid (inside its margin) or missing: callers wait for the one in-flight
  mint (mandatory window), and an invalid credential is never served again.

Every upstream mint runs in the cache's own task group (started by
:meth:`CredentialCache.run`), never in a caller's task, so a caller that gives
up does not cancel the mint the other waiters share. One loop renews watched
and recently used keys at their jittered renew points (see
:mod:`broker.cache.scheduler`) with bounded concurrency, retries failures with
backoff, and drops keys that nobody watched or used for ``idle_seconds``
(the entries, their bound and deadlines: :mod:`broker.cache.table`; one mint
attempt and how its failure is told: :mod:`broker.cache.attempt`).
Watchers get events through :mod:`broker.streams`.
"""

from __future__ import annotations

import random
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import asdict, replace
from datetime import datetime, timedelta

import anyio
import anyio.abc
import structlog

from broker.cache import policy
from broker.cache.attempt import log_failure, mint_once
from broker.cache.entry import (
    CacheCounters,
    CacheKey,
    Entry,
    Flight,
    Invalidation,
    Mint,
    Tombstones,
    for_caller,
    rotation_failed,
    superseded_error,
)
from broker.cache.table import EntryTable
from broker.clock import Clock
from broker.errors import BrokerError, Unavailable
from broker.model import ClientCredential
from broker.streams.hub import Hub, WatchEvent

log = structlog.get_logger(__name__)

__all__ = ["CacheCounters", "CacheKey", "CredentialCache", "Invalidation", "Mint", "WatchEvent"]

#: Entries kept at most; beyond it the least recently used unwatched ones go.
DEFAULT_MAX_ENTRIES = 10_000
#: Unwatched keys unused this long are dropped and no longer renewed (the
#: daemon's setting ``cache_idle_seconds`` has the same default).
DEFAULT_IDLE_SECONDS = 900.0
#: Background renewals in flight at once: a burst of due keys reaches the
#: providers as a steady stream. Callers who must wait never queue behind it.
DEFAULT_RENEWAL_CONCURRENCY = 32
#: A backstop for one mint (providers time out each upstream call themselves):
#: a hung mint must not wedge its key, and every waiter, forever.
DEFAULT_MINT_TIMEOUT_SECONDS = 120.0
#: A waiter re-checks that a new credential is still outside its margin when it
#: wakes; after this many rounds of "minted but already inside it" it gives up.
_SLOW_PATH_ROUNDS = 3


class CredentialCache:
    """Client credentials per :class:`CacheKey`, minted once and renewed ahead of expiry."""

    def __init__(
        self,
        clock: Clock,
        *,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        idle_seconds: float = DEFAULT_IDLE_SECONDS,
        rng: random.Random | None = None,
        renewal_concurrency: int = DEFAULT_RENEWAL_CONCURRENCY,
        mint_timeout: float = DEFAULT_MINT_TIMEOUT_SECONDS,
    ) -> None:
        self._clock = clock
        # Jitter only, never secrets: a seeded PRNG keeps tests reproducible. The
        # default spreads keys minted together evenly (see policy.SpreadRandom).
        self._rng = rng or policy.SpreadRandom()
        self._renewal_concurrency = renewal_concurrency
        self._mint_timeout = mint_timeout
        self._hub: Hub[CacheKey] = Hub()
        self.counters = CacheCounters()
        self._table = EntryTable(
            clock,
            self._hub,
            self.counters,
            max_entries=max_entries,
            idle=timedelta(seconds=idle_seconds),
        )
        self._entries = self._table.entries  # the same dict: the hot path skips a lookup
        self._tombstones = Tombstones()
        self._tg: anyio.abc.TaskGroup | None = None
        #: Told of every credential a mint put in the cache (the persistent cache's
        #: writer queues it); never called on the cache-hit path, must not block.
        self.on_minted: Callable[[CacheKey, ClientCredential], None] | None = None

    # -- lifecycle ----------------------------------------------------------
    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Own the mints and the renewal loop until cancelled; streams end when it stops."""
        if self._tg is not None:
            raise RuntimeError("CredentialCache.run() is already running")
        slots = anyio.Semaphore(self._renewal_concurrency)
        try:
            async with anyio.create_task_group() as tg:
                self._tg = tg
                tg.start_soon(self._renew_loop, slots)
                task_status.started()
        finally:
            self._tg = None
            self._hub.close_where(lambda _: True)

    @asynccontextmanager
    async def running(self) -> AsyncIterator[CredentialCache]:
        """``async with cache.running():`` for tests and tools without a task group at hand."""
        async with anyio.create_task_group() as tg:
            await tg.start(self.run)
            try:
                yield self
            finally:
                tg.cancel_scope.cancel()

    # -- reading ------------------------------------------------------------
    async def get(self, key: CacheKey, mint: Mint) -> ClientCredential:
        """A credential for ``key`` that is outside its safety margin, minting at most once.

        Raises the provider's :class:`BrokerError` (retryable ones as
        :class:`Unavailable`), or :class:`Unavailable` for unexpected failures.
        """
        entry = self._entries.get(key)
        if entry is not None and entry.credential is not None:
            now = self._clock.now()
            if entry.stale_at is None or now < entry.stale_at:
                entry.last_used = now
                self._entries.move_to_end(key)
                self.counters.hits += 1
                return entry.credential
        return await self._get_slow(key, mint)

    async def _get_slow(self, key: CacheKey, mint: Mint) -> ClientCredential:
        self._refuse_superseded(key)
        for round_ in range(_SLOW_PATH_ROUNDS):
            now = self._clock.now()
            entry = self._table.touch(key, mint, now)
            if entry.credential is not None:
                if entry.servable(now):
                    self._renew_if_stale(entry, now)  # advisory: serve, renew behind
                    self.counters.hits += round_ == 0
                    return entry.credential
                self._expire(entry)
            self.counters.misses += round_ == 0
            flight = entry.flight
            if flight is None:
                if entry.holding_error(now):
                    assert entry.error is not None
                    raise for_caller(entry.error) from entry.error
                flight = self._start_flight(entry, slot=None)
            await flight.done.wait()
            if flight.error is not None:
                raise for_caller(flight.error) from flight.error
            now = self._clock.now()
            if flight.credential is not None and (
                flight.invalid_at is None or now < flight.invalid_at
            ):
                return flight.credential
        raise Unavailable(
            f"no credential for {key.describe()} stayed outside its safety margin long "
            "enough to be served; try again"
        )

    async def watch(self, key: CacheKey, mint: Mint) -> AsyncGenerator[WatchEvent, None]:
        """``issued`` (the current credential), then ``renewed`` / ``error`` / the end.

        The key is kept warm while watched. ``updated`` and ``deleted`` end the
        stream; after ``updated`` the caller (the service layer) watches the
        connector's new revision. Closing the iterator or cancelling the task
        unsubscribes.
        """
        tomb = self._tombstones.superseded(key)
        if tomb is not None:
            yield WatchEvent(tomb)
            return
        sub = self._hub.subscribe(key)
        try:
            issued = False
            try:
                credential = await self.get(key, mint)
            except BrokerError as exc:
                if not sub.closed:  # else the connector changed: its event is waiting
                    first = WatchEvent("error", error=str(exc))
                    sub.delivered(first)
                    yield first
            else:
                first = WatchEvent("issued", credential)
                sub.delivered(first)
                issued = True
                yield first
            while True:
                try:
                    event = await sub.receive()
                except anyio.EndOfStream:
                    return
                if event.credential is not None:
                    if not issued:
                        event = replace(event, kind="issued")
                    issued = True
                yield event
                if event.terminal:
                    return
        finally:
            self._hub.unsubscribe(key, sub)
            entry = self._entries.get(key)
            if entry is not None:
                self._table.reschedule(entry)  # unwatched now: the idle rule applies again

    async def rotate(
        self, key: CacheKey, mint: Mint
    ) -> tuple[ClientCredential, ClientCredential | None]:
        """Mint now, fresh or not: ``(new, replaced)``; watchers get ``renewed``.

        The old credential is served until the new one is in hand; a mint already
        in flight for the key is joined (concurrent rotates and gets share one
        mint). A failure leaves the old credential serving and its renewal schedule
        as it was, and raises the cause's error type saying why and until when the
        old one is served.
        """
        self._refuse_superseded(key)
        now = self._clock.now()
        entry = self._table.touch(key, mint, now)
        if entry.credential is not None and not entry.servable(now):
            self._expire(entry)
        old = entry.credential
        flight = entry.flight or self._start_flight(entry, slot=None, forced=True)
        await flight.done.wait()
        if flight.error is not None:
            raise rotation_failed(key, flight.error, old) from flight.error
        assert flight.credential is not None
        return flight.credential, old

    def restore(self, key: CacheKey, mint: Mint, credential: ClientCredential) -> bool:
        """Take back a credential minted before a restart (the persistent cache).

        Served at once if outside its margin, renewed at its renew point as if just
        minted; False (nothing kept) if inside its margin or the key is held already.
        """
        if key in self._entries or self._tombstones.superseded(key) is not None:
            return False
        now = self._clock.now()
        entry = Entry(key, mint, now)
        # accept() refuses a credential inside its margin; issued_at places the renew point.
        if isinstance(
            entry.accept(credential, credential.issued_at or now, now, self._rng), BrokerError
        ):
            return False
        self._table.add(entry)
        self.counters.restored += 1
        return True

    # -- invalidation -------------------------------------------------------
    def invalidate_connector(
        self, connector_id: str, event: Invalidation, *, revision: int | None = None
    ) -> None:
        """Drop every entry of a connector (any revision) and end its watches with ``event``.

        ``revision`` (optional, for ``updated``): the new revision; requests for
        older ones that were already under way are refused from now on. Without
        it, the highest revision the cache knows for the connector, plus one.
        """
        victims = self._table.of_connector(connector_id)
        if event == "deleted":
            self._tombstones.remember(connector_id, None, event)
        else:
            known = [e.key.revision + 1 for e in victims]
            known += [
                k.revision + 1 for k in self._hub.watched_keys() if k.connector_id == connector_id
            ]
            floor = revision if revision is not None else max(known, default=None)
            if floor is not None:
                self._tombstones.remember(connector_id, floor, event)
        for entry in victims:
            self._table.drop(entry)
            if entry.flight is not None:
                entry.flight.finish(error=superseded_error(event))
                entry.flight = None
        closed = self._hub.close_where(lambda k: k.connector_id == connector_id, WatchEvent(event))
        log.info(
            "cache_connector_invalidated",
            connector_id=connector_id,
            change=event,
            entries=len(victims),
            watchers=closed,
        )

    def _refuse_superseded(self, key: CacheKey) -> None:
        event = self._tombstones.superseded(key)
        if event is not None:
            raise superseded_error(event)

    # -- status -------------------------------------------------------------
    def stats(self) -> dict[str, int]:
        return {"entries": len(self._entries), "subscribers": self._hub.total} | asdict(
            self.counters
        )

    def subscribers(self, key: CacheKey) -> int:
        return self._hub.count(key)

    # -- entries --------------------------------------------------------------
    def _expire(self, entry: Entry) -> None:
        """The credential entered its margin: never serve it again; tell watchers if failing."""
        entry.expire()
        self._publish_error(entry)

    def _publish_error(self, entry: Entry) -> None:
        if entry.error is not None:
            self._hub.publish(entry.key, WatchEvent("error", error=str(for_caller(entry.error))))

    # -- minting ------------------------------------------------------------
    def _renew_if_stale(self, entry: Entry, now: datetime) -> None:
        if entry.stale_at is None or now < entry.stale_at or entry.flight is not None:
            return
        if entry.holding_error(now):
            return  # backing off (or holding a permanent error): the loop retries
        self._start_flight(entry, slot=None)

    def _start_flight(
        self, entry: Entry, slot: anyio.Semaphore | None, *, forced: bool = False
    ) -> Flight:
        if self._tg is None:
            raise RuntimeError(
                "CredentialCache is not running: start it with "
                "`await task_group.start(cache.run)` or `async with cache.running():`"
            )
        flight = entry.flight = Flight()
        self._table.unschedule(entry)  # the flight's end reschedules
        self._tg.start_soon(self._fly, entry, flight, slot, forced)
        return flight

    async def _fly(
        self, entry: Entry, flight: Flight, slot: anyio.Semaphore | None, forced: bool = False
    ) -> None:
        started = self._clock.now()
        try:
            try:
                outcome = await mint_once(entry.key, entry.mint, self._mint_timeout)
            except anyio.get_cancelled_exc_class():
                flight.finish(error=Unavailable("the broker is shutting down"))
                raise
            if isinstance(outcome, BrokerError):
                self._failed(entry, flight, outcome, forced)
            else:
                self._minted(entry, flight, outcome, started, forced)
        finally:
            if entry.flight is flight:
                entry.flight = None
            if slot is not None:
                slot.release()

    def _minted(
        self,
        entry: Entry,
        flight: Flight,
        credential: ClientCredential,
        started: datetime,
        forced: bool = False,
    ) -> None:
        if entry.flight is flight:
            entry.flight = None
        if flight.done.is_set():
            return  # invalidated meanwhile: minted from an old revision, never served
        if entry.dropped:  # evicted meanwhile: the waiters still get it
            flight.finish(credential, policy.invalid_at(credential))
            self.counters.mints += 1
            return
        renewal = entry.anchor is not None
        replaced_expiry = entry.anchor[0] if entry.anchor is not None else None
        outcome = entry.accept(credential, started, self._clock.now(), self._rng)
        if isinstance(outcome, BrokerError):
            self._failed(entry, flight, outcome, forced)
            return
        flight.finish(outcome, entry.invalid_at)
        self.counters.mints += 1
        self.counters.renewals += renewal
        self.counters.rotations += forced
        if self.on_minted is not None:
            self.on_minted(entry.key, outcome)
        if replaced_expiry is not None:
            self._record_lead(replaced_expiry)
        self._hub.publish(entry.key, WatchEvent("renewed", outcome))
        self._table.reschedule(entry)

    def _record_lead(self, replaced_expiry: datetime) -> None:
        lead = int((replaced_expiry - self._clock.now()).total_seconds() * 1000)
        counters = self.counters
        counters.renewal_lead_ms += lead
        if counters.renewal_lead_ms_min < 0 or lead < counters.renewal_lead_ms_min:
            counters.renewal_lead_ms_min = lead

    def _failed(
        self, entry: Entry, flight: Flight, error: BrokerError, forced: bool = False
    ) -> None:
        if entry.flight is flight:
            entry.flight = None
        if flight.done.is_set():
            return
        self.counters.mint_failures += 1
        self.counters.rotation_failures += forced
        error = error.with_traceback(None)  # kept per key: do not keep the mint's frames alive
        flight.finish(error=error)
        if entry.dropped:
            return
        if forced and entry.error is None and entry.servable(self._clock.now()):
            # A failed rotation of a good credential: keep serving it on its own
            # schedule (the caller got the error; nothing to retry in the background).
            log_failure(entry, error, rotation=True)
            self._table.reschedule(entry)
            return
        log_failure(entry, error, delay=entry.fail(error, self._clock.now(), self._rng))
        if entry.credential is None:
            self._publish_error(entry)
        self._table.reschedule(entry)

    # -- background renewal ---------------------------------------------------
    def _on_due(self, entry: Entry, now: datetime) -> bool:
        """Drop an idle entry, expire a credential entering its margin; True: renew it."""
        if entry.dropped or entry.flight is not None:
            return False
        if self._table.drop_if_idle(entry, now):
            return False
        if entry.credential is not None and not entry.servable(now):
            self._expire(entry)
        if entry.wants_renewal(now):
            return True
        self._table.reschedule(entry)
        return False

    async def _renew_loop(self, slots: anyio.Semaphore) -> None:
        while True:
            for entry in self._table.deadlines.pop_due(self._clock.now()):
                if not self._on_due(entry, self._clock.now()):
                    continue
                await slots.acquire()
                if entry.wants_renewal(self._clock.now()):
                    self._start_flight(entry, slot=slots)
                else:  # a caller started it, or the entry went, while we waited
                    slots.release()
                    self._table.reschedule(entry)
            await self._table.deadlines.wait()
