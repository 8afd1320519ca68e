"""Cgroups named the way container runtimes name them, for real processes to move into.

On the cgroup-v2 hierarchy when the machine has one (``/sys/fs/cgroup/unified`` on a
hybrid host, ``/sys/fs/cgroup`` on a v2 host): ``system.slice/docker-ID.scope`` (docker,
systemd driver) and ``kubepods.slice/…/kubepods-besteffort-podUID.slice/
cri-containerd-ID.scope`` (containerd in Kubernetes). Else in the v1 ``pids``
hierarchy: ``docker/ID`` and ``kubepods/besteffort/podUID/ID`` (cgroupfs driver).
Root only. A child moves itself in from ``preexec_fn`` (still root, before it becomes
a test user), so ``/proc/PID/cgroup`` names the container from its first instruction.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

V2_ROOT = next(
    (
        Path(p)
        for p in ("/sys/fs/cgroup/unified", "/sys/fs/cgroup")
        if (Path(p) / "cgroup.controllers").exists()
    ),
    None,
)
V1_PIDS = Path("/sys/fs/cgroup/pids")


def missing() -> str | None:
    """Why jails cannot be made here, or None."""
    if os.geteuid() != 0:
        return "not root"
    if V2_ROOT is None and not (V1_PIDS / "cgroup.procs").exists():
        return "no writable cgroup hierarchy"
    return None


class Jail:
    """One cgroup named as a runtime names a container's; children move into it."""

    def __init__(self, container_id: str, *, pod_uid: str | None = None) -> None:
        self.container_id = container_id
        if V2_ROOT is not None:
            if pod_uid is None:
                parts = ["system.slice", f"docker-{container_id}.scope"]
            else:
                pod = pod_uid.replace("-", "_")
                parts = [
                    "kubepods.slice",
                    "kubepods-besteffort.slice",
                    f"kubepods-besteffort-pod{pod}.slice",
                    f"cri-containerd-{container_id}.scope",
                ]
            root = V2_ROOT
        else:
            parts = (
                ["docker", container_id]
                if pod_uid is None
                else ["kubepods", "besteffort", f"pod{pod_uid}", container_id]
            )
            root = V1_PIDS
        self.made: list[Path] = []
        path = root
        for part in parts:
            path = path / part
            if not path.exists():
                path.mkdir()
                self.made.append(path)
        self.path = path
        self.cgroup_path = "/" + "/".join(parts)

    def enter(self) -> None:
        """preexec_fn: the child (still root) moves itself in, then becomes the user."""
        (self.path / "cgroup.procs").write_text(str(os.getpid()))

    def remove(self) -> None:
        for path in reversed(self.made):
            deadline = time.monotonic() + 10
            while True:
                try:
                    path.rmdir()
                    break
                except OSError:  # EBUSY: a child not yet reaped
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)
