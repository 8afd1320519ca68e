"""Sealed connector rows: a row changed without the key is tampered, and nothing is sent.

Everything runs on real SQLite files changed with the ``sqlite3`` module, the
way someone who can write the database file but does not hold the key would.
The end-to-end test runs the real daemon and proves with counting servers that
no connection is made for a tampered connector.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from concurrent import futures
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from structlog.testing import capture_logs

from broker.api.v1 import broker_pb2 as pb
from broker.clock import FakeClock
from broker.connectors import ConnectorDraft, build_connector, check_not_tampered
from broker.discovery import Discovery
from broker.errors import BrokerError, ConnectorTampered, FailedPrecondition
from broker.model import Connector
from broker.providers.base import ProviderContext
from broker.providers.docker.provider import DockerProvider
from broker.providers.docker.spec import PASSWORD_METHOD, RESOURCE_TYPE
from broker.providers.kubernetes.provider import KubernetesProvider
from broker.providers.registry import ProviderRegistry
from broker.store import migrations
from broker.store.crypto import SecretBox, SecretKeyMismatch, generate_key
from broker.store.seal import connector_secrets_ad, legacy_secrets_ad
from broker.store.sqlite import SqliteStore
from tests.daemon import Daemon, running_daemon
from tests.servers.counting import CountingServer

SECRET = "sealed-row-Pa55word-4e1c"
SECRETS = PASSWORD_METHOD.secret_names
#: Stand-ins for the registry a connector names and the one an attacker wants.
REGISTRY_A = "127.0.0.1:5101"
REGISTRY_B = "127.0.0.1:5102"


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(datetime(2030, 1, 1, tzinfo=UTC))


@pytest.fixture
def key() -> bytes:
    return generate_key()


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "data" / "broker.db"


@pytest.fixture
async def store(db_path: Path, key: bytes, clock: FakeClock) -> AsyncIterator[SqliteStore]:
    s = SqliteStore(db_path, SecretBox(key), clock)
    await s.open()
    try:
        yield s
    finally:
        await s.close()


def docker(
    name: str, clock: FakeClock, *, registry: str = REGISTRY_A, base: Connector | None = None
) -> Connector:
    """A docker connector built the way the daemon builds one (single-instance, labelled)."""
    draft = ConnectorDraft(
        name=name,
        connector_type="docker",
        auth_method="password",
        resource_type=RESOURCE_TYPE,
        resource_id=registry,
        config={"username": "alice", "password": SECRET, "registry": registry},
        labels={"team": "build"},
        expiration_seconds=None,
        expires_at=clock.now() + timedelta(days=30),
        description="the build registry",
    )
    return build_connector(DockerProvider(), draft, clock, base=base)


def raw_db(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(path, isolation_level=None)


def edit_json(
    db: sqlite3.Connection, name: str, column: str, edit: Callable[[dict[str, Any]], None]
) -> None:
    (raw,) = db.execute(f"SELECT {column} FROM connectors WHERE name = ?", (name,)).fetchone()
    value = json.loads(raw)
    edit(value)
    db.execute(f"UPDATE connectors SET {column} = ? WHERE name = ?", (json.dumps(value), name))


def set_column(column: str, value: object) -> Callable[[sqlite3.Connection, str], None]:
    def change(db: sqlite3.Connection, name: str) -> None:
        db.execute(f"UPDATE connectors SET {column} = ? WHERE name = ?", (value, name))

    return change


def set_config(attr: str, value: object) -> Callable[[sqlite3.Connection, str], None]:
    return lambda db, name: edit_json(db, name, "config", lambda c: c.__setitem__(attr, value))


def drop_config(attr: str) -> Callable[[sqlite3.Connection, str], None]:
    return lambda db, name: edit_json(db, name, "config", lambda c: c.pop(attr))


def set_label(label: str, value: str) -> Callable[[sqlite3.Connection, str], None]:
    return lambda db, name: edit_json(db, name, "labels", lambda c: c.__setitem__(label, value))


#: Every change to a row that must break its seal, as an attacker would make it.
TAMPERS: dict[str, Callable[[sqlite3.Connection, str], None]] = {
    "config registry": set_config("registry", REGISTRY_B),
    "config registry removed (Docker Hub)": drop_config("registry"),
    "config insecure added": set_config("insecure", True),
    "config value type (bool as int)": set_config("insecure", 0),
    "connector_type": set_column("connector_type", "kubernetes"),
    "auth_method": set_column("auth_method", "token"),
    "resource_type cleared (multi-type)": set_column("resource_type", None),
    "resource_id": set_column("resource_id", REGISTRY_B),
    "label changed": set_label("team", "prod"),
    "label added": set_label("admin", "yes"),
    "labels cleared": set_column("labels", "{}"),
    "name": set_column("name", "renamed"),
    "expiration_seconds": set_column("expiration_seconds", 43200),
    "expires_at": set_column("expires_at", "2099-01-01T00:00:00.000000Z"),
    "description": set_column("description", "changed"),
}


# -- the store ---------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("change", list(TAMPERS.values()), ids=list(TAMPERS))
async def test_a_row_changed_without_the_key_reads_back_tampered_without_secrets(
    change: Callable[[sqlite3.Connection, str], None],
    store: SqliteStore,
    db_path: Path,
    key: bytes,
    clock: FakeClock,
) -> None:
    await store.create(docker("target", clock), SECRETS)
    await store.create(docker("bystander", clock), SECRETS)
    await store.close()
    with raw_db(db_path) as db:
        change(db, "target")

    reopened = SqliteStore(db_path, SecretBox(key), clock)
    with capture_logs() as logs:
        await reopened.open()  # the key still matches the store: opening works
        try:
            listed = {c.id: c for c in await reopened.list()}  # the listing does not fail
            (target,) = [c for c in listed.values() if c.tampered]
            bystander = await reopened.get("bystander")
            again = await reopened.get(target.name)
            deleted = await reopened.delete(target.name)
            assert [c.name for c in await reopened.list()] == ["bystander"]
        finally:
            await reopened.close()

    assert target.name in ("target", "renamed")
    assert "password" not in target.config and SECRET not in repr(target)
    assert again.tampered and "password" not in again.config
    assert deleted.tampered and deleted.id == target.id
    assert not bystander.tampered and bystander.config["password"] == SECRET
    with pytest.raises(ConnectorTampered, match="tampered") as info:
        check_not_tampered(target)
    assert isinstance(info.value, FailedPrecondition)
    assert f"connector '{target.name}'" in info.value.message
    assert any(e["event"] == "connector_tampered" and e["connector"] == target.name for e in logs)
    assert not any(SECRET in repr(e) for e in logs)


@pytest.mark.anyio
async def test_bookkeeping_columns_are_not_sealed(
    store: SqliteStore, db_path: Path, key: bytes, clock: FakeClock
) -> None:
    """created_at / updated_at / revision are the store's own: changing them is no tampering."""
    await store.create(docker("book", clock), SECRETS)
    await store.close()
    with raw_db(db_path) as db:
        db.execute(
            "UPDATE connectors SET revision = 7, created_at = '2001-01-01T00:00:00.000000Z', "
            "updated_at = '2002-01-01T00:00:00.000000Z'"
        )
    reopened = SqliteStore(db_path, SecretBox(key), clock)
    await reopened.open()
    try:
        book = await reopened.get("book")
    finally:
        await reopened.close()
    assert not book.tampered and book.revision == 7 and book.config["password"] == SECRET


