"""`broker credentials rotate` end to end: the real daemon and CLI, a GCP
service-account connector against the local Google token server (which checks
the signed JWT assertion and counts token requests), real users for the refusal.

get -> rotate -> the watcher sees ``renewed`` with the new token, gets return it,
one mint; a failing upstream -> the old token is still served and the error
says why and until when; a consumer is refused (PERMISSION_DENIED, 'admin').
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest

from broker.api.v1 import broker_pb2 as pb
from tests.daemon import BROKER, Daemon, running_daemon
from tests.servers.google import GoogleServer
from tests.users import (  # noqa: F401  (pytest fixtures)
    Users,
    audit_events,
    fixture_users,
    run_as,
    shared_tmp,
)


@pytest.fixture(scope="module")
def google() -> Iterator[GoogleServer]:
    with GoogleServer(token_lifetime=3600) as server:
        yield server


@pytest.fixture(scope="module")
def daemon(
    users: Users, google: GoogleServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Daemon]:
    tmp = tmp_path_factory.mktemp("rotate")
    run_dir = shared_tmp(tmp, name="rotate-run")
    config = tmp / "broker.toml"
    config.write_text(
        f"""
socket = "{run_dir / "broker.sock"}"
local_socket = "{run_dir / "helper.sock"}"
socket_group = "{users.brokerclients.name}"

[[policy.rules]]
selector = "user:{users.alice.name}"
role = "consumer"

[[outputs]]
connector = "g"
format = "gcp-access-token"
path = "{tmp / "token"}"
"""
    )
    with running_daemon(
        tmp / "data", "--config", str(config), env=google.env(), socket=run_dir / "broker.sock"
    ) as d:
        key = google.service_account("rot", "rot-project").write(tmp / "sa.json")
        d.register_gcp("g", key, "--resource-type", "gcp-generic", "--no-verify")
        assert d.proc is not None
        d.proc.send_signal(signal.SIGHUP)  # the output's connector exists now
        yield d


def token(d: Daemon) -> tuple[str, str]:
    cred = d.cli_json("credentials", "get", "g")
    return str(cred["config"]["token"]), str(cred["expires_at"])


def output(d: Daemon) -> str:
    path = d.data_dir.parent / "token"
    return path.read_text() if path.exists() else ""


def eventually(check: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def next_event(proc: subprocess.Popen[str]) -> dict[str, Any]:
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line, "the watch ended"
    event: dict[str, Any] = json.loads(line)
    return event


def test_rotate_mints_now_and_the_watcher_sees_renewed(
    daemon: Daemon, google: GoogleServer
) -> None:
    old_token, old_expiry = token(daemon)
    eventually(lambda: output(daemon) == old_token, "the output written")
    with subprocess.Popen(
        [*BROKER, "credentials", "watch", "g", "--output", "json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**daemon.env, "BROKER_SOCKET": str(daemon.socket)},
    ) as watch:
        try:
            first = next_event(watch)
            assert first["event"] == "issued"
            assert first["credential"]["config"]["token"] == old_token
            mints = google.count("/token")

            rotated = daemon.cli_json("credentials", "rotate", "g")
            assert rotated["config"]["token"] == "[HIDDEN]"  # `get` shows values

            event = next_event(watch)
            assert event["event"] == "renewed"
            new_token = event["credential"]["config"]["token"]
            assert new_token != old_token
            assert event["credential"]["expires_at"] == rotated["expires_at"]
        finally:
            watch.terminate()
    assert google.count("/token") == mints + 1  # one mint
    # The [[outputs]] file follows the same watch: rewritten with the new token.
    eventually(lambda: output(daemon) == new_token, "the output rewritten")
    assert token(daemon) == (new_token, rotated["expires_at"])
    assert rotated["expires_at"] >= old_expiry
    assert audit_events(daemon, "credential_rotated", connector="g")


def test_failed_rotation_keeps_serving_the_old_token_and_says_why(
    daemon: Daemon, google: GoogleServer
) -> None:
    served, expiry = token(daemon)
    google.fail("/token", 503, times=100)
    try:
        result = daemon.cli("credentials", "rotate", "g", check=False)
    finally:
        google.heal()
    assert result.returncode != 0
    message = result.stderr
    assert "rotating" in message and "503" in message, message
    assert "still served" in message and expiry[:19] in message, message
    assert "Traceback" not in message
    assert token(daemon) == (served, expiry)  # the old one, unchanged
    assert audit_events(daemon, "credential_rotation_failed", connector="g")
    with daemon.stub() as stub, pytest.raises(grpc.RpcError) as info:
        google.fail("/token", 503, times=100)
        try:
            stub.RotateCredentials(pb.RotateCredentialsRequest(connector="g"))
        finally:
            google.heal()
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE


def test_a_consumer_may_get_but_not_rotate(daemon: Daemon, users: Users) -> None:
    env = {"BROKER_SOCKET": str(daemon.socket)}
    got = run_as(users.alice, ["broker", "credentials", "get", "g", "--output", "json"], env=env)
    assert got.returncode == 0, got.stderr
    refused = run_as(users.alice, ["broker", "credentials", "rotate", "g"], env=env)
    assert refused.returncode == 1, refused
    assert "permission denied" in refused.stderr and "'admin'" in refused.stderr
    assert f"uid={users.alice.uid}" in refused.stderr
    assert audit_events(daemon, "access_denied", action="admin", connector="g")


def test_rotate_names_the_missing_connector(daemon: Daemon) -> None:
    result = daemon.cli("credentials", "rotate", "nope", check=False)
    assert result.returncode == 1 and "connector 'nope' not found" in result.stderr
