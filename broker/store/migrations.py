"""Ordered SQLite schema migrations.

Each migration has a number, the SQL statements taking the schema from the
previous number to it and, optionally, a Python step for what SQL cannot do
(re-encrypting secrets). Migrations are only ever appended: a released
migration is never edited, so every database reaches the same schema by the
same steps. ``schema_version`` holds one row: the number last applied.

All pending migrations run in one transaction: statements first, then the
Python step, then the next migration. Python steps run only once the store's
secret key has been checked, so a wrong key never half-migrates anything.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import aiosqlite
import structlog

from broker.errors import BrokerError
from broker.model import Connector
from broker.store import persisted
from broker.store.crypto import SecretBox, SecretKeyMismatch
from broker.store.seal import connector_secrets_ad, legacy_secrets_ad

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class MigrationContext:
    """What a Python step gets: the open transaction and the store's own tools."""

    db: aiosqlite.Connection
    box: SecretBox
    path: Path
    #: A row of ``connectors`` as a Connector with only its non-secret attributes in
    #: ``config`` (the secrets blob not opened); raises StoreCorrupt for unreadable rows.
    plain_connector: Callable[[sqlite3.Row], Connector]


#: A Python step: runs inside the migration's transaction; raising rolls it all back.
PythonStep = Callable[[MigrationContext], Awaitable[None]]


@dataclass(frozen=True)
class Migration:
    version: int
    description: str
    statements: tuple[str, ...]
    #: Runs after ``statements``, in the same transaction, with the key checked.
    python: PythonStep | None = None


async def _reseal_connector_secrets(ctx: MigrationContext) -> None:
    """Schema 2: re-seal every secrets blob from the connector id alone to the whole row.

    Each blob is opened with the schema-1 associated data and sealed again with
    :func:`~broker.store.seal.connector_secrets_ad`. A row that does not open
    (its blob was moved or altered) or cannot be read is left as it is: it will
    show as tampered, and is logged by name here.
    """
    async with ctx.db.execute("SELECT * FROM connectors ORDER BY name") as cur:
        rows = list(await cur.fetchall())
    resealed = 0
    for row in rows:
        name = str(row["name"])
        try:
            plain = ctx.plain_connector(row)
            blob = row["secrets"]
            if not isinstance(blob, bytes):
                raise SecretKeyMismatch("the secrets column does not hold an encrypted blob")
            secrets = ctx.box.decrypt(blob, legacy_secrets_ad(plain.id))
        except BrokerError as exc:
            log.warning(
                "connector_not_resealed",
                connector=name,
                reason=exc.message,
                store=str(ctx.path),
            )
            continue
        sealed = ctx.box.encrypt(secrets, connector_secrets_ad(plain, plain.config))
        await ctx.db.execute("UPDATE connectors SET secrets = ? WHERE id = ?", (sealed, plain.id))
        resealed += 1
    if rows:
        log.info("connectors_resealed", resealed=resealed, left=len(rows) - resealed)


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "connectors, settings and the key check",
        (
            """
            CREATE TABLE connectors (
                id                 TEXT PRIMARY KEY NOT NULL,
                name               TEXT NOT NULL UNIQUE,
                connector_type     TEXT NOT NULL,
                auth_method        TEXT NOT NULL,
                resource_type      TEXT,
                resource_id        TEXT,
                description        TEXT NOT NULL DEFAULT '',
                config             TEXT NOT NULL,
                secrets            BLOB NOT NULL,
                labels             TEXT NOT NULL,
                expiration_seconds INTEGER,
                expires_at         TEXT,
                created_at         TEXT NOT NULL,
                updated_at         TEXT NOT NULL,
                revision           INTEGER NOT NULL CHECK (revision >= 1)
            )
            """,
            "CREATE INDEX connectors_by_type ON connectors (connector_type, auth_method)",
            """
            CREATE TABLE settings (
                key   TEXT PRIMARY KEY NOT NULL,
                value TEXT NOT NULL
            )
            """,
            # Store-internal state (not the daemon's settings): a blob sealed
            # with the secret key, so a wrong key is caught when the store opens.
            """
            CREATE TABLE store_meta (
                key   TEXT PRIMARY KEY NOT NULL,
                value BLOB NOT NULL
            )
            """,
        ),
    ),
    Migration(
        2,
        "seal each connector's secrets to its whole row, not just its id",
        (),
        _reseal_connector_secrets,
    ),
    Migration(
        3,
        "the persistent credential cache (sealed minted credentials per daemon)",
        (persisted.TABLE_SQL.format(int="INTEGER", blob="BLOB"), persisted.INDEX_SQL),
    ),
)

#: The schema this code reads and writes.
LATEST_VERSION = MIGRATIONS[-1].version


def pending(current: int) -> tuple[Migration, ...]:
    """The migrations a database at ``current`` still needs, in order."""
    return tuple(m for m in MIGRATIONS if m.version > current)


def _check_order() -> None:
    versions = [m.version for m in MIGRATIONS]
    if versions != list(range(1, len(versions) + 1)):
        raise RuntimeError(f"migrations must be numbered 1..n without gaps, got {versions}")


_check_order()