@pytest.mark.anyio
async def test_swapping_two_rows_secrets_or_names_breaks_both(
    store: SqliteStore, db_path: Path, key: bytes, clock: FakeClock
) -> None:
    await store.create(docker("dev", clock), SECRETS)
    await store.create(docker("prod", clock), SECRETS)
    await store.create(docker("ci", clock), SECRETS)
    await store.create(docker("qa", clock), SECRETS)
    await store.close()
    with raw_db(db_path) as db:
        db.execute("UPDATE connectors SET name = 'tmp' WHERE name = 'dev'")
        db.execute("UPDATE connectors SET name = 'dev' WHERE name = 'prod'")
        db.execute("UPDATE connectors SET name = 'prod' WHERE name = 'tmp'")
        ci, qa = (
            db.execute("SELECT secrets FROM connectors WHERE name = ?", (n,)).fetchone()[0]
            for n in ("ci", "qa")
        )
        db.execute("UPDATE connectors SET secrets = ? WHERE name = 'ci'", (qa,))
        db.execute("UPDATE connectors SET secrets = ? WHERE name = 'qa'", (ci,))
    reopened = SqliteStore(db_path, SecretBox(key), clock)
    await reopened.open()
    try:
        assert all(c.tampered for c in await reopened.list())
    finally:
        await reopened.close()


