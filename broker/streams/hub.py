"""Who is watching what: key -> subscriptions, with publishing that never waits.

Publishing walks the key's subscribers once and drops the event into each
latest-value slot (:class:`Subscription`), so it costs O(subscribers) and no
consumer, however slow, can hold up the cache or the other subscribers.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

from broker.streams.subscription import EventKind, Subscription, WatchEvent

K = TypeVar("K", bound=Hashable)

__all__ = ["EventKind", "Hub", "Subscription", "WatchEvent"]


class Hub(Generic[K]):
    """Maps a key to the subscriptions watching it."""

    def __init__(self) -> None:
        self._subs: dict[K, set[Subscription]] = {}
        self._total = 0

    def subscribe(self, key: K) -> Subscription:
        sub = Subscription()
        self._subs.setdefault(key, set()).add(sub)
        self._total += 1
        return sub

    def unsubscribe(self, key: K, sub: Subscription) -> None:
        """Forget ``sub`` (idempotent: closing a key removes its subscriptions already)."""
        subs = self._subs.get(key)
        if subs is None or sub not in subs:
            return
        subs.discard(sub)
        self._total -= 1
        if not subs:
            del self._subs[key]

    def publish(self, key: K, event: WatchEvent) -> int:
        """Offer ``event`` to every subscriber of ``key``; returns how many there were."""
        subs = self._subs.get(key)
        if not subs:
            return 0
        for sub in subs:
            sub.offer(event)
        return len(subs)

    def close(self, key: K, final: WatchEvent | None = None) -> int:
        """Send ``final`` (if any), end every stream of ``key`` and forget them."""
        subs = self._subs.pop(key, None)
        if not subs:
            return 0
        self._total -= len(subs)
        for sub in subs:
            if final is not None:
                sub.offer(final)
            sub.close()
        return len(subs)

    def close_where(self, match: Callable[[K], bool], final: WatchEvent | None = None) -> int:
        """:meth:`close` every key ``match`` accepts (a connector's keys, or all at shutdown)."""
        return sum(self.close(key, final) for key in [k for k in self._subs if match(k)])

    def count(self, key: K) -> int:
        subs = self._subs.get(key)
        return len(subs) if subs else 0

    def watched_keys(self) -> list[K]:
        return list(self._subs)

    @property
    def total(self) -> int:
        """Subscriptions across all keys (a gauge for status and metrics)."""
        return self._total
