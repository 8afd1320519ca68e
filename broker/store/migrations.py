"""Ordered SQLite schema migrations.

Each migration has a number and the statements taking the schema from the
previous number to it. Migrations are only ever appended: a released
migration is never edited, so every database reaches the same schema by the
same steps. ``schema_version`` holds one row: the number last applied.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Migration:
    version: int
    description: str
    statements: tuple[str, ...]


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