@pytest.mark.anyio
async def test_the_store_never_reseals_a_tampered_connector(
    store: SqliteStore, db_path: Path, key: bytes, clock: FakeClock
) -> None:
    stored = await store.create(docker("t", clock), SECRETS)
    with raw_db(db_path) as db:
        set_config("registry", REGISTRY_B)(db, "t")
    tampered = await store.get("t")
    assert tampered.tampered
    with pytest.raises(ConnectorTampered, match="connector 't' is tampered"):
        await store.update(tampered, SECRETS, stored.revision)
    with pytest.raises(ConnectorTampered):
        await store.create(replace(tampered, id="", name="copy"), SECRETS)
    assert (await store.get("t")).tampered
    assert [c.name for c in await store.list()] == ["t"]


@pytest.mark.anyio
async def test_update_of_a_tampered_connector_needs_its_secrets_again(
    store: SqliteStore, db_path: Path, key: bytes, clock: FakeClock
) -> None:
    await store.create(docker("reg", clock), SECRETS)
    with raw_db(db_path) as db:
        set_config("registry", REGISTRY_B)(db, "reg")
    current = await store.get("reg")
    assert current.tampered

    # What the service does on update: rebuild from the current (secret-less) config.
    without = ConnectorDraft(
        name=current.name,
        connector_type=current.connector_type,
        auth_method=current.auth_method,
        resource_type=current.resource_type,
        resource_id=None,
        config={**current.config, "registry": REGISTRY_A},
        labels=current.labels,
        expiration_seconds=current.expiration_seconds,
        expires_at=current.expires_at,
        description=current.description,
    )
    with pytest.raises(ConnectorTampered, match=r"tampered.*secrets again \(password\)") as info:
        build_connector(DockerProvider(), without, clock, base=current)
    assert info.value.field == "password"

    fixed = docker("reg", clock, base=current)
    assert not fixed.tampered
    stored = await store.update(fixed, SECRETS, current.revision)
    await store.close()
    reopened = SqliteStore(db_path, SecretBox(key), clock)
    await reopened.open()
    try:
        healed = await reopened.get("reg")
    finally:
        await reopened.close()
    assert not healed.tampered and healed.config["password"] == SECRET
    assert healed.config["registry"] == REGISTRY_A and healed.revision == stored.revision


def test_update_of_a_tampered_connector_with_only_optional_secrets_needs_one() -> None:
    """Kubernetes tokens and client keys are both optional: at least one must come back."""
    clock = FakeClock(datetime(2030, 1, 1, tzinfo=UTC))
    base = Connector(
        id="k1",
        name="kube",
        connector_type="kubernetes",
        auth_method="token",
        resource_type=None,
        resource_id=None,
        config={"server": "https://127.0.0.1:6443"},
        labels={},
        expiration_seconds=None,
        expires_at=None,
        created_at=clock.now(),
        updated_at=clock.now(),
        revision=3,
        tampered=True,
    )
    draft = ConnectorDraft(
        name="kube",
        connector_type="kubernetes",
        auth_method="token",
        resource_type=None,
        resource_id=None,
        config=dict(base.config),
        labels={},
        expiration_seconds=None,
        expires_at=None,
    )
    with pytest.raises(ConnectorTampered, match="at least one of: token, client_key"):
        build_connector(KubernetesProvider(), draft, clock, base=base)
    fixed = replace(draft, config={**base.config, "token": "t0k"})
    assert not build_connector(KubernetesProvider(), fixed, clock, base=base).tampered


# -- discovery -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def counting() -> Iterator[CountingServer]:
    with CountingServer() as server:
        yield server


