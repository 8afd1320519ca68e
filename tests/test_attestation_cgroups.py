"""Container ids from ``/proc/PID/cgroup``: real samples of each runtime and scheme,
malformed ones, and the pid / start-time checks that tie a reading to one process."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from broker.identity.cgroups import (
    CgroupError,
    Container,
    ProcessGone,
    boot_ticks,
    parse_cgroup,
    read_process,
    start_time,
)

ID = "24d3ccfb007a4363f1d3dc9f6718bf20dd3fed7469d1f38ac759dbddba97ec46"
ID2 = "9f2c4bc1d0e4a8cf4f3b5b5a1f60e2c7e1d92c8a5f3b6a1c0d7e8f9a0b1c2d3e"
POD = "6b8e8e1a-3c5d-4c7e-9a8b-1f2e3d4c5b6a"
POD_ = POD.replace("-", "_")

V1_CONTROLLERS = (
    "12:pids",
    "11:hugetlb",
    "10:net_cls,net_prio",
    "9:perf_event",
    "8:memory",
    "7:blkio",
    "6:cpu,cpuacct",
    "5:cpuset",
    "4:devices",
    "3:freezer",
    "2:rdma",
    "1:name=systemd",
)


def v1(path: str, v2: str | None = None) -> str:
    """A cgroup-v1 listing with every controller at ``path`` (rdma at the root, as docker
    leaves it), and the hybrid host's v2 line when given."""
    lines = [f"{c}:{'/' if c == '2:rdma' else path}" for c in V1_CONTROLLERS]
    if v2 is not None:
        lines.append(f"0::{v2}")
    return "\n".join(lines) + "\n"


SAMPLES: list[tuple[str, str, Container | None]] = [
    # -- docker
    (
        "docker v1 cgroupfs (hybrid host)",
        v1(f"/docker/{ID}", "/system.slice/containerd.service"),
        Container(ID, "docker"),
    ),
    (
        "docker v1 systemd driver",
        v1(f"/system.slice/docker-{ID}.scope"),
        Container(ID, "docker"),
    ),
    ("docker v2 systemd driver", f"0::/system.slice/docker-{ID}.scope\n", Container(ID, "docker")),
    ("docker v2 cgroupfs driver", f"0::/docker/{ID}\n", Container(ID, "docker")),
    (
        # Read on this machine from a container of the real dockerd (vfs, cgroupfs).
        "docker on this machine's hybrid cgroups",
        "\n".join(
            [
                *(
                    f"{n}:{c}:/docker/{ID}"
                    for n, c in (
                        (9, "name=systemd"),
                        (8, "pids"),
                        (7, "blkio"),
                        (6, "freezer"),
                        (5, "devices"),
                        (4, "memory"),
                        (3, "cpuset"),
                        (2, "cpuacct"),
                        (1, "cpu"),
                    )
                ),
                f"0::/docker/{ID}",
            ]
        ),
        Container(ID, "docker"),
    ),
    (
        "a child moved into a v2 docker scope on a hybrid host",
        "9:name=systemd:/\n8:pids:/\n4:memory:/process_api/86a3873fcf5fadaf6dff59138d67e0a6\n"
        f"1:cpu:/\n0::/system.slice/docker-{ID}.scope\n",
        Container(ID, "docker"),
    ),
    (
        "docker in docker: the innermost",
        f"0::/docker/{ID2}/docker/{ID}\n",
        Container(ID, "docker"),
    ),
    # -- Kubernetes: containerd
    (
        "containerd v2 systemd, besteffort",
        f"0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{POD_}.slice/"
        f"cri-containerd-{ID}.scope\n",
        Container(ID, "containerd", POD),
    ),
    (
        "containerd v2 systemd, guaranteed",
        f"0::/kubepods.slice/kubepods-pod{POD_}.slice/cri-containerd-{ID}.scope\n",
        Container(ID, "containerd", POD),
    ),
    (
        "kubernetes v1 cgroupfs (any runtime)",
        v1(f"/kubepods/burstable/pod{POD}/{ID}"),
        Container(ID, "", POD),
    ),
    (
        "containerd seen from a daemon in its own cgroup namespace",
        f"0::/../../kubepods-besteffort-pod{POD_}.slice/cri-containerd-{ID}.scope\n",
        Container(ID, "containerd", POD),
    ),
    # -- Kubernetes: CRI-O
    (
        "cri-o v2 systemd, burstable",
        f"0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{POD_}.slice/"
        f"crio-{ID}.scope\n",
        Container(ID, "cri-o", POD),
    ),
    (
        "cri-o v1 systemd",
        v1(
            f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{POD_}.slice/"
            f"crio-{ID}.scope"
        ),
        Container(ID, "cri-o", POD),
    ),
    # -- not containers
    (
        "cri-o's monitor (conmon) is not the container",
        f"0::/kubepods.slice/kubepods-pod{POD_}.slice/crio-conmon-{ID}.scope\n",
        None,
    ),
    ("systemd login session", "0::/user.slice/user-1000.slice/session-3.scope\n", None),
    ("systemd service", "0::/system.slice/ssh.service\n", None),
    ("v1 root everywhere", v1("/", "/"), None),
    (
        "this sandbox's 32-hex memory group",
        "9:name=systemd:/\n8:pids:/\n7:blkio:/\n6:freezer:/\n5:devices:/\n"
        "4:memory:/process_api/86a3873fcf5fadaf6dff59138d67e0a6\n3:cpuset:/\n"
        "2:cpuacct:/\n1:cpu:/\n0::/\n",
        None,
    ),
    (
        "a user's delegated subtree may name any id: not trusted",
        f"0::/user.slice/user-1000.slice/user@1000.service/app.slice/docker-{ID}.scope\n",
        None,
    ),
    ("63 hex digits", f"0::/docker/{ID[:63]}\n", None),
    ("upper-case hex is no runtime's", f"0::/docker/{ID.upper()}\n", None),
]


