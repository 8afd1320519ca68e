"""The persistent cache end to end: the real daemon restarted, a GCP connector
against the local Google token server (it checks each signed JWT assertion and
counts token requests), on SQLite and on a real PostgreSQL shared by two daemons.

get, restart, get again -> zero new token requests and the same expiry; a
connector update or delete drops its rows; a tampered row is dropped (and
counted in the log), never served; ``persist_cache = false`` mints again.
"""

from __future__ import annotations

import base64
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from broker.api.v1 import broker_pb2 as pb
from broker.store.crypto import generate_key
from tests.daemon import Daemon, running_daemon
from tests.pg import PostgresServer
from tests.servers.google import GoogleServer


@pytest.fixture(scope="module")
def google() -> Iterator[GoogleServer]:
    with GoogleServer(token_lifetime=3600) as server:
        yield server


def register(d: Daemon, google: GoogleServer, name: str, tmp: Path) -> None:
    key = google.service_account(f"p-{name}", "persist-project").write(tmp / f"{name}.json")
    d.register_gcp(name, key, "--resource-type", "gcp-generic", "--no-verify")


def get(d: Daemon, name: str) -> tuple[str, str]:
    with d.stub() as stub:
        cred = stub.GetCredentials(pb.GetCredentialsRequest(connector=name))
    return cred.config["token"], cred.expires_at.ToJsonString()


def eventually(check: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def rows(db: Path) -> int:
    with sqlite3.connect(db) as conn:
        return int(conn.execute("SELECT COUNT(*) FROM persisted_credentials").fetchone()[0])


def restart(d: Daemon, *extra: str) -> None:
    d.stop()
    d.start(*extra)


def test_restart_serves_persisted_credentials_without_minting(
    tmp_path: Path, google: GoogleServer
) -> None:
    data = tmp_path / "data"
    db = data / "broker.db"
    with running_daemon(data, env=google.env()) as d:
        for name in ("a", "b"):
            register(d, google, name, tmp_path)
        before = {name: get(d, name) for name in ("a", "b")}
        eventually(lambda: rows(db) == 2, "both credentials persisted")
        mints = google.count("/token")

        restart(d)
        assert {name: get(d, name) for name in ("a", "b")} == before  # same token, expiry
        assert google.count("/token") == mints  # zero new mints
        daemon_id = (data / "daemon-id").read_text().strip()
        assert len(daemon_id) == 32 and (data / "daemon-id").stat().st_mode & 0o777 == 0o600

        # An update drops the connector's rows (and its next get mints); a delete too.
        d.cli("connector", "update", "a", "--label", "team=x", "--no-verify")
        assert rows(db) == 1
        assert get(d, "a")[0] != before["a"][0] and google.count("/token") == mints + 1
        eventually(lambda: rows(db) == 2, "the new revision's credential persisted")
        d.cli("connector", "delete", "b")
        assert rows(db) == 1

        # A tampered row: dropped at start, counted in the log, never served.
        d.stop()
        with sqlite3.connect(db) as conn:
            (blob,) = conn.execute("SELECT sealed FROM persisted_credentials").fetchone()
            flipped = blob[:20] + bytes([blob[20] ^ 1]) + blob[21:]
            conn.execute("UPDATE persisted_credentials SET sealed = ?", (flipped,))
        d.start()
        minted = google.count("/token")
        assert get(d, "a")[0] != before["a"][0]
        assert google.count("/token") == minted + 1
        assert "persisted_credentials_dropped" in d.log()
        assert (data / "daemon-id").read_text().strip() == daemon_id  # stable

        # persist_cache = false: a restart mints again.
        served = get(d, "a")
        eventually(lambda: rows(db) == 1, "persisted")
        d.stop()
        d.env["BROKER_PERSIST_CACHE"] = "false"
        d.start()
        minted = google.count("/token")
        assert get(d, "a") != served and google.count("/token") == minted + 1


def test_postgres_fleet_persists_per_daemon(
    tmp_path: Path, google: GoogleServer, postgres: PostgresServer
) -> None:
    database = postgres.create_database()
    env = {
        **google.env(),
        "BROKER_DATABASE": postgres.url(database),
        "BROKER_SECRET_KEY": base64.b64encode(generate_key()).decode(),
    }

    def pg_rows() -> int:
        return int(postgres.psql("SELECT COUNT(*) FROM persisted_credentials", database))

    with running_daemon(tmp_path / "a", env=env) as a:
        register(a, google, "f", tmp_path)
        first = get(a, "f")
        eventually(lambda: pg_rows() == 1, "persisted in PostgreSQL")
        with running_daemon(tmp_path / "b", env=env) as b:
            mints = google.count("/token")
            other = get(b, "f")  # another daemon of the fleet: its own rows, its own mint
            assert other != first and google.count("/token") == mints + 1
            eventually(lambda: pg_rows() == 2, "each daemon's row")
        mints = google.count("/token")
        restart(a)
        assert get(a, "f") == first and google.count("/token") == mints
        a.cli("connector", "delete", "f")
        assert pg_rows() == 0  # every daemon's rows, with the delete
