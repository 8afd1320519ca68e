"""One cache entry's state and its transitions, apart from the I/O that drives them.

:class:`Entry` knows what it holds, when it next needs attention and how a
mint's outcome changes it; :class:`broker.cache.cache.CredentialCache` runs
the mints and publishes to watchers; :class:`broker.cache.table.EntryTable` keeps the
deadlines and the eviction order. Every method takes
``now`` rather than reading a clock.
"""

from __future__ import annotations

import copy
import random
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Literal

import anyio

from broker.cache import policy
from broker.errors import BrokerError, FailedPrecondition, NotFound, Unavailable
from broker.model import ClientCredential

Mint = Callable[[], Awaitable[ClientCredential]]
Invalidation = Literal["updated", "deleted"]

#: Connectors whose update / delete is remembered, to refuse requests that
#: resolved the old revision just before the change. The race lasts one
#: request, so the most recent few thousand changes are plenty.
TOMBSTONES_KEPT = 4096


@dataclass(frozen=True, slots=True)
class CacheKey:
    """One resource of one connector revision: a new revision never shares entries."""

    connector_id: str
    revision: int
    resource_type: str
    resource_id: str
    #: A credential minted differently for one front end (e.g. ``sdk-session``: temporary
    #: keys for the AWS container endpoint); "" for the plain one.
    variant: str = ""
    #: For messages only (errors name connectors by name, never by id); not part of the key.
    connector_name: str = field(default="", compare=False)

    def describe(self) -> str:
        what = f"{self.resource_type} '{self.resource_id}'"
        if self.variant:
            what += f" ({self.variant})"
        return f"{what} of connector '{self.connector_name or self.connector_id}'"


@dataclass
class CacheCounters:
    """Running totals a metrics exporter reads (plain attributes, cheap to bump)."""

    hits: int = 0
    misses: int = 0
    mints: int = 0
    mint_failures: int = 0
    #: Successful mints that replaced an earlier credential of the same key.
    renewals: int = 0
    evictions: int = 0
    #: Sum over renewals of how long before the replaced credential's expiry each
    #: finished (ms): divided by ``renewals`` it is the mean renewal lead time.
    renewal_lead_ms: int = 0
    #: The shortest such lead seen (ms); -1 until a renewal replaced an expiring one.
    renewal_lead_ms_min: int = -1
    #: Forced mints (``broker credentials rotate``) that got a new credential / that failed.
    rotations: int = 0
    rotation_failures: int = 0
    #: Credentials taken back from the persistent cache at start-up (no mint needed).
    restored: int = 0


class Flight:
    """One in-flight mint; its waiters share the outcome."""

    __slots__ = ("credential", "done", "error", "invalid_at")

    def __init__(self) -> None:
        self.done = anyio.Event()
        self.credential: ClientCredential | None = None
        self.invalid_at: datetime | None = None
        self.error: BrokerError | None = None

    def finish(
        self,
        credential: ClientCredential | None = None,
        invalid_at: datetime | None = None,
        error: BrokerError | None = None,
    ) -> None:
        """Hand the outcome to the waiters (only the first outcome counts)."""
        if self.done.is_set():
            return
        self.credential, self.invalid_at, self.error = credential, invalid_at, error
        self.done.set()