@pytest.mark.parametrize(
    ("text", "expected"), [s[1:] for s in SAMPLES], ids=[s[0] for s in SAMPLES]
)
def test_container_from_cgroup_samples(text: str, expected: Container | None) -> None:
    assert parse_cgroup(text) == expected


MALFORMED = [
    ("empty", "", "empty"),
    ("blank lines", "\n \n", "empty"),
    ("no colons", "garbage\n", "malformed cgroup line"),
    ("one colon", "0:/docker/x\n", "malformed cgroup line"),
    ("hierarchy not a number", "x:cpu:/\n", "malformed cgroup line"),
    ("relative path", f"0::docker/{ID}\n", "malformed cgroup path"),
    ("two containers", f"8:pids:/docker/{ID}\n0::/system.slice/docker-{ID2}.scope\n", "two"),
]


@pytest.mark.parametrize(
    ("text", "message"), [m[1:] for m in MALFORMED], ids=[m[0] for m in MALFORMED]
)
def test_malformed_cgroup_lists_are_refused(text: str, message: str) -> None:
    with pytest.raises(CgroupError, match=message):
        parse_cgroup(text)


def test_lines_naming_one_container_combine_what_each_tells() -> None:
    text = f"8:pids:/kubepods/besteffort/pod{POD}/{ID}\n0::/system.slice/docker-{ID}.scope\n"
    assert parse_cgroup(text) == Container(ID, "docker", POD)


# -- processes -------------------------------------------------------------------------


def fake_proc(root: Path, pid: int, comm: str, start: int, cgroup: str) -> None:
    d = root / str(pid)
    d.mkdir(parents=True, exist_ok=True)
    rest = " ".join(["S", "1", *["0"] * 17, str(start), "0", "0"])
    (d / "stat").write_text(f"{pid} ({comm}) {rest}\n")
    (d / "cgroup").write_text(cgroup)


def test_start_time_survives_a_command_name_with_spaces_and_parentheses(tmp_path: Path) -> None:
    fake_proc(tmp_path, 42, "evil) S 1 2 (x", 123456, f"0::/docker/{ID}\n")
    assert start_time(42, tmp_path) == 123456
    assert read_process(42, proc=tmp_path).container == Container(ID, "docker")


def test_a_real_process_in_the_real_proc() -> None:
    me = read_process(os.getpid(), started_by=boot_ticks())
    assert me.pid == os.getpid()
    assert me.start == start_time(os.getpid())
    assert me.container is None  # the suite does not run in a container's cgroup


def test_a_gone_pid_is_refused() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    with pytest.raises(ProcessGone, match=f"pid {child.pid} is gone"):
        read_process(child.pid)


def test_an_exited_process_not_yet_reaped_is_gone() -> None:
    """A zombie's /proc/PID/cgroup names the root: it must not read as a host process."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.monotonic() + 10
    while (Path("/proc") / str(child.pid) / "stat").read_bytes().split(b") ")[1][:1] != b"Z":
        assert time.monotonic() < deadline
        time.sleep(0.01)
    try:
        with pytest.raises(ProcessGone, match="has exited"):
            read_process(child.pid)
    finally:
        child.wait()


def test_pid_zero_is_not_visible() -> None:
    with pytest.raises(ProcessGone, match="not visible"):
        read_process(0)


def test_a_process_started_after_the_connection_is_a_reused_pid(tmp_path: Path) -> None:
    fake_proc(tmp_path, 7, "sh", 5000, "0::/\n")
    with pytest.raises(ProcessGone, match="reused"):
        read_process(7, started_by=4000, proc=tmp_path)
    assert read_process(7, started_by=5000, proc=tmp_path).start == 5000
