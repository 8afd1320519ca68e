"""The default connector store: one SQLite file, secrets sealed per row.

Non-secret configuration is plain JSON (so an operator can inspect it); the
secret attributes go into one AES-GCM blob sealed to the rest of the row
(:mod:`broker.store.seal`): a row changed without the key reads back as a
*tampered* connector with its secrets withheld, never as a working one. The
daemon is the only writer, but every write is still one ``BEGIN IMMEDIATE``
transaction, updates are compare-and-swap on ``revision``, and a lock keeps
tasks sharing the one connection from interleaving their transactions.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiosqlite
import anyio
import structlog

from broker.clock import Clock
from broker.errors import (
    Aborted,
    AlreadyExists,
    BrokerError,
    FailedPrecondition,
    NotFound,
    Unavailable,
)
from broker.model import ClientCredential, Connector
from broker.store import migrations, persisted
from broker.store.base import ConnectorFilter, StoreExport
from broker.store.codec import (
    SchemaTooNew,
    StoreCorrupt,
    dumps,
    exported,
    fmt_time,
    list_row,
    normalized,
    open_row,
    parse_time,
    plain_connector,
    seal,
    split_secrets,
    to_create,
    unreadable,
)
from broker.store.crypto import SecretBox, SecretKeyMismatch
from broker.store.persisted import LoadedCredentials, PersistedKey

log = structlog.get_logger(__name__)

#: How long a write waits for another process holding the database lock.
DEFAULT_BUSY_TIMEOUT_SECONDS = 5.0

_KEY_CHECK = "key_check"
_KEY_CHECK_AD = b"credential-broker:store_meta:key_check"
_KEY_CHECK_PLAINTEXT = b"credential-broker secret key check v1"

_SELECT = (
    "SELECT id, name, connector_type, auth_method, resource_type, resource_id, description, "
    "config, secrets, labels, expiration_seconds, expires_at, created_at, updated_at, revision "
    "FROM connectors"
)
_INSERT = (
    "INSERT INTO connectors (id, name, connector_type, auth_method, resource_type, "
    "resource_id, description, config, secrets, labels, expiration_seconds, expires_at, "
    "created_at, updated_at, revision) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_UPDATE = (
    "UPDATE connectors SET id = ?, name = ?, connector_type = ?, auth_method = ?, "
    "resource_type = ?, resource_id = ?, description = ?, config = ?, secrets = ?, "
    "labels = ?, expiration_seconds = ?, expires_at = ?, created_at = ?, updated_at = ?, "
    "revision = ? WHERE id = ? AND revision = ?"
)
_FETCH = _SELECT + " WHERE name = ? OR id = ? ORDER BY name = ? DESC LIMIT 1"
_CAS_BY_ID = "SELECT id, name, revision, created_at FROM connectors WHERE id = ?"
_CAS_BY_NAME = "SELECT id, name, revision, created_at FROM connectors WHERE name = ?"


__all__ = ["SchemaTooNew", "SqliteStore", "StoreCorrupt"]


class SqliteStore:
    """:class:`~broker.store.base.ConnectorStore` on an SQLite file (WAL mode)."""

    def __init__(
        self,
        path: Path,
        box: SecretBox,
        clock: Clock,
        *,
        busy_timeout_seconds: float = DEFAULT_BUSY_TIMEOUT_SECONDS,
    ) -> None:
        self._path = path
        self._box = box
        self._clock = clock
        self._busy_timeout_ms = int(busy_timeout_seconds * 1000)
        self._db: aiosqlite.Connection | None = None
        self._lock: anyio.Lock | None = None

    @property
    def path(self) -> Path:
        return self._path

    @property
    def location(self) -> str:
        return f"sqlite:{self._path}"

    # -- lifecycle -----------------------------------------------------------

    async def open(self) -> None:
        """Create the file (0600) if needed, then apply pending migrations."""
        if self._db is not None:
            return
        _create_private_file(self._path)
        self._lock = anyio.Lock()
        try:
            db = await aiosqlite.connect(self._path, isolation_level=None)
        except sqlite3.Error as exc:
            raise Unavailable(f"cannot open connector store {self._path}: {exc}") from None
        db.row_factory = sqlite3.Row
        try:
            await self._configure(db)
            self._db = db
            async with self._tx() as conn:
                await self._migrate(conn)
                await self._check_key(conn)
        except BaseException:
            self._db = None
            with anyio.CancelScope(shield=True):
                await db.close()
            raise

    async def close(self) -> None:
        db, self._db = self._db, None
        if db is not None:
            with anyio.CancelScope(shield=True):
                await db.close()

    async def _configure(self, db: aiosqlite.Connection) -> None:
        try:
            await db.execute(f"PRAGMA busy_timeout = {self._busy_timeout_ms}")
            async with db.execute("PRAGMA journal_mode = WAL") as cur:
                row = await cur.fetchone()
            if row is None or str(row[0]).lower() != "wal":
                raise FailedPrecondition(
                    f"connector store {self._path} cannot use WAL mode "
                    f"(journal mode is {row[0] if row else 'unknown'})"
                )
            await db.execute("PRAGMA foreign_keys = ON")
            # A credential store is written rarely: pay for full durability.
            await db.execute("PRAGMA synchronous = FULL")
            # Overwrite removed records instead of leaving them in free pages.
            await db.execute("PRAGMA secure_delete = ON")
        except sqlite3.DatabaseError as exc:
            raise StoreCorrupt(
                f"{self._path} is not a usable connector store database ({exc})"
            ) from None

    async def _migrate(self, db: aiosqlite.Connection) -> None:
        await db.execute(
            "CREATE TABLE IF NOT EXISTS schema_version ("
            "version INTEGER PRIMARY KEY NOT NULL, applied_at TEXT NOT NULL)"
        )
        async with db.execute("SELECT MAX(version) FROM schema_version") as cur:
            row = await cur.fetchone()
        current = int(row[0]) if row is not None and row[0] is not None else 0
        if current > migrations.LATEST_VERSION:
            raise SchemaTooNew(
                f"connector store {self._path} has schema version {current}, but this broker "
                f"only knows versions up to {migrations.LATEST_VERSION}: upgrade the broker "
                "(or restore a backup made by this version)"
            )
        applied_at = fmt_time(self._clock.now(), "applied_at")
        for migration in migrations.pending(current):
            try:
                for statement in migration.statements:
                    await db.execute(statement)
                if migration.python is not None:
                    # Python steps handle secrets: never with a key that is not the store's.
                    await self._check_key(db)
                    await migration.python(
                        migrations.MigrationContext(
                            db=db, box=self._box, path=self._path, plain_connector=plain_connector
                        )
                    )
            except sqlite3.Error as exc:
                raise FailedPrecondition(
                    f"connector store {self._path}: migration to schema version "
                    f"{migration.version} ({migration.description}) failed: {exc}; "
                    "the database was left unchanged"
                ) from None
            except SecretKeyMismatch:
                raise
            except BrokerError as exc:
                raise FailedPrecondition(
                    f"connector store {self._path}: migration to schema version "
                    f"{migration.version} ({migration.description}) failed: {exc.message}; "
                    "the database was left unchanged"
                ) from None
            await db.execute(
                "INSERT INTO schema_version (version, applied_at) VALUES (?, ?)",
                (migration.version, applied_at),
            )

    async def _check_key(self, db: aiosqlite.Connection) -> None:
        """Fail at startup, not on first use, when the key is not the store's key."""
        async with db.execute("SELECT value FROM store_meta WHERE key = ?", (_KEY_CHECK,)) as cur:
            row = await cur.fetchone()
        if row is None:
            blob = self._box.encrypt(_KEY_CHECK_PLAINTEXT, _KEY_CHECK_AD)
            await db.execute(
                "INSERT INTO store_meta (key, value) VALUES (?, ?)", (_KEY_CHECK, blob)
            )
            return
        try:
            ok = self._box.decrypt(bytes(row[0]), _KEY_CHECK_AD) == _KEY_CHECK_PLAINTEXT
        except SecretKeyMismatch:
            ok = False
        if not ok:
            raise SecretKeyMismatch(
                f"the secret key does not match connector store {self._path}: it was "
                "written with another key; set BROKER_SECRET_KEY / BROKER_SECRET_KEY_FILE "
                "to the original key (or restore DATA_DIR/secret.key)"
            )

    @asynccontextmanager
    async def _tx(self) -> AsyncIterator[aiosqlite.Connection]:
        """One write transaction; rolled back on any error, so nothing is half-written."""
        db, lock = self._db, self._lock
        if db is None or lock is None:
            raise FailedPrecondition(f"connector store {self._path} is not open")
        async with lock:
            try:
                await db.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise Unavailable(f"connector store {self._path} is busy: {exc}") from None
            try:
                yield db
                await db.execute("COMMIT")
            except BaseException as exc:
                with anyio.CancelScope(shield=True):
                    # SQLite may have rolled back already (e.g. after a full disk).
                    with contextlib.suppress(sqlite3.Error):
                        await db.execute("ROLLBACK")
                if isinstance(exc, sqlite3.Error):
                    raise Unavailable(f"connector store {self._path} failed: {exc}") from None
                raise

    @asynccontextmanager
    async def _read(self) -> AsyncIterator[aiosqlite.Connection]:
        """Reads share the lock so they never see another task's open transaction."""
        db, lock = self._db, self._lock
        if db is None or lock is None:
            raise FailedPrecondition(f"connector store {self._path} is not open")
        async with lock:
            try:
                yield db
            except sqlite3.Error as exc:
                raise Unavailable(f"connector store {self._path} failed: {exc}") from None

    # -- connectors ------------------------------------------------------------

    async def create(self, connector: Connector, secret_names: frozenset[str]) -> Connector:
        """Insert; a connector with an empty id gets a new id, timestamps and revision 1."""
        stored = to_create(connector, self._clock.now())
        params = self._encode(stored, secret_names)
        async with self._tx() as db:
            try:
                await db.execute(_INSERT, params)
            except sqlite3.IntegrityError:
                raise await self._conflict(db, stored) from None
        return stored

    async def get(self, name_or_id: str) -> Connector:
        """The connector; one whose row fails its integrity check comes back ``tampered``."""
        async with self._read() as db:
            row = await _fetch(db, name_or_id)
        if row is None:
            raise NotFound(f"connector '{name_or_id}' not found", field="name")
        return self._decode(row)

    async def list(self, flt: ConnectorFilter | None = None) -> list[Connector]:
        flt = flt or ConnectorFilter()
        where: list[str] = []
        args: list[str] = []
        for column, value in (
            ("name", flt.name),
            ("connector_type", flt.connector_type),
            ("auth_method", flt.auth_method),
            ("resource_type", flt.resource_type),
            ("resource_id", flt.resource_id),
        ):
            if value is not None:
                where.append(f"{column} = ?")
                args.append(value)
        sql = _SELECT
        if where:  # column names come from the fixed tuple above, values are bound
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY name"
        async with self._read() as db, db.execute(sql, args) as cur:
            rows = list(await cur.fetchall())
        out = []
        for row in rows:
            # One unreadable row never takes the others down: it is listed unusable.
            connector = list_row(self._box, row, str(self._path))
            if connector is None:
                continue
            if all(connector.labels.get(k) == v for k, v in flt.labels.items()):
                out.append(connector)
        return out

    async def update(
        self, connector: Connector, secret_names: frozenset[str], expected_revision: int
    ) -> Connector:
        """Replace the record found by id (or by name when id is empty), if still at revision."""
        async with self._tx() as db:
            key = connector.id or connector.name
            async with db.execute(_CAS_BY_ID if connector.id else _CAS_BY_NAME, (key,)) as cur:
                row = await cur.fetchone()
            if row is None:
                raise NotFound(f"connector '{connector.name}' not found", field="name")
            if row["revision"] != expected_revision:
                raise Aborted.stale(row["name"], expected_revision, row["revision"])
            stored = normalized(
                replace(
                    connector,
                    id=row["id"],
                    created_at=parse_time(row["created_at"], row["name"], "created_at"),
                    updated_at=self._clock.now(),
                    revision=row["revision"] + 1,
                )
            )
            params = self._encode(stored, secret_names)
            try:
                await db.execute(_UPDATE, (*params, stored.id, expected_revision))
            except sqlite3.IntegrityError:
                raise await self._conflict(db, stored) from None
            await db.execute(persisted.SQLITE_DROP_CONNECTOR, (stored.id,))
        return stored

    async def delete(self, name_or_id: str) -> Connector:
        """Remove and return the record; works even if its secrets no longer decrypt."""
        async with self._tx() as db:
            row = await _fetch(db, name_or_id)
            if row is None:
                raise NotFound(f"connector '{name_or_id}' not found", field="name")
            # Decode first: an error must not follow a delete that already happened.
            try:
                deleted = self._decode(row)
            except StoreCorrupt:  # the way out for a row that cannot be read back
                placeholder = unreadable(row)
                if placeholder is None:
                    raise
                deleted = placeholder
            await db.execute("DELETE FROM connectors WHERE id = ?", (row["id"],))
            await db.execute(persisted.SQLITE_DROP_CONNECTOR, (row["id"],))
        return deleted

    # -- the persistent credential cache (broker.store.persisted) -------------

    async def save_credentials(
        self, daemon_id: str, items: Sequence[tuple[PersistedKey, ClientCredential]]
    ) -> None:
        """Upsert minted credentials, one transaction (rows of a gone revision skipped)."""
        params = persisted.upsert_params(self._box, daemon_id, items)
        async with self._tx() as db:
            await db.executemany(persisted.SQLITE_UPSERT, [(*p, p[1], p[2]) for p in params])

    async def load_credentials(self, daemon_id: str) -> LoadedCredentials:
        """The daemon's rows that open; the others are deleted and counted."""
        async with self._read() as db, db.execute(persisted.SQLITE_SELECT, (daemon_id,)) as cur:
            rows = list(await cur.fetchall())
        loaded, bad = persisted.open_rows(self._box, daemon_id, rows)
        if bad:
            await self.drop_credentials(daemon_id, bad)
        return loaded

    async def drop_credentials(self, daemon_id: str, keys: Sequence[PersistedKey]) -> None:
        async with self._tx() as db:
            await db.executemany(persisted.SQLITE_DELETE, persisted.delete_params(daemon_id, keys))

    # -- settings ------------------------------------------------------------

    async def get_setting(self, key: str) -> str | None:
        async with (
            self._read() as db,
            db.execute("SELECT value FROM settings WHERE key = ?", (key,)) as cur,
        ):
            row = await cur.fetchone()
        return None if row is None else str(row[0])

    async def set_setting(self, key: str, value: str | None) -> None:
        """Set ``key``; None removes it."""
        async with self._tx() as db:
            if value is None:
                await db.execute("DELETE FROM settings WHERE key = ?", (key,))
            else:
                await db.execute(
                    "INSERT INTO settings (key, value) VALUES (?, ?) "
                    "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    (key, value),
                )

    async def export(self) -> StoreExport:
        async with self._read() as db:
            async with db.execute(_SELECT + " ORDER BY name") as cur:
                rows = list(await cur.fetchall())
            async with db.execute("SELECT key, value FROM settings ORDER BY key") as cur:
                settings = {str(r[0]): str(r[1]) for r in await cur.fetchall()}
        return StoreExport([exported(self._box, r, str(self._path)) for r in rows], settings)

    # -- encoding --------------------------------------------------------------

    def _encode(self, c: Connector, secret_names: frozenset[str]) -> tuple[Any, ...]:
        plain, secret = split_secrets(c, secret_names)
        expires_at = None if c.expires_at is None else fmt_time(c.expires_at, "expires_at")
        return (
            c.id,
            c.name,
            c.connector_type,
            c.auth_method,
            c.resource_type,
            c.resource_id,
            c.description,
            dumps(plain),
            seal(self._box, c, plain, secret),
            dumps(dict(c.labels)),
            c.expiration_seconds,
            expires_at,
            fmt_time(c.created_at, "created_at"),
            fmt_time(c.updated_at, "updated_at"),
            c.revision,
        )

    def _decode(self, row: sqlite3.Row) -> Connector:
        """The row as a Connector; ``tampered`` and no secrets if they do not open."""
        return open_row(self._box, row, str(self._path))

    async def _conflict(self, db: aiosqlite.Connection, c: Connector) -> BrokerError:
        async with db.execute("SELECT id FROM connectors WHERE name = ?", (c.name,)) as cur:
            row = await cur.fetchone()
        if row is not None and row["id"] != c.id:
            return AlreadyExists(f"connector '{c.name}' already exists", field="name")
        return AlreadyExists(
            f"connector '{c.name}': another connector already has its id '{c.id}'", field="id"
        )


async def _fetch(db: aiosqlite.Connection, name_or_id: str) -> sqlite3.Row | None:
    """The connector named ``name_or_id``, else the one with that id (names win)."""
    async with db.execute(_FETCH, (name_or_id, name_or_id, name_or_id)) as cur:
        row: sqlite3.Row | None = await cur.fetchone()
    return row


def _create_private_file(path: Path) -> None:
    """Create the database file 0600 (and its directory 0700) before SQLite opens it.

    SQLite gives its -wal and -shm files the database file's mode, so they
    stay private too.
    """
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    except OSError as exc:
        raise Unavailable(f"cannot create connector store {path}: {exc.strerror}") from None
    os.close(fd)
