"""The change table's side of the PostgreSQL store: recording a change in a write's
transaction, reading change rows, and the LISTEN connection of a daemon's feed."""

from __future__ import annotations

import json
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import anyio
import structlog

from broker.model import Connector
from broker.store import postgres_sql as sql
from broker.store.base import ChangeKind, StoreChange

log = structlog.get_logger(__name__)


class ChangeListener:
    """The LISTEN connection of one daemon's change feed."""

    def __init__(
        self,
        conn: Any,
        errors: Callable[[], AbstractContextManager[None]],
        on_change: Callable[[StoreChange], None],
        on_lost: Callable[[], None],
    ) -> None:
        self._conn = conn
        self._errors = errors
        self._on_change = on_change
        self._on_lost = on_lost
        self._lost = False

    @property
    def backend_pid(self) -> int:
        """The server process of this connection (what pg_terminate_backend takes)."""
        return int(self._conn.get_server_pid())

    @property
    def alive(self) -> bool:
        return not self._lost and not self._conn.is_closed()

    async def latest_change_id(self) -> int:
        """The newest change id, read on this connection: also proves it still works."""
        with self._errors():
            return await latest_change_id_on(self._conn)

    async def close(self) -> None:
        self._lost = True
        with anyio.CancelScope(shield=True):
            try:
                await self._conn.close(timeout=2)
            except Exception:
                self._conn.terminate()

    def _notified(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        try:
            data = json.loads(payload)
            change = StoreChange(
                change_id=int(data["change_id"]),
                connector_id=str(data["connector_id"]),
                name=str(data["name"]),
                revision=int(data["revision"]),
                kind=change_kind(data["kind"]),
            )
        except (ValueError, KeyError, TypeError):
            log.warning("change_notification_unreadable", payload=payload[:200])
            return
        self._on_change(change)

    def _terminated(self, _conn: Any) -> None:
        if not self._lost:
            self._lost = True
            self._on_lost()


async def record_change(conn: Any, c: Connector, kind: ChangeKind) -> int:
    """The change row and its notification, inside the caller's transaction (one statement).

    The change lock is taken before the id is drawn and held until the commit, so a
    change id is never visible before every smaller one is (ids follow commit order).
    Only this last step of a write is serialized across the fleet.
    """
    return int(await conn.fetchval(sql.RECORD_CHANGE, c.id, c.name, c.revision, kind))


async def latest_change_id_on(conn: Any) -> int:
    value = await conn.fetchval(
        "SELECT greatest(coalesce((SELECT max(change_id) FROM changes), 0), "
        "coalesce((SELECT value::bigint FROM store_meta WHERE key = $1), 0))",
        sql.COMPACTED_THROUGH,
    )
    return int(value)


def change_from_row(row: Any) -> StoreChange:
    return StoreChange(
        change_id=int(row["change_id"]),
        connector_id=str(row["connector_id"]),
        name=str(row["connector_name"]),
        revision=int(row["revision"]),
        kind=change_kind(row["kind"]),
    )


def change_kind(value: object) -> ChangeKind:
    if value == "created":
        return "created"
    if value == "updated":
        return "updated"
    if value == "deleted":
        return "deleted"
    raise ValueError(f"unknown change kind {value!r}")
