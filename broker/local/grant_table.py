"""The live SDK grants, and every way one ends.

Kept apart from the listeners and request checks (:mod:`broker.local.sdk`)
because a grant ends four ways and each must do the same bookkeeping: revoked
by its owner, its caller's process exited (:mod:`broker.local.lifelines`),
found expired on use, or dropped by the background sweep. Each drops the
grant, releases its lifeline, closes its metadata listener (if it has one) and
writes one audit line. Tokens live only as SHA-256 hashes; the hashes of the
last expired AWS tokens are kept to say "expired" rather than "unknown".
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
from datetime import UTC, datetime

import structlog
from aiohttp import web

from broker.audit import AuditLog
from broker.clock import Clock
from broker.errors import Unauthenticated
from broker.grants import Grant
from broker.identity.principal import Principal
from broker.local import formats
from broker.local.lifelines import Lifelines

log = structlog.get_logger(__name__)

#: How often expired grants are looked for (they are refused on use at once anyway).
SWEEP_INTERVAL_SECONDS = 30.0
#: Token hashes of expired AWS grants remembered, to say "expired" rather than "unknown".
_EXPIRED_TOKENS_KEPT = 1024


def token_hash(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def stamp(when: datetime) -> str:
    return formats.rfc3339(when.astimezone(UTC))


class GrantTable:
    """Grants by id, the metadata listener of each gcp grant, and the expiry sweep."""

    def __init__(self, audit: AuditLog, clock: Clock, lifelines: Lifelines) -> None:
        self._audit = audit
        self._clock = clock
        self.lifelines = lifelines
        self._grants: dict[str, Grant] = {}
        self._runners: dict[str, web.AppRunner] = {}
        self._expired_tokens: dict[bytes, datetime] = {}
        self._sweeper: asyncio.Task[None] | None = None
        self._closing: set[asyncio.Task[None]] = set()

    def __contains__(self, grant_id: str) -> bool:
        return grant_id in self._grants

    def get(self, grant_id: str) -> Grant | None:
        return self._grants.get(grant_id)

    def ids(self) -> set[str]:
        return set(self._grants)

    def live(self) -> list[Grant]:
        """Every grant still live (expired ones are dropped first)."""
        self.expire_due()
        return list(self._grants.values())

    def add(self, grant: Grant, runner: web.AppRunner | None = None) -> None:
        """Record a new grant (and its metadata listener), and make sure the sweep runs."""
        if runner is not None:
            self._runners[grant.id] = runner
        self._grants[grant.id] = grant
        self._start_sweeper()

    def by_token(self, token: str) -> Grant:
        """The live AWS grant of this token; refused if unknown, revoked or expired."""
        digest = token_hash(token)
        for grant in self._grants.values():
            if grant.kind == "aws" and hmac.compare_digest(grant.token_hash, digest):
                if self._clock.now() >= grant.expires_at:
                    self.expire_due()
                    break
                return grant
        expired = self._expired_tokens.get(digest)
        if expired is not None:
            raise Unauthenticated(
                f"authorization token expired at {stamp(expired)}: "
                "create a new one with `broker env aws`"
            )
        raise Unauthenticated("unknown or revoked authorization token")

    async def revoke(self, grant: Grant, principal: Principal) -> None:
        """End a grant its owner (or an admin, ``principal``) revoked."""
        del self._grants[grant.id]
        self.lifelines.release(grant.id)
        runner = self._runners.pop(grant.id, None)
        if runner is not None:
            await runner.cleanup()
        self._audit.record(
            "sdk_endpoint_revoked",
            id=grant.id,
            kind=grant.kind,
            connector=grant.connector,
            owner=grant.owner.describe(),
            **principal.audit_fields(),
        )

    def caller_exited(self, grant_id: str, pid: int) -> None:
        """The process a grant was bound to has exited: revoke it now (from the loop)."""
        grant = self._grants.pop(grant_id, None)
        if grant is None:
            return
        self._close_later(self._runners.pop(grant_id, None))
        self._audit.record(
            "sdk_endpoint_revoked",
            id=grant_id,
            kind=grant.kind,
            connector=grant.connector,
            reason=f"the process it was bound to (pid {pid}) exited",
            bound_pid=pid,
            **grant.owner.audit_fields(),
        )

    def _close_later(self, runner: web.AppRunner | None) -> None:
        """Close a metadata listener in the background (not from inside its own request)."""
        if runner is not None:
            task = asyncio.get_running_loop().create_task(runner.cleanup())
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    # -- expiry ---------------------------------------------------------------
    def _start_sweeper(self) -> None:
        if self._sweeper is None or self._sweeper.done():
            self._sweeper = asyncio.get_running_loop().create_task(
                self._sweep_forever(), name="sdk-grant-sweeper"
            )

    async def _sweep_forever(self) -> None:
        while True:
            await self._clock.sleep(SWEEP_INTERVAL_SECONDS)
            try:
                await self.sweep()
            except Exception:  # keep sweeping whatever one close did
                log.exception("sdk_endpoint_sweep_failed")

    def _expire(self, grant: Grant) -> web.AppRunner | None:
        """Forget an expired grant; its metadata listener (if any) is returned to close."""
        if self._grants.pop(grant.id, None) is None:
            return None
        self.lifelines.release(grant.id)
        if grant.kind == "aws":
            if len(self._expired_tokens) >= _EXPIRED_TOKENS_KEPT:
                self._expired_tokens.pop(next(iter(self._expired_tokens)))
            self._expired_tokens[grant.token_hash] = grant.expires_at
        self._audit.record(
            "sdk_endpoint_expired",
            id=grant.id,
            kind=grant.kind,
            connector=grant.connector,
            expires_at=stamp(grant.expires_at),
            **grant.owner.audit_fields(),
        )
        return self._runners.pop(grant.id, None)

    def _due(self) -> tuple[Grant, ...]:
        now = self._clock.now()
        return tuple(g for g in self._grants.values() if now >= g.expires_at)

    def expire_due(self) -> None:
        """Drop expired grants now; their listeners close in the background.

        Used from inside requests, where awaiting a listener's own shutdown
        would wait for the request itself.
        """
        for grant in self._due():
            self._close_later(self._expire(grant))

    async def sweep(self) -> int:
        """Drop every expired grant and close its listener; returns how many."""
        due = self._due()
        for grant in due:
            runner = self._expire(grant)
            if runner is not None:
                await runner.cleanup()
        return len(due)

    async def stop(self) -> None:
        """Stop the sweep and the watchers, close every metadata listener, forget all."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            await asyncio.gather(self._sweeper, return_exceptions=True)
            self._sweeper = None
        self.lifelines.close()
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)
        for runner in self._runners.values():
            await runner.cleanup()
        self._runners.clear()
        self._grants.clear()