@pytest.mark.anyio
async def test_discovery_of_a_tampered_connector_is_a_per_type_error_and_no_call(
    clock: FakeClock, counting: CountingServer
) -> None:
    context = ProviderContext(clock=clock, request_timeout=5.0)
    registry = ProviderRegistry({"docker": DockerProvider(context)})
    try:
        discovery = Discovery(registry, clock)
        good = docker("good", clock, registry=counting.address)
        bad = replace(
            docker("bad", clock, registry=counting.address),
            tampered=True,
            config={"username": "alice", "registry": counting.address},
        )
        before = counting.connections
        (result,) = await discovery.discover(bad)
        assert result.resource_type == RESOURCE_TYPE and not result.resource_ids
        assert result.error is not None and "tampered" in result.error
        plan = discovery.plan([bad])
        async with discovery.stream(plan) as stream:
            listed = [f.result async for f in stream]
        assert len(listed) == 1 and "tampered" in (listed[0].error or "")
        assert counting.connections == before  # nothing was sent anywhere
        # The same connector, untampered, does reach the server: the count is live.
        (ok,) = await discovery.discover(good)
        assert ok.error is None and counting.connections > before
    finally:
        await registry.aclose()


# -- the migration -----------------------------------------------------------------------


def legacy_row(db: sqlite3.Connection, box: SecretBox, name: str, secrets: dict[str, str]) -> None:
    """Seal a row's secrets the way schema 1 did: bound to the connector id only."""
    (cid,) = db.execute("SELECT id FROM connectors WHERE name = ?", (name,)).fetchone()
    old_ad = f"credential-broker:connector-secrets:{cid}".encode()
    assert old_ad == legacy_secrets_ad(cid)
    blob = box.encrypt(json.dumps(secrets).encode(), old_ad)
    db.execute("UPDATE connectors SET secrets = ? WHERE id = ?", (blob, cid))


async def schema_1_store(path: Path, key: bytes, clock: FakeClock) -> None:
    """A database as the previous broker left it: schema version 1, id-only sealing.

    The schema of version 2 adds no tables or columns, so the tables are made by
    the store and then the rows and version are put back the way version 1 wrote
    them.
    """
    store = SqliteStore(path, SecretBox(key), clock)
    await store.open()
    try:
        await store.create(docker("reg", clock), SECRETS)
        await store.create(docker("other", clock, registry=REGISTRY_B), SECRETS)
        await store.create(docker("moved", clock), SECRETS)
        await store.create(docker("corrupt", clock), SECRETS)
    finally:
        await store.close()
    box = SecretBox(key)
    with raw_db(path) as db:
        db.execute("DELETE FROM schema_version WHERE version > 1")
        legacy_row(db, box, "reg", {"password": SECRET})
        legacy_row(db, box, "other", {"password": "other-password"})
        legacy_row(db, box, "corrupt", {"password": "corrupt-password"})
        # A blob moved from another row before the upgrade: it opens with no AD at all.
        db.execute(
            "UPDATE connectors SET secrets = (SELECT secrets FROM connectors WHERE name = 'reg')"
            " WHERE name = 'moved'"
        )
        db.execute("UPDATE connectors SET config = '{not json' WHERE name = 'corrupt'")


def schema_version(path: Path) -> int:
    with raw_db(path) as db:
        return int(db.execute("SELECT MAX(version) FROM schema_version").fetchone()[0])


def blobs(path: Path) -> dict[str, bytes]:
    with raw_db(path) as db:
        return dict(db.execute("SELECT name, secrets FROM connectors").fetchall())


