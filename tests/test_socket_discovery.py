"""Which socket the CLI and the helpers use, and which they refuse (real sockets, real users).

- A socket planted in the current directory (``./.broker/broker.sock``, the old
  implicit fallback) is never used: the planted server counts zero connections.
- The pointer files ``broker serve`` writes let ``broker status`` and the helpers
  work from ``/``; a stale pointer is named in the "not running" error.
- A socket owned by another user (made with ``useradd``) is refused by the CLI
  and by ``docker-credential-broker``, naming the path and the owner, before
  anything is sent; ``BROKER_DAEMON_USER`` names a daemon account to trust.
- Every "not running" error says where the socket came from.
"""

from __future__ import annotations

import os
import pwd
import secrets
import socket
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

from broker import pointers
from tests.daemon import Daemon, _clean_env, running_daemon

BIN = Path(sys.executable).parent
SYSTEM_SOCKETS_EXIST = Path("/run/broker/broker.sock").exists()


class PlantedServer:
    """A listening Unix socket that counts (and drops) every connection made to it."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.connections = 0
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.bind(str(path))
        self._sock.listen(16)
        self._sock.settimeout(0.05)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.connections += 1
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._sock.close()


@pytest.fixture
def planted(tmp_path: Path) -> Iterator[tuple[Path, PlantedServer, PlantedServer]]:
    """A shared working directory with ./.broker/broker.sock and ./.broker/helper.sock planted."""
    work = tmp_path / "shared-work"
    grpc_server = PlantedServer(work / ".broker" / "broker.sock")
    helper_server = PlantedServer(work / ".broker" / "helper.sock")
    try:
        yield work, grpc_server, helper_server
    finally:
        grpc_server.close()
        helper_server.close()


@pytest.fixture(scope="module")
def stranger() -> Iterator[pwd.struct_passwd]:
    """A real user who is neither root, us, nor the daemon user."""
    if os.geteuid() != 0:
        pytest.skip("needs root to create a user")
    name = f"cbdisc-{secrets.token_hex(3)}"
    subprocess.run(
        ["useradd", "--system", "--no-create-home", "--user-group", name],
        check=True,
        capture_output=True,
    )
    try:
        yield pwd.getpwnam(name)
    finally:
        subprocess.run(["userdel", name], capture_output=True)


def client_env(home: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """No BROKER_* variables, no runtime dir: only HOME (and ``extra``) steer discovery."""
    env = _clean_env(extra)
    env["HOME"] = str(home)
    if "XDG_RUNTIME_DIR" not in (extra or {}):
        env.pop("XDG_RUNTIME_DIR", None)
    return env


def run(
    argv: list[str], env: Mapping[str, str], cwd: Path | str, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv,
        env=dict(env),
        cwd=str(cwd),
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=None if stdin is not None else subprocess.DEVNULL,
    )


def broker(*args: str, env: Mapping[str, str], cwd: Path | str) -> subprocess.CompletedProcess[str]:
    return run([str(BIN / "broker"), *args], env, cwd)


def docker_helper(
    action: str, env: Mapping[str, str], cwd: Path | str, stdin: str = ""
) -> subprocess.CompletedProcess[str]:
    return run([str(BIN / "docker-credential-broker"), action], env, cwd, stdin)


def _one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr
    return result.stderr.strip()


# -- the current directory is never a source ---------------------------------------------


def test_planted_socket_in_cwd_is_not_used(
    planted: tuple[Path, PlantedServer, PlantedServer], tmp_path: Path
) -> None:
    work, grpc_server, helper_server = planted
    home = tmp_path / "empty-home"
    home.mkdir()
    env = client_env(home)
    (work / "registry-password").write_text("hunter2")

    status = broker("status", env=env, cwd=work)
    register = broker(
        "connector",
        "register",
        "reg",
        "--type",
        "docker",
        "username=ci",
        "password=@./registry-password",
        "registry=registry.internal:5000",
        env=env,
        cwd=work,
    )
    helper = docker_helper("get", env, work, "registry.internal:5000")

    assert grpc_server.connections == 0
    assert helper_server.connections == 0
    for result in (status, register):
        message = _one_line_error(result)
        assert ".broker/broker.sock" not in message
        if not SYSTEM_SOCKETS_EXIST:
            assert message.startswith("error: daemon not running at /run/broker/broker.sock")
            assert "the system default" in message
            assert str(home / ".config/credential-broker/socket") in message
    assert helper.returncode == 1
    assert ".broker/helper.sock" not in helper.stdout
    if not SYSTEM_SOCKETS_EXIST:
        assert "not running at /run/broker/helper.sock (the system default" in helper.stdout


@pytest.fixture
def home_daemon(tmp_path: Path) -> Iterator[tuple[Daemon, Path]]:
    """A daemon started by this user with no runtime dir: its pointers go to ~/.config."""
    home = tmp_path / "home"
    home.mkdir()
    with running_daemon(
        tmp_path / "data", env={"HOME": str(home), "XDG_RUNTIME_DIR": ""}
    ) as daemon:
        yield daemon, home


def test_pointer_written_by_serve_beats_a_planted_socket(
    home_daemon: tuple[Daemon, Path], planted: tuple[Path, PlantedServer, PlantedServer]
) -> None:
    _daemon, home = home_daemon
    work, grpc_server, helper_server = planted
    env = client_env(home)
    status = broker("status", "--output", "json", env=env, cwd=work)
    assert status.returncode == 0, status.stderr
    listing = docker_helper("list", env, work)
    assert (listing.returncode, listing.stdout.strip()) == (0, "{}"), listing
    assert (grpc_server.connections, helper_server.connections) == (0, 0)


def test_pointer_lets_status_work_from_root(home_daemon: tuple[Daemon, Path]) -> None:
    daemon, home = home_daemon
    pointer_dir = home / ".config" / "credential-broker"
    assert stat.S_IMODE(pointer_dir.stat().st_mode) == 0o700
    recorded = {}
    for name in ("socket", "helper-socket"):
        st = (pointer_dir / name).stat()
        assert (stat.S_IMODE(st.st_mode), st.st_uid) == (0o600, os.geteuid())
        recorded[name] = (pointer_dir / name).read_text().strip()
    assert recorded == {
        "socket": str(daemon.socket.absolute()),
        "helper-socket": str((daemon.data_dir / "helper.sock").absolute()),
    }
    assert sorted(os.listdir(pointer_dir)) == ["helper-socket", "socket"]  # no temp files

    env = client_env(home)
    status = broker("status", "--output", "json", env=env, cwd="/")
    assert status.returncode == 0, status.stderr
    assert '"health": "SERVING"' in status.stdout
    assert broker("health", env=env, cwd="/").stdout.strip() == "SERVING"
    assert docker_helper("list", env, "/").returncode == 0

    # Pointers stay after a stop: the error then names the pointer, not just the path.
    daemon.stop()
    after = _one_line_error(broker("status", env=env, cwd="/"))
    assert after.startswith(f"error: daemon not running at {daemon.socket.absolute()}")
    assert f"from the pointer file {pointer_dir / 'socket'}" in after
    helper = docker_helper("list", env, "/")
    assert f"from the pointer file {pointer_dir / 'helper-socket'}" in helper.stdout


def test_pointer_in_the_runtime_dir_is_read_first(tmp_path: Path) -> None:
    home, runtime = tmp_path / "home", tmp_path / "xdg"
    home.mkdir()
    runtime.mkdir(mode=0o700)
    # A stale pointer in ~/.config must lose to the runtime dir's.
    pointers.write_pointer("socket", "/nonexistent/old.sock", {"HOME": str(home)})
    with running_daemon(
        tmp_path / "data", env={"HOME": str(home), "XDG_RUNTIME_DIR": str(runtime)}
    ) as daemon:
        written = runtime / "credential-broker" / "socket"
        assert written.read_text().strip() == str(daemon.socket.absolute())
        env = client_env(home, {"XDG_RUNTIME_DIR": str(runtime)})
        status = broker("status", env=env, cwd="/")
        assert status.returncode == 0, status.stderr
        # Without the runtime dir (a cron job, say) the ~/.config pointer is what is read.
        alone = _one_line_error(broker("status", env=client_env(home), cwd="/"))
        assert "not running at /nonexistent/old.sock (from the pointer file" in alone


# -- whose socket ------------------------------------------------------------------------


@pytest.fixture
def strangers_socket(
    tmp_path: Path, stranger: pwd.struct_passwd
) -> Iterator[tuple[Path, PlantedServer]]:
    server = PlantedServer(tmp_path / "theirs" / "broker.sock")
    os.chown(server.path, stranger.pw_uid, stranger.pw_gid)
    try:
        yield server.path, server
    finally:
        server.close()


def test_cli_refuses_a_socket_owned_by_another_user(
    strangers_socket: tuple[Path, PlantedServer], stranger: pwd.struct_passwd, tmp_path: Path
) -> None:
    path, server = strangers_socket
    env = client_env(tmp_path)
    by_flag = broker("status", "--socket", str(path), env=env, cwd="/")
    by_env = broker(
        "connector", "list", env=client_env(tmp_path, {"BROKER_SOCKET": str(path)}), cwd="/"
    )
    health = broker("health", "--socket", str(path), env=env, cwd="/")
    assert server.connections == 0
    for result, source in ((by_flag, "given with --socket"), (by_env, "from BROKER_SOCKET")):
        message = _one_line_error(result)
        assert message.startswith(f"error: refusing socket {path} ({source}): ")
        assert f"owned by {stranger.pw_name} (uid {stranger.pw_uid})" in message
        assert f"BROKER_DAEMON_USER={stranger.pw_name}" in message
    assert health.returncode == 1
    assert health.stderr.startswith(f"unhealthy: refusing socket {path}")


@pytest.mark.parametrize("how", ["name", "uid"])
def test_broker_daemon_user_trusts_that_account(
    strangers_socket: tuple[Path, PlantedServer],
    stranger: pwd.struct_passwd,
    tmp_path: Path,
    how: str,
) -> None:
    path, server = strangers_socket
    daemon_user = stranger.pw_name if how == "name" else str(stranger.pw_uid)
    env = client_env(tmp_path, {"BROKER_DAEMON_USER": daemon_user})
    result = broker("health", "--socket", str(path), "--timeout", "2", env=env, cwd="/")
    # Trusted, so the CLI connects; the planted server speaks no gRPC, so it is not healthy.
    assert result.returncode == 1
    assert "refusing" not in result.stderr
    assert server.connections >= 1
    helper = docker_helper("list", {**env, "BROKER_HELPER_SOCKET": str(path)}, "/")
    assert "refusing" not in helper.stdout


def test_cli_names_an_unknown_daemon_user(
    strangers_socket: tuple[Path, PlantedServer], tmp_path: Path
) -> None:
    path, server = strangers_socket
    env = client_env(tmp_path, {"BROKER_DAEMON_USER": "no-such-user-xyz"})
    message = _one_line_error(broker("status", "--socket", str(path), env=env, cwd="/"))
    assert "BROKER_DAEMON_USER: there is no user 'no-such-user-xyz'" in message
    assert server.connections == 0


def test_helpers_refuse_a_socket_owned_by_another_user(
    strangers_socket: tuple[Path, PlantedServer], stranger: pwd.struct_passwd, tmp_path: Path
) -> None:
    path, server = strangers_socket
    env = client_env(tmp_path, {"BROKER_HELPER_SOCKET": str(path)})
    docker = docker_helper("get", env, "/", "registry.internal:5000")
    kubectl = run(
        [str(BIN / "broker-kubectl-credential"), "prod", "--socket", str(path)],
        client_env(tmp_path),
        "/",
    )
    assert server.connections == 0
    assert docker.returncode == 1
    assert docker.stdout.startswith(
        f"credential-broker: refusing socket {path} (from BROKER_HELPER_SOCKET): it is owned by "
        f"{stranger.pw_name} (uid {stranger.pw_uid})"
    )
    assert kubectl.returncode == 1
    assert kubectl.stderr.startswith(f"error: refusing socket {path} (given with --socket)")
    assert f"owned by {stranger.pw_name}" in kubectl.stderr


# -- where it looked -----------------------------------------------------------------------


@pytest.mark.parametrize("source", ["flag", "BROKER_SOCKET", "BROKER_DATA_DIR", "pointer"])
def test_not_running_says_where_the_socket_came_from(tmp_path: Path, source: str) -> None:
    home = tmp_path / "home"
    home.mkdir()
    gone = tmp_path / "gone" / "broker.sock"
    args: list[str] = []
    extra: dict[str, str] = {}
    if source == "flag":
        args, expected = ["--socket", str(gone)], "given with --socket"
    elif source == "BROKER_SOCKET":
        extra, expected = {"BROKER_SOCKET": str(gone)}, "from BROKER_SOCKET"
    elif source == "BROKER_DATA_DIR":
        extra, expected = {"BROKER_DATA_DIR": str(gone.parent)}, "from BROKER_DATA_DIR"
    else:
        pointers.write_pointer("socket", str(gone), {"HOME": str(home)})
        expected = f"from the pointer file {home}/.config/credential-broker/socket"
    result = broker("status", *args, env=client_env(home, extra), cwd="/")
    message = _one_line_error(result)
    assert message.startswith(f"error: daemon not running at {gone} ({expected}): ")
    assert len(message.splitlines()) == 1


def test_pointer_is_not_written_into_someone_elses_home(
    tmp_path: Path, stranger: pwd.struct_passwd
) -> None:
    """Root with another user's HOME (sudo -E) must not leave root-owned files there."""
    home = tmp_path / "theirs"
    home.mkdir()
    os.chown(home, stranger.pw_uid, stranger.pw_gid)
    with pytest.raises(PermissionError, match=f"belongs to uid {stranger.pw_uid}"):
        pointers.write_pointer("socket", "/run/x.sock", {"HOME": str(home)})
    assert os.listdir(home) == []
