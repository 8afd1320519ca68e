"""The systemd notify protocol (sd_notify(3)) with the stdlib.

A ``Type=notify`` unit learns readiness, shutdown and liveness from datagrams
the service sends to ``$NOTIFY_SOCKET``. The protocol is a few ``KEY=VALUE``
lines in one datagram, so no library is needed. Without the variable every
call is a no-op: the daemon runs the same in a terminal, a container or under
systemd.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping

import anyio
import anyio.abc
import structlog

log = structlog.get_logger(__name__)

#: Pings go out at this fraction of ``WATCHDOG_USEC``, as sd_watchdog_enabled(3)
#: advises, so one late ping never trips the watchdog.
WATCHDOG_PING_FRACTION = 0.5


def notify_address(value: str) -> str | None:
    """The socket address in ``$NOTIFY_SOCKET``: a path, or ``@name`` (abstract namespace)."""
    if value.startswith("@"):
        return "\0" + value[1:]
    if value.startswith("/"):
        return value
    return None  # vsock: and other transports are not used by the service managers we target


def watchdog_seconds(env: Mapping[str, str], pid: int) -> float | None:
    """The ping period, or None when no watchdog is set for this process."""
    usec = env.get("WATCHDOG_USEC", "").strip()
    owner = env.get("WATCHDOG_PID", "").strip()
    if not usec.isdigit() or int(usec) == 0:
        return None
    if owner and owner != str(pid):
        return None  # the watchdog belongs to another process (e.g. our parent)
    return int(usec) / 1_000_000 * WATCHDOG_PING_FRACTION


class Notifier:
    """Sends state changes to the service manager; silent when there is none."""

    def __init__(self, address: str | None, watchdog_interval: float | None = None) -> None:
        self._address = address
        self.watchdog_interval = watchdog_interval if address else None

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Notifier:
        raw = env.get("NOTIFY_SOCKET", "")
        address = notify_address(raw) if raw else None
        if raw and address is None:
            log.warning("notify_socket_unsupported", notify_socket=raw)
        return cls(address, watchdog_seconds(env, os.getpid()))

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def send(self, *assignments: str) -> bool:
        """One datagram of ``KEY=VALUE`` lines; True if it was sent.

        Non-blocking: a manager that does not read must never stall the event
        loop, and a lost notification is only logged.
        """
        if self._address is None:
            return False
        payload = "\n".join(assignments).encode()
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.setblocking(False)
            try:
                sock.sendto(payload, self._address)
            except OSError as exc:
                log.warning("notify_failed", error=str(exc), message=assignments[0])
                return False
        return True

    def ready(self, status: str) -> bool:
        return self.send("READY=1", f"STATUS={status}")

    def stopping(self, status: str = "stopping") -> bool:
        return self.send("STOPPING=1", f"STATUS={status}")

    def status(self, text: str) -> bool:
        return self.send(f"STATUS={text}")

    def ping(self) -> bool:
        return self.send("WATCHDOG=1")

    async def run_watchdog(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Ping until cancelled. It runs on the event loop, so a wedged loop stops the pings."""
        task_status.started()
        interval = self.watchdog_interval
        if interval is None:
            return
        while True:
            self.ping()
            await anyio.sleep(interval)
