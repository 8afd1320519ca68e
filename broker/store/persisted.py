"""The persistent credential cache's rows: sealed, bound to their key, shared SQL.

A daemon that restarts serves the credentials it minted before instead of
minting them all again. Each row holds one minted client credential, sealed
with the store's key (:mod:`broker.store.crypto`) under associated data that
names the daemon, the connector id *and revision*, the resource type and ID
and the variant: a row edited, or moved to another key, connector, revision
or daemon, no longer opens, and is dropped and counted, never served.

Rows are written only for a connector revision that is in the store at the
time (``INSERT ... WHERE EXISTS``), and a connector update or delete removes
its rows in the same transaction (see the backends), so a restarted daemon
never finds credentials of a revision that is gone. With a shared
(PostgreSQL) store each daemon keeps its own rows (``daemon_id``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from broker.model import ClientCredential
from broker.store.crypto import SecretBox, SecretKeyMismatch

#: Prefix of every row's associated data; bump with the payload format.
_AD_LABEL = b"credential-broker:persisted-credential:v1\x00"

TABLE_SQL = """
    CREATE TABLE IF NOT EXISTS persisted_credentials (
        daemon_id      TEXT NOT NULL,
        connector_id   TEXT NOT NULL,
        revision       {int} NOT NULL,
        resource_type  TEXT NOT NULL,
        resource_id    TEXT NOT NULL,
        variant        TEXT NOT NULL,
        -- Informational (the sealed payload holds the credential's own expiry).
        expires_at     TEXT,
        sealed         {blob} NOT NULL,
        PRIMARY KEY (daemon_id, connector_id, revision, resource_type, resource_id, variant)
    )
"""
INDEX_SQL = (
    "CREATE INDEX IF NOT EXISTS persisted_by_connector ON persisted_credentials (connector_id)"
)

SQLITE_UPSERT = (
    "INSERT INTO persisted_credentials (daemon_id, connector_id, revision, resource_type, "
    "resource_id, variant, expires_at, sealed) "
    "SELECT ?, ?, ?, ?, ?, ?, ?, ? WHERE EXISTS "
    "(SELECT 1 FROM connectors WHERE id = ? AND revision = ?) "
    "ON CONFLICT (daemon_id, connector_id, revision, resource_type, resource_id, variant) "
    "DO UPDATE SET expires_at = excluded.expires_at, sealed = excluded.sealed"
)
#: FOR SHARE: an update of the connector waits for this insert, then deletes its row.
POSTGRES_UPSERT = (
    "INSERT INTO persisted_credentials (daemon_id, connector_id, revision, resource_type, "
    "resource_id, variant, expires_at, sealed) "
    "SELECT $1, $2, $3, $4, $5, $6, $7, $8 WHERE EXISTS "
    "(SELECT 1 FROM connectors WHERE id = $2 AND revision = $3 FOR SHARE) "
    "ON CONFLICT (daemon_id, connector_id, revision, resource_type, resource_id, variant) "
    "DO UPDATE SET expires_at = excluded.expires_at, sealed = excluded.sealed"
)
#: CAST: a row whose blob was overwritten with text reads back as bytes (and fails to
#: open) instead of failing the whole read on text that is not UTF-8.
SQLITE_SELECT = (
    "SELECT daemon_id, connector_id, revision, resource_type, resource_id, variant, expires_at, "
    "CAST(sealed AS BLOB) AS sealed FROM persisted_credentials WHERE daemon_id = ?"
)
POSTGRES_SELECT = (
    "SELECT daemon_id, connector_id, revision, resource_type, resource_id, variant, expires_at, "
    "sealed FROM persisted_credentials WHERE daemon_id = $1"
)
SQLITE_DELETE = (
    "DELETE FROM persisted_credentials WHERE daemon_id = ? AND connector_id = ? AND "
    "revision = ? AND resource_type = ? AND resource_id = ? AND variant = ?"
)
POSTGRES_DELETE = (
    "DELETE FROM persisted_credentials WHERE daemon_id = $1 AND connector_id = $2 AND "
    "revision = $3 AND resource_type = $4 AND resource_id = $5 AND variant = $6"
)
#: Run inside a connector's update / delete transaction (every daemon's rows).
SQLITE_DROP_CONNECTOR = "DELETE FROM persisted_credentials WHERE connector_id = ?"
POSTGRES_DROP_CONNECTOR = "DELETE FROM persisted_credentials WHERE connector_id = $1"


@dataclass(frozen=True, slots=True)
class PersistedKey:
    """The cache key of a persisted credential (connector revision included)."""

    connector_id: str
    revision: int
    resource_type: str
    resource_id: str
    variant: str = ""


@dataclass(frozen=True)
class LoadedCredentials:
    """What a daemon gets back at start-up; ``dropped``: rows that failed to open."""

    credentials: list[tuple[PersistedKey, ClientCredential]]
    dropped: int


def associated_data(daemon_id: str, key: PersistedKey) -> bytes:
    fields = [
        daemon_id,
        key.connector_id,
        key.revision,
        key.resource_type,
        key.resource_id,
        key.variant,
    ]
    return _AD_LABEL + json.dumps(fields, separators=(",", ":")).encode()


def _time(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def seal_credential(
    box: SecretBox, daemon_id: str, key: PersistedKey, credential: ClientCredential
) -> bytes:
    payload = {
        "connector_type": credential.connector_type,
        "auth_method": credential.auth_method,
        "resource_type": credential.resource_type,
        "resource_id": credential.resource_id,
        # Secret values are str subclasses: JSON writes their text (sealed right below).
        "config": dict(credential.config),
        "secret_names": sorted(credential.secret_names),
        "expires_at": _time(credential.expires_at),
        "session_policy": credential.session_policy,
        "issued_at": _time(credential.issued_at),
    }
    plain = json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()
    return box.encrypt(plain, associated_data(daemon_id, key))


class BadRow(ValueError):
    """A persisted row that does not open or parse: dropped, never served."""


def _parse_time(raw: object) -> datetime | None:
    if raw is None:
        return None
    value = datetime.fromisoformat(str(raw))
    if value.tzinfo is None:
        raise BadRow("a time without a time zone")
    return value


def open_credential(
    box: SecretBox, daemon_id: str, key: PersistedKey, sealed: object
) -> ClientCredential:
    """The credential sealed in a row; :class:`BadRow` if it was altered or moved."""
    if not isinstance(sealed, bytes | bytearray | memoryview):
        raise BadRow("the sealed column holds no blob")
    try:
        plain = box.decrypt(bytes(sealed), associated_data(daemon_id, key))
    except SecretKeyMismatch:
        raise BadRow("the sealed credential does not open (altered or moved)") from None
    try:
        data = json.loads(plain)
        config = data["config"]
        if not isinstance(config, dict):
            raise BadRow("config is not an object")
        credential = ClientCredential(
            connector_type=str(data["connector_type"]),
            auth_method=str(data["auth_method"]),
            resource_type=str(data["resource_type"]),
            resource_id=str(data["resource_id"]),
            config=config,
            secret_names=frozenset(str(n) for n in data["secret_names"]),
            expires_at=_parse_time(data["expires_at"]),
            session_policy=data["session_policy"],
            issued_at=_parse_time(data["issued_at"]),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise BadRow(f"the sealed credential does not parse ({type(exc).__name__})") from None
    if (credential.resource_type, credential.resource_id) != (key.resource_type, key.resource_id):
        raise BadRow("the sealed credential is for another resource")
    return credential


def row_key(row: Any) -> PersistedKey:
    return PersistedKey(
        str(row["connector_id"]),
        int(row["revision"]),
        str(row["resource_type"]),
        str(row["resource_id"]),
        str(row["variant"]),
    )


def upsert_params(
    box: SecretBox, daemon_id: str, items: Sequence[tuple[PersistedKey, ClientCredential]]
) -> list[tuple[Any, ...]]:
    """One parameter row per credential for ``*_UPSERT`` (sealed here, outside any lock)."""
    out = []
    for key, credential in items:
        sealed = seal_credential(box, daemon_id, key, credential)
        out.append(
            (
                daemon_id,
                key.connector_id,
                key.revision,
                key.resource_type,
                key.resource_id,
                key.variant,
                _time(credential.expires_at),
                sealed,
            )
        )
    return out


def delete_params(daemon_id: str, keys: Sequence[PersistedKey]) -> list[tuple[Any, ...]]:
    return [
        (daemon_id, k.connector_id, k.revision, k.resource_type, k.resource_id, k.variant)
        for k in keys
    ]


def open_rows(
    box: SecretBox, daemon_id: str, rows: Sequence[Any]
) -> tuple[LoadedCredentials, list[PersistedKey]]:
    """The rows that open, and the keys of those that do not (to delete)."""
    good: list[tuple[PersistedKey, ClientCredential]] = []
    bad: list[PersistedKey] = []
    for row in rows:
        try:
            key = row_key(row)
        except (KeyError, TypeError, ValueError):
            continue  # not even a key: left for the connector's next update / delete
        try:
            good.append((key, open_credential(box, daemon_id, key, row["sealed"])))
        except BadRow:
            bad.append(key)
    return LoadedCredentials(good, len(bad)), bad
