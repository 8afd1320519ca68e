"""A fleet: real daemons sharing one real PostgreSQL database (issue 15).

Every daemon here is the real ``broker serve`` process with ``BROKER_DATABASE``
set to a ``postgresql://`` URL (with a password, which must never show) and one
secret key for all. Writes go through one daemon and are checked through the
others; the database is cut under them (``pg_terminate_backend``, a restart)
while they work.
"""

from __future__ import annotations

import base64
import json
import queue
import re
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from concurrent import futures
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest

from broker.api.v1 import broker_pb2 as pb
from broker.api.v1 import broker_pb2_grpc as pb_grpc
from broker.store import postgres_migrations
from broker.store.crypto import generate_key, key_fingerprint
from tests.daemon import BROKER, Daemon, _clean_env
from tests.pg import PASSWORD, PostgresServer, free_port

REGISTRY = "registry.example:5000"
#: Time a change made through one daemon gets to reach the others here (the goal is
#: ~10 ms; this is generous for a loaded 2-core CI machine).
PROPAGATION_TIMEOUT = 10.0

T = TypeVar("T")


def fleet_env(url: str, key: bytes) -> dict[str, str]:
    return {"BROKER_DATABASE": url, "BROKER_SECRET_KEY": base64.b64encode(key).decode()}


def start_daemons(root: Path, names: list[str], env: dict[str, str], *extra: str) -> list[Daemon]:
    """Start several daemons at once (each in its own data dir, all on one database)."""
    daemons = [Daemon(root / name, env) for name in names]
    try:
        with futures.ThreadPoolExecutor(len(daemons)) as pool:
            for done in [pool.submit(d.start, *extra, timeout=60) for d in daemons]:
                done.result()
    except BaseException:
        stop_all(daemons)  # none left running when one did not start
        raise
    return daemons


