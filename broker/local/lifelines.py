"""Grants that end with the process that asked for them (``broker exec``).

``broker exec`` revokes its grant when its child exits, but if ``broker exec``
itself is SIGKILLed (or OOM-killed) nobody is left to revoke it, and the grant
would live out its TTL (12 h by default). So the daemon ties such a grant to the
caller's process: a pidfd (``pidfd_open``, Linux ≥ 5.3) watched by the event loop
turns readable the moment that process exits, and the grant is revoked then.

The pid is the kernel's (``SO_PEERCRED``, on :class:`Principal`), never the
caller's word. A pid can be reused once its process exits, so the process the
pidfd refers to must have started by the time the kernel reported the pid
(``Principal.seen_ticks``): the start time is read *after* ``pidfd_open``, so a
pidfd opened on a newer process with that pid shows up as a later start. A caller
whose process cannot be watched is refused (FAILED_PRECONDITION, saying why),
never silently left to its TTL.
"""

from __future__ import annotations

import asyncio
import os
import select
from collections.abc import Callable
from dataclasses import dataclass

from broker.errors import FailedPrecondition, Unavailable
from broker.identity.cgroups import ProcessGone, start_time
from broker.identity.principal import Principal

#: Processes watched at most at once (one pidfd each): a bound on the daemon's
#: descriptors however many ``broker exec`` run.
MAX_WATCHED = 1024
FIELD = "bound_to_caller_process"


class ProcessInvisible(FailedPrecondition):
    """The daemon cannot watch the caller's process at all (a TCP caller, another pid
    namespace, no pidfd_open): the grant is made unbound, and says so (bound_pid 0)."""


def _refused(
    reason: str, kind: type[FailedPrecondition] = FailedPrecondition
) -> FailedPrecondition:
    return kind(f"cannot bind the grant to the calling process: {reason}", field=FIELD)


@dataclass
class Lifeline:
    """The caller's live process, held open by its pidfd."""

    pid: int
    fd: int

    def close(self) -> None:
        os.close(self.fd)


def open_caller(principal: Principal) -> Lifeline:
    """A pidfd of the caller's live process, checked against pid reuse; or refused."""
    pid = principal.pid
    if principal.transport != "unix" or not pid or pid <= 0:
        raise _refused(
            f"{principal.describe()} has no process the daemon can see (a TCP caller, or "
            "one in another pid namespace): call over the Unix socket",
            ProcessInvisible,
        )
    pidfd_open = getattr(os, "pidfd_open", None)
    if pidfd_open is None:
        raise _refused("this system has no pidfd_open (needs Linux 5.3 or later)", ProcessInvisible)
    try:
        fd: int = pidfd_open(pid)
    except ProcessLookupError:
        raise _refused(f"the calling process (pid {pid}) has already exited") from None
    except OSError as exc:  # ENOSYS (old kernel, seccomp), EMFILE ...
        raise _refused(f"pidfd_open({pid}) failed: {exc.strerror}", ProcessInvisible) from None
    try:
        _check(fd, pid, principal.seen_ticks)
    except BaseException:
        os.close(fd)
        raise
    return Lifeline(pid, fd)


def _check(fd: int, pid: int, seen_ticks: int | None) -> None:
    try:
        start = start_time(pid)
    except ProcessGone:
        raise _refused(f"the calling process (pid {pid}) has already exited") from None
    if seen_ticks is not None and start > seen_ticks + 1:
        raise _refused(f"pid {pid} now belongs to a process started after the call (reused)")
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    if poller.poll(0):  # readable: that process has exited (a zombie reads as exited)
        raise _refused(f"the calling process (pid {pid}) has already exited")


class Lifelines:
    """Grant id -> the process it ends with, watched on the running event loop."""

    def __init__(self, limit: int = MAX_WATCHED) -> None:
        self._limit = limit
        self._watches: dict[str, Lifeline] = {}
        self._loop: asyncio.AbstractEventLoop | None = None

    def __len__(self) -> int:
        return len(self._watches)

    def open(self, principal: Principal) -> Lifeline:
        """The caller's process (checked, counted against the limit) before a grant is made."""
        if len(self._watches) >= self._limit:
            raise Unavailable(
                f"the daemon already watches {self._limit} processes for grants bound to "
                "them (the most it will): try again when some have ended",
                field=FIELD,
            )
        return open_caller(principal)

    def watch(self, grant_id: str, lifeline: Lifeline, on_exit: Callable[[str, int], None]) -> None:
        """Call ``on_exit(grant_id, pid)`` once, when the process exits; owns ``lifeline``."""
        self._loop = asyncio.get_running_loop()
        self._watches[grant_id] = lifeline
        self._loop.add_reader(lifeline.fd, self._exited, grant_id, on_exit)

    def _exited(self, grant_id: str, on_exit: Callable[[str, int], None]) -> None:
        lifeline = self._watches.get(grant_id)
        self.release(grant_id)
        if lifeline is not None:
            on_exit(grant_id, lifeline.pid)

    def release(self, grant_id: str) -> None:
        """Stop watching (the grant ended otherwise: revoked, expired, daemon stopping)."""
        lifeline = self._watches.pop(grant_id, None)
        if lifeline is None:
            return
        if self._loop is not None and not self._loop.is_closed():
            self._loop.remove_reader(lifeline.fd)
        lifeline.close()

    def close(self) -> None:
        for grant_id in list(self._watches):
            self.release(grant_id)
