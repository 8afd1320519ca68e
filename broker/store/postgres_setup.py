"""Opening a PostgreSQL store: migrate once per fleet, and refuse a foreign key.

The migrations themselves are in :mod:`broker.store.postgres_migrations`.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from typing import Any

import asyncpg
import structlog

from broker.errors import BrokerError, FailedPrecondition
from broker.store import postgres_migrations as migrations
from broker.store import postgres_sql as sql
from broker.store.codec import SchemaTooNew
from broker.store.crypto import SecretBox, SecretKeyMismatch

log = structlog.get_logger(__name__)


async def migrate(conn: Any, box: SecretBox, location: str, scrub: Callable[[str], str]) -> None:
    """Bring the schema up to date under the advisory lock: once per fleet."""
    # Everyone queues here; whoever comes first migrates, the others find it done.
    await conn.execute("SELECT pg_advisory_xact_lock($1)", migrations.MIGRATION_LOCK)
    await conn.execute(
        "CREATE TABLE IF NOT EXISTS schema_version ("
        "version INTEGER PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL DEFAULT now(), "
        "applied_by TEXT NOT NULL)"
    )
    current = int(await conn.fetchval("SELECT coalesce(max(version), 0) FROM schema_version"))
    if current > migrations.LATEST_VERSION:
        raise SchemaTooNew(
            f"connector store {location} has schema version {current}, but this "
            f"broker only knows versions up to {migrations.LATEST_VERSION}: upgrade the "
            "broker (every daemon of the fleet), or restore a backup made by this version"
        )
    if current >= 1:
        await check_key(conn, box, location)  # before any step touches secrets
    applied_by = f"{socket.gethostname()} pid {os.getpid()}"
    for migration in migrations.pending(current):
        try:
            async with conn.transaction():  # a savepoint: name the failing version
                for statement in migration.statements:
                    await conn.execute(statement)
                if migration.python is not None:
                    await check_key(conn, box, location)
                    await migration.python(migrations.MigrationContext(conn, box, location))
        except asyncpg.PostgresError as exc:
            raise FailedPrecondition(
                f"connector store {location}: migration to schema version "
                f"{migration.version} ({migration.description}) failed: "
                f"{scrub(str(exc))}; the database was left unchanged"
            ) from None
        except SecretKeyMismatch:
            raise
        except BrokerError as exc:
            raise FailedPrecondition(
                f"connector store {location}: migration to schema version "
                f"{migration.version} ({migration.description}) failed: {exc.message}; "
                "the database was left unchanged"
            ) from None
        await conn.execute(
            "INSERT INTO schema_version (version, applied_by) VALUES ($1, $2)",
            migration.version,
            applied_by,
        )
        log.info(
            "store_migrated",
            store=location,
            version=migration.version,
            description=migration.description,
        )
    await check_key(conn, box, location)


async def check_key(conn: Any, box: SecretBox, location: str) -> None:
    """Fail at start, not on first use, when the key is not the one the fleet uses."""
    stored = await conn.fetchval("SELECT value FROM store_meta WHERE key = $1", sql.KEY_FINGERPRINT)
    mine = box.fingerprint
    if stored is None:
        await conn.execute(
            "INSERT INTO store_meta (key, value) VALUES ($1, $2)", sql.KEY_FINGERPRINT, mine
        )
        log.info("store_key_recorded", store=location, key_fingerprint=mine)
        return
    if stored != mine:
        raise SecretKeyMismatch(
            f"the secret key does not match connector store {location}: its "
            f"secrets are sealed with the key of fingerprint {stored}, this daemon's "
            f"key has fingerprint {mine}. Every daemon sharing a database needs the "
            "same key: set BROKER_SECRET_KEY / BROKER_SECRET_KEY_FILE to the fleet's key"
        )