def metrics_of(port: int) -> dict[str, float]:
    """A daemon's Prometheus metrics: unlabelled samples by name."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#") and "{" not in line:
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def stop_all(daemons: list[Daemon]) -> None:
    for d in daemons:
        if d.proc is not None and d.proc.poll() is None:
            d.stop()


def register(name: str, password: str = "p1", **labels: str) -> pb.RegisterConnectorRequest:
    return pb.RegisterConnectorRequest(
        name=name,
        connector_type="docker",
        auth_method="password",
        config={"username": "u", "password": password, "registry": REGISTRY},
        labels=labels,
        no_verify=True,
    )


def eventually(check: Callable[[], T | None], what: str, timeout: float = PROPAGATION_TIMEOUT) -> T:
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got is not None and got is not False:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        time.sleep(0.01)


def revision_on(stub: pb_grpc.BrokerServiceStub, name: str) -> int | None:
    try:
        return int(stub.GetConnector(pb.GetConnectorRequest(name=name), timeout=5).revision)
    except grpc.RpcError as exc:
        if exc.code() == grpc.StatusCode.NOT_FOUND:
            return None
        raise


def names_on(stub: pb_grpc.BrokerServiceStub) -> dict[str, int]:
    listed = stub.ListConnectors(pb.ListConnectorsRequest(), timeout=10).connectors
    return {c.name: c.revision for c in listed}


def password_on(stub: pb_grpc.BrokerServiceStub, name: str) -> tuple[str, int]:
    cred = stub.GetCredentials(pb.GetCredentialsRequest(connector=name), timeout=5)
    return cred.config["password"], cred.connector_revision


@pytest.fixture(scope="module")
def fleet(
    postgres: PostgresServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[list[Daemon], str, str]]:
    """Three daemons, A, B and C, on one fresh database (shared by this module's tests)."""
    database = postgres.create_database()
    url = postgres.url(database)
    daemons = start_daemons(
        tmp_path_factory.mktemp("fleet"), ["a", "b", "c"], fleet_env(url, generate_key())
    )
    try:
        yield daemons, url, database
    finally:
        stop_all(daemons)


def test_a_write_through_any_daemon_is_seen_through_the_others(
    fleet: tuple[list[Daemon], str, str],
) -> None:
    (a, b, c), _, _ = fleet
    with a.stub() as sa, b.stub() as sb, c.stub() as sc:
        created = sa.RegisterConnector(register("seen-everywhere", team="x"), timeout=10)
        for stub in (sb, sc):
            eventually(lambda s=stub: revision_on(s, "seen-everywhere") == 1, "register seen")
        got = sc.GetConnector(pb.GetConnectorRequest(name="seen-everywhere"), timeout=5)
        assert got.id == created.connector.id and dict(got.labels) == {"team": "x"}

        sb.UpdateConnector(
            pb.UpdateConnectorRequest(
                name="seen-everywhere", labels={"team": "y"}, description="via B", no_verify=True
            ),
            timeout=10,
        )
        for stub in (sa, sc):
            eventually(lambda s=stub: revision_on(s, "seen-everywhere") == 2, "update seen")
        got = sa.GetConnector(pb.GetConnectorRequest(name="seen-everywhere"), timeout=5)
        assert dict(got.labels) == {"team": "y"} and got.description == "via B"

        # A stale expected_revision is refused whichever daemon it reaches.
        with pytest.raises(grpc.RpcError) as info:
            sc.UpdateConnector(
                pb.UpdateConnectorRequest(
                    name="seen-everywhere", description="stale", expected_revision=1, no_verify=True
                ),
                timeout=10,
            )
        assert info.value.code() == grpc.StatusCode.ABORTED

        sc.DeleteConnector(pb.DeleteConnectorRequest(name="seen-everywhere"), timeout=10)
        for stub in (sa, sb):
            eventually(lambda s=stub: revision_on(s, "seen-everywhere") is None, "delete seen")
        assert names_on(sa) == names_on(sb) == names_on(sc)


def test_a_watcher_on_b_gets_updated_and_deleted_and_no_daemon_serves_the_old_revision(
    fleet: tuple[list[Daemon], str, str],
) -> None:
    (a, b, c), _, _ = fleet
    with a.stub() as sa, b.stub() as sb, c.stub() as sc:
        sa.RegisterConnector(register("watched", password="old-pw"), timeout=10)
        for stub in (sb, sc):
            eventually(lambda s=stub: revision_on(s, "watched") == 1, "register seen")
        # C caches the old credential before the change.
        assert password_on(sc, "watched") == ("old-pw", 1)

        events: queue.Queue[Any] = queue.Queue()
        stream = sb.WatchCredentials(pb.WatchCredentialsRequest(connector="watched"), timeout=60)

        def consume() -> None:
            try:
                for event in stream:
                    events.put(event)
            except grpc.RpcError as exc:
                events.put(exc)
            events.put(None)

        threading.Thread(target=consume, daemon=True).start()
        first = events.get(timeout=10)
        assert first.kind == pb.CredentialEvent.ISSUED
        assert first.credential.config["password"] == "old-pw"

        sa.UpdateConnector(
            pb.UpdateConnectorRequest(
                name="watched", config={"password": "new-pw"}, no_verify=True
            ),
            timeout=10,
        )
        updated = events.get(timeout=PROPAGATION_TIMEOUT)
        assert updated.kind == pb.CredentialEvent.UPDATED
        assert updated.credential.config["password"] == "new-pw"
        assert updated.credential.connector_revision == 2
        # Once a daemon shows revision 2, it never hands out the revision 1 credential.
        assert password_on(sb, "watched") == ("new-pw", 2)
        eventually(lambda: revision_on(sc, "watched") == 2, "update applied on C")
        for _ in range(20):
            assert password_on(sc, "watched") == ("new-pw", 2)

        sa.DeleteConnector(pb.DeleteConnectorRequest(name="watched"), timeout=10)
        deleted = events.get(timeout=PROPAGATION_TIMEOUT)
        assert deleted.kind == pb.CredentialEvent.DELETED
        assert events.get(timeout=5) is None  # and the stream ends
        for stub in (sb, sc):
            eventually(lambda s=stub: revision_on(s, "watched") is None, "delete applied")
            with pytest.raises(grpc.RpcError) as info:
                password_on(stub, "watched")
            assert info.value.code() == grpc.StatusCode.NOT_FOUND


def listen_backend(postgres: PostgresServer, database: str, daemon: Daemon) -> int | None:
    assert daemon.proc is not None
    out = postgres.psql(
        "SELECT pid FROM pg_stat_activity WHERE application_name = "
        f"'credential-broker change feed pid {daemon.proc.pid}'",
        database,
    )
    return int(out) if out else None


def test_a_killed_listen_connection_reconnects_and_catches_up_with_no_change_missed(
    fleet: tuple[list[Daemon], str, str], postgres: PostgresServer
) -> None:
    (a, b, _c), _, database = fleet
    names = [f"kill-{i}" for i in range(5)]
    kills = 0
    with a.stub() as sa, b.stub() as sb:
        for name in names:
            sa.RegisterConnector(register(name), timeout=10)
        expected: dict[str, int] = dict.fromkeys(names, 1)
        for round_ in range(30):
            name = names[round_ % len(names)]
            if round_ % 6 == 0:  # cut B's LISTEN connection while A keeps writing
                pid = eventually(lambda: listen_backend(postgres, database, b), "B listening again")
                postgres.psql(f"SELECT pg_terminate_backend({pid})", database)
                kills += 1
            sa.UpdateConnector(
                pb.UpdateConnectorRequest(name=name, description=f"round {round_}", no_verify=True),
                timeout=10,
            )
            expected[name] += 1
        eventually(
            lambda: {k: v for k, v in names_on(sb).items() if k.startswith("kill-")} == expected,
            "B caught up with every change",
        )
        for name in names:
            got = sb.GetConnector(pb.GetConnectorRequest(name=name), timeout=5)
            want = sa.GetConnector(pb.GetConnectorRequest(name=name), timeout=5)
            assert got.description == want.description and got.revision == want.revision
    assert kills == 5
    log = b.log()
    assert log.count("change_feed_reconnected") >= kills
    assert PASSWORD not in log


def test_the_password_never_shows_in_logs_status_or_config(
    fleet: tuple[list[Daemon], str, str],
) -> None:
    (a, _b, _c), url, _ = fleet
    assert PASSWORD.split(":")[0] in url or "Pa55" in url  # the URL does carry one
    status = a.cli_json("status")
    assert status["health"] == "SERVING" and status["degraded"] == []
    assert status["store"].startswith("postgresql://postgres:***@127.0.0.1:")
    shown = a.cli("config", "show", "--output", "json").stdout
    assert json.loads(shown)["database"] == status["store"]
    table = a.cli("status").stdout + a.cli("config", "show").stdout
    for text in (json.dumps(status), shown, table, a.log()):
        assert "Pa55" not in text and PASSWORD not in text
    assert a.cli("health").stdout.strip() == "SERVING"


def test_ten_daemons_starting_at_once_on_an_empty_database_migrate_once_and_all_serve(
    postgres: PostgresServer, tmp_path: Path
) -> None:
    database = postgres.create_database()
    daemons = start_daemons(
        tmp_path,
        [f"d{i}" for i in range(10)],
        fleet_env(postgres.url(database), generate_key()),
    )
    try:
        migrated = sum(d.log().count('"event": "store_migrated"') for d in daemons)
        assert migrated == len(postgres_migrations.MIGRATIONS)
        versions = postgres.psql("SELECT version FROM schema_version ORDER BY 1", database)
        assert versions.split() == [str(m.version) for m in postgres_migrations.MIGRATIONS]
        with daemons[0].stub() as first:
            first.RegisterConnector(register("after-start"), timeout=10)
        for d in daemons:
            with d.stub() as stub:
                eventually(lambda s=stub: revision_on(s, "after-start") == 1, "seen by all ten")
    finally:
        stop_all(daemons)


def test_a_daemon_with_another_secret_key_refuses_to_start_naming_the_problem(
    postgres: PostgresServer, pg_url: str, tmp_path: Path
) -> None:
    good, bad = generate_key(), generate_key()
    (first,) = start_daemons(tmp_path, ["good"], fleet_env(pg_url, good))
    try:
        env = _clean_env(fleet_env(pg_url, bad))
        done = subprocess.run(
            [*BROKER, "serve", "--data-dir", str(tmp_path / "bad")],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )
    finally:
        stop_all([first])
    assert done.returncode == 1
    err = done.stderr.strip().splitlines()[-1]
    assert err.startswith("error: the secret key does not match connector store postgresql://")
    assert key_fingerprint(good) in err and key_fingerprint(bad) in err
    assert "Traceback" not in done.stderr and "Pa55" not in done.stderr + done.stdout


def test_store_migrate_from_sqlite_gives_an_identical_listing_and_working_secrets(
    pg_url: str, tmp_path: Path
) -> None:
    key = generate_key()
    env = {"BROKER_SECRET_KEY": base64.b64encode(key).decode()}
    (old,) = start_daemons(tmp_path, ["sqlite"], env)
    try:
        with old.stub() as stub:
            stub.RegisterConnector(register("alpha", password="alpha-pw", env="prod"), timeout=10)
            stub.RegisterConnector(register("beta", password="beta-pw"), timeout=10)
            stub.UpdateConnector(
                pb.UpdateConnectorRequest(
                    name="beta",
                    config={"password": "beta-pw-2"},
                    description="rotated",
                    no_verify=True,
                ),
                timeout=10,
            )
        before = old.cli_json("connector", "list")
    finally:
        stop_all([old])
    assert [c["name"] for c in before] == ["alpha", "beta"]

    sqlite_path = tmp_path / "sqlite" / "broker.db"
    migrate = old.cli(
        "store", "migrate", "--from", f"sqlite:{sqlite_path}", "--to", pg_url, env=env
    )
    assert re.search(r"copied 2 connector\(s\) and 0 setting\(s\) from sqlite:", migrate.stdout)
    assert "postgresql://postgres:***@" in migrate.stdout and "Pa55" not in migrate.stdout

    # The daemon gets the password as PGPASSWORD, not in its URL (as deploy/ does).
    bare = pg_url.replace(pg_url.split("@")[0].split("//")[1], "postgres")
    assert "Pa55" not in bare
    (new,) = start_daemons(tmp_path, ["pg"], {**fleet_env(bare, key), "PGPASSWORD": PASSWORD})
    try:
        after = new.cli_json("connector", "list")
        assert after == before
        with new.stub() as stub:
            assert password_on(stub, "alpha") == ("alpha-pw", 1)
            assert password_on(stub, "beta") == ("beta-pw-2", 2)
        # Never a merge: a second copy into the now populated store changes nothing.
        again = new.cli(
            "store",
            "migrate",
            "--from",
            f"sqlite:{sqlite_path}",
            "--to",
            pg_url,
            env=env,
            check=False,
        )
        assert again.returncode == 1 and "already holds 2 connector(s)" in again.stderr
        assert new.cli_json("connector", "list") == before
    finally:
        stop_all([new])


@pytest.fixture
def own_postgres() -> Iterator[PostgresServer]:
    """A server of its own: this test stops and starts it."""
    server = PostgresServer()
    server.start()
    try:
        yield server
    finally:
        server.destroy()


def test_restarting_postgres_under_load_fails_writes_cleanly_loses_none_and_recovers(
    own_postgres: PostgresServer, tmp_path: Path
) -> None:
    database = own_postgres.create_database()
    env = fleet_env(own_postgres.url(database), generate_key())
    (a,) = start_daemons(tmp_path, ["a"], env)
    metrics_port = free_port()
    (b,) = start_daemons(tmp_path, ["b"], env, "--metrics", f"127.0.0.1:{metrics_port}")
    acked: list[str] = []
    failures: list[tuple[grpc.StatusCode, str]] = []
    stop = threading.Event()

    def writer() -> None:
        with a.stub() as sa:
            for i in range(100_000):
                if stop.is_set():
                    return
                try:
                    sa.RegisterConnector(register(f"load-{i}"), timeout=10)
                    acked.append(f"load-{i}")
                except grpc.RpcError as exc:
                    failures.append((exc.code(), exc.details() or ""))
                    time.sleep(0.05)

    thread = threading.Thread(target=writer, daemon=True)
    try:
        thread.start()
        try:
            restart_under_load(own_postgres, b, acked, failures)
        finally:
            stop.set()
            thread.join(30)
        internal = [line for line in a.log().splitlines() if "rpc_internal_error" in line]
        assert failures, "no write failed while the database was down"
        assert {code for code, _ in failures} == {grpc.StatusCode.UNAVAILABLE}, internal
        assert all("connector store postgresql://postgres:***@" in d for _, d in failures)
        with a.stub() as sa, b.stub() as sb:
            eventually(lambda: set(acked) <= set(names_on(sb)), "B has every acknowledged write")
            assert set(acked) <= set(names_on(sa))
        stored = set(own_postgres.psql("SELECT name FROM connectors", database).split())
        assert set(acked) <= stored  # no acknowledged write lost
        eventually(lambda: b.cli_json("status")["health"] == "SERVING", "B current again")
        metrics = metrics_of(metrics_port)
        assert metrics["broker_change_feed_reconnects_total"] >= 1
        assert metrics["broker_change_feed_connected"] == 1
        assert metrics["broker_change_feed_lag_changes"] == 0
        assert metrics["broker_change_feed_lag_seconds"] == 0
        assert metrics["broker_change_feed_applied_total"] >= len(acked)
        assert metrics["broker_store_pool_max_connections"] == 5
        assert "broker_store_pool_in_use" in metrics and "broker_store_pool_waiting" in metrics
        assert a.proc is not None and b.proc is not None
        assert a.proc.poll() is None and b.proc.poll() is None
    finally:
        stop_all([a, b])


def restart_under_load(
    server: PostgresServer,
    b: Daemon,
    acked: list[str],
    failures: list[tuple[grpc.StatusCode, str]],
) -> None:
    """Stop the server while A is writing, check B while it is down, start it again."""
    eventually(lambda: len(acked) >= 10, "writes before the restart")
    with b.stub() as sb:
        known = eventually(lambda: len(names_on(sb)) >= 10 and len(names_on(sb)), "B has some")
    server.stop()
    eventually(lambda: len(failures) >= 3, "writes refused while the database is down")
    down = b.cli_json("status")
    assert down["health"] == "DEGRADED" and "change feed" in down["degraded"][0]
    health = b.cli("health", check=False)
    assert (health.returncode, health.stdout.strip()) == (0, "DEGRADED")
    assert b.cli("health", "--strict", check=False).returncode == 1
    served = b.cli_json("connector", "list")  # still serving what it knows
    assert len(served) >= known
    server.start()
    before = len(acked)
    eventually(lambda: len(acked) >= before + 10, "writes work again, no daemon restarted")
