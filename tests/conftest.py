"""Suite-wide fixtures: the anyio backend (grpc.aio needs asyncio)."""

from __future__ import annotations

import pytest


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
