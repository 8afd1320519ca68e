"""Which store a location names: an SQLite file, or a PostgreSQL URL shared by a fleet.

``broker serve`` takes it from the ``database`` setting; ``broker store migrate``
takes two of them (``sqlite:PATH`` or a plain path, ``postgresql://...``).
"""

from __future__ import annotations

from pathlib import Path

from broker.clock import Clock
from broker.store.crypto import SecretBox
from broker.store.postgres import PostgresStore
from broker.store.postgres_dsn import is_postgres_url
from broker.store.postgres_pool import DEFAULT_POOL_SIZE
from broker.store.sqlite import SqliteStore

SQLITE_PREFIX = "sqlite:"


def make_store(
    location: str | Path,
    box: SecretBox,
    clock: Clock,
    *,
    pool_size: int = DEFAULT_POOL_SIZE,
) -> SqliteStore | PostgresStore:
    """The store at ``location`` (not opened yet)."""
    text = str(location)
    if is_postgres_url(text):
        return PostgresStore(text.strip(), box, clock, pool_size=pool_size)
    if text.startswith(SQLITE_PREFIX):
        text = text[len(SQLITE_PREFIX) :]
        if text.startswith("//"):  # sqlite:///abs/path
            text = text[2:]
    return SqliteStore(Path(text).expanduser(), box, clock)
