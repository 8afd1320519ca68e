"""The store interface: what the service needs to keep connectors.

Backends (SQLite by default, PostgreSQL later) implement this protocol. Every
write is all-or-nothing; the secret attributes named by the caller are
encrypted at rest by the backend with :mod:`broker.store.crypto`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from broker.model import Connector


@dataclass(frozen=True)
class ConnectorFilter:
    """List filters; None means "any". Labels match when every given pair is present."""

    name: str | None = None
    connector_type: str | None = None
    auth_method: str | None = None
    resource_type: str | None = None
    resource_id: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)


class ConnectorStore(Protocol):
    async def open(self) -> None:
        """Create or migrate the schema."""

    async def close(self) -> None: ...

    async def create(self, connector: Connector, secret_names: frozenset[str]) -> Connector:
        """Insert; raise AlreadyExists if the name is taken. Returns what was stored."""

    async def get(self, name_or_id: str) -> Connector:
        """Raise NotFound naming the connector if absent."""

    async def list(self, flt: ConnectorFilter | None = None) -> list[Connector]:
        """Connectors sorted by name. ``resource_type``/``resource_id`` filters match exactly."""

    async def update(
        self, connector: Connector, secret_names: frozenset[str], expected_revision: int
    ) -> Connector:
        """Replace a connector's fields; bump ``revision`` and ``updated_at``.

        Raise NotFound if gone, Aborted (naming both revisions) if ``expected_revision``
        is stale: a compare-and-swap, so two writers never silently overwrite each other.
        """

    async def delete(self, name_or_id: str) -> Connector:
        """Remove and return the connector; raise NotFound if absent."""

    async def get_setting(self, key: str) -> str | None:
        """Small daemon-owned key/value state (e.g. preferred connector per registry host)."""

    async def set_setting(self, key: str, value: str | None) -> None: ...
