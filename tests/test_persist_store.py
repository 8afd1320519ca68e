"""The persistent cache's rows, on both store backends (real SQLite, real PostgreSQL).

Sealed minted credentials round-trip per daemon; a row that was altered or moved
(to another daemon, connector revision or resource) is dropped and counted,
never returned; a connector update or delete removes its rows with it; a row for
a revision that is gone is never written.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from broker.clock import FakeClock
from broker.model import ClientCredential
from broker.store.crypto import SecretBox
from broker.store.persisted import PersistedKey, associated_data
from tests.test_store import (
    SECRET,
    SECRETS,
    Backend,
    PostgresBackend,
    SqliteBackend,
    Store,
    draft,
)

DAEMON = "daemon-a"
TOKEN = "minted-session-token-5be1"


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def key() -> bytes:
    return bytes(range(32))


@pytest.fixture(params=["sqlite", "postgres"])
def backend(
    request: pytest.FixtureRequest, tmp_path: Path, key: bytes, clock: FakeClock
) -> Backend:
    if request.param == "postgres":
        return PostgresBackend(key, clock, request.getfixturevalue("postgres"))
    return SqliteBackend(key, clock, tmp_path / "data" / "broker.db")


@pytest.fixture
async def store(backend: Backend) -> AsyncIterator[Store]:
    s = backend.store()
    await s.open()
    try:
        yield s
    finally:
        await s.close()


def credential(resource_id: str, expires_at: datetime | None) -> ClientCredential:
    return ClientCredential(
        connector_type="aws",
        auth_method="session-token",
        resource_type="aws-generic",
        resource_id=resource_id,
        config={"aws_access_key_id": "ASIAEXAMPLE", "aws_session_token": TOKEN, "n": 3},
        secret_names=frozenset({"aws_session_token"}),
        expires_at=expires_at,
        session_policy='{"Version":"2012-10-17"}',
        issued_at=datetime(2030, 1, 1, 11, tzinfo=UTC),
    )


EXPIRES = datetime(2030, 1, 1, 12, tzinfo=UTC)


async def two_rows(store: Store) -> tuple[str, PersistedKey, PersistedKey]:
    connector = await store.create(draft(), SECRETS)
    a = PersistedKey(connector.id, connector.revision, "aws-generic", "us-east-1")
    b = PersistedKey(connector.id, connector.revision, "aws-generic", "eu-west-1", "sdk-session")
    await store.save_credentials(
        DAEMON,
        [(a, credential("us-east-1", EXPIRES)), (b, credential("eu-west-1", None))],
    )
    return connector.id, a, b


@pytest.mark.anyio
async def test_round_trip_per_daemon_with_secrets_sealed(store: Store, backend: Backend) -> None:
    _, a, b = await two_rows(store)
    loaded = await store.load_credentials(DAEMON)
    assert loaded.dropped == 0
    got = dict(loaded.credentials)
    assert got[a] == credential("us-east-1", EXPIRES)
    assert got[a].config["aws_session_token"] == TOKEN and got[a].config["n"] == 3
    assert got[b].expires_at is None and b.variant == "sdk-session"
    # Another daemon of the fleet sees none of them.
    assert (await store.load_credentials("daemon-b")).credentials == []
    # Saving again replaces (the latest mint wins), never duplicates.
    later = EXPIRES + timedelta(hours=1)
    await store.save_credentials(DAEMON, [(a, credential("us-east-1", later))])
    again = dict((await store.load_credentials(DAEMON)).credentials)
    assert len(again) == 2 and again[a].expires_at == later
    if backend.name == "sqlite":  # the token is not on disk in clear
        assert TOKEN.encode() not in backend.disk_bytes()
        assert SECRET.encode() not in backend.disk_bytes()


@pytest.mark.anyio
@pytest.mark.parametrize(
    "tamper",
    [
        # Moved to another daemon, revision or resource: the associated data differs.
        "UPDATE persisted_credentials SET daemon_id = 'daemon-a' WHERE daemon_id = 'daemon-z'",
        "UPDATE persisted_credentials SET revision = revision + 1 WHERE resource_id = 'us-east-1'",
        "UPDATE persisted_credentials SET sealed = (SELECT sealed FROM persisted_credentials "
        "WHERE resource_id = 'eu-west-1') WHERE resource_id = 'us-east-1'",
        # Not a sealed blob at all.
        "UPDATE persisted_credentials SET sealed = 'garbage' WHERE resource_id = 'us-east-1'",
    ],
    ids=["other-daemon", "other-revision", "moved-blob", "garbage"],
)
async def test_a_tampered_or_moved_row_is_dropped_and_counted(
    store: Store, backend: Backend, tamper: str
) -> None:
    _, a, _ = await two_rows(store)
    if "daemon-z" in tamper:  # a row another daemon wrote, relabelled as ours
        await store.save_credentials("daemon-z", [(a, credential("us-east-1", EXPIRES))])
        backend.sql("DELETE FROM persisted_credentials WHERE daemon_id = 'daemon-a'")
    backend.sql(tamper.replace("'garbage'", _blob_literal(backend)))
    loaded = await store.load_credentials(DAEMON)
    assert loaded.dropped == 1
    assert all(k.resource_id != "us-east-1" for k, _ in loaded.credentials)
    # ... and deleted: the next start finds nothing to drop.
    again = await store.load_credentials(DAEMON)
    assert again.dropped == 0 and len(again.credentials) == len(loaded.credentials)


def _blob_literal(backend: Backend) -> str:
    return "X'00ff'" if backend.name == "sqlite" else "'\\x00ff'::bytea"


@pytest.mark.anyio
async def test_update_and_delete_drop_the_connectors_rows(store: Store, backend: Backend) -> None:
    cid, a, _ = await two_rows(store)
    other = await store.create(draft("other"), SECRETS)
    o = PersistedKey(other.id, other.revision, "aws-generic", "us-east-1")
    await store.save_credentials(DAEMON, [(o, credential("us-east-1", EXPIRES))])
    await store.save_credentials("daemon-b", [(a, credential("us-east-1", EXPIRES))])

    current = await store.get(cid)
    await store.update(current, SECRETS, current.revision)
    assert [k for k, _ in (await store.load_credentials(DAEMON)).credentials] == [o]
    assert (await store.load_credentials("daemon-b")).credentials == []  # every daemon's

    await store.delete(other.id)
    assert (await store.load_credentials(DAEMON)).credentials == []
    assert backend.sql("SELECT COUNT(*) FROM persisted_credentials")[0][0] in (0, "0")


@pytest.mark.anyio
async def test_a_row_for_a_revision_that_is_gone_is_not_written(store: Store) -> None:
    cid, a, _ = await two_rows(store)
    current = await store.get(cid)
    updated = await store.update(current, SECRETS, current.revision)
    # A mint of the old revision finishing after the update: its row never lands.
    await store.save_credentials(DAEMON, [(a, credential("us-east-1", EXPIRES))])
    assert (await store.load_credentials(DAEMON)).credentials == []
    new = PersistedKey(cid, updated.revision, "aws-generic", "us-east-1")
    await store.save_credentials(DAEMON, [(new, credential("us-east-1", EXPIRES))])
    assert [k for k, _ in (await store.load_credentials(DAEMON)).credentials] == [new]


@pytest.mark.anyio
async def test_a_row_that_opens_but_does_not_parse_is_dropped(
    store: Store, backend: Backend
) -> None:
    """Sealed with the right key and associated data, but not a credential: still dropped."""
    cid, a, b = await two_rows(store)
    box = SecretBox(backend.key)
    for payload in (b"{not json", b'{"config": []}', b'{"config": {}}'):
        await store.save_credentials(DAEMON, [(a, credential("us-east-1", EXPIRES))])
        blob = box.encrypt(payload, associated_data(DAEMON, a))
        literal = f"X'{blob.hex()}'" if backend.name == "sqlite" else f"'\\x{blob.hex()}'::bytea"
        backend.sql(
            f"UPDATE persisted_credentials SET sealed = {literal} "
            f"WHERE connector_id = '{cid}' AND resource_id = 'us-east-1'"
        )
        loaded = await store.load_credentials(DAEMON)
        assert loaded.dropped == 1 and [k for k, _ in loaded.credentials] == [b]
