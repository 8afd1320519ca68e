"""Listening sockets are never reachable wider than their final mode (the umask race).

The daemon used to bind at the final path and chmod afterwards; under umask 000
the socket existed as 0777 in between, and an outsider won that race on 6 of 10
restarts. ``listen_unix`` binds in a private directory and links the socket into
place already listening, with its group and mode. A watcher polling the directory
from another process checks that no state in between is ever visible, while the
sockets are created under umask 000: by the function itself, and by the real
daemon. A control run with the old bind-then-chmod shows the watcher does catch it.
"""

from __future__ import annotations

import contextlib
import grp
import os
import secrets
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from broker.errors import FailedPrecondition, InvalidArgument
from broker.sockets import listen_unix
from tests.daemon import _clean_env

BROKER = Path(sys.executable).parent / "broker"


@pytest.fixture(scope="module")
def socket_group() -> Iterator[grp.struct_group]:
    """A real group made for these tests (CI runs as root), removed afterwards."""
    if os.geteuid() != 0:
        pytest.skip("needs root to create a group")
    name = f"cbsock-{secrets.token_hex(3)}"
    subprocess.run(["groupadd", "--system", name], check=True, capture_output=True)
    try:
        yield grp.getgrnam(name)
    finally:
        subprocess.run(["groupdel", name], capture_output=True)


class Watcher:
    """Polls a directory in a tight loop (another thread: the creator is another process).

    Records every socket it sees with any "other" permission bit, and every
    directory that group or others could enter.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.sightings = 0
        self.bad: list[tuple[str, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Watcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                names = os.listdir(self.directory)
            except OSError:
                continue
            for name in names:
                try:
                    st = os.lstat(self.directory / name)
                except FileNotFoundError:
                    continue
                mode = stat.S_IMODE(st.st_mode)
                if stat.S_ISSOCK(st.st_mode):
                    self.sightings += 1
                    if mode & 0o007:
                        self.bad.append((name, oct(mode)))
                elif stat.S_ISDIR(st.st_mode) and mode & 0o077:
                    self.bad.append((name + "/", oct(mode)))


CREATE = """
import os, socket, sys, time
from pathlib import Path
from broker.sockets import listen_unix

os.umask(0)
directory, how, count = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
path = directory / "helper.sock"
for _ in range(count):
    if how == "listen_unix":
        sock = listen_unix(path, None)
    else:  # the old way: bind at the final path, chmod afterwards
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(str(path))
        time.sleep(0.002)  # a loaded machine between bind() and chmod()
        os.chmod(path, 0o660)
        sock.listen()
    assert os.stat(path).st_mode & 0o777 == 0o660
    time.sleep(0.001)
    sock.close()
    path.unlink()
"""


def _create_under_umask_0(directory: Path, how: str, count: int) -> None:
    subprocess.run(
        [sys.executable, "-c", CREATE, str(directory), how, str(count)],
        check=True,
        timeout=120,
    )


def test_listen_unix_is_never_visible_wider_than_0660_under_umask_0(tmp_path: Path) -> None:
    directory = tmp_path / "run"
    directory.mkdir(mode=0o755)
    with Watcher(directory) as watcher:
        _create_under_umask_0(directory, "listen_unix", 300)
    assert watcher.bad == []
    assert watcher.sightings > 0  # it was watching while the sockets existed
    assert os.listdir(directory) == []  # no staging directory left behind


def test_the_watcher_catches_bind_then_chmod(tmp_path: Path) -> None:
    """Control: the same watcher sees the old way's 0777 window."""
    directory = tmp_path / "run"
    directory.mkdir(mode=0o755)
    with Watcher(directory) as watcher:
        _create_under_umask_0(directory, "bind_then_chmod", 100)
    assert any(mode == "0o777" for _, mode in watcher.bad), watcher.bad


