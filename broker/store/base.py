"""The store interface: what the service needs to keep connectors.

Backends (SQLite by default, PostgreSQL for a fleet of daemons) implement this
protocol and pass one contract suite (tests/test_store.py). Every write is
all-or-nothing; the secret attributes named by the caller are encrypted at rest
by the backend with :mod:`broker.store.crypto`, sealed to the row with
:mod:`broker.store.seal`, the same way in both.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

from broker.model import Connector, ConnectorFilter

__all__ = ["ChangeKind", "ConnectorFilter", "ConnectorStore", "StoreChange"]


ChangeKind = Literal["created", "updated", "deleted"]

#: The gRPC health service name a daemon on a shared store reports its change feed
#: under: NOT_SERVING while it is behind (``broker health`` then prints DEGRADED).
CHANGE_FEED_HEALTH = "credential_broker.ChangeFeed"


@dataclass(frozen=True)
class StoreChange:
    """One committed connector write, as a shared store's change feed publishes it.

    ``change_id`` comes from a sequence and grows with every write, in commit
    order; ``revision`` is the connector's revision after the write (the last one
    it had, for a delete).
    """

    change_id: int
    connector_id: str
    name: str
    revision: int
    kind: ChangeKind


@dataclass(frozen=True)
class StoreExport:
    """A whole store's contents (``broker store migrate``)."""

    #: Each connector by name, with the attributes it keeps sealed.
    connectors: list[tuple[Connector, frozenset[str]]]
    settings: dict[str, str]


class ConnectorStore(Protocol):
    @property
    def location(self) -> str:
        """Where the store is, safe to show (a path, or a URL without its password)."""

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

    async def export(self) -> StoreExport:
        """Everything, to copy into another store: each connector (secrets opened) with
        the names of its secret attributes, and every setting."""
