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
import json
import os
import sqlite3
import uuid
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import replace
from datetime import UTC, datetime
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
    ConnectorTampered,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Unavailable,
)
from broker.model import Connector, Value
from broker.store import migrations
from broker.store.base import ConnectorFilter
from broker.store.crypto import SecretBox, SecretKeyMismatch
from broker.store.seal import connector_secrets_ad

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


class StoreCorrupt(FailedPrecondition):
    """A stored record or the database file cannot be read back."""


class SchemaTooNew(FailedPrecondition):
    """The database was written by a newer broker than this one."""


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
        applied_at = _fmt_time(self._clock.now(), "applied_at")
        for migration in migrations.pending(current):
            try:
                for statement in migration.statements:
                    await db.execute(statement)
                if migration.python is not None:
                    # Python steps handle secrets: never with a key that is not the store's.
                    await self._check_key(db)
                    await migration.python(
                        migrations.MigrationContext(
                            db=db, box=self._box, path=self._path, plain_connector=_plain
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
        if connector.id:
            stored = replace(connector, revision=max(connector.revision, 1))
        else:
            now = self._clock.now()
            stored = replace(
                connector, id=str(uuid.uuid4()), created_at=now, updated_at=now, revision=1
            )
        stored = _normalized(stored)
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
            try:
                connector = self._decode(row)
            except StoreCorrupt as exc:
                # One unreadable row must not take every other connector down with it:
                # it is listed as unusable (like a tampered one) and can be deleted.
                log.error("store_row_corrupt", error=exc.message)
                placeholder = _unreadable(row)
                if placeholder is None:
                    continue
                connector = placeholder
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
            stored = _normalized(
                replace(
                    connector,
                    id=row["id"],
                    created_at=_parse_time(row["created_at"], row["name"], "created_at"),
                    updated_at=self._clock.now(),
                    revision=row["revision"] + 1,
                )
            )
            params = self._encode(stored, secret_names)
            try:
                await db.execute(_UPDATE, (*params, stored.id, expected_revision))
            except sqlite3.IntegrityError:
                raise await self._conflict(db, stored) from None
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
                unreadable = _unreadable(row)
                if unreadable is None:
                    raise
                deleted = unreadable
            await db.execute("DELETE FROM connectors WHERE id = ?", (row["id"],))
        return deleted

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

    # -- encoding --------------------------------------------------------------

    def _encode(self, c: Connector, secret_names: frozenset[str]) -> tuple[Any, ...]:
        if c.tampered:  # re-sealing it as is would launder the outside change
            raise ConnectorTampered.of(c.name)
        plain: dict[str, Value] = {}
        secret: dict[str, Value] = {}
        for key, value in c.config.items():
            _check_value(c.name, key, value)
            (secret if key in secret_names else plain)[key] = value
        for key, label in c.labels.items():
            if not isinstance(key, str) or not isinstance(label, str):
                raise InvalidArgument(
                    f"labels of connector '{c.name}' must map text to text", field="labels"
                )
        expires_at = None if c.expires_at is None else _fmt_time(c.expires_at, "expires_at")
        sealed = self._box.encrypt(_dumps(secret).encode(), connector_secrets_ad(c, plain))
        return (
            c.id,
            c.name,
            c.connector_type,
            c.auth_method,
            c.resource_type,
            c.resource_id,
            c.description,
            _dumps(plain),
            sealed,
            _dumps(dict(c.labels)),
            c.expiration_seconds,
            expires_at,
            _fmt_time(c.created_at, "created_at"),
            _fmt_time(c.updated_at, "updated_at"),
            c.revision,
        )

    def _decode(self, row: sqlite3.Row) -> Connector:
        """The row as a Connector; secrets withheld and ``tampered`` set if they do not open.

        A blob that does not open under the row's associated data means the row
        was changed without the key (the key itself was checked when the store
        opened). That row is reported, not raised, so one tampered row never
        takes the whole listing down, and it can still be deleted or re-sealed.
        """
        plain = _plain(row)
        blob = row["secrets"]
        try:
            if not isinstance(blob, bytes):
                raise SecretKeyMismatch("the secrets column does not hold an encrypted blob")
            opened = self._box.decrypt(blob, connector_secrets_ad(plain, plain.config))
        except SecretKeyMismatch:
            # The key was checked when the store opened: the row itself was changed.
            log.warning(
                "connector_tampered",
                connector=plain.name,
                reason="its secrets do not open with its row as stored",
                store=str(self._path),
            )
            return replace(plain, tampered=True)
        secrets = _load_mapping(opened, plain.name, "secrets")
        for key, value in secrets.items():
            _check_stored_value(plain.name, "secrets", key, value)
        return replace(plain, config={**plain.config, **secrets})

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


def _unreadable(row: sqlite3.Row) -> Connector | None:
    """A row whose columns cannot be read back, as a tampered connector (never used)."""
    try:
        created = _parse_time(row["created_at"], str(row["name"]), "created_at")
        return Connector(
            id=str(row["id"]),
            name=str(row["name"]),
            connector_type=str(row["connector_type"]),
            auth_method=str(row["auth_method"]),
            resource_type=None,
            resource_id=None,
            config={},
            labels={},
            expiration_seconds=None,
            expires_at=None,
            created_at=created,
            updated_at=created,
            revision=int(row["revision"]),
            tampered=True,
        )
    except (BrokerError, TypeError, ValueError, IndexError, KeyError):
        return None


def _plain(row: sqlite3.Row) -> Connector:
    """A ``connectors`` row as a Connector with only its non-secret attributes in ``config``.

    Raises StoreCorrupt naming the connector when a column cannot be read back.
    """
    name = str(row["name"])
    config = _load_mapping(row["config"], name, "config")
    for key, value in config.items():
        _check_stored_value(name, "config", key, value)
    labels = _load_mapping(row["labels"], name, "labels")
    if not all(isinstance(v, str) for v in labels.values()):
        raise StoreCorrupt(f"connector '{name}' is corrupt in the store: bad labels")
    expires_at = row["expires_at"]
    expiration = row["expiration_seconds"]
    if expiration is not None and (type(expiration) is not int):
        raise StoreCorrupt(f"connector '{name}' is corrupt in the store: bad expiration_seconds")
    for column in ("resource_type", "resource_id"):
        if row[column] is not None and not isinstance(row[column], str):
            raise StoreCorrupt(f"connector '{name}' is corrupt in the store: bad {column}")
    return Connector(
        id=str(row["id"]),
        name=name,
        connector_type=str(row["connector_type"]),
        auth_method=str(row["auth_method"]),
        resource_type=row["resource_type"],
        resource_id=row["resource_id"],
        config=config,
        labels=labels,
        expiration_seconds=expiration,
        expires_at=None if expires_at is None else _parse_time(expires_at, name, "expires_at"),
        created_at=_parse_time(row["created_at"], name, "created_at"),
        updated_at=_parse_time(row["updated_at"], name, "updated_at"),
        revision=int(row["revision"]),
        description=str(row["description"]),
    )


def _normalized(c: Connector) -> Connector:
    """Private copies of the mutable parts, so callers' later edits do not leak in."""
    return replace(
        c,
        config={k: list(v) if isinstance(v, list) else v for k, v in c.config.items()},
        labels=dict(c.labels),
    )


def _dumps(obj: Mapping[str, Any]) -> str:
    return json.dumps(obj, ensure_ascii=False, allow_nan=False, separators=(",", ":"))


def _is_value(value: object) -> bool:
    if isinstance(value, str | int):  # bool is an int
        return True
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def _check_value(connector: str, key: object, value: object) -> None:
    if not isinstance(key, str):
        raise InvalidArgument(f"connector '{connector}' has a non-text attribute name")
    if not _is_value(value):
        raise InvalidArgument(
            f"attribute '{key}' of connector '{connector}' must be text, a whole number, "
            f"true/false or a list of text, not {type(value).__name__}",
            field=key,
        )


def _check_stored_value(connector: str, column: str, key: str, value: object) -> None:
    if not _is_value(value):
        raise StoreCorrupt(
            f"connector '{connector}' is corrupt in the store: attribute '{key}' in "
            f"{column} has an unsupported value"
        )


def _load_mapping(raw: object, connector: str, column: str) -> dict[str, Any]:
    try:
        obj = json.loads(raw)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        obj = None
    if not isinstance(obj, dict):
        raise StoreCorrupt(
            f"connector '{connector}' is corrupt in the store: {column} is not a JSON object"
        )
    return obj


def _fmt_time(value: datetime, field: str) -> str:
    """RFC 3339 in UTC with microseconds: exact round-trip and text order = time order."""
    if value.tzinfo is None or value.utcoffset() is None:
        raise InvalidArgument(f"{field} must carry a time zone", field=field)
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _parse_time(raw: object, connector: str, field: str) -> datetime:
    try:
        value = datetime.fromisoformat(str(raw))
    except ValueError:
        value = None
    if value is None or value.tzinfo is None:
        raise StoreCorrupt(
            f"connector '{connector}' is corrupt in the store: {field} is not an RFC 3339 time"
        )
    return value.astimezone(UTC)
