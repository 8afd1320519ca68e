"""Ordered PostgreSQL schema migrations, run once for a whole fleet.

As for SQLite (:mod:`broker.store.migrations`): each migration has a number,
its SQL statements and optionally a Python step; they are only ever appended,
and every pending one runs in one transaction. What a shared database adds:

- The transaction first takes a transaction-level advisory lock
  (:data:`MIGRATION_LOCK`). Ten daemons starting at once queue on it; the
  first migrates, the others then find the schema current and do nothing, so
  each migration runs exactly once, and none is ever seen half-applied.
- ``schema_version`` records which daemon applied each version (host, pid).
- A database at a version newer than :data:`LATEST_VERSION` is refused,
  naming both versions: an older daemon must never write rows it does not
  understand (a rolling upgrade starts new daemons first on a new schema only
  when a release says it is compatible).

The PostgreSQL schema starts where SQLite's is now (rows sealed to the whole
row, schema 2 there), so it has no re-seal step; its version numbers are its
own.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from broker.store import persisted
from broker.store.crypto import SecretBox

#: pg_advisory_xact_lock key held while migrating ("brokerMG" in ASCII).
MIGRATION_LOCK = 0x62726F6B65724D47
#: Held from a change's sequence number to its commit, so change ids are assigned in
#: commit order and a reader that has seen change N has seen every change before it.
CHANGE_LOCK = 0x62726F6B65724348
#: Held by the one daemon compacting the change table at a time.
COMPACT_LOCK = 0x62726F6B6572434D

#: The LISTEN / NOTIFY channel of the change feed.
CHANGE_CHANNEL = "broker_connector_changes"


@dataclass(frozen=True)
class MigrationContext:
    """What a Python step gets: the open transaction's connection and the store's key."""

    conn: Any  # asyncpg.Connection (untyped library)
    box: SecretBox
    location: str


PythonStep = Callable[[MigrationContext], Awaitable[None]]


@dataclass(frozen=True)
class Migration:
    version: int
    description: str
    statements: tuple[str, ...]
    #: Runs after ``statements``, in the same transaction, with the key checked.
    python: PythonStep | None = None


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "connectors, settings, store metadata and the change table",
        (
            # config and labels are JSON like in SQLite (jsonb: an operator can query
            # them); the secret attributes are one sealed blob, as in SQLite.
            """
            CREATE TABLE connectors (
                id                 TEXT PRIMARY KEY,
                name               TEXT NOT NULL UNIQUE,
                connector_type     TEXT NOT NULL,
                auth_method        TEXT NOT NULL,
                resource_type      TEXT,
                resource_id        TEXT,
                description        TEXT NOT NULL DEFAULT '',
                config             JSONB NOT NULL,
                secrets            BYTEA NOT NULL,
                labels             JSONB NOT NULL,
                expiration_seconds BIGINT,
                expires_at         TIMESTAMPTZ,
                created_at         TIMESTAMPTZ NOT NULL,
                updated_at         TIMESTAMPTZ NOT NULL,
                revision           BIGINT NOT NULL CHECK (revision >= 1)
            )
            """,
            "CREATE INDEX connectors_by_type ON connectors (connector_type, auth_method)",
            """
            CREATE TABLE settings (
                key   TEXT PRIMARY KEY,
                value TEXT NOT NULL
            )
            """,
            # Store-internal state: the key fingerprint, how far changes were compacted.
            """
            CREATE TABLE store_meta (
                key   TEXT PRIMARY KEY,
                value TEXT NOT NULL
            )
            """,
            # One row per committed connector write, in commit order (see CHANGE_LOCK).
            """
            CREATE TABLE changes (
                change_id      BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                connector_id   TEXT NOT NULL,
                connector_name TEXT NOT NULL,
                revision       BIGINT NOT NULL,
                kind           TEXT NOT NULL CHECK (kind IN ('created', 'updated', 'deleted')),
                changed_at     TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp()
            )
            """,
            "CREATE INDEX changes_by_time ON changes (changed_at)",
        ),
    ),
    Migration(
        2,
        "the persistent credential cache (sealed minted credentials per daemon)",
        (persisted.TABLE_SQL.format(int="BIGINT", blob="BYTEA"), persisted.INDEX_SQL),
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