@pytest.mark.anyio
async def test_first_start_reseals_schema_1_rows_with_the_new_associated_data(
    db_path: Path, key: bytes, clock: FakeClock
) -> None:
    await schema_1_store(db_path, key, clock)
    assert schema_version(db_path) == 1
    old = blobs(db_path)

    upgraded = SqliteStore(db_path, SecretBox(key), clock)
    with capture_logs() as logs:
        await upgraded.open()
    try:
        reg = await upgraded.get("reg")
        other = await upgraded.get("other")
        moved = await upgraded.get("moved")
    finally:
        await upgraded.close()

    assert schema_version(db_path) == migrations.LATEST_VERSION == 3
    assert not reg.tampered and reg.config["password"] == SECRET
    assert not other.tampered and other.config["password"] == "other-password"
    assert moved.tampered and "password" not in moved.config
    # Rows that did not open with the old AD are left exactly as they were, and named.
    new = blobs(db_path)
    assert new["moved"] == old["moved"] and new["corrupt"] == old["corrupt"]
    assert new["reg"] != old["reg"] and new["other"] != old["other"]
    skipped = {e["connector"] for e in logs if e["event"] == "connector_not_resealed"}
    assert skipped == {"moved", "corrupt"}
    assert not any(SECRET in repr(e) for e in logs)

    # Re-sealed with the new AD: it opens with it, and no longer with the id alone.
    box = SecretBox(key)
    plain = {k: v for k, v in reg.config.items() if k not in SECRETS}
    assert json.loads(box.decrypt(new["reg"], connector_secrets_ad(reg, plain))) == {
        "password": SECRET
    }
    with pytest.raises(SecretKeyMismatch):
        box.decrypt(new["reg"], legacy_secrets_ad(reg.id))

    # Now a label change (covered only by the new AD) makes it tampered.
    with raw_db(db_path) as db:
        set_label("team", "prod")(db, "reg")
    again = SqliteStore(db_path, SecretBox(key), clock)
    await again.open()  # the migration does not run twice
    try:
        assert (await again.get("reg")).tampered
        assert not (await again.get("other")).tampered
    finally:
        await again.close()
    assert blobs(db_path)["other"] == new["other"]


@pytest.mark.anyio
async def test_migration_with_the_wrong_key_changes_nothing(
    db_path: Path, key: bytes, clock: FakeClock
) -> None:
    await schema_1_store(db_path, key, clock)
    old = blobs(db_path)
    wrong = SqliteStore(db_path, SecretBox(generate_key()), clock)
    with capture_logs() as logs, pytest.raises(SecretKeyMismatch, match="does not match"):
        await wrong.open()
    assert schema_version(db_path) == 1 and blobs(db_path) == old
    assert not any(e["event"] == "connector_not_resealed" for e in logs)


