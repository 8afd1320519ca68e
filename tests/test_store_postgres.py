"""What the PostgreSQL store adds to the contract: a database shared by a fleet.

Against a real server (tests/pg.py): migrations run once for many daemons
opening at once, the key fingerprint refuses another key, every write records
a change and a notification in its own transaction, TLS with a verified
server certificate, and errors that never show the password.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import replace
from pathlib import Path
from urllib.parse import quote

import anyio
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from structlog.testing import capture_logs

from broker.clock import FakeClock, SystemClock
from broker.errors import Aborted, FailedPrecondition, Unavailable
from broker.store import postgres_migrations
from broker.store.base import StoreChange
from broker.store.crypto import SecretBox, SecretKeyMismatch, generate_key, key_fingerprint
from broker.store.postgres import PostgresStore
from broker.store.postgres_dsn import is_postgres_url, redact, scrub
from broker.store.postgres_feed import ChangeFeed
from broker.store.sqlite import SqliteStore
from tests.pg import PASSWORD, PostgresServer, free_port
from tests.test_store import SECRETS, draft

pytestmark = pytest.mark.anyio


def store(url: str, key: bytes | None = None) -> PostgresStore:
    return PostgresStore(url, SecretBox(key or KEY), FakeClock())


KEY = generate_key()


async def test_ten_stores_opening_at_once_on_an_empty_database_migrate_once(
    postgres: PostgresServer, pg_database: str, pg_url: str
) -> None:
    stores = [store(pg_url) for _ in range(10)]
    with capture_logs() as logs:
        async with anyio.create_task_group() as tg:
            for s in stores:
                tg.start_soon(s.open)
    try:
        migrated = [e for e in logs if e["event"] == "store_migrated"]
        assert len(migrated) == len(postgres_migrations.MIGRATIONS)
        rows = postgres.psql("SELECT version FROM schema_version ORDER BY version", pg_database)
        assert rows.split() == [str(m.version) for m in postgres_migrations.MIGRATIONS]
        # All ten work on the one schema.
        await stores[3].create(draft("shared"), SECRETS)
        assert [c.name for c in await stores[7].list()] == ["shared"]
    finally:
        for s in stores:
            await s.close()


async def test_a_daemon_with_another_key_is_refused_at_start_naming_both_fingerprints(
    pg_url: str,
) -> None:
    first = store(pg_url)
    await first.open()
    await first.create(draft(), SECRETS)
    await first.close()
    other = generate_key()
    with pytest.raises(SecretKeyMismatch) as info:
        await store(pg_url, other).open()
    message = str(info.value)
    assert key_fingerprint(KEY) in message and key_fingerprint(other) in message
    assert "same key" in message and redact(pg_url) in message and PASSWORD not in message


async def test_every_write_records_one_change_and_one_notification_in_its_transaction(
    pg_url: str,
) -> None:
    s = store(pg_url)
    await s.open()
    seen: list[StoreChange] = []
    got = anyio.Event()

    def on_change(change: StoreChange) -> None:
        seen.append(change)
        if len(seen) == 3:
            got.set()

    listener = await s.listen(on_change, lambda: None)
    try:
        created = await s.create(draft(), SECRETS)
        updated = await s.update(replace(created, description="v2"), SECRETS, 1)
        with pytest.raises(Aborted):  # a refused write publishes nothing
            await s.update(replace(created, description="stale"), SECRETS, 1)
        await s.delete(created.id)
        with anyio.fail_after(5):
            await got.wait()
        await anyio.sleep(0.1)  # nothing else arrives
        assert [(c.kind, c.revision, c.connector_id, c.name) for c in seen] == [
            ("created", 1, created.id, "prod"),
            ("updated", 2, created.id, "prod"),
            ("deleted", 2, created.id, "prod"),
        ]
        ids = [c.change_id for c in seen]
        assert ids == sorted(ids) and len(set(ids)) == 3
        batch = await s.changes_after(0)
        assert batch.changes == seen and batch.compacted_through == 0
        assert await s.latest_change_id() == ids[-1] == await listener.latest_change_id()
        assert updated.revision == 2
    finally:
        await listener.close()
        await s.close()


async def test_compaction_keeps_the_newest_change_and_marks_how_far_it_went(
    postgres: PostgresServer, pg_database: str, pg_url: str
) -> None:
    s = store(pg_url)
    await s.open()
    try:
        for i in range(4):
            await s.create(draft(f"c{i}"), SECRETS)
        latest = await s.latest_change_id()
        assert await s.compact_changes(3600) == 0  # all inside the window
        postgres.psql("UPDATE changes SET changed_at = now() - interval '2 hours'", pg_database)
        assert await s.compact_changes(3600) == 3
        batch = await s.changes_after(0)
        assert [c.change_id for c in batch.changes] == [latest]
        assert batch.compacted_through == latest - 1
        assert await s.latest_change_id() == latest
    finally:
        await s.close()


async def test_tls_with_the_servers_ca_verifies_and_another_ca_is_refused(
    postgres: PostgresServer, pg_database: str
) -> None:
    url = postgres.url(pg_database, tls=True)
    s = store(url)
    await s.open()
    try:
        await s.create(draft(), SECRETS)
        ssl_rows = postgres.psql(
            "SELECT count(*) FROM pg_stat_ssl JOIN pg_stat_activity USING (pid) "
            "WHERE ssl AND application_name = 'credential-broker'",
            pg_database,
        )
        assert int(ssl_rows) >= 1
    finally:
        await s.close()
    other_ca = postgres.root / "other-ca.pem"
    other_ca.write_bytes(_self_signed_ca())
    wrong = url.replace(str(postgres.ca_path), str(other_ca))
    with pytest.raises(Unavailable, match="cannot connect to connector store") as info:
        await store(wrong).open()
    assert "certificate" in str(info.value).lower() and PASSWORD not in str(info.value)


async def test_unreachable_database_is_unavailable_and_never_shows_the_password() -> None:
    url = f"postgresql://postgres:{quote(PASSWORD, safe='')}@127.0.0.1:{free_port()}/nothing"
    with pytest.raises(Unavailable) as info:
        await store(url).open()
    message = str(info.value)
    assert "cannot connect to connector store postgresql://postgres:***@127.0.0.1:" in message
    assert PASSWORD not in message and "Pa55" not in message
    assert info.value.retryable


async def test_a_wrong_password_is_a_setup_error_naming_the_store(
    postgres: PostgresServer, pg_database: str
) -> None:
    url = postgres.url(pg_database).replace("Pa55", "Fa11")
    with pytest.raises(FailedPrecondition, match="cannot log in to connector store") as info:
        await store(url).open()
    assert "Fa11" not in str(info.value)


def test_redact_hides_the_password_wherever_the_url_carries_it() -> None:
    assert is_postgres_url("postgresql://h/db") and is_postgres_url("postgres://h/db")
    assert not is_postgres_url("/var/lib/broker/broker.db")
    assert redact("postgresql://u:s3cret@db:5432/b?sslmode=verify-full") == (
        "postgresql://u:***@db:5432/b?sslmode=verify-full"
    )
    assert redact("postgresql://u@db/b") == "postgresql://u@db/b"
    assert redact("postgresql://db/b?user=u&password=s3cret&sslmode=require") == (
        "postgresql://db/b?user=u&password=***&sslmode=require"
    )
    assert (
        redact("postgresql://u:p%40ss@h1:5432,h2:5433/b") == "postgresql://u:***@h1:5432,h2:5433/b"
    )
    assert scrub("failed for p@ss and p%40ss", "postgresql://u:p%40ss@h/b") == (
        "failed for *** and ***"
    )


def _self_signed_ca() -> bytes:
    now = dt.datetime.now(dt.UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "some other CA")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM)


class RecordingSink:
    """Stands in for the service: what the feed applied, and full reloads."""

    def __init__(self) -> None:
        self.applied: list[StoreChange] = []
        self.reloads = 0

    async def apply_store_change(self, change: StoreChange) -> None:
        self.applied.append(change)

    async def reload_catalog(self) -> None:
        self.reloads += 1


async def test_a_feed_behind_the_retention_reloads_everything_then_follows_changes(
    postgres: PostgresServer, pg_database: str, pg_url: str
) -> None:
    writer, reader = store(pg_url), store(pg_url)
    await writer.open()
    await reader.open()
    sink = RecordingSink()
    feed = ChangeFeed(reader, sink, SystemClock(), retention_seconds=3600, check_seconds=0.2)
    try:
        await feed.start()  # at change 0; then cut off while changes are made and compacted
        created = await writer.create(draft(), SECRETS)
        for revision in (1, 2, 3):
            created = await writer.update(
                replace(created, description=f"r{revision}"), SECRETS, revision
            )
        postgres.psql("UPDATE changes SET changed_at = now() - interval '2 hours'", pg_database)
        assert await writer.compact_changes(3600) == 3
        latest = await writer.latest_change_id()
        async with anyio.create_task_group() as tg:
            await tg.start(feed.run)
            with anyio.fail_after(10):
                while feed.last_applied < latest:
                    await anyio.sleep(0.01)
            assert sink.reloads == 1 and feed.stats()["change_feed_full_reloads"] == 1
            # From there on, changes arrive one by one again.
            await writer.delete(created.id)
            with anyio.fail_after(10):
                while not sink.applied or sink.applied[-1].kind != "deleted":
                    await anyio.sleep(0.01)
            assert sink.reloads == 1 and feed.degraded_reason() is None
            assert feed.stats()["change_feed_lag_changes"] == 0
            tg.cancel_scope.cancel()
    finally:
        await feed.close()
        await reader.close()
        await writer.close()


async def test_a_feed_reports_degraded_while_its_connection_is_down_and_reconnects(
    postgres: PostgresServer, pg_database: str, pg_url: str
) -> None:
    writer, reader = store(pg_url), store(pg_url)
    await writer.open()
    await reader.open()
    sink = RecordingSink()
    feed = ChangeFeed(reader, sink, SystemClock(), retention_seconds=3600, check_seconds=0.2)
    try:
        await feed.start()
        async with anyio.create_task_group() as tg:
            await tg.start(feed.run)
            pid = feed.listener_pid
            assert pid is not None and feed.degraded_reason() is None
            postgres.psql(f"SELECT pg_terminate_backend({pid})", pg_database)
            created = await writer.create(draft(), SECRETS)  # made while it is cut off
            with anyio.fail_after(10):
                while not sink.applied:
                    await anyio.sleep(0.01)
            assert [c.connector_id for c in sink.applied] == [created.id]
            assert feed.reconnects == 1 and feed.listener_pid not in (None, pid)
            assert feed.degraded_reason() is None
            tg.cancel_scope.cancel()
    finally:
        await feed.close()
        await reader.close()
        await writer.close()
    assert "not connected" in _degraded_when_never_connected(reader)


def _degraded_when_never_connected(s: PostgresStore) -> str:
    reason = ChangeFeed(s, RecordingSink(), SystemClock(), retention_seconds=1).degraded_reason()
    assert reason is not None and PASSWORD not in reason
    return reason


async def test_change_ids_follow_commit_order_with_many_writers_at_once(pg_url: str) -> None:
    """Notifications arrive in commit order; ids must too, or catching up by id misses some."""
    writers = [store(pg_url) for _ in range(3)]
    for w in writers:
        await w.open()
    seen: list[int] = []
    listener = await writers[0].listen(lambda c: seen.append(c.change_id), lambda: None)
    try:
        async with anyio.create_task_group() as tg:
            for n, w in enumerate(writers):
                for i in range(20):
                    tg.start_soon(w.create, draft(f"w{n}-{i}"), SECRETS)
        with anyio.fail_after(10):
            while len(seen) < 60:
                await anyio.sleep(0.01)
        assert seen == sorted(seen) == list(range(seen[0], seen[0] + 60))
        assert [c.change_id for c in (await writers[1].changes_after(0)).changes] == seen
    finally:
        await listener.close()
        for w in writers:
            await w.close()


async def test_store_migrate_with_a_new_key_rotates_it(pg_url: str, tmp_path: Path) -> None:
    from broker.cli.store import _migrate

    old_key, new_key = generate_key(), generate_key()
    source = SqliteStore(tmp_path / "broker.db", SecretBox(old_key), FakeClock())
    await source.open()
    created = await source.create(draft(), SECRETS)
    await source.set_setting("preferred.docker-registry.ghcr.io", "prod")
    await source.close()
    copied, settings, _ = await _migrate(
        f"sqlite:{tmp_path / 'broker.db'}", pg_url, old_key, new_key
    )
    assert (copied, settings) == (1, 1)
    with pytest.raises(SecretKeyMismatch):  # the copy is sealed with the new key only
        await store(pg_url, old_key).open()
    rotated = store(pg_url, new_key)
    await rotated.open()
    try:
        assert await rotated.get("prod") == created
        assert await rotated.get_setting("preferred.docker-registry.ghcr.io") == "prod"
    finally:
        await rotated.close()
