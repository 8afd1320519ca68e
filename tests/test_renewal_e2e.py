"""The renewal engine end to end, in real time with short-lived tokens: a GCP
service-account connector against the local Google token server issuing 8-second
tokens (margin: a quarter of the lifetime, 2 s)."""

from __future__ import annotations

import itertools
import json
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import pytest

from broker.api.v1 import broker_pb2 as pb
from tests.daemon import BROKER, Daemon, running_daemon
from tests.servers.google import GoogleServer

LIFETIME = 8
MARGIN = LIFETIME / 4
NODE_CLIENT = Path(__file__).parent / "node" / "client.js"


@pytest.fixture(scope="module")
def google() -> Iterator[GoogleServer]:
    with GoogleServer(token_lifetime=LIFETIME) as server:
        yield server


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory, google: GoogleServer) -> Iterator[Daemon]:
    """One daemon for the module (a start costs ~1.5 s); each test gets a connector of
    its own from ``g``."""
    with running_daemon(tmp_path_factory.mktemp("renewal") / "data", env=google.env()) as d:
        yield d


_names = itertools.count()


@pytest.fixture
def g(daemon: Daemon, google: GoogleServer, tmp_path: Path) -> Iterator[str]:
    """A fresh connector's name, deleted afterwards (with the token server healed), so no
    renewal of an earlier test's connector reaches the token server during the next."""
    name = f"g{next(_names)}"
    key = google.service_account("renew", "renew-project").write(tmp_path / "sa.json")
    daemon.register_gcp(name, key, "--resource-type", "gcp-generic", "--no-verify")
    try:
        yield name
    finally:
        google.heal()
        with daemon.stub() as stub:
            try:
                stub.DeleteConnector(pb.DeleteConnectorRequest(name=name), timeout=10)
            except grpc.RpcError as exc:  # the update/delete test deleted it already
                assert exc.code() == grpc.StatusCode.NOT_FOUND, exc


def _expiry(cred: pb.Credential) -> float:
    return cred.expires_at.ToDatetime(tzinfo=UTC).timestamp()


def test_watch_sees_renewals_before_expiry(daemon: Daemon, g: str) -> None:
    with subprocess.Popen(
        [*BROKER, "credentials", "watch", g, "--output", "json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**daemon.env, "BROKER_SOCKET": str(daemon.socket)},
    ) as proc:
        assert proc.stdout is not None
        events: list[tuple[float, dict[str, Any]]] = []
        deadline = time.time() + 3 * LIFETIME
        while len(events) < 3 and time.time() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            events.append((time.time(), json.loads(line)))
        proc.terminate()
    kinds = [e["event"] for _, e in events]
    assert kinds == ["issued", "renewed", "renewed"], kinds
    for (_, prev), (seen, nxt) in itertools.pairwise(events):
        prev_expiry = datetime.fromisoformat(prev["credential"]["expires_at"]).timestamp()
        # The renewal arrived while the previous token was still outside its margin.
        assert seen < prev_expiry - MARGIN + 1.0
        assert nxt["credential"]["config"]["token"] != prev["credential"]["config"]["token"]
        assert set(nxt) == {"event", "credential", "error"}


def test_concurrent_gets_share_one_mint(daemon: Daemon, google: GoogleServer, g: str) -> None:
    before = google.count("/token")

    def get(_: int) -> str:
        with daemon.stub() as stub:
            return stub.GetCredentials(pb.GetCredentialsRequest(connector=g)).config["token"]

    with ThreadPoolExecutor(50) as pool:
        tokens = set(pool.map(get, range(50)))
    assert len(tokens) == 1
    assert google.count("/token") - before == 1


def test_outage_serves_until_margin_then_unavailable_then_recovers(
    daemon: Daemon, google: GoogleServer, g: str
) -> None:
    with daemon.stub() as stub:
        first = stub.GetCredentials(pb.GetCredentialsRequest(connector=g))
        google.fail("/token", 503, times=10_000)
        served_left: list[float] = []
        unavailable: grpc.RpcError | None = None
        deadline = time.time() + 2 * LIFETIME
        while time.time() < deadline:
            try:
                cred = stub.GetCredentials(pb.GetCredentialsRequest(connector=g))
            except grpc.RpcError as exc:
                unavailable = exc
                break
            served_left.append(_expiry(cred) - time.time())
            time.sleep(0.2)
        assert unavailable is not None, "the daemon kept serving past the margin"
        assert unavailable.code() == grpc.StatusCode.UNAVAILABLE
        assert "503" in unavailable.details() or "unavailable" in unavailable.details().lower()
        # Never served inside the margin (a little slack for the round trip).
        assert min(served_left) > MARGIN - 0.5
        assert any(_expiry(first) == _expiry(c) for c in [first])
        google.heal()
        recovered = None
        deadline = time.time() + LIFETIME
        while time.time() < deadline and recovered is None:
            try:
                recovered = stub.GetCredentials(pb.GetCredentialsRequest(connector=g))
            except grpc.RpcError:
                time.sleep(0.3)
        assert recovered is not None, "no recovery after the token server came back"
        assert _expiry(recovered) - time.time() > MARGIN


def test_update_and_delete_reach_watchers(daemon: Daemon, g: str) -> None:
    lines: list[dict[str, Any]] = []
    with subprocess.Popen(
        [*BROKER, "credentials", "watch", g, "--output", "json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**daemon.env, "BROKER_SOCKET": str(daemon.socket)},
    ) as proc:
        stdout = proc.stdout
        assert stdout is not None
        reader = threading.Thread(target=lambda: lines.extend(json.loads(x) for x in stdout))
        reader.start()
        deadline = time.time() + 10
        while not lines and time.time() < deadline:
            time.sleep(0.05)
        daemon.cli("connector", "update", g, "--label", "v=2", "--no-verify")
        while len(lines) < 2 and time.time() < deadline:
            time.sleep(0.05)
        daemon.cli("connector", "delete", g)
        assert proc.wait(10) == 0
        reader.join(5)
    kinds = [line["event"] for line in lines]
    assert kinds[0] == "issued"
    assert "updated" in kinds
    assert kinds[-1] == "deleted"
    assert lines[kinds.index("updated")]["credential"] is not None


def test_node_client_watches_a_renewal(daemon: Daemon, g: str) -> None:
    result = subprocess.run(
        ["node", str(NODE_CLIENT), str(daemon.socket), "watch", g, "", "2"],
        capture_output=True,
        text=True,
        timeout=3 * LIFETIME,
    )
    assert result.returncode == 0, result.stderr
    events = [json.loads(line) for line in result.stdout.splitlines()]
    assert [e["kind"] for e in events] == ["ISSUED", "RENEWED"]
    assert events[0]["credential"]["connector_type"] == "gcp"
    assert events[0]["credential"]["config"]["token"] != events[1]["credential"]["config"]["token"]
    got = subprocess.run(
        ["node", str(NODE_CLIENT), str(daemon.socket), "get", g],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert got.returncode == 0, got.stderr
    assert json.loads(got.stdout)["config"]["project_id"] == "renew-project"
