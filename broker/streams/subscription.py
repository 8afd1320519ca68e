"""One watcher's mailbox: a latest-value slot, so a slow consumer never blocks anyone.

Publishing overwrites the slot and sets an event; it never awaits. A consumer
that falls behind only ever sees the newest event (credentials are snapshots:
an older one is worth nothing once a newer exists). Events the consumer was
already given (the same credential again, the same error again) are skipped,
so a renewal that changes nothing is not re-sent. The idea is SPIRE's
workload-API subscriber, which holds one latest value for the same reasons.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import anyio

from broker.model import ClientCredential

EventKind = Literal["issued", "renewed", "updated", "deleted", "error"]

#: Kinds after which a subscription receives nothing more.
TERMINAL_KINDS: frozenset[str] = frozenset({"updated", "deleted"})


@dataclass(frozen=True)
class WatchEvent:
    """One event of a watch stream.

    ``issued``: the first credential a watcher gets; ``renewed``: each later
    one; ``error``: renewal failed and nothing valid is left (the stream goes
    on, retrying); ``updated`` / ``deleted``: the connector changed and this
    stream ends (after ``updated`` the service layer watches the new revision).
    """

    kind: EventKind
    credential: ClientCredential | None = None
    error: str | None = None

    @property
    def terminal(self) -> bool:
        return self.kind in TERMINAL_KINDS


def same_credential(a: ClientCredential, b: ClientCredential) -> bool:
    """Identical for a consumer: same expiry and same configuration (secrets included)."""
    return a is b or (a.expires_at == b.expires_at and a.config == b.config)


def repeats(last: WatchEvent | None, event: WatchEvent) -> bool:
    """Whether ``event`` tells a consumer who last saw ``last`` nothing new."""
    if last is None:
        return False
    if event.credential is not None and last.credential is not None:
        return same_credential(last.credential, event.credential)
    return event.kind == "error" and last.kind == "error" and event.error == last.error


class Subscription:
    """A latest-value slot with an event; one consumer, any number of publishers."""

    __slots__ = ("_closed", "_last", "_pending", "_ready")

    def __init__(self) -> None:
        self._pending: WatchEvent | None = None
        self._ready = anyio.Event()
        self._closed = False
        self._last: WatchEvent | None = None

    def offer(self, event: WatchEvent) -> None:
        """Replace whatever is waiting with ``event``; never blocks.

        A terminal event (``updated`` / ``deleted``) is never overwritten and
        nothing is accepted after it.
        """
        if self._closed:
            return
        self._pending = event
        self._closed = event.terminal
        self._ready.set()

    def close(self) -> None:
        """End the stream once the waiting event (if any) has been received."""
        self._closed = True
        self._ready.set()

    @property
    def closed(self) -> bool:
        return self._closed

    def delivered(self, event: WatchEvent) -> None:
        """Record an event the consumer got another way (the first credential)."""
        self._last = event

    async def receive(self) -> WatchEvent:
        """The newest event not yet seen; raises ``anyio.EndOfStream`` once closed."""
        while True:
            if self._pending is None:
                if self._closed:
                    raise anyio.EndOfStream
                await self._ready.wait()
                if self._pending is None:
                    self._ready = anyio.Event()
                    continue
            event = self._pending
            self._pending = None
            if not self._closed:
                self._ready = anyio.Event()
            if repeats(self._last, event):
                continue
            self._last = event
            return event
