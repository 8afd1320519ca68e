"""Which container a local process runs in, from ``/proc/PID/cgroup``.

Container runtimes put each container in a cgroup named after its 64-hex
id, in one of a few schemes:

- docker, cgroupfs driver (v1 and v2): ``/docker/<id>``
- docker, systemd driver: ``/system.slice/docker-<id>.scope``
- Kubernetes, cgroupfs (any runtime): ``/kubepods/<qos>/pod<uid>/<id>``
- containerd (CRI), systemd:
  ``/kubepods.slice/…/kubepods-<qos>-pod<uid>.slice/cri-containerd-<id>.scope``
- CRI-O, systemd: ``…/crio-<id>.scope`` (``crio-conmon-<id>.scope`` is its
  monitor, not the container)
- podman / nerdctl, systemd: ``libpod-<id>.scope``, ``nerdctl-<id>.scope``

Each line of ``/proc/PID/cgroup`` is ``hierarchy-ID:controllers:path``; v1
hierarchies have one line each, the v2 hierarchy is ``0::path``, a hybrid host
has both. A process is in a container when some line's path names one; when
lines name *different* ids the answer is refused (:class:`CgroupError`), never
guessed. Only a 64-hex segment counts: the 32-hex ``/process_api/…`` group some
sandboxes use, or a systemd session scope, is not a container.

Ids below a systemd user manager (``user@UID.service``) are ignored: that
subtree is delegated to the user, who may create cgroups there with any name,
including another container's id. Rootless containers live there and are not
attested.

A pid can be reused once its process exits, so every reading is tied to the
process's start time (``/proc/PID/stat`` field 22): the start time is read
before and after the cgroup file, and a process that started after the
connection it is asked about is refused as a reused pid. An exited process
not yet reaped (a zombie) counts as gone: its cgroup file names the root.
Start times count clock ticks (10 ms): a pid cannot come around again within
one tick short of root steering ``ns_last_pid``.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")
#: Clock ticks per second of ``/proc/PID/stat`` times.
CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100

_ID = r"[0-9a-f]{64}"
#: One path segment naming a container: (runtime, regex with the id as group 1).
_SEGMENTS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("docker", re.compile(rf"docker-({_ID})\.scope")),
    ("containerd", re.compile(rf"cri-containerd-({_ID})\.scope")),
    ("cri-o", re.compile(rf"crio-({_ID})\.scope")),
    ("podman", re.compile(rf"libpod-({_ID})\.scope")),
    ("containerd", re.compile(rf"nerdctl-({_ID})\.scope")),
    ("", re.compile(rf"({_ID})")),
)
_POD = re.compile(
    r"(?:kubepods-(?:[a-z]+-)?)?pod([0-9a-f]{8}[-_](?:[0-9a-f]{4}[-_]){3}[0-9a-f]{12})(?:\.slice)?"
)
_USER_MANAGER = re.compile(r"user@\d+\.service")


class CgroupError(ValueError):
    """``/proc/PID/cgroup`` could not be read as a cgroup list, or names two containers."""


class ProcessGone(LookupError):
    """The pid names no process now, or another process than the one asked about."""


@dataclass(frozen=True)
class Container:
    """A container a process runs in, as its cgroup path names it."""

    id: str
    #: "docker", "containerd", "cri-o", "podman", or "" when the scheme does not say.
    runtime: str = ""
    #: The Kubernetes pod UID when the path names one (``pod<uid>``), dashes restored.
    pod_uid: str | None = None

    @property
    def short(self) -> str:
        return self.id[:12]


def _in_path(path: str) -> Container | None:
    """The innermost container a cgroup path names (nested runtimes: the last one)."""
    found: Container | None = None
    pod_uid: str | None = None
    previous = ""
    for segment in path.split("/"):
        if _USER_MANAGER.fullmatch(segment):
            return None  # delegated to a user: any name could be made up there
        pod = _POD.fullmatch(segment)
        if pod is not None:
            pod_uid = pod.group(1).replace("_", "-")
            continue
        for runtime, pattern in _SEGMENTS:
            match = pattern.fullmatch(segment)
            if match is not None:
                if not runtime and previous == "docker":
                    runtime = "docker"  # cgroupfs driver: /docker/<id>
                found = Container(match.group(1), runtime, pod_uid)
                break
        previous = segment
    return found


def parse_cgroup(text: str) -> Container | None:
    """The container named by a ``/proc/PID/cgroup`` text, or None (not in a container).

    Raises :class:`CgroupError` for a malformed text (no lines, a line without
    two colons, a path that is not absolute) or lines naming different containers.
    """
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        raise CgroupError("the cgroup list is empty")
    found: Container | None = None
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3 or not parts[0].isdigit():
            raise CgroupError(f"malformed cgroup line {line[:120]!r}")
        path = parts[2]
        if not path.startswith("/"):
            raise CgroupError(f"malformed cgroup path {path[:120]!r}")
        container = _in_path(path)
        if container is None:
            continue
        if found is not None and container.id != found.id:
            raise CgroupError(
                f"its cgroups name two containers ({found.short} and {container.short})"
            )
        if found is None:
            found = container
        else:  # the same container in another hierarchy: keep what either line tells
            found = Container(
                found.id, found.runtime or container.runtime, found.pod_uid or container.pod_uid
            )
    return found


@dataclass(frozen=True)
class Process:
    """A process at one moment: its pid, start time (clock ticks since boot) and container."""

    pid: int
    start: int
    container: Container | None


def start_time(pid: int, proc: Path = PROC) -> int:
    """The process's start time in clock ticks after boot; ProcessGone when there is none."""
    try:  # os.open/os.read: this runs for every attested request, on the event loop
        fd = os.open(f"{proc}/{pid}/stat", os.O_RDONLY | os.O_CLOEXEC)
    except (FileNotFoundError, ProcessLookupError, NotADirectoryError):
        raise ProcessGone(f"pid {pid} is gone") from None
    try:
        raw = os.read(fd, 4096)
    except ProcessLookupError:  # exited between open and read
        raise ProcessGone(f"pid {pid} is gone") from None
    finally:
        os.close(fd)
    # "pid (comm) state ppid …": comm may hold spaces and parentheses; it ends at the last ')'.
    fields = raw[raw.rfind(b")") + 2 :].split()
    if len(fields) < 20:
        raise ProcessGone(f"pid {pid} has no readable stat")
    if fields[0] in (b"Z", b"X"):  # exited: a zombie's cgroup file reads as the root's
        raise ProcessGone(f"pid {pid} has exited")
    return int(fields[19])