@dataclass(eq=False, slots=True)
class Entry:
    """A key's credential, its renewal points and its failure state."""

    key: CacheKey
    #: The latest mint function a caller gave (all mint the same key's revision).
    mint: Mint
    last_used: datetime
    credential: ClientCredential | None = None
    #: The jittered renew point (None: long-lived, never renewed).
    stale_at: datetime | None = None
    #: Where the margin starts: never served from here on.
    invalid_at: datetime | None = None
    #: (expires_at, since) of the last credential: ``since`` is its declared
    #: ``issued_at``, else when this entry first got that expiry. It places renew
    #: points and scales retries; margins never use it (see policy.margin).
    anchor: tuple[datetime, datetime] | None = None
    flight: Flight | None = None
    error: BrokerError | None = None
    permanent: bool = False
    #: Until then, callers get ``error`` from memory and the loop does not retry.
    retry_at: datetime | None = None
    #: Consecutive failed (or unchanged) mints, for the backoff.
    attempts: int = 0
    #: Removed from the cache (evicted or invalidated); its flight result is not kept.
    dropped: bool = False

    def servable(self, now: datetime) -> bool:
        return self.credential is not None and (self.invalid_at is None or now < self.invalid_at)

    def holding_error(self, now: datetime) -> bool:
        """Whether a recent failure is answered from memory instead of a new mint."""
        return self.error is not None and self.retry_at is not None and now < self.retry_at

    def expire(self) -> None:
        """Forget the credential: it entered its margin and is never served again."""
        self.credential = self.stale_at = self.invalid_at = None

    def accept(
        self, credential: ClientCredential, started: datetime, now: datetime, rng: random.Random
    ) -> ClientCredential | BrokerError:
        """Take a freshly minted credential, or say why it cannot be served."""
        since, unchanged = self._since(credential, started)
        limit = policy.invalid_at(credential)
        if limit is not None and now >= limit:
            assert credential.expires_at is not None
            message = (
                f"the credential minted for {self.key.describe()} expires at "
                f"{credential.expires_at.isoformat()}, inside its safety margin"
            )
            if unchanged:  # the same token again: a pass-through of the connector's own
                message += "; if the connector stores this token, update it with a fresh one"
            return Unavailable(message)
        self.credential, self.invalid_at = credential, limit
        if unchanged and limit is not None:
            # Same expiry as before (an upstream that caches its tokens, or a stored
            # token handed through): ask again after a backoff, keep serving meanwhile.
            self.attempts += 1
            until = (limit - now).total_seconds()
            delay = policy.backoff(self.attempts, rng, until=until, cap=self._retry_cap())
            self.stale_at = now + timedelta(seconds=delay)
        else:
            self.attempts = 0
            self.stale_at = policy.renew_at(credential, rng, since)
        if credential.expires_at is not None:
            self.anchor = (credential.expires_at, since)
        self.error, self.permanent, self.retry_at = None, False, None
        return credential

    def _since(self, credential: ClientCredential, started: datetime) -> tuple[datetime, bool]:
        """Where the credential's servable lifetime starts for renewal, and whether its
        expiry failed to move on (the same token again).

        The declared ``issued_at`` if any; else, for the expiry already held, the
        moment it was first got; else the mint's start. Never written into the
        credential: its margin depends on what the upstream declared only.
        """
        expiry = credential.expires_at
        if self.anchor is None or expiry is None:
            return credential.issued_at or started, False
        last_expiry, last_since = self.anchor
        since = credential.issued_at or (last_since if expiry == last_expiry else started)
        return since, expiry <= last_expiry

    def fail(self, error: BrokerError, now: datetime, rng: random.Random) -> float | None:
        """Record a failed mint; returns seconds until the retry (None: permanent, no retry).

        A still-servable credential is kept (and the retry lands before its
        margin); otherwise it is forgotten.
        """
        self.attempts += 1
        self.error, self.permanent = error, not error.retryable
        serving = self.servable(now)
        if self.permanent:
            self.retry_at = now + timedelta(seconds=policy.PERMANENT_ERROR_HOLD_SECONDS)
            delay = None
        else:
            until = None
            if serving and self.invalid_at is not None:
                until = (self.invalid_at - now).total_seconds()
            delay = policy.backoff(self.attempts, rng, until=until, cap=self._retry_cap())
            self.retry_at = now + timedelta(seconds=delay)
        if not serving:
            self.expire()
        return delay

    def _retry_cap(self) -> float:
        """Scaled to the last known lifetime (unknown before the first success)."""
        return policy.retry_cap(self.anchor[0] - self.anchor[1] if self.anchor else None)

    def wants_renewal(self, now: datetime) -> bool:
        if self.dropped or self.flight is not None:
            return False
        if self.error is not None:
            return not self.permanent and self.retry_at is not None and now >= self.retry_at
        if self.credential is None:
            return True
        return self.stale_at is not None and now >= self.stale_at

    def next_deadline(self, watched: bool, idle: timedelta) -> datetime | None:
        """When the entry next needs the loop: idle check, renew point, margin, retry."""
        if self.flight is not None or self.dropped:
            return None  # the flight's end reschedules
        times: list[datetime] = []
        if not watched:
            times.append(self.last_used + idle)
        if self.credential is not None and self.invalid_at is not None:
            times.append(self.invalid_at)
            if self.error is None and self.stale_at is not None:
                times.append(self.stale_at)
        if self.error is not None and not self.permanent and self.retry_at is not None:
            times.append(self.retry_at)
        return min(times, default=None)


class Tombstones:
    """Recent connector updates and deletes: keys of older revisions are refused."""

    def __init__(self, kept: int = TOMBSTONES_KEPT) -> None:
        self._kept = kept
        self._by_connector: OrderedDict[str, tuple[int | None, Invalidation]] = OrderedDict()

    def remember(self, connector_id: str, floor: int | None, event: Invalidation) -> None:
        """Refuse revisions below ``floor`` (None: every revision, the connector is gone)."""
        self._by_connector[connector_id] = (floor, event)
        self._by_connector.move_to_end(connector_id)
        while len(self._by_connector) > self._kept:
            self._by_connector.popitem(last=False)

    def superseded(self, key: CacheKey) -> Invalidation | None:
        tomb = self._by_connector.get(key.connector_id)
        if tomb is None:
            return None
        floor, event = tomb
        return event if floor is None or key.revision < floor else None


def superseded_error(event: Invalidation) -> BrokerError:
    if event == "deleted":
        return NotFound("the connector was deleted while its credentials were being issued")
    return Unavailable(
        "the connector was updated while its credentials were being issued; ask again"
    )


def rotation_failed(
    key: CacheKey, error: BrokerError, serving: ClientCredential | None
) -> BrokerError:
    """A failed forced rotation: the cause's own type (so its status), why, and what is
    still served (the old credential stays until a new one is in hand)."""
    cause = for_caller(error)
    if serving is None:
        tail = "no credential is held for it"
    elif serving.expires_at is None:
        tail = "the current (long-lived) credential is still served"
    else:
        tail = (
            "the current credential is still served; it expires at "
            f"{serving.expires_at.isoformat()}"
        )
    message = f"rotating {key.describe()} failed: {cause.message}; {tail}"
    try:
        out = type(cause)(message, field=cause.field, retryable=cause.retryable)
    except Exception:  # a subclass with its own constructor
        out = (
            Unavailable(message, field=cause.field)
            if cause.retryable
            else FailedPrecondition(message)
        )
    return out


def for_caller(error: BrokerError) -> BrokerError:
    """What a caller gets for a failed mint: retryable errors as Unavailable.

    A fresh instance per caller: one exception raised by many tasks would grow
    its traceback with every raise.
    """
    if error.retryable and not isinstance(error, Unavailable):
        return Unavailable(error.message, field=error.field)
    try:
        return copy.copy(error)
    except Exception:  # a provider subclass that cannot be rebuilt from its message
        return error
