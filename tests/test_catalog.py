"""The catalog: one connector view, loaded once, changed by each acknowledged write in order.

In-process: the real service on a real SQLite store, with a store wrapper that
makes the first listing slow, so the race between two "first calls" after a
start is deterministic instead of a matter of luck.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import grpc
import pytest

from broker.cache.cache import CredentialCache
from broker.catalog import Catalog
from broker.clock import FakeClock
from broker.connectors import ConnectorDraft
from broker.discovery import Discovery, DiscoveryLimits
from broker.errors import Aborted, NotFound
from broker.identity.principal import Principal, unix_principal
from broker.model import Connector
from broker.policy import build_policy
from broker.providers.base import ProviderContext
from broker.providers.registry import ProviderRegistry
from broker.rpc.status import error_for, status_for
from broker.service import BrokerService, ConnectorUpdate
from broker.store.base import ConnectorFilter
from broker.store.crypto import SecretBox, generate_key
from broker.store.sqlite import SqliteStore

ADMIN: Principal = unix_principal(os.getuid(), os.getgid(), None, via="test")


class SlowFirstList:
    """A store whose listings read the rows, then take ``delays`` seconds to arrive.

    The rows are read first: a slow listing carries a view older than the
    writes that finish while it is on its way (what a real slow read does).
    """

    def __init__(self, store: SqliteStore, delays: list[float]) -> None:
        self._store = store
        self._delays = delays
        self.lists = 0

    def __getattr__(self, name: str) -> object:
        return getattr(self._store, name)

    async def list(self, flt: ConnectorFilter | None = None) -> list[Connector]:
        self.lists += 1
        rows = await self._store.list(flt)
        await anyio.sleep(self._delays.pop(0) if self._delays else 0.0)
        return rows


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    s = SqliteStore(tmp_path / "broker.db", SecretBox(generate_key()), FakeClock())
    await s.open()
    try:
        yield s
    finally:
        await s.close()


def make_service(store: object) -> BrokerService:
    clock = FakeClock()
    registry = ProviderRegistry.discover(ProviderContext(clock=clock), plugins=False)
    return BrokerService(
        store,  # type: ignore[arg-type]
        registry,
        CredentialCache(clock),
        Discovery(registry, clock, DiscoveryLimits()),
        clock,
        build_policy(os.getuid(), []),
    )


def docker(name: str, password: str = "p") -> ConnectorDraft:
    return ConnectorDraft(
        name=name,
        connector_type="docker",
        auth_method="password",
        resource_type=None,
        resource_id=None,
        config={"username": "u", "password": password, "registry": "registry.example:5000"},
        labels={},
        expiration_seconds=None,
        expires_at=None,
    )


@pytest.mark.anyio
async def test_register_during_the_first_list_is_never_lost(store: SqliteStore) -> None:
    """The issue's 15-of-15 race: a register acknowledged alongside the first listing
    after a start must be found afterwards, and must not be re-registrable."""
    await make_service(store).register(docker("existing"), ADMIN, verify=False)
    # The register's own first read is quick; the listing's arrives 0.2 s later.
    slow = SlowFirstList(store, [0.0, 0.2, 0.2, 0.2])
    service = make_service(slow)
    acknowledged: list[Connector] = []

    async def register() -> None:
        stored, _ = await service.register(docker("new"), ADMIN, verify=False)
        acknowledged.append(stored)

    async with anyio.create_task_group() as tg:
        tg.start_soon(register)
        for _ in range(3):
            tg.start_soon(service.list_visible, ADMIN)

    assert [c.name for c in acknowledged] == ["new"]
    assert (await service.get("new")).id == acknowledged[0].id
    assert [c.name for c in await service.list_visible(ADMIN)] == ["existing", "new"]
    with pytest.raises(Exception, match="already exists"):
        await service.register(docker("new"), ADMIN, verify=False)
    assert slow.lists == 1  # loaded once, however many first calls raced


@pytest.mark.anyio
async def test_every_acknowledged_write_is_seen_by_the_next_call(store: SqliteStore) -> None:
    service = make_service(SlowFirstList(store, [0.1]))
    seen: list[tuple[str, int | None]] = []

    async def writer(i: int) -> None:
        name = f"c{i}"
        created, _ = await service.register(docker(name), ADMIN, verify=False)
        seen.append((name, (await service.get(name)).revision))
        assert created.revision == 1
        updated, _ = await service.update(
            name, ConnectorUpdate(labels={"i": str(i)}), ADMIN, verify=False
        )
        got = await service.get(name)
        seen.append((name, got.revision))
        assert got.labels == {"i": str(i)} and got == updated
        if i % 2:
            await service.delete(name, ADMIN)
            with pytest.raises(NotFound):
                await service.get(name)

    async with anyio.create_task_group() as tg:
        for i in range(10):
            tg.start_soon(writer, i)
    assert sorted(seen) == sorted([(f"c{i}", r) for i in range(10) for r in (1, 2)])
    # The view and the store agree, record for record.
    assert list((await service.catalog.view()).values()) == await store.list()


@pytest.mark.anyio
async def test_catalog_loads_once_for_concurrent_first_readers(store: SqliteStore) -> None:
    await make_service(store).register(docker("a"), ADMIN, verify=False)
    slow = SlowFirstList(store, [0.1])
    catalog = Catalog(slow)  # type: ignore[arg-type]
    found: list[Connector | None] = []

    async def read() -> None:
        found.append(await catalog.find("a"))

    async with anyio.create_task_group() as tg:
        for _ in range(20):
            tg.start_soon(read)
    assert slow.lists == 1
    assert all(c is not None and c.name == "a" for c in found)
    assert await catalog.find(found[0].id) == found[0]  # type: ignore[union-attr]
    await catalog.load()  # the daemon's explicit load after a lazy one: a no-op
    assert slow.lists == 1


@pytest.mark.anyio
async def test_update_with_a_stale_expected_revision_is_aborted(store: SqliteStore) -> None:
    service = make_service(store)
    await service.register(docker("reg"), ADMIN, verify=False)
    await service.update("reg", ConnectorUpdate(description="two"), ADMIN, verify=False)

    with pytest.raises(Aborted) as info:
        await service.update(
            "reg", ConnectorUpdate(description="lost"), ADMIN, verify=False, expected_revision=1
        )
    assert info.value.message == (
        "connector 'reg' is at revision 2, not the expected revision 1: it was changed since "
        "it was read; read it again and retry"
    )
    assert (await service.get("reg")).description == "two"
    assert (await store.get("reg")).revision == 2

    done, _ = await service.update(
        "reg", ConnectorUpdate(description="three"), ADMIN, verify=False, expected_revision=2
    )
    assert done.revision == 3 and (await store.get("reg")).description == "three"


@pytest.mark.anyio
async def test_concurrent_updates_based_on_one_revision_one_wins(store: SqliteStore) -> None:
    """Both read one revision; the store's compare-and-swap lets exactly one through,
    with or without an expected revision (no silent lost update)."""
    service = make_service(store)
    await service.register(docker("reg"), ADMIN, verify=False)
    for expected in (1, None):
        before = (await service.get("reg")).revision
        assert expected is None or expected == before
        outcomes: list[str] = []
        async with anyio.create_task_group() as tg:
            for label in ("a", "b"):
                tg.start_soon(_update_racing, service, label, expected, before, outcomes)
        assert sorted(outcomes) in (["aborted", "ok:a"], ["aborted", "ok:b"]), outcomes
        stored = await store.get("reg")
        assert stored.revision == before + 1
        assert f"ok:{stored.labels['by']}" in outcomes
        assert await service.get("reg") == stored


async def _update_racing(
    service: BrokerService, label: str, expected: int | None, before: int, outcomes: list[str]
) -> None:
    try:
        await service.update(
            "reg",
            ConnectorUpdate(labels={"by": label}),
            ADMIN,
            verify=False,
            expected_revision=expected,
        )
        outcomes.append(f"ok:{label}")
    except Aborted as exc:
        assert f"connector 'reg' is at revision {before + 1}" in exc.message
        assert f"not the expected revision {before}" in exc.message
        outcomes.append("aborted")


def test_aborted_maps_to_grpc_aborted_and_back() -> None:
    exc = Aborted.stale("reg", 1, 2)
    assert status_for(exc) is grpc.StatusCode.ABORTED
    back = error_for(grpc.StatusCode.ABORTED, exc.message)
    assert isinstance(back, Aborted) and back.message == exc.message
    assert exc.retryable
