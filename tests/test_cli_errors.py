"""What the CLI says when it cannot do what was asked, word for word.

"daemon not running at PATH" only when connecting actually failed, naming the path
tried and where it came from; the daemon's own UNAVAILABLE errors as it wrote them;
EACCES names the group to join; a daemon that does not answer is a timeout. Every
case exits 1 with one line on stderr and no traceback.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from broker.api.v1 import broker_pb2 as pb
from broker.rpc.status import from_daemon
from broker.sockets import listen_unix
from tests.daemon import BROKER, Daemon, running_daemon
from tests.servers.ports import free_port
from tests.users import Users, fixture_users, run_as, shared_tmp  # noqa: F401

NOT_RUNNING_FLAG = "check the path, or whether that daemon has stopped"


def cli(*args: str, env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("BROKER_", "AWS_"))}
    return subprocess.run(
        [*BROKER, *args],
        capture_output=True,
        text=True,
        env={**clean, **(env or {})},
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


def one_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 1, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


@dataclass
class Setup:
    daemon: Daemon
    socket: Path
    users: Users
    upstream_port: int


@pytest.fixture(scope="module")
def setup(users: Users, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    tmp = tmp_path_factory.mktemp("clierr")
    run_dir = shared_tmp(tmp, name="clierr-run")
    sock = run_dir / "broker.sock"
    config = tmp / "broker.toml"
    config.write_text(f'socket = "{sock}"\nsocket_group = "{users.brokerclients.name}"\n')
    port = free_port()  # nothing listens there: the connector's upstream is down
    with running_daemon(tmp / "data", "--config", str(config), socket=sock) as daemon:
        daemon.cli(
            "connector",
            "register",
            "fed-aws",
            "--type",
            "aws",
            "--auth-method",
            "session-token",
            "region=us-east-1",
            f"endpoint_url=http://127.0.0.1:{port}",
            "aws_access_key_id=AKIAEXAMPLEEXAMPLE12",
            "aws_secret_access_key=secret",
            "--no-verify",
        )
        yield Setup(daemon, sock, users, port)


def test_socket_absent(tmp_path: Path) -> None:
    gone = tmp_path / "gone.sock"
    assert one_error(cli("status", "--socket", str(gone))) == (
        f"error: daemon not running at {gone} (given with --socket): {NOT_RUNNING_FLAG}"
    )


def test_stale_socket_file(tmp_path: Path) -> None:
    stale = tmp_path / "stale.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(stale))
    sock.close()  # the file stays; nothing listens: connect() is refused
    assert one_error(cli("connector", "list", env={"BROKER_SOCKET": str(stale)})) == (
        f"error: daemon not running at {stale} (from BROKER_SOCKET): {NOT_RUNNING_FLAG}"
    )


def test_socket_of_another_group(setup: Setup) -> None:
    eve = setup.users.eve  # not in the socket's group
    result = run_as(eve, ["broker", "connector", "list"], env={"BROKER_SOCKET": str(setup.socket)})
    assert one_error(result) == (
        f"error: permission denied on {setup.socket}: ask an admin to add you to group "
        f"{setup.users.brokerclients.name}"
    )


def test_directory_of_another_group(users: Users, tmp_path: Path) -> None:
    outer = shared_tmp(tmp_path, name="clierr-dir")
    inner = outer / "run"
    inner.mkdir(mode=0o750)
    os.chown(inner, 0, users.brokerclients.gid)
    path = inner / "broker.sock"
    listener = listen_unix(path, users.brokerclients.name)
    try:
        result = run_as(users.eve, ["broker", "status", "--socket", str(path)])
    finally:
        listener.close()
    assert one_error(result) == (
        f"error: permission denied on {path}: ask an admin to add you to group "
        f"{users.brokerclients.name}"
    )


def test_upstream_down_is_printed_as_the_daemon_wrote_it(setup: Setup) -> None:
    with setup.daemon.stub() as stub, pytest.raises(grpc.RpcError) as info:
        stub.GetCredentials(
            pb.GetCredentialsRequest(connector="fed-aws", resource_type="aws-generic")
        )
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    expected = (
        "connector 'fed-aws': sts:GetSessionToken failed: cannot reach AWS "
        "(EndpointConnectionError: Could not connect to the endpoint URL: "
        f'"http://127.0.0.1:{setup.upstream_port}/")'
    )
    assert info.value.details() == expected
    assert from_daemon(info.value)  # marked as the daemon's own words
    result = setup.daemon.cli("credentials", "get", "fed-aws", "-r", "aws-generic", check=False)
    assert one_error(result) == f"error: {expected}"


def test_daemon_not_answering_is_a_timeout(tmp_path: Path) -> None:
    path = tmp_path / "busy.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(8)  # connections queue; nothing ever accepts or answers them
    try:
        started = time.monotonic()
        result = cli("status", "--socket", str(path), env={"BROKER_CONNECT_TIMEOUT": "1"})
        took = time.monotonic() - started
        health = cli("health", "--socket", str(path), "--timeout", "1")
    finally:
        listener.close()
    said = (
        f"daemon at {path} (given with --socket) did not answer within 1 s: it may be "
        "overloaded or stuck; try again, or check its log"
    )
    assert one_error(result) == f"error: {said} (wait longer with BROKER_CONNECT_TIMEOUT=SECONDS)"
    assert took < 15
    assert one_error(health) == f"unhealthy: {said} (wait longer with --timeout)"


def test_daemon_gone_during_a_call(tmp_path: Path) -> None:
    with running_daemon(tmp_path / "data") as daemon:
        daemon.cli(
            "connector",
            "register",
            "hub",
            "--type",
            "docker",
            "username=u",
            "password=p",
            "registry=127.0.0.1:1",
            "--no-verify",
        )
        env = {**daemon.env, "BROKER_SOCKET": str(daemon.socket)}
        watch = subprocess.Popen(
            [*BROKER, "credentials", "watch", "hub"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert watch.stdout is not None
        assert watch.stdout.readline().split()[1] == "issued"  # TIME EVENT RESOURCE ...
        assert daemon.proc is not None
        daemon.proc.kill()
        daemon.proc.wait()
        _, stderr = watch.communicate(timeout=30)
    assert watch.returncode == 1
    assert "Traceback" not in stderr
    assert stderr.startswith(
        f"error: lost the connection to the daemon at {daemon.socket} (from BROKER_SOCKET) "
        "during the call: "
    ), stderr
    assert "not running" not in stderr