def test_listen_unix_gives_group_and_mode_and_serves_after_the_move(
    tmp_path: Path, socket_group: grp.struct_group
) -> None:
    path = tmp_path / "run" / "broker.sock"
    sock = listen_unix(path, socket_group.gr_name)
    try:
        st = path.stat()
        assert stat.S_ISSOCK(st.st_mode)
        assert (stat.S_IMODE(st.st_mode), st.st_gid) == (0o660, socket_group.gr_gid)
        assert not sock.getblocking()
        assert os.listdir(path.parent) == ["broker.sock"]
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.connect(str(path))
            sock.setblocking(True)
            sock.settimeout(5)
            conn, _ = sock.accept()
            with conn:
                client.sendall(b"ping")
                assert conn.recv(4) == b"ping"
    finally:
        sock.close()
    other = listen_unix(tmp_path / "run" / "other.sock", None, mode=0o600)
    with contextlib.closing(other):
        assert stat.S_IMODE((tmp_path / "run" / "other.sock").stat().st_mode) == 0o600


def test_listen_unix_removes_a_stale_socket_and_refuses_a_live_one(tmp_path: Path) -> None:
    path = tmp_path / "broker.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()  # the file stays, nobody listens: a crashed daemon's
    first = listen_unix(path, None)
    try:
        with pytest.raises(FailedPrecondition, match="already listening"):
            listen_unix(path, None)
        assert path.exists()
        assert sorted(os.listdir(tmp_path)) == ["broker.sock"]
    finally:
        first.close()


def test_listen_unix_never_replaces_a_socket_bound_during_its_setup(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two daemons starting at once: the one that links second fails, the first keeps serving."""
    import broker.sockets as sockets

    path = tmp_path / "broker.sock"
    real = sockets.prepare_socket_path
    rival = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)

    def racing(p: Path) -> None:
        real(p)
        if not path.exists():  # the rival binds right after our stale check
            rival.bind(str(path))
            rival.listen()

    monkeypatch.setattr(sockets, "prepare_socket_path", racing)
    try:
        with pytest.raises(FailedPrecondition, match="already listening"):
            listen_unix(path, None)
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.connect(str(path))  # still the rival's
        assert os.listdir(tmp_path) == ["broker.sock"]
    finally:
        rival.close()


def test_listen_unix_names_an_unknown_group(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="no group 'no-such-group-xyz'"):
        listen_unix(tmp_path / "broker.sock", "no-such-group-xyz")
    assert not (tmp_path / "broker.sock").exists()


def test_daemon_under_umask_0_never_shows_a_wider_socket(
    tmp_path: Path, socket_group: grp.struct_group
) -> None:
    """The real daemon started under umask 000, twice: sockets appear as 0660 with the group."""
    runtime = tmp_path / "run"
    runtime.mkdir(mode=0o755)  # like /run/broker: others may traverse it
    env = _clean_env(
        {
            "BROKER_SOCKET_GROUP": socket_group.gr_name,
            "BROKER_LOCAL_SOCKET": str(runtime / "helper.sock"),
            "XDG_RUNTIME_DIR": str(tmp_path),
        }
    )
    argv = [
        str(BROKER),
        "serve",
        "--data-dir",
        str(tmp_path / "data"),
        "--socket",
        str(runtime / "broker.sock"),
    ]
    for restart in range(2):
        log = tmp_path / f"daemon-{restart}.log"
        with Watcher(runtime) as watcher, log.open("wb") as out:
            proc = subprocess.Popen(argv, env=env, stdout=out, stderr=out, umask=0)
            try:
                deadline = time.monotonic() + 30
                while "daemon_ready" not in log.read_text():
                    assert proc.poll() is None, log.read_text()
                    assert time.monotonic() < deadline, log.read_text()
                    time.sleep(0.01)
                for name in ("broker.sock", "helper.sock"):
                    st = (runtime / name).stat()
                    assert (name, stat.S_IMODE(st.st_mode)) == (name, 0o660)
                    assert (name, st.st_gid) == (name, socket_group.gr_gid)
            finally:
                proc.terminate()
                assert proc.wait(30) == 0, log.read_text()
        assert watcher.bad == [], watcher.bad
        assert watcher.sightings > 0
        assert os.listdir(runtime) == []  # removed on stop, no staging leftovers
