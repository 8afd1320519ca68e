"""The real-user machinery itself: real uids and groups, the project runnable as them,
socket permissions enforced by the kernel, and nothing left behind."""

from __future__ import annotations

import grp
import json
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from tests.users import (
    MARKER,
    Users,
    audit_events,
    fixture_shared_dir,  # noqa: F401  (pytest fixture "shared_dir")
    fixture_users,  # noqa: F401  (pytest fixture "users")
    run_as,
    shared_tmp,
    sweep_stale,
    user_session,
)

CONNECT = """
import socket, sys
s = socket.socket(socket.AF_UNIX)
try:
    s.connect(sys.argv[1])
except PermissionError:
    print("PermissionError")
else:
    print("connected")
"""


def test_alice_is_a_real_user_in_the_socket_group(users: Users) -> None:
    result = run_as(
        users.alice,
        ["python", "-c", "import os, json; print(json.dumps([os.getuid(), os.getgroups()]))"],
        check=True,
    )
    uid, groups = json.loads(result.stdout)
    assert uid == users.alice.uid != 0
    assert users.brokerclients.gid in groups
    assert users.brokerclients.gid not in json.loads(
        run_as(users.eve, ["python", "-c", "import os; print(os.getgroups())"], check=True).stdout
    )
    assert pwd.getpwuid(users.alice.uid).pw_name == users.alice.name
    assert set(grp.getgrgid(users.brokerclients.gid).gr_mem) == {
        u.name for u in (users.alice, users.bob, users.carol, users.mallory)
    }


def test_the_environment_is_minimal(users: Users) -> None:
    result = run_as(
        users.bob,
        ["python", "-c", "import os, json; print(json.dumps(dict(os.environ)))"],
        env={"BROKER_SOCKET": "/x"},
        check=True,
    )
    env = json.loads(result.stdout)
    assert env["HOME"] == str(users.bob.home)
    assert env["BROKER_SOCKET"] == "/x"
    assert not {k for k in env if k.startswith(("PYTEST", "VIRTUAL_ENV", "PYTHON"))}


def test_broker_cli_runs_as_alice(users: Users) -> None:
    result = run_as(users.alice, ["broker", "--help"], check=True)
    assert "Usage: broker" in result.stdout
    assert "credential-broker" in result.stdout


def test_stdlib_helpers_run_as_alice(users: Users) -> None:
    # Started the way docker starts it (console script on PATH) and as a module under -I.
    script = run_as(users.alice, ["docker-credential-broker", "version"], check=True)
    assert "docker-credential-broker" in script.stdout
    probe = "import sys, broker.helpers.docker, broker.helpers.kubectl, broker.helpers.aws; "
    probe += "print(sys.flags.isolated, 'grpc' in sys.modules)"
    module = run_as(users.alice, ["python", "-I", "-c", probe], check=True)
    assert module.stdout.split() == ["1", "False"]


def test_socket_group_permissions_are_enforced(users: Users, tmp_path: Path) -> None:
    directory = shared_tmp(tmp_path)
    path = directory / "s.sock"
    server = socket.socket(socket.AF_UNIX)
    try:
        server.bind(str(path))
        os.chown(path, 0, users.brokerclients.gid)
        path.chmod(0o660)
        server.listen(8)
        outsider = run_as(users.eve, ["python", "-c", CONNECT, str(path)], check=True)
        member = run_as(users.mallory, ["python", "-c", CONNECT, str(path)], check=True)
    finally:
        server.close()
    assert outsider.stdout.strip() == "PermissionError"
    assert member.stdout.strip() == "connected"


def test_shared_dir_is_traversable_not_listable(users: Users, shared_dir: Path) -> None:
    (shared_dir / "f").write_text("x")
    (shared_dir / "f").chmod(0o644)
    read = run_as(users.eve, ["cat", str(shared_dir / "f")])
    listing = run_as(users.eve, ["ls", str(shared_dir)])
    assert (read.returncode, read.stdout) == (0, "x")
    assert listing.returncode != 0


def test_audit_events_parses_only_audit_lines(tmp_path: Path) -> None:
    log = tmp_path / "daemon.log"
    lines = [
        '{"event": "issued", "logger": "broker.audit", "uid": 1}',
        "Traceback (most recent call last):",
        '{"event": "started", "logger": "broker.daemon"}',
        '{"event": "denied", "logger": "broker.audit", "uid": 2}',
        '{"event": "denied", "logger": "broker.au',
    ]
    log.write_text("\n".join(lines))
    assert [e["event"] for e in audit_events(log)] == ["issued", "denied"]
    assert audit_events(log, "denied") == [{"event": "denied", "logger": "broker.audit", "uid": 2}]
    assert audit_events(log, uid=1)[0]["event"] == "issued"
    assert audit_events(tmp_path / "missing.log") == []


def _wait_for_uid(pid: int, uid: int, timeout: float = 10.0) -> None:
    """Block until process PID runs with real uid UID (after its setpriv switched)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = Path(f"/proc/{pid}/status").read_text()
        line = next(row for row in status.splitlines() if row.startswith("Uid:"))
        if int(line.split()[1]) == uid:
            return
        time.sleep(0.01)
    raise AssertionError(f"process {pid} never switched to uid {uid}")


def test_a_second_session_is_separate_and_leaves_nothing_behind(users: Users) -> None:
    with user_session() as extra:
        names = [u.name for u in extra.all()] + [extra.brokerclients.name]
        assert not set(names) & {u.name for u in users.all()}
        root = extra.shared_root
        sleeper = subprocess.Popen(extra.eve.argv(["sleep", "60"]), env=extra.eve.env())
        assert pwd.getpwnam(extra.eve.name).pw_uid == extra.eve.uid
        # setpriv runs as root until it switches to eve; teardown kills eve's processes,
        # so leave only once the sleeper is hers (on a loaded machine that takes a while).
        _wait_for_uid(sleeper.pid, extra.eve.uid)
    assert sleeper.wait(timeout=5) != 0  # killed at teardown, so userdel could run
    for name in names:
        with pytest.raises(KeyError):
            pwd.getpwnam(name)
        with pytest.raises(KeyError):
            grp.getgrnam(name)
    assert not root.exists()
    assert pwd.getpwnam(users.alice.name)  # the session's own users are untouched


def test_a_killed_session_is_swept_by_the_next() -> None:
    root = Path(tempfile.mkdtemp(prefix="cbt-dead-", dir="/tmp"))
    dead = subprocess.Popen(["true"])
    dead.wait()
    name = f"cbt-dead-{os.getpid() % 10000}"
    subprocess.run(
        [
            "useradd",
            "--system",
            "--no-create-home",
            "--comment",
            f"{MARKER} (pid {dead.pid})",
            name,
        ],
        check=True,
    )
    try:
        state = {"pid": dead.pid, "start": "0", "users": [name], "groups": [name]}
        (root / "owner.json").write_text(json.dumps(state))
        assert name in sweep_stale()
        with pytest.raises(KeyError):
            pwd.getpwnam(name)
        assert not root.exists()
    finally:
        subprocess.run(["userdel", name], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)