def boot_ticks() -> int:
    """Now, in the clock ticks after boot of ``/proc/PID/stat``."""
    return int(time.clock_gettime(time.CLOCK_BOOTTIME) * CLOCK_TICKS)


def read_process(pid: int, *, started_by: int | None = None, proc: Path = PROC) -> Process:
    """The process ``pid`` and its container, tied to its start time.

    ``started_by`` (ticks after boot, see :func:`boot_ticks`): the process must
    have started by then, e.g. when its connection was accepted; a later start
    means the pid was reused. Raises ProcessGone or CgroupError.
    """
    if pid <= 0:
        raise ProcessGone("the caller's pid is not visible to the daemon")
    start = start_time(pid, proc)
    if started_by is not None and start > started_by + 1:
        raise ProcessGone(f"pid {pid} was reused by a process started after the call")
    try:
        text = (proc / str(pid) / "cgroup").read_text(errors="replace")
    except (FileNotFoundError, ProcessLookupError, NotADirectoryError):
        raise ProcessGone(f"pid {pid} is gone") from None
    except OSError as exc:
        raise CgroupError(f"cannot read /proc/{pid}/cgroup: {exc.strerror}") from None
    container = parse_cgroup(text)
    if start_time(pid, proc) != start:
        raise ProcessGone(f"pid {pid} was reused while it was read")
    return Process(pid, start, container)
