"""The connector store contract, run on both backends, and secret encryption.

Every test taking ``backend`` runs twice: on a real SQLite file and on a real
PostgreSQL server (tests/pg.py), through the same protocol, so the two
backends behave the same for every case here: round trips, sealing, tampered
and corrupt rows, revisions, errors, migrations, settings and concurrent
writers. Tests of one backend's own files or SQL are marked as such.
"""

from __future__ import annotations

import base64
import os
import sqlite3
import stat
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from types import ModuleType
from typing import Any

import anyio
import pytest

from broker.clock import FakeClock
from broker.errors import (
    Aborted,
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
)
from broker.model import Connector, Secret, Value
from broker.store import migrations, postgres_migrations
from broker.store.base import ConnectorFilter, ConnectorStore
from broker.store.crypto import (
    SecretBox,
    SecretKeyError,
    SecretKeyMismatch,
    generate_key,
    load_secret_key,
)
from broker.store.postgres import PostgresStore
from broker.store.sqlite import SchemaTooNew, SqliteStore, StoreCorrupt
from tests.pg import PASSWORD, PostgresServer

SECRET = "SUPER-SECRET-sentinel-7d1f0c"
VISIBLE = "visible-config-marker-91ab"
SECRETS = frozenset({"aws_secret_access_key", "token"})
Store = SqliteStore | PostgresStore


