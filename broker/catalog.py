"""The catalog: the one in-memory view of the store's connectors.

Every read on the hot path (get, list, authorize) is answered from this view;
every connector write goes through it. One lock orders the view's single load
and every write, and each write is applied to the view with the record the
store returned *before* the lock is released, so:

- the view is loaded exactly once (two first calls can never each load a copy
  and overwrite the other's, losing a write made in between);
- the view changes in the same order as the store;
- once a write is acknowledged, every later call sees it (or something newer).

The view itself is copy-on-write: a reader holding a snapshot keeps a
consistent one while a write installs the next.

With several daemons on one database, the store's change feed applies other
daemons' writes here (:meth:`Catalog.apply_change`, :meth:`Catalog.reload`)
under the same lock, and says what changed so the service drops cached
credentials and ends watches exactly as for a local write. The revision
compare-and-swap in the store refuses updates based on a stale read.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Literal

import anyio

from broker.errors import NotFound
from broker.model import Connector
from broker.store.base import ConnectorStore, StoreChange


@dataclass(frozen=True)
class Changed:
    """A connector the view changed because of a write made elsewhere."""

    connector: Connector
    event: Literal["updated", "deleted"]


class Catalog:
    """Owns the connector view: loaded once under the write lock, updated by each write."""

    def __init__(self, store: ConnectorStore) -> None:
        self._store = store
        self._lock = anyio.Lock()
        self._by_name: Mapping[str, Connector] = MappingProxyType({})
        self._by_id: Mapping[str, Connector] = MappingProxyType({})
        self._loaded = False

    @property
    def loaded(self) -> bool:
        return self._loaded

    async def load(self) -> None:
        """Read the store once; later calls (and concurrent first calls) wait, then return.

        The daemon calls this before it reports ready; a caller that gets here
        first (tests, tools) loads it lazily under the same lock.
        """
        if self._loaded:
            return
        async with self._lock:
            await self._load_locked()

    async def _load_locked(self) -> None:
        if self._loaded:
            return
        connectors = await self._store.list()
        self._install({c.name: c for c in connectors})
        self._loaded = True

    def _install(self, by_name: dict[str, Connector]) -> None:
        self._by_id = MappingProxyType({c.id: c for c in by_name.values()})
        self._by_name = MappingProxyType(by_name)

    async def view(self) -> Mapping[str, Connector]:
        """Name -> connector, as of the last acknowledged write (read-only)."""
        if not self._loaded:
            await self.load()
        return self._by_name

    async def find(self, name_or_id: str) -> Connector | None:
        """The connector with that name, else the one with that id (names win)."""
        view = await self.view()
        found = view.get(name_or_id)
        return found if found is not None else self._by_id.get(name_or_id)

    # -- writes: store first, then the view, both under the lock ------------------

    async def create(self, connector: Connector, secret_names: frozenset[str]) -> Connector:
        async with self._lock:
            await self._load_locked()
            stored = await self._store.create(connector, secret_names)
            self._put(stored)
        return stored

    async def update(
        self, connector: Connector, secret_names: frozenset[str], expected_revision: int
    ) -> Connector:
        """Compare-and-swap on ``expected_revision`` (the store raises Aborted if stale)."""
        async with self._lock:
            await self._load_locked()
            stored = await self._store.update(connector, secret_names, expected_revision)
            self._put(stored)
        return stored

    async def delete(self, name_or_id: str) -> Connector:
        async with self._lock:
            await self._load_locked()
            deleted = await self._store.delete(name_or_id)
            by_name = dict(self._by_name)
            if by_name.get(deleted.name, deleted).id == deleted.id:
                by_name.pop(deleted.name, None)
            self._install(by_name)
        return deleted

    # -- writes made through other daemons (the shared store's change feed) -----------

    async def apply_change(self, change: StoreChange) -> list[Changed]:
        """Bring one connector up to date after ``change``; what changed in the view.

        Idempotent: a change this view already holds (this daemon's own write coming
        back, or one read twice while catching up) changes nothing. The connector is
        read again from the store, so a change announced late still installs the
        newest revision, never an older one.
        """
        async with self._lock:
            if not self._loaded:
                return []  # the first load reads the store as it is now
            current = self._by_id.get(change.connector_id)
            if change.kind == "deleted":
                if current is None:
                    return []
                self._remove(current)
                return [Changed(current, "deleted")]
            if current is not None and current.revision >= change.revision:
                return []
            try:
                fresh = await self._store.get(change.connector_id)
                if fresh.id != change.connector_id:  # a name equal to the id: not it
                    raise NotFound(f"connector '{change.name}' not found")
            except NotFound:  # deleted meanwhile: its own change follows
                if current is None:
                    return []
                self._remove(current)
                return [Changed(current, "deleted")]
            if current is not None and fresh.revision <= current.revision:
                return []
            out: list[Changed] = []
            clash = self._by_name.get(fresh.name)
            if clash is not None and clash.id != fresh.id:  # its delete was not seen yet
                self._remove(clash)
                out.append(Changed(clash, "deleted"))
            self._put(fresh)
            if current is not None:
                out.append(Changed(fresh, "updated"))
            return out

    async def reload(self) -> list[Changed]:
        """Read every connector again; what was deleted or changed since the last view."""
        async with self._lock:
            connectors = await self._store.list()
            old = self._by_id if self._loaded else {}
            new = {c.id: c for c in connectors}
            out = [Changed(c, "deleted") for i, c in old.items() if i not in new]
            out += [
                Changed(c, "updated")
                for i, c in new.items()
                if i in old and old[i].revision != c.revision
            ]
            self._install({c.name: c for c in connectors})
            self._loaded = True
        return out

    def _remove(self, gone: Connector) -> None:
        by_name = dict(self._by_name)
        if by_name.get(gone.name, gone).id == gone.id:
            by_name.pop(gone.name, None)
        self._install(by_name)

    def _put(self, stored: Connector) -> None:
        by_name = dict(self._by_name)
        previous = self._by_id.get(stored.id)
        if previous is not None and previous.name != stored.name:
            by_name.pop(previous.name, None)  # renamed (not done today, but keep the index true)
        by_name[stored.name] = stored
        self._install(by_name)
