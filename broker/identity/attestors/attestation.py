"""Attesting one local caller: pid → process (start time) → container → selectors.

Two caches, both bounded and short-lived (``cache_seconds``):

- per process, keyed by (pid, start time): a pid reused by another process
  has another start time, so it never inherits an identity;
- per container id: a new process in a known container (a credential helper
  docker starts per call) costs two ``/proc`` reads, not an API call. Callers
  of a container not yet known wait for one shared look-up.

What is refused outright (:class:`~broker.errors.Unauthenticated`), never
guessed: a pid the daemon cannot see (another pid namespace), a process gone
before it was read, a pid now held by a process that started after the
connection, a cgroup list naming two containers.

What is not refused: an attestor that cannot answer, or does not know the
container. The caller then has its uid/gid selectors and ``container:ID`` only,
so no rule needing ``docker:…`` / ``k8s:…`` selectors can match (policy rules
only ever add permissions), the built-in admin rules skip it (it is in a
container), and a denial names the reason (``[attestation: kubernetes
attestor: the API server at … is unreachable: …]``). Such an answer is kept
for :data:`FAILED_CACHE_SECONDS` only.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import structlog

from broker.errors import Unauthenticated
from broker.identity.attestors.base import Attestor, AttestorUnavailable, Finding
from broker.identity.attestors.settings import AttestorSettings
from broker.identity.cgroups import (
    PROC,
    CgroupError,
    Container,
    ProcessGone,
    read_process,
    start_time,
)
from broker.identity.principal import Principal
from broker.logs import RateLimitedLog

log = structlog.get_logger(__name__)
_unavailable = RateLimitedLog(log, burst=5, window=10.0)

#: How long an answer with an attestor failure is reused (it recovers as fast as this).
FAILED_CACHE_SECONDS = 1.0
#: Entries per cache at most; when full, expired ones go, then all.
MAX_ENTRIES = 8192


@dataclass(frozen=True)
class Facts:
    """What attestation found about one process."""

    container: Container | None
    selectors: frozenset[str] = frozenset()
    note: str | None = None
    failed: bool = False

    def apply(self, base: Principal) -> Principal:
        if self.container is None:
            return base  # not in a container: the kernel's identity is all there is
        head, sep, via = base.label.rpartition(" via ")
        where = f"in container {self.container.short}"
        label = f"{head} {where} via {via}" if sep else f"{base.label} {where}"
        return replace(
            base,
            selectors=base.selectors | self.selectors,
            attested=self.selectors,
            container_id=self.container.id,
            attestation_note=self.note,
            label=label,
        )


HOST = Facts(None)


def _put(
    cache: dict[object, tuple[float, Facts]], key: object, value: tuple[float, Facts], now: float
) -> None:
    if len(cache) >= MAX_ENTRIES:
        for stale in [k for k, (expires, _) in cache.items() if expires <= now]:
            del cache[stale]
        if len(cache) >= MAX_ENTRIES:
            cache.clear()
    cache[key] = value


class Attestation:
    """The configured attestors, their caches, and the rules above."""

    def __init__(
        self,
        attestors: Sequence[Attestor],
        *,
        cache_seconds: float = 10.0,
        proc: Path = PROC,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.attestors = tuple(attestors)
        self.cache_seconds = cache_seconds
        self._proc = proc
        self._clock = clock
        self._processes: dict[object, tuple[float, Facts]] = {}
        self._containers: dict[object, tuple[float, Facts]] = {}
        self._principals: dict[object, tuple[Facts, object, Principal]] = {}
        self._pending: dict[str, asyncio.Task[Facts]] = {}
        #: Helper-socket connections → the start time of the process that first called on it.
        self._connections: weakref.WeakKeyDictionary[object, int] = weakref.WeakKeyDictionary()

    @classmethod
    def from_settings(cls, settings: AttestorSettings) -> Attestation:
        attestors: list[Attestor] = []
        if settings.docker is not None:
            from broker.identity.attestors.docker import DockerAttestor

            attestors.append(DockerAttestor(settings.docker))
        if settings.kubernetes is not None:
            from broker.identity.attestors.kubernetes import KubernetesAttestor

            attestors.append(KubernetesAttestor(settings.kubernetes))
        return cls(attestors, cache_seconds=settings.cache_seconds)

    async def start(self) -> None:
        for attestor in self.attestors:
            await attestor.start()

    async def aclose(self) -> None:
        for task in list(self._pending.values()):
            task.cancel()
        for attestor in self.attestors:
            await attestor.aclose()

    def forget(self) -> None:
        """Drop every cached answer (tests; a changed pod is otherwise seen within the TTL)."""
        self._processes.clear()
        self._containers.clear()
        self._principals.clear()

    # -- one caller ------------------------------------------------------------------

    async def principal(
        self,
        base: Principal,
        *,
        connection: object | None = None,
        started_by: int | None = None,
    ) -> Principal:
        """``base`` (from SO_PEERCRED) with what attestation adds; Unauthenticated when the
        process cannot be tied to the caller.

        ``connection``: a connection several requests arrive on (the helper socket's
        transport); each must come from the process that made its first request.
        ``started_by``: the process must have started by then (ticks after boot; the
        time the connection was accepted).
        """
        pid = base.pid or 0
        if pid <= 0:
            raise Unauthenticated(
                "the caller's pid is not visible to the daemon (it runs in another pid "
                "namespace: a daemon attesting workloads needs the host's, hostPID), so it "
                "cannot be attested"
            )
        try:
            start = start_time(pid, self._proc)
        except ProcessGone:
            raise Unauthenticated(_gone(pid)) from None
        first: int | None = None
        if connection is not None:
            first = self._connections.get(connection)
            if first is not None and first != start:
                raise Unauthenticated(
                    f"pid {pid} now belongs to another process than the one that called first "
                    "on this connection: refused"
                )
        key = (pid, start)
        hit = self._processes.get(key)
        if hit is not None and hit[0] > self._clock():
            facts = hit[1]
        else:
            facts = await self._process(pid, start, started_by)
        if connection is not None and first is None:
            self._connections[connection] = start
        # The principal made for this process last time, if the kernel said the same then.
        said = (base.uid, base.gid, base.gids, base.label)
        made = self._principals.get(key)
        if made is not None and made[0] is facts and made[1] == said:
            return made[2]
        principal = facts.apply(base)
        if len(self._principals) >= MAX_ENTRIES:
            self._principals.clear()
        self._principals[key] = (facts, said, principal)
        return principal

    async def _process(self, pid: int, start: int, started_by: int | None) -> Facts:
        try:
            process = read_process(pid, started_by=started_by, proc=self._proc)
        except ProcessGone as exc:
            raise Unauthenticated(
                f"{exc}: the calling process could not be attested, so the call is refused "
                "rather than guessed"
            ) from None
        except CgroupError as exc:
            raise Unauthenticated(f"cannot tell which container pid {pid} runs in: {exc}") from None
        if process.start != start:
            raise Unauthenticated(_gone(pid))
        facts = HOST if process.container is None else await self._container(process.container)
        ttl = FAILED_CACHE_SECONDS if facts.failed else self.cache_seconds
        now = self._clock()
        _put(self._processes, (pid, start), (now + ttl, facts), now)
        return facts

    async def _container(self, container: Container) -> Facts:
        hit = self._containers.get(container.id)
        if hit is not None and hit[0] > self._clock():
            return hit[1]
        task = self._pending.get(container.id)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._ask(container))
            self._pending[container.id] = task
            task.add_done_callback(lambda _: self._pending.pop(container.id, None))
        # Shielded: a caller that hangs up does not cancel the others' look-up.
        return await asyncio.shield(task)

    async def _ask(self, container: Container) -> Facts:
        findings = await asyncio.gather(*(self._one(a, container) for a in self.attestors))
        selectors = {f"container:{container.id}"}
        notes = []
        failed = False
        for attestor, (finding, unavailable) in zip(self.attestors, findings, strict=True):
            selectors |= finding.selectors
            if finding.note:
                notes.append(f"{attestor.name} attestor: {finding.note}")
            failed = failed or unavailable
        facts = Facts(container, frozenset(selectors), "; ".join(notes) or None, failed)
        ttl = FAILED_CACHE_SECONDS if failed else self.cache_seconds
        now = self._clock()
        _put(self._containers, container.id, (now + ttl, facts), now)
        return facts

    async def _one(self, attestor: Attestor, container: Container) -> tuple[Finding, bool]:
        try:
            return await attestor.attest(container), False
        except AttestorUnavailable as exc:
            message = exc.message
        except Exception as exc:  # a bug or an odd answer: the caller is not attested
            log.exception("attestor_failed", attestor=attestor.name, container=container.id)
            message = f"failed ({type(exc).__name__})"
        _unavailable.warning(
            "attestor_unavailable",
            key=attestor.name,
            attestor=attestor.name,
            container=container.id,
            error=message,
        )
        return Finding(note=message), True


def _gone(pid: int) -> str:
    return (
        f"the calling process (pid {pid}) is gone or was replaced before it could be "
        "attested: refused rather than guessed"
    )