def draft(name: str = "prod", **changes: object) -> Connector:
    base = Connector(
        id="",
        name=name,
        connector_type="aws",
        auth_method="secret-key",
        resource_type=None,
        resource_id=None,
        config={"aws_access_key_id": "AKIAEXAMPLE", "aws_secret_access_key": SECRET},
        labels={},
        expiration_seconds=None,
        expires_at=None,
        created_at=datetime(2000, 1, 1, tzinfo=UTC),
        updated_at=datetime(2000, 1, 1, tzinfo=UTC),
        revision=0,
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def typed(config: object) -> dict[str, tuple[type, Value]]:
    """Config with each value's exact type, so True and 1 are not confused (a sealed
    secret's text reads back as Secret, which is a str)."""
    assert isinstance(config, Mapping)
    return {k: (str if isinstance(v, Secret) else type(v), v) for k, v in config.items()}


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def key() -> bytes:
    return generate_key()


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "data" / "broker.db"


class Backend:
    """One database of one backend: new store instances on it, and raw SQL beside them."""

    name = ""
    #: The backend's migration list (tests append to it).
    migrations: ModuleType
    #: What the backend answers for SQL naming a table that does not exist.
    no_such_table = ""

    def __init__(self, key: bytes, clock: FakeClock) -> None:
        self.key = key
        self.clock = clock

    def store(self, key: bytes | None = None) -> Store:
        raise NotImplementedError

    def sql(self, statement: str) -> list[tuple[Any, ...]]:
        """Run SQL outside the store (as someone writing the database without the key)."""
        raise NotImplementedError

    def schema_version(self) -> int:
        return int(self.sql("SELECT MAX(version) FROM schema_version")[0][0])

    def tables(self) -> set[str]:
        raise NotImplementedError

    def record_schema_version(self, version: int) -> None:
        raise NotImplementedError

    def disk_bytes(self) -> bytes:
        """Everything the database has written to disk, as someone reading it would see."""
        raise NotImplementedError

    @property
    def named_in_errors(self) -> str:
        """How the store's errors name it."""
        return self.store().location


class SqliteBackend(Backend):
    name = "sqlite"
    migrations = migrations
    no_such_table = "no such table"

    def __init__(self, key: bytes, clock: FakeClock, path: Path) -> None:
        super().__init__(key, clock)
        self.path = path

    def store(self, key: bytes | None = None) -> Store:
        return SqliteStore(self.path, SecretBox(key or self.key), self.clock)

    def sql(self, statement: str) -> list[tuple[Any, ...]]:
        with sqlite3.connect(self.path, isolation_level=None) as db:
            return [tuple(r) for r in db.execute(statement).fetchall()]

    def tables(self) -> set[str]:
        return {r[0] for r in self.sql("SELECT name FROM sqlite_master WHERE type = 'table'")}

    def record_schema_version(self, version: int) -> None:
        self.sql(f"INSERT INTO schema_version (version, applied_at) VALUES ({version}, 'x')")

    def disk_bytes(self) -> bytes:
        out = disk_bytes(self.path)
        for sidecar in ("-shm",):
            extra = self.path.with_name(self.path.name + sidecar)
            if extra.exists():
                out += extra.read_bytes()
        return out

    @property
    def named_in_errors(self) -> str:
        return str(self.path)


class PostgresBackend(Backend):
    name = "postgres"
    migrations = postgres_migrations
    no_such_table = "does not exist"

    def __init__(self, key: bytes, clock: FakeClock, server: PostgresServer) -> None:
        super().__init__(key, clock)
        self.server = server
        self.database = server.create_database()
        self.url = server.url(self.database)

    def store(self, key: bytes | None = None) -> Store:
        return PostgresStore(self.url, SecretBox(key or self.key), self.clock)

    def sql(self, statement: str) -> list[tuple[Any, ...]]:
        out = self.server.psql(statement, self.database)
        return [tuple(line.split("|")) for line in out.splitlines()] if out else []

    def tables(self) -> set[str]:
        rows = self.sql("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        return {r[0] for r in rows}

    def record_schema_version(self, version: int) -> None:
        self.sql(f"INSERT INTO schema_version (version, applied_by) VALUES ({version}, 'x')")

    def disk_bytes(self) -> bytes:
        """Every file of the cluster (tables, WAL) after a checkpoint wrote it all out."""
        self.server.psql("CHECKPOINT")
        out = bytearray()
        for path in sorted(self.server.data.rglob("*")):
            if path.is_file():
                out += path.read_bytes()
        return bytes(out)


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest, db_path: Path, key: bytes, clock: FakeClock) -> Backend:
    if request.param == "postgres":
        return PostgresBackend(key, clock, request.getfixturevalue("postgres"))
    return SqliteBackend(key, clock, db_path)


@pytest.fixture
async def store(backend: Backend) -> AsyncIterator[Store]:
    s = backend.store()
    await s.open()
    try:
        yield s
    finally:
        await s.close()


def raw_db(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(path, isolation_level=None)


def disk_bytes(path: Path) -> bytes:
    """The database file plus its WAL, as an attacker reading the disk would see them."""
    out = path.read_bytes()
    wal = path.with_name(path.name + "-wal")
    if wal.exists():
        out += wal.read_bytes()
    return out


def test_both_backends_implement_the_protocol(tmp_path: Path, key: bytes) -> None:
    stores: list[ConnectorStore] = [
        SqliteStore(tmp_path / "x.db", SecretBox(key), FakeClock()),
        PostgresStore("postgresql://u@127.0.0.1/x", SecretBox(key), FakeClock()),
    ]
    assert [s.location for s in stores] == [
        f"sqlite:{tmp_path / 'x.db'}",
        "postgresql://u@127.0.0.1/x",
    ]


# -- round trip ----------------------------------------------------------------


@pytest.mark.anyio
async def test_every_field_and_value_type_round_trips(
    store: Store, backend: Backend, clock: FakeClock
) -> None:
    config: dict[str, Value] = {
        "region": "eu-west-1",
        "unicode": "zoë ✓ 日本",
        "empty": "",
        "port": 443,
        "zero": 0,
        "big": 2**62,
        "negative": -5,
        "flag_on": True,
        "flag_off": False,
        "policy_arns": ["arn:aws:iam::aws:policy/A", "arn:aws:iam::aws:policy/B"],
        "no_items": [],
        "aws_secret_access_key": SECRET,
        "token": "tok,with,commas",
    }
    expires = datetime(2031, 5, 6, 7, 8, 9, 123456, tzinfo=timezone(timedelta(hours=2)))
    created = await store.create(
        draft(
            config=config,
            resource_type="s3-bucket",
            resource_id="my-bucket",
            labels={"env": "prod", "team": "data"},
            expiration_seconds=3600,
            expires_at=expires,
            description="the production account",
        ),
        SECRETS,
    )
    assert uuid.UUID(created.id).version == 4
    assert created.revision == 1
    assert created.created_at == created.updated_at == clock.now()

    by_name = await store.get("prod")
    by_id = await store.get(created.id)
    assert by_name == by_id == created
    assert typed(by_name.config) == typed(config)
    assert by_name.expires_at == expires
    assert by_name.expires_at is not None and by_name.expires_at.tzinfo is not None

    # A fresh process (new connection) reads the same thing back.
    await store.close()
    again = backend.store()
    await again.open()
    try:
        reread = await again.get("prod")
    finally:
        await again.close()
    assert reread == created
    assert typed(reread.config) == typed(config)
    assert reread.labels == {"env": "prod", "team": "data"}
    assert (reread.resource_type, reread.resource_id) == ("s3-bucket", "my-bucket")
    assert reread.expiration_seconds == 3600
    assert reread.description == "the production account"


@pytest.mark.anyio
async def test_nulls_round_trip(store: Store) -> None:
    created = await store.create(draft(config={}), SECRETS)
    got = await store.get(created.id)
    assert got.resource_type is None and got.resource_id is None
    assert got.expires_at is None and got.expiration_seconds is None
    assert got.config == {} and got.labels == {} and got.description == ""


@pytest.mark.anyio
async def test_unsupported_value_type_is_refused_and_nothing_is_stored(store: Store) -> None:
    with pytest.raises(InvalidArgument, match="attribute 'ratio' of connector 'prod'"):
        await store.create(draft(config={"ratio": 0.5}), SECRETS)
    with pytest.raises(InvalidArgument, match="expires_at must carry a time zone"):
        await store.create(draft(expires_at=datetime(2031, 1, 1)), SECRETS)
    assert await store.list() == []


# -- secrets at rest -------------------------------------------------------------


@pytest.mark.anyio
async def test_secret_plaintext_never_reaches_the_disk(store: Store, backend: Backend) -> None:
    config = {"aws_access_key_id": VISIBLE, "aws_secret_access_key": SECRET}
    created = await store.create(draft(config=config), SECRETS)
    second_secret = SECRET + "-rotated"
    await store.update(
        replace(created, config={**config, "aws_secret_access_key": second_secret}), SECRETS, 1
    )
    await store.create(draft("other", config={"token": SECRET}), SECRETS)

    while_open = backend.disk_bytes()
    assert VISIBLE.encode() in while_open  # the check below would catch a leak
    assert SECRET.encode() not in while_open
    assert second_secret.encode() not in while_open

    await store.close()
    after_close = backend.disk_bytes()
    assert VISIBLE.encode() in after_close
    assert SECRET.encode() not in after_close
    assert second_secret.encode() not in after_close


@pytest.mark.anyio
async def test_wrong_key_is_refused_when_the_store_opens(store: Store, backend: Backend) -> None:
    await store.create(draft(), SECRETS)
    await store.close()
    other = generate_key()
    wrong = backend.store(other)
    with pytest.raises(SecretKeyMismatch, match="secret key does not match") as info:
        await wrong.open()
    assert backend.named_in_errors in str(info.value)
    assert base64.b64encode(other).decode() not in str(info.value)
    assert PASSWORD not in str(info.value)
    with pytest.raises(FailedPrecondition, match="not open"):
        await wrong.get("prod")


@pytest.mark.anyio
async def test_secrets_blob_moved_to_another_row_does_not_decrypt(
    store: Store, backend: Backend
) -> None:
    await store.create(draft("alpha"), SECRETS)
    await store.create(draft("beta", config={"token": "beta-token"}), SECRETS)
    backend.sql(
        "UPDATE connectors SET secrets = (SELECT secrets FROM connectors WHERE name = 'alpha')"
        " WHERE name = 'beta'"
    )
    assert (await store.get("alpha")).config["aws_secret_access_key"] == SECRET
    beta = await store.get("beta")
    assert beta.tampered and "token" not in beta.config
    assert "aws_secret_access_key" not in beta.config
    listed = {c.name: c for c in await store.list()}
    assert not listed["alpha"].tampered and listed["beta"].tampered
    # The way out: the broken connector can still be deleted.
    deleted = await store.delete("beta")
    assert deleted.name == "beta" and "token" not in deleted.config
    assert [c.name for c in await store.list()] == ["alpha"]


@pytest.mark.anyio
async def test_corrupt_row_names_the_connector(store: Store, backend: Backend) -> None:
    await store.create(draft("broken"), SECRETS)
    await store.create(draft("fine"), SECRETS)
    # SQLite takes any text; PostgreSQL's jsonb column takes only JSON, just not an object.
    bad = "'{not json'" if backend.name == "sqlite" else "'[1]'"
    backend.sql(f"UPDATE connectors SET config = {bad} WHERE name = 'broken'")
    with pytest.raises(StoreCorrupt, match=r"connector 'broken' is corrupt.*config"):
        await store.get("broken")
    assert (await store.get("fine")).name == "fine"
    # A listing never fails for one bad row: it shows up unusable (tampered), the others
    # as they are, and it can be deleted.
    listed = {c.name: c for c in await store.list()}
    assert listed["broken"].tampered and listed["broken"].config == {}
    assert not listed["fine"].tampered
    await store.delete("broken")
    assert [c.name for c in await store.list()] == ["fine"]
    if backend.name == "sqlite":  # typed columns make this impossible in PostgreSQL
        backend.sql("UPDATE connectors SET created_at = 'yesterday'")
        assert await store.list() == []  # not even its name can be read back: left out


def test_secret_box_blob_format() -> None:
    box = SecretBox(generate_key())
    a = box.encrypt(b"hello", b"row-1")
    b = box.encrypt(b"hello", b"row-1")
    assert a[0] == 1 and len(a) == 1 + 12 + len(b"hello") + 16
    assert a != b  # a fresh nonce each time
    assert box.decrypt(a, b"row-1") == b"hello"
    with pytest.raises(SecretKeyMismatch, match="does not match"):
        box.decrypt(a, b"row-2")
    tampered = a[:-1] + bytes([a[-1] ^ 1])
    with pytest.raises(SecretKeyMismatch):
        box.decrypt(tampered, b"row-1")
    with pytest.raises(SecretKeyMismatch, match="format version 9"):
        box.decrypt(b"\x09" + a[1:], b"row-1")
    with pytest.raises(SecretKeyError, match="32 bytes"):
        SecretBox(b"short")
    assert "hidden" in repr(box)


# -- key loading -------------------------------------------------------------------


@pytest.fixture
def zero_umask() -> Iterator[None]:
    """A careless umask: the key file must still come out 0600."""
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


@pytest.mark.usefixtures("zero_umask")
def test_key_file_is_created_private_and_reused(tmp_path: Path) -> None:
    data_dir = tmp_path / "new" / "data"
    first = load_secret_key(data_dir, {})
    path = data_dir / "secret.key"
    assert len(first) == 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700
    assert base64.b64decode(path.read_text()) == first
    assert load_secret_key(data_dir, {}) == first
    assert [p.name for p in data_dir.iterdir()] == ["secret.key"]  # no temp files left


def test_permissive_key_file_is_refused(tmp_path: Path) -> None:
    load_secret_key(tmp_path, {})
    path = tmp_path / "secret.key"
    path.chmod(0o644)
    with pytest.raises(SecretKeyError) as info:
        load_secret_key(tmp_path, {})
    assert str(path) in str(info.value) and "chmod 600" in str(info.value)
    assert path.read_text().strip() not in str(info.value)


def test_env_key_wins_over_files(tmp_path: Path) -> None:
    env_key = generate_key()
    named = tmp_path / "named.key"
    named.write_text(base64.b64encode(generate_key()).decode())
    named.chmod(0o600)
    env = {
        "BROKER_SECRET_KEY": base64.b64encode(env_key).decode() + "\n",
        "BROKER_SECRET_KEY_FILE": str(named),
    }
    assert load_secret_key(tmp_path / "data", env) == env_key
    assert not (tmp_path / "data" / "secret.key").exists()


def test_key_file_from_env_or_settings(tmp_path: Path) -> None:
    key = generate_key()
    named = tmp_path / "named.key"
    fd = os.open(named, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, base64.b64encode(key) + b"\n")
    os.close(fd)
    assert load_secret_key(tmp_path / "data", {"BROKER_SECRET_KEY_FILE": str(named)}) == key
    assert load_secret_key(tmp_path / "data", {}, key_file=named) == key
    assert not (tmp_path / "data" / "secret.key").exists()
    missing = tmp_path / "missing.key"
    with pytest.raises(SecretKeyError, match=f"{missing} does not exist"):
        load_secret_key(tmp_path, {"BROKER_SECRET_KEY_FILE": str(missing)})


@pytest.mark.parametrize(
    "value", ["not base64!!", base64.b64encode(b"x" * 16).decode(), "QUJD"], ids=str
)
def test_bad_env_key_names_the_variable_without_echoing_it(tmp_path: Path, value: str) -> None:
    with pytest.raises(SecretKeyError, match="BROKER_SECRET_KEY") as info:
        load_secret_key(tmp_path, {"BROKER_SECRET_KEY": value})
    assert value not in str(info.value)


def test_bad_key_file_content_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "secret.key"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, b"c2hvcnQta2V5\n")  # base64 of "short-key"
    os.close(fd)
    with pytest.raises(SecretKeyError, match=f"secret key file {path}.*9 bytes") as info:
        load_secret_key(tmp_path, {})
    assert "c2hvcnQta2V5" not in str(info.value)
    path.write_bytes(b"")
    with pytest.raises(SecretKeyError, match=f"secret key file {path} is empty"):
        load_secret_key(tmp_path, {})


# -- revisions and errors ----------------------------------------------------------


@pytest.mark.anyio
async def test_update_bumps_revision_and_refuses_stale_writes(
    store: Store, clock: FakeClock
) -> None:
    created = await store.create(draft(), SECRETS)
    await clock.advance(60)
    changed = replace(
        created,
        config={**created.config, "aws_secret_access_key": "new-secret"},
        labels={"env": "prod"},
        description="rotated",
    )
    updated = await store.update(changed, SECRETS, expected_revision=1)
    assert updated.revision == 2
    assert updated.created_at == created.created_at
    assert updated.updated_at == clock.now() == created.updated_at + timedelta(seconds=60)
    assert await store.get("prod") == updated

    stale = replace(created, description="lost update")
    with pytest.raises(
        Aborted, match=r"connector 'prod' is at revision 2, not the expected revision 1"
    ):
        await store.update(stale, SECRETS, expected_revision=1)
    assert await store.get("prod") == updated  # the stale write changed nothing

    third = await store.update(replace(updated, description="again"), SECRETS, 2)
    assert third.revision == 3


@pytest.mark.anyio
async def test_update_by_name_missing_and_rename_conflict(store: Store) -> None:
    a = await store.create(draft("a"), SECRETS)
    await store.create(draft("b"), SECRETS)
    by_name = await store.update(replace(draft("a"), description="via name"), SECRETS, 1)
    assert by_name.id == a.id and by_name.revision == 2
    with pytest.raises(NotFound, match="connector 'ghost' not found"):
        await store.update(draft("ghost"), SECRETS, 1)
    with pytest.raises(AlreadyExists, match="connector 'b' already exists"):
        await store.update(replace(by_name, name="b"), SECRETS, 2)
    assert (await store.get(a.id)).name == "a"


@pytest.mark.anyio
async def test_already_exists_and_not_found_messages(store: Store) -> None:
    first = await store.create(draft("prod"), SECRETS)
    with pytest.raises(AlreadyExists, match="connector 'prod' already exists"):
        await store.create(draft("prod", config={"token": "other"}), SECRETS)
    assert await store.get("prod") == first
    with pytest.raises(NotFound, match="connector 'nope' not found"):
        await store.get("nope")
    with pytest.raises(NotFound, match="connector 'nope' not found"):
        await store.delete("nope")
    assert await store.delete(first.id) == first
    with pytest.raises(NotFound, match="connector 'prod' not found"):
        await store.get("prod")


@pytest.mark.anyio
async def test_list_filters(store: Store) -> None:
    await store.create(
        draft(
            "zeta",
            labels={"env": "prod", "team": "a"},
            resource_type="aws-generic",
            resource_id="eu-west-1",
        ),
        SECRETS,
    )
    await store.create(
        draft("alpha", auth_method="iam-role", resource_type="s3-bucket", labels={"env": "prod"}),
        SECRETS,
    )
    await store.create(
        draft(
            "mid",
            connector_type="gcp",
            auth_method="service-account",
            resource_type="s3-bucket",
            resource_id="bucket-1",
            labels={"env": "dev"},
        ),
        SECRETS,
    )

    async def names(**kw: object) -> list[str]:
        return [c.name for c in await store.list(ConnectorFilter(**kw))]  # type: ignore[arg-type]

    assert [c.name for c in await store.list()] == ["alpha", "mid", "zeta"]
    assert await names() == ["alpha", "mid", "zeta"]
    assert await names(connector_type="aws") == ["alpha", "zeta"]
    assert await names(auth_method="iam-role") == ["alpha"]
    assert await names(resource_type="s3-bucket") == ["alpha", "mid"]
    assert await names(resource_id="bucket-1") == ["mid"]
    assert await names(resource_type="s3-bucket", resource_id="eu-west-1") == []
    assert await names(name="zeta") == ["zeta"]
    assert await names(labels={"env": "prod"}) == ["alpha", "zeta"]
    assert await names(labels={"env": "prod", "team": "a"}) == ["zeta"]
    assert await names(labels={"env": "prod"}, connector_type="gcp") == []


# -- schema and files --------------------------------------------------------------


def schema_version(path: Path) -> int:
    with raw_db(path) as db:
        return int(db.execute("SELECT MAX(version) FROM schema_version").fetchone()[0])


@pytest.fixture
async def sqlite_store(db_path: Path, key: bytes, clock: FakeClock) -> AsyncIterator[SqliteStore]:
    s = SqliteStore(db_path, SecretBox(key), clock)
    await s.open()
    try:
        yield s
    finally:
        await s.close()


@pytest.mark.anyio
async def test_sqlite_new_files_are_private(sqlite_store: SqliteStore, db_path: Path) -> None:
    await sqlite_store.create(draft(), SECRETS)
    assert stat.S_IMODE(db_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(db_path.parent.stat().st_mode) == 0o700
    wal = db_path.with_name(db_path.name + "-wal")
    assert wal.exists() and stat.S_IMODE(wal.stat().st_mode) == 0o600
    with raw_db(db_path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


@pytest.mark.anyio
async def test_sqlite_empty_file_is_migrated(tmp_path: Path, key: bytes, clock: FakeClock) -> None:
    path = tmp_path / "broker.db"
    path.touch(mode=0o600)
    store = SqliteStore(path, SecretBox(key), clock)
    await store.open()
    try:
        await store.create(draft(), SECRETS)
        assert [c.name for c in await store.list()] == ["prod"]
    finally:
        await store.close()
    assert schema_version(path) == migrations.LATEST_VERSION


@pytest.mark.anyio
async def test_older_schema_gets_missing_migrations_in_one_transaction(
    store: Store, backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    await store.create(draft(), SECRETS)
    await store.close()
    module = backend.migrations
    old = module.LATEST_VERSION
    broken = module.Migration(
        old + 1,
        "half good, half bad",
        ("CREATE TABLE audit (id INTEGER PRIMARY KEY)", "INSERT INTO no_such_table VALUES (1)"),
    )
    monkeypatch.setattr(module, "MIGRATIONS", (*module.MIGRATIONS, broken))
    monkeypatch.setattr(module, "LATEST_VERSION", old + 1)
    with pytest.raises(
        FailedPrecondition, match=rf"version {old + 1} .*{backend.no_such_table}.*unchanged"
    ):
        await backend.store().open()
    assert "audit" not in backend.tables()  # nothing of the failed migration is left behind
    assert backend.schema_version() == old

    good = module.Migration(
        old + 1, "add audit", ("CREATE TABLE audit (id INTEGER PRIMARY KEY, what TEXT)",)
    )
    monkeypatch.setattr(module, "MIGRATIONS", (*module.MIGRATIONS[:-1], good))
    upgraded = backend.store()
    await upgraded.open()
    try:
        assert (await upgraded.get("prod")).config["aws_secret_access_key"] == SECRET
    finally:
        await upgraded.close()
    assert backend.schema_version() == old + 1
    assert "audit" in backend.tables()


@pytest.mark.anyio
async def test_newer_schema_is_refused_naming_both_versions(store: Store, backend: Backend) -> None:
    await store.close()
    backend.record_schema_version(99)
    newer = backend.store()
    latest = backend.migrations.LATEST_VERSION
    with pytest.raises(
        SchemaTooNew, match=rf"schema version 99.*versions up to {latest}.*upgrade the broker"
    ):
        await newer.open()
    assert backend.schema_version() == 99


@pytest.mark.anyio
async def test_sqlite_file_that_is_not_a_database_is_refused(
    tmp_path: Path, key: bytes, clock: FakeClock
) -> None:
    path = tmp_path / "broker.db"
    path.write_bytes(b"this is not sqlite at all, just some text " * 100)
    with pytest.raises(StoreCorrupt, match=f"{path} is not a usable connector store"):
        await SqliteStore(path, SecretBox(key), clock).open()


# -- settings ------------------------------------------------------------------------


@pytest.mark.anyio
async def test_settings(store: Store, backend: Backend) -> None:
    assert await store.get_setting("registry:ghcr.io") is None
    await store.set_setting("registry:ghcr.io", "conn-a")
    await store.set_setting("registry:ghcr.io", "conn-b")
    await store.set_setting("other", "x")
    assert await store.get_setting("registry:ghcr.io") == "conn-b"
    await store.set_setting("other", None)
    await store.set_setting("never-set", None)
    assert await store.get_setting("other") is None
    await store.close()
    reopened = backend.store()
    await reopened.open()
    try:
        assert await reopened.get_setting("registry:ghcr.io") == "conn-b"
        assert await reopened.get_setting("other") is None
    finally:
        await reopened.close()


# -- concurrency -----------------------------------------------------------------------


@pytest.mark.anyio
async def test_concurrent_creates_with_one_name_have_one_winner(
    store: Store, backend: Backend
) -> None:
    # Two stores on one database, as two daemons would be, plus tasks sharing each one.
    second = backend.store()
    await second.open()
    won: list[Connector] = []
    lost: list[AlreadyExists] = []

    async def attempt(s: Store, i: int) -> None:
        try:
            won.append(await s.create(draft("shared", config={"token": f"t{i}"}), SECRETS))
        except AlreadyExists as exc:
            lost.append(exc)

    try:
        async with anyio.create_task_group() as tg:
            for i in range(12):
                tg.start_soon(attempt, store if i % 2 else second, i)
        assert len(won) == 1 and len(lost) == 11
        assert all("connector 'shared' already exists" in str(e) for e in lost)
        stored = await second.list()
    finally:
        await second.close()
    assert stored == won