@pytest.mark.anyio
async def test_a_failing_python_step_rolls_its_whole_migration_back(
    store: SqliteStore, db_path: Path, key: bytes, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    await store.create(docker("reg", clock), SECRETS)
    await store.close()
    latest = migrations.LATEST_VERSION
    ran: list[str] = []

    async def step(ctx: migrations.MigrationContext) -> None:
        await ctx.db.execute("INSERT INTO settings (key, value) VALUES ('half', 'done')")
        async with ctx.db.execute("SELECT * FROM connectors") as cur:
            ran.extend(ctx.plain_connector(r).name for r in await cur.fetchall())
        raise BrokerError("the step gave up")

    broken = migrations.Migration(
        latest + 1, "python step that fails", ("CREATE TABLE extra (id INTEGER)",), step
    )
    monkeypatch.setattr(migrations, "MIGRATIONS", (*migrations.MIGRATIONS, broken))
    monkeypatch.setattr(migrations, "LATEST_VERSION", latest + 1)
    with pytest.raises(
        FailedPrecondition, match=rf"version {latest + 1} .*the step gave up.*unchanged"
    ):
        await SqliteStore(db_path, SecretBox(key), clock).open()
    assert ran == ["reg"]
    with raw_db(db_path) as db:
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert db.execute("SELECT COUNT(*) FROM settings").fetchone()[0] == 0
    assert "extra" not in tables
    assert schema_version(db_path) == latest


# -- the daemon, end to end ------------------------------------------------------------------


def register(d: Daemon, name: str, registry: str, *extra: str) -> None:
    d.cli(
        "connector",
        "register",
        name,
        "--type",
        "docker",
        "username=alice",
        f"password={SECRET}",
        f"registry={registry}",
        "--label",
        "team=build",
        "--no-verify",
        *extra,
    )


def each_at_once(check: Callable[[str], None], names: Iterable[str]) -> None:
    """``check(name)`` for every name in parallel threads (each runs CLI processes, whose
    start-up is most of their cost), re-raising the first failure."""
    with futures.ThreadPoolExecutor(4) as pool:
        for done in [pool.submit(check, name) for name in names]:
            done.result()


def grpc_error(method: Callable[[Any], object], request: object) -> grpc.Call:
    """The error a unary call ends with (it must fail)."""
    with pytest.raises(grpc.RpcError) as info:
        method(request)
    assert isinstance(info.value, grpc.Call)
    return info.value


#: The connectors of the end-to-end test, each tampered in one column.
DAEMON_TAMPERED = ("by-registry", "by-type", "by-method", "by-resource-id", "by-label")


def test_daemon_refuses_a_tampered_connector_and_sends_nothing(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with CountingServer() as a, CountingServer() as b, CountingServer() as control:
        with running_daemon(data) as d:
            scoped = ("--resource-type", RESOURCE_TYPE, "--resource-id", a.address)
            each_at_once(
                lambda name: register(
                    d, name, a.address, *(scoped if name == "by-resource-id" else ())
                ),
                DAEMON_TAMPERED,
            )
            register(d, "untouched", control.address)
            assert d.stop() == 0

        # Without the key: point the secrets at server B, or change the row otherwise.
        with raw_db(data / "broker.db") as db:
            set_config("registry", b.address)(db, "by-registry")
            set_column("connector_type", "kubernetes")(db, "by-type")
            set_column("auth_method", "token")(db, "by-method")
            set_column("resource_id", b.address)(db, "by-resource-id")
            set_label("team", "prod")(db, "by-label")

        with running_daemon(data) as d:
            listed = d.cli_json("connector", "list")  # the listing still works
            assert sorted(c["name"] for c in listed) == sorted([*DAEMON_TAMPERED, "untouched"])
            shown = {c["name"]: c for c in listed}
            assert all(
                SECRET not in json.dumps(shown[n]) and "password" not in shown[n]["config"]
                for n in DAEMON_TAMPERED
            )

            def refused_everywhere(name: str) -> None:
                for command in (("connector", "verify", name), ("credentials", "get", name)):
                    result = d.cli(*command, check=False)
                    assert result.returncode != 0, (command, result.stdout)
                    assert "tampered" in result.stderr, (command, result.stderr)
                    assert SECRET not in result.stdout + result.stderr
                with d.stub() as stub:
                    errors = [
                        grpc_error(stub.VerifyConnector, pb.VerifyConnectorRequest(name=name)),
                        grpc_error(stub.GetCredentials, pb.GetCredentialsRequest(connector=name)),
                    ]
                for err in errors:
                    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
                    assert "tampered" in (err.details() or "")

            each_at_once(refused_everywhere, DAEMON_TAMPERED)

            # Listing resources asks every connector at once: tampered ones report an error.
            found = {
                r["connector"]: r
                for r in json.loads(
                    d.cli("connector", "list-resources", "--output", "json", check=False).stdout
                )
            }
            for name in DAEMON_TAMPERED:
                assert "tampered" in json.dumps(found[name]), found[name]

            # Updating needs the secrets again; without them it is refused, and nothing is sent.
            refused = d.cli(
                "connector", "update", "by-registry", f"registry={a.address}", check=False
            )
            assert refused.returncode != 0 and "tampered" in refused.stderr
            assert "password" in refused.stderr

            assert (a.connections, b.connections) == (0, 0), (a.requests, b.requests)
            assert a.requests == [] and b.requests == []

            # The untouched connector does reach its server: the counters are live.
            d.cli("connector", "verify", "untouched")
            assert control.connections > 0

            # Re-sealed with its secrets (after the operator fixed the registry), it works.
            d.cli(
                "connector",
                "update",
                "by-registry",
                f"registry={a.address}",
                f"password={SECRET}",
            )
            assert a.connections > 0 and b.connections == 0
            cred = d.cli_json("credentials", "get", "by-registry")
            assert cred["config"]["password"] == SECRET
            # A tampered connector can always be deleted.
            d.cli("connector", "delete", "by-label")
            names = [c["name"] for c in d.cli_json("connector", "list")]
            assert "by-label" not in names
            assert b.connections == 0
