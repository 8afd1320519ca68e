"""The persistent cache's writer: minted credentials go to the store off the hot path.

The cache tells :meth:`CredentialPersister.minted` of every credential a mint
put in it (never on a cache hit); that only records it in a dict (the latest
credential per key wins). One background task writes what is pending in
batches, one store transaction each, so a burst of mints costs a few writes,
and a slow or failing store never delays a caller. A crash between a mint and
its write costs one re-mint after the restart, nothing else. At start-up the
daemon loads its rows (:meth:`CredentialPersister.load`) before it serves.

A daemon's rows carry its id (:func:`daemon_id`), kept in ``DATA_DIR/daemon-id``
so it survives restarts; with a shared PostgreSQL store each daemon of the
fleet thus reads back only what it minted itself.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import anyio
import anyio.abc
import structlog

from broker.cache.entry import CacheKey
from broker.errors import BrokerError, FailedPrecondition
from broker.model import ClientCredential
from broker.store.persisted import LoadedCredentials, PersistedKey

log = structlog.get_logger(__name__)

#: Credentials written per store transaction at most.
BATCH_SIZE = 500
#: How long shutdown waits to write what is still pending (then it is lost: re-minted).
FINAL_FLUSH_SECONDS = 5.0
DAEMON_ID_FILE = "daemon-id"


class PersistedStore(Protocol):
    """What the writer needs from a store (both backends have it)."""

    async def save_credentials(
        self, daemon_id: str, items: Sequence[tuple[PersistedKey, ClientCredential]]
    ) -> None: ...

    async def load_credentials(self, daemon_id: str) -> LoadedCredentials: ...

    async def drop_credentials(self, daemon_id: str, keys: Sequence[PersistedKey]) -> None: ...


def persisted_key(key: CacheKey) -> PersistedKey:
    return PersistedKey(
        key.connector_id, key.revision, key.resource_type, key.resource_id, key.variant
    )


def daemon_id(data_dir: Path) -> str:
    """This daemon's id for its persisted rows: ``DATA_DIR/daemon-id``, created once (0600).

    Stable across restarts because the data directory is (it also holds the
    secret key and, by default, the store); two daemons must not share a data
    directory, so two daemons of a fleet never share an id.
    """
    path = data_dir / DAEMON_ID_FILE
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        text = ""
    except OSError as exc:
        raise FailedPrecondition(f"cannot read the daemon id {path}: {exc.strerror}") from None
    if text:
        return text
    new = uuid.uuid4().hex
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process made it meanwhile: theirs counts
        return path.read_text().strip() or new
    except OSError as exc:
        raise FailedPrecondition(f"cannot create the daemon id {path}: {exc.strerror}") from None
    with os.fdopen(fd, "w") as f:
        f.write(new + "\n")
        f.flush()
        os.fsync(f.fileno())
    return new


def _why(exc: Exception) -> str:
    """A broker error's message; for anything else its type only (no row contents)."""
    return exc.message if isinstance(exc, BrokerError) else type(exc).__name__


class CredentialPersister:
    """Queues minted credentials and writes them to the store in the background."""

    def __init__(self, store: PersistedStore, daemon: str, *, batch_size: int = BATCH_SIZE):
        self._store = store
        self.daemon_id = daemon
        self._batch_size = batch_size
        self._pending: dict[PersistedKey, ClientCredential] = {}
        self._wake = anyio.Event()
        self.saved = 0
        self.save_failures = 0
        self.batches = 0
        #: Rows that did not open (altered, moved, unparseable): deleted, never served.
        self.dropped_bad = 0

    # -- the cache's hook (sync, cheap) ------------------------------------
    def minted(self, key: CacheKey, credential: ClientCredential) -> None:
        self._pending[persisted_key(key)] = credential
        self._wake.set()

    # -- start-up ------------------------------------------------------------
    async def load(self) -> list[tuple[PersistedKey, ClientCredential]]:
        """This daemon's persisted credentials that open; a store failure loads none."""
        try:
            loaded = await self._store.load_credentials(self.daemon_id)
        except Exception as exc:  # a restart then mints afresh, as without the cache
            log.warning("persisted_credentials_unreadable", error=_why(exc))
            return []
        self.dropped_bad += loaded.dropped
        if loaded.dropped:
            log.warning("persisted_credentials_dropped", rows=loaded.dropped)
        return loaded.credentials

    async def drop(self, keys: Sequence[PersistedKey]) -> None:
        """Forget rows no longer useful (connector gone, inside the margin)."""
        if not keys:
            return
        try:
            await self._store.drop_credentials(self.daemon_id, keys)
        except Exception as exc:
            log.warning("persisted_credentials_not_dropped", rows=len(keys), error=_why(exc))

    # -- the writer ----------------------------------------------------------
    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        task_status.started()
        try:
            while True:
                await self._wake.wait()
                self._wake = anyio.Event()
                await self.flush()
        finally:
            with anyio.CancelScope(shield=True), anyio.move_on_after(FINAL_FLUSH_SECONDS):
                await self.flush()

    async def flush(self) -> None:
        """Write everything pending, a batch per transaction."""
        while self._pending:
            batch: list[tuple[PersistedKey, ClientCredential]] = []
            for key in list(self._pending)[: self._batch_size]:
                batch.append((key, self._pending.pop(key)))
            try:
                await self._store.save_credentials(self.daemon_id, batch)
            except Exception as exc:  # only costs re-mints after a restart; never a crash
                self.save_failures += len(batch)
                log.warning("persisted_credentials_not_saved", rows=len(batch), error=_why(exc))
                continue
            self.saved += len(batch)
            self.batches += 1

    def stats(self) -> dict[str, int]:
        return {
            "persisted_saved": self.saved,
            "persisted_save_failures": self.save_failures,
            "persisted_dropped_bad": self.dropped_bad,
            "persisted_pending": len(self._pending),
        }
