"""Suite-wide fixtures: the anyio backend (grpc.aio needs asyncio)."""

from __future__ import annotations

import pytest

# A real PostgreSQL server (session-scoped) and a database per test: tests/pg.py.
from tests.pg import pg_database, pg_url, postgres  # noqa: F401


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
