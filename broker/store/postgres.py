"""The shared connector store: PostgreSQL, for a fleet of daemons on one database.

Same protocol, same rows and same sealing as :mod:`broker.store.sqlite` (the
row codec is :mod:`broker.store.codec`): the same key opens the same secrets
under the same associated data, so a store moves between the two unchanged
(``broker store migrate``). What one database shared by many daemons adds:

- **asyncpg**, a bounded pool (``database_pool_size``), and statements that
  asyncpg prepares once per connection and reuses (its statement cache):
  :mod:`broker.store.postgres_pool`.
- **Migrations** under an advisory lock: ten daemons starting at once migrate
  exactly once (:mod:`broker.store.postgres_migrations`).
- **The key fingerprint** in ``store_meta``: a daemon with another key is
  refused when it starts, naming both fingerprints, never later on some secret.
- **Transactional writes** with a compare-and-swap on ``revision`` (Aborted
  on a stale one, as in SQLite), each recording a row in ``changes`` (a
  sequence: change id, connector id, revision, kind) and a ``pg_notify`` in the
  same transaction. A change lock taken just before the change row is written
  makes change ids follow commit order. :mod:`broker.store.postgres_feed`
  applies other daemons' changes from there.
- **Errors a caller can act on**: a database that cannot be reached is
  Unavailable (retryable, gRPC UNAVAILABLE), never a hang or a traceback, and
  the pool reconnects by itself once it is back. Nothing shown ever holds the
  password (:mod:`broker.store.postgres_dsn`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import anyio
import asyncpg
import structlog

from broker.clock import Clock
from broker.errors import Aborted, NotFound
from broker.model import ClientCredential, Connector
from broker.store import persisted
from broker.store import postgres_migrations as migrations
from broker.store import postgres_setup as setup
from broker.store import postgres_sql as sql
from broker.store.base import ConnectorFilter, StoreChange, StoreExport
from broker.store.codec import (
    StoreCorrupt,
    dumps,
    exported,
    list_row,
    normalized,
    open_row,
    seal,
    split_secrets,
    to_create,
    unreadable,
    utc,
)
from broker.store.crypto import SecretBox
from broker.store.persisted import LoadedCredentials, PersistedKey
from broker.store.postgres_changes import (
    ChangeListener,
    change_from_row,
    latest_change_id_on,
    record_change,
)
from broker.store.postgres_errors import conflict
from broker.store.postgres_pool import (
    APPLICATION_NAME,
    COMMAND_TIMEOUT_SECONDS,
    CONNECT_TIMEOUT_SECONDS,
    DEFAULT_POOL_SIZE,
    PostgresPool,
)

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class ChangeBatch:
    """Changes after a point, read in one snapshot with how far the table was compacted."""

    changes: list[StoreChange]
    #: Changes up to this id were deleted by compaction: a reader behind it must reload.
    compacted_through: int


class PostgresStore:
    """:class:`~broker.store.base.ConnectorStore` on PostgreSQL (asyncpg pool)."""

    def __init__(
        self,
        url: str,
        box: SecretBox,
        clock: Clock,
        *,
        pool_size: int = DEFAULT_POOL_SIZE,
        connect_timeout: float = CONNECT_TIMEOUT_SECONDS,
        command_timeout: float = COMMAND_TIMEOUT_SECONDS,
    ) -> None:
        self._db = PostgresPool(
            url,
            pool_size=pool_size,
            connect_timeout=connect_timeout,
            command_timeout=command_timeout,
        )
        self._box = box
        self._clock = clock

    def __repr__(self) -> str:
        return f"PostgresStore({self.location})"

    @property
    def location(self) -> str:
        """The URL with its password masked: what logs and ``broker status`` show."""
        return self._db.location

    # -- lifecycle -----------------------------------------------------------

    async def open(self) -> None:
        """Connect the pool, migrate under the advisory lock, check the key fingerprint."""
        if self._db.is_open:
            return
        await self._db.open()
        try:
            async with self._db.tx() as conn:
                await self._migrate(conn)
        except BaseException:
            await self._db.close()  # shielded
            raise
        log.info("store_opened", store=self.location, pool_size=self._db.pool_size)

    async def close(self) -> None:
        await self._db.close()

    async def _migrate(self, conn: Any) -> None:
        await setup.migrate(conn, self._box, self.location, self._db.scrub)

    # -- connectors ------------------------------------------------------------

    async def create(self, connector: Connector, secret_names: frozenset[str]) -> Connector:
        """Insert; a connector with an empty id gets a new id, timestamps and revision 1."""
        stored = to_create(connector, self._clock.now())
        params = self._encode(stored, secret_names)
        async with self._db.tx() as conn:
            try:
                await conn.execute(sql.INSERT, *params)
            except asyncpg.UniqueViolationError as exc:
                raise conflict(stored, exc) from None
            await record_change(conn, stored, "created")
        return stored

    async def get(self, name_or_id: str) -> Connector:
        """The connector; one whose row fails its integrity check comes back ``tampered``."""
        row = await self._db.read(lambda conn: conn.fetchrow(sql.FETCH, name_or_id))
        if row is None:
            raise NotFound(f"connector '{name_or_id}' not found", field="name")
        return open_row(self._box, row, self.location)

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
                args.append(value)
                where.append(f"{column} = ${len(args)}")
        query = sql.SELECT
        if where:  # column names come from the fixed tuple above, values are bound
            query += " WHERE " + " AND ".join(where)
        query += ' ORDER BY name COLLATE "C"'
        rows = await self._db.read(lambda conn: conn.fetch(query, *args))
        out = []
        for row in rows:
            # One unreadable row never takes the others down: it is listed unusable.
            connector = list_row(self._box, row, self.location)
            if connector is None:
                continue
            if all(connector.labels.get(k) == v for k, v in flt.labels.items()):
                out.append(connector)
        return out

    async def update(
        self, connector: Connector, secret_names: frozenset[str], expected_revision: int
    ) -> Connector:
        """Replace the record found by id (or by name when id is empty), if still at revision."""
        async with self._db.tx() as conn:
            key = connector.id or connector.name
            row = await conn.fetchrow(sql.CAS_BY_ID if connector.id else sql.CAS_BY_NAME, key)
            if row is None:
                raise NotFound(f"connector '{connector.name}' not found", field="name")
            if row["revision"] != expected_revision:
                raise Aborted.stale(row["name"], expected_revision, row["revision"])
            stored = normalized(
                replace(
                    connector,
                    id=row["id"],
                    created_at=row["created_at"],
                    updated_at=self._clock.now(),
                    revision=row["revision"] + 1,
                )
            )
            params = self._encode(stored, secret_names)
            try:
                await conn.execute(sql.UPDATE, *params, stored.id, expected_revision)
            except asyncpg.UniqueViolationError as exc:
                raise conflict(stored, exc) from None
            await conn.execute(persisted.POSTGRES_DROP_CONNECTOR, stored.id)
            await record_change(conn, stored, "updated")
        return stored

    async def delete(self, name_or_id: str) -> Connector:
        """Remove and return the record; works even if its secrets no longer decrypt."""
        async with self._db.tx() as conn:
            row = await conn.fetchrow(sql.FETCH_FOR_UPDATE, name_or_id)
            if row is None:
                raise NotFound(f"connector '{name_or_id}' not found", field="name")
            # Decode first: an error must not follow a delete that already happened.
            try:
                deleted = open_row(self._box, row, self.location)
            except StoreCorrupt:  # the way out for a row that cannot be read back
                placeholder = unreadable(row)
                if placeholder is None:
                    raise
                deleted = placeholder
            await conn.execute("DELETE FROM connectors WHERE id = $1", row["id"])
            await conn.execute(persisted.POSTGRES_DROP_CONNECTOR, row["id"])
            await record_change(conn, deleted, "deleted")
        return deleted

    # -- the persistent credential cache (broker.store.persisted), per daemon ------

    async def save_credentials(
        self, daemon_id: str, items: Sequence[tuple[PersistedKey, ClientCredential]]
    ) -> None:
        params = persisted.upsert_params(self._box, daemon_id, items)
        async with self._db.tx() as conn:
            await conn.executemany(persisted.POSTGRES_UPSERT, params)

    async def load_credentials(self, daemon_id: str) -> LoadedCredentials:
        rows = await self._db.read(lambda conn: conn.fetch(persisted.POSTGRES_SELECT, daemon_id))
        loaded, bad = persisted.open_rows(self._box, daemon_id, rows)
        if bad:
            await self.drop_credentials(daemon_id, bad)
        return loaded

    async def drop_credentials(self, daemon_id: str, keys: Sequence[PersistedKey]) -> None:
        async with self._db.tx() as conn:
            await conn.executemany(
                persisted.POSTGRES_DELETE, persisted.delete_params(daemon_id, keys)
            )

    # -- settings ------------------------------------------------------------

    async def get_setting(self, key: str) -> str | None:
        value = await self._db.read(
            lambda conn: conn.fetchval("SELECT value FROM settings WHERE key = $1", key)
        )
        return None if value is None else str(value)

    async def set_setting(self, key: str, value: str | None) -> None:
        """Set ``key``; None removes it."""
        async with self._db.tx() as conn:
            if value is None:
                await conn.execute("DELETE FROM settings WHERE key = $1", key)
            else:
                await conn.execute(
                    "INSERT INTO settings (key, value) VALUES ($1, $2) "
                    "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    key,
                    value,
                )

    async def export(self) -> StoreExport:
        async def read(conn: Any) -> tuple[list[Any], list[Any]]:
            async with conn.transaction(isolation="repeatable_read", readonly=True):
                rows = await conn.fetch(sql.SELECT + ' ORDER BY name COLLATE "C"')
                settings = await conn.fetch("SELECT key, value FROM settings ORDER BY key")
            return rows, settings

        rows, settings = await self._db.read(read)
        return StoreExport(
            [exported(self._box, r, self.location) for r in rows],
            {str(r["key"]): str(r["value"]) for r in settings},
        )

    # -- the change table (read by broker.store.postgres_feed) -----------------------

    async def changes_after(self, change_id: int, limit: int = 1000) -> ChangeBatch:
        """Up to ``limit`` changes after ``change_id``, oldest first, and the compaction mark.

        Both come from one snapshot, so a compaction running meanwhile cannot make
        changes vanish between the two reads.
        """

        async def read(conn: Any) -> ChangeBatch:
            async with conn.transaction(isolation="repeatable_read", readonly=True):
                compacted = await conn.fetchval(
                    "SELECT value FROM store_meta WHERE key = $1", sql.COMPACTED_THROUGH
                )
                rows = await conn.fetch(sql.CHANGES_AFTER, change_id, limit)
            return ChangeBatch([change_from_row(r) for r in rows], int(compacted or 0))

        return await self._db.read(read)

    async def latest_change_id(self) -> int:
        """The newest change id (0 before the first write)."""

        async def read(conn: Any) -> int:
            return await latest_change_id_on(conn)

        return await self._db.read(read)

    async def compact_changes(self, retention_seconds: float) -> int:
        """Delete changes older than the retention window; return how many went.

        The newest change always stays (it carries the sequence's position), and
        ``compacted_through`` records the highest id deleted: a daemon whose last
        applied change is older than that cannot catch up row by row and reloads
        everything instead. One daemon compacts at a time; the others skip.
        """
        async with self._db.tx() as conn:
            if not await conn.fetchval(
                "SELECT pg_try_advisory_xact_lock($1)", migrations.COMPACT_LOCK
            ):
                return 0
            row = await conn.fetchrow(
                "WITH gone AS (DELETE FROM changes WHERE changed_at < clock_timestamp() - "
                "make_interval(secs => $1) AND change_id < (SELECT max(change_id) FROM changes) "
                "RETURNING change_id) SELECT count(*) AS n, max(change_id) AS through FROM gone",
                float(retention_seconds),
            )
            count = int(row["n"])
            if count:
                await conn.execute(
                    "INSERT INTO store_meta (key, value) VALUES ($1, $2) ON CONFLICT (key) DO "
                    "UPDATE SET value = greatest(store_meta.value::bigint, "
                    "excluded.value::bigint)::text",
                    sql.COMPACTED_THROUGH,
                    str(row["through"]),
                )
        if count:
            log.info("store_changes_compacted", store=self.location, deleted=count)
        return count

    async def listen(
        self, on_change: Callable[[StoreChange], None], on_lost: Callable[[], None]
    ) -> ChangeListener:
        """A dedicated connection LISTENing to the change channel (not from the pool).

        ``on_change`` gets each change as it is committed, ``on_lost`` is called
        once if the connection dies. Both run on the event loop and must not block.
        """
        conn = await self._db.connect(f"{APPLICATION_NAME} change feed pid {os.getpid()}")
        listener = ChangeListener(conn, self._db.errors, on_change, on_lost)
        try:
            with self._db.errors():
                await conn.add_listener(migrations.CHANGE_CHANNEL, listener._notified)
            conn.add_termination_listener(listener._terminated)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await listener.close()
            raise
        return listener

    def stats(self) -> dict[str, int]:
        """Pool gauges for the metrics endpoint."""
        return self._db.stats()

    # -- encoding --------------------------------------------------------------

    def _encode(self, c: Connector, secret_names: frozenset[str]) -> tuple[Any, ...]:
        plain, secret = split_secrets(c, secret_names)
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
            None if c.expires_at is None else utc(c.expires_at, "expires_at"),
            utc(c.created_at, "created_at"),
            utc(c.updated_at, "updated_at"),
            c.revision,
        )
