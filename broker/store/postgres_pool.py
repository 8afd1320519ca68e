"""The PostgreSQL store's connections: a bounded asyncpg pool, transactions, error translation.

How :class:`broker.store.postgres.PostgresStore` talks to the database, apart
from what it stores: statements asyncpg prepares once per connection and
reuses (its statement cache), a bound on every wait (connect, statement, free
connection), reads tried once more on a fresh connection after a restart, and
driver errors as the broker errors a caller can act on, never with the password
in them (:mod:`broker.store.postgres_errors`, :mod:`broker.store.postgres_dsn`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractContextManager, asynccontextmanager
from typing import Any, TypeVar

import anyio
import asyncpg
import structlog

from broker.errors import FailedPrecondition, InvalidArgument, Unavailable
from broker.store.postgres_dsn import redact, scrub
from broker.store.postgres_errors import translated

log = structlog.get_logger(__name__)

T = TypeVar("T")

#: Connections in the pool at most (setting ``database_pool_size``): a daemon's writes
#: are rare and reads come from its in-memory catalog, so a few connections suffice.
DEFAULT_POOL_SIZE = 5
#: Time to open one connection; a database that does not answer is Unavailable after it.
CONNECT_TIMEOUT_SECONDS = 5.0
#: Bound on one statement: a stuck database fails the call instead of hanging it.
COMMAND_TIMEOUT_SECONDS = 10.0
#: Time a call waits for a free pool connection before it is Unavailable.
ACQUIRE_TIMEOUT_SECONDS = 10.0
#: Idle pool connections are closed after this (the pool opens new ones on demand).
IDLE_CONNECTION_SECONDS = 300.0
#: Shown in pg_stat_activity, so an operator can tell the broker's sessions apart.
APPLICATION_NAME = "credential-broker"


class PostgresPool:
    """One database URL's asyncpg pool, with in-use / waiting gauges."""

    def __init__(
        self,
        url: str,
        *,
        pool_size: int = DEFAULT_POOL_SIZE,
        connect_timeout: float = CONNECT_TIMEOUT_SECONDS,
        command_timeout: float = COMMAND_TIMEOUT_SECONDS,
    ) -> None:
        if pool_size < 1:
            raise InvalidArgument("database_pool_size must be at least 1", field="database")
        self._url = url
        #: The URL with its password masked: what logs and ``broker status`` show.
        self.location = redact(url)
        self.pool_size = pool_size
        self._connect_timeout = connect_timeout
        self._command_timeout = command_timeout
        self._pool: Any = None  # asyncpg.Pool
        self._in_use = 0
        self._waiting = 0

    @property
    def is_open(self) -> bool:
        return self._pool is not None

    async def open(self) -> None:
        with self.errors(connecting=True):
            self._pool = await asyncpg.create_pool(
                dsn=self._url,
                min_size=1,
                max_size=self.pool_size,
                timeout=self._connect_timeout,
                command_timeout=self._command_timeout,
                max_inactive_connection_lifetime=IDLE_CONNECTION_SECONDS,
                server_settings={"application_name": APPLICATION_NAME},
            )

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            with anyio.CancelScope(shield=True):
                try:
                    with anyio.fail_after(5):
                        await pool.close()
                except Exception:
                    pool.terminate()

    async def connect(self, application_name: str) -> Any:
        """A dedicated connection outside the pool (asyncpg.Connection), e.g. to LISTEN."""
        with self.errors(connecting=True):
            return await asyncpg.connect(
                dsn=self._url,
                timeout=self._connect_timeout,
                command_timeout=self._command_timeout,
                server_settings={"application_name": application_name},
            )

    @asynccontextmanager
    async def conn(self) -> AsyncIterator[Any]:
        pool = self._pool
        if pool is None:
            raise FailedPrecondition(f"connector store {self.location} is not open")
        self._waiting += 1
        try:
            with self.errors():
                conn = await pool.acquire(timeout=ACQUIRE_TIMEOUT_SECONDS)
        finally:
            self._waiting -= 1
        self._in_use += 1
        try:
            with self.errors():
                yield conn
        finally:
            self._in_use -= 1
            with anyio.CancelScope(shield=True):
                try:
                    await pool.release(conn)
                except Exception as exc:  # a broken connection: the pool replaces it
                    log.debug("store_connection_dropped", error=self.scrub(str(exc)))

    @asynccontextmanager
    async def tx(self) -> AsyncIterator[Any]:
        """One transaction: committed when the block ends, rolled back on any error."""
        async with self.conn() as conn, conn.transaction():
            yield conn

    async def read(self, fn: Callable[[Any], Awaitable[T]]) -> T:
        """A read, tried once more on a fresh connection if the first one was dead.

        After the database restarted, pooled connections may be closed under us;
        a read is safe to repeat, so the caller does not see that. Writes are not
        repeated: whether a lost COMMIT happened cannot be known.
        """
        for attempt in (1, 2):
            try:
                async with self.conn() as conn:
                    return await fn(conn)
            except Unavailable:
                if attempt == 2:
                    raise
                log.debug("store_read_retried", store=self.location)
        raise AssertionError("unreachable")

    def errors(self, *, connecting: bool = False) -> AbstractContextManager[None]:
        return translated(self.location, self.scrub, connecting=connecting)

    def scrub(self, text: str) -> str:
        return scrub(text, self._url)

    def stats(self) -> dict[str, int]:
        """Pool gauges for the metrics endpoint."""
        pool = self._pool
        return {
            "store_pool_size": int(pool.get_size()) if pool is not None else 0,
            "store_pool_max": self.pool_size,
            "store_pool_in_use": self._in_use,
            "store_pool_waiting": self._waiting,
        }
