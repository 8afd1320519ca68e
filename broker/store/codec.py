"""What every backend shares about a connector row: checks, sealing and reading back.

A row is the same thing in SQLite and PostgreSQL: plain columns for the
non-secret fields (JSON text for ``config`` and ``labels``), one AES-GCM blob
for the secret attributes, sealed to the rest of the row with
:func:`broker.store.seal.connector_secrets_ad`. Backends differ only in how a
column travels (text vs ``timestamptz``); :func:`plain_connector` reads either,
so a connector reads back the same from both and ``broker store migrate`` can
copy rows from one to the other unchanged.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any, Protocol

import structlog

from broker.errors import BrokerError, ConnectorTampered, FailedPrecondition, InvalidArgument
from broker.model import Connector, Value, hide_secrets
from broker.store.crypto import SecretBox, SecretKeyMismatch
from broker.store.seal import connector_secrets_ad

log = structlog.get_logger(__name__)


class StoreCorrupt(FailedPrecondition):
    """A stored record or the database file cannot be read back."""


class SchemaTooNew(FailedPrecondition):
    """The database was written by a newer broker than this one."""


class Row(Protocol):
    """A database row addressed by column name (``sqlite3.Row``, ``asyncpg.Record``)."""

    def __getitem__(self, key: str, /) -> Any: ...


def split_secrets(
    c: Connector, secret_names: frozenset[str]
) -> tuple[dict[str, Value], dict[str, Value]]:
    """``(plain, secret)`` attributes of a connector about to be written, checked.

    A tampered connector is refused: re-sealing it as is would launder the outside change.
    """
    if c.tampered:
        raise ConnectorTampered.of(c.name)
    plain: dict[str, Value] = {}
    secret: dict[str, Value] = {}
    for key, value in c.config.items():
        check_value(c.name, key, value)
        (secret if key in secret_names else plain)[key] = value
    for key, label in c.labels.items():
        if not isinstance(key, str) or not isinstance(label, str):
            raise InvalidArgument(
                f"labels of connector '{c.name}' must map text to text", field="labels"
            )
    if c.expires_at is not None:
        fmt_time(c.expires_at, "expires_at")  # refuses a naive time, naming the field
    return plain, secret


def seal(
    box: SecretBox, c: Connector, plain: Mapping[str, Value], secret: Mapping[str, Value]
) -> bytes:
    """The secrets blob of a row, sealed to its other fields."""
    return box.encrypt(dumps(dict(secret)).encode(), connector_secrets_ad(c, plain))


def open_row(box: SecretBox, row: Row, location: str) -> Connector:
    """The row as a Connector; secrets withheld and ``tampered`` set if they do not open.

    A blob that does not open under the row's associated data means the row
    was changed without the key (the key itself was checked when the store
    opened). That row is reported, not raised, so one tampered row never
    takes the whole listing down, and it can still be deleted or re-sealed.
    """
    plain = plain_connector(row)
    blob = row["secrets"]
    if isinstance(blob, memoryview | bytearray):
        blob = bytes(blob)
    try:
        if not isinstance(blob, bytes):
            raise SecretKeyMismatch("the secrets column does not hold an encrypted blob")
        opened = box.decrypt(blob, connector_secrets_ad(plain, plain.config))
    except SecretKeyMismatch:
        log.warning(
            "connector_tampered",
            connector=plain.name,
            reason="its secrets do not open with its row as stored",
            store=location,
        )
        return replace(plain, tampered=True)
    secrets = load_mapping(opened, plain.name, "secrets")
    for key, value in secrets.items():
        check_stored_value(plain.name, "secrets", key, value)
    # Every attribute of the sealed blob is secret: Secret values, redacted in any repr.
    return replace(plain, config={**plain.config, **hide_secrets(secrets, frozenset(secrets))})


def exported(box: SecretBox, row: Row, location: str) -> tuple[Connector, frozenset[str]]:
    """A row for copying to another store: opened, with the names of its sealed attributes.

    A row that does not open (tampered or unreadable) cannot be copied: its secrets
    are unknown. StoreCorrupt names it, so the operator can delete or re-register it.
    """
    connector = open_row(box, row, location)
    if connector.tampered:
        raise StoreCorrupt(
            f"connector '{connector.name}' in {location} is tampered: its secrets cannot be "
            "read, so it cannot be copied (delete it, or register it again, then retry)"
        )
    return connector, frozenset(connector.config) - frozenset(plain_connector(row).config)


def plain_connector(row: Row) -> Connector:
    """A ``connectors`` row as a Connector with only its non-secret attributes in ``config``.

    Raises StoreCorrupt naming the connector when a column cannot be read back.
    """
    name = str(row["name"])
    config = load_mapping(row["config"], name, "config")
    for key, value in config.items():
        check_stored_value(name, "config", key, value)
    labels = load_mapping(row["labels"], name, "labels")
    if not all(isinstance(v, str) for v in labels.values()):
        raise StoreCorrupt(f"connector '{name}' is corrupt in the store: bad labels")
    expires_at = row["expires_at"]
    expiration = row["expiration_seconds"]
    if expiration is not None and (type(expiration) is not int):
        raise StoreCorrupt(f"connector '{name}' is corrupt in the store: bad expiration_seconds")
    for column in ("resource_type", "resource_id"):
        if row[column] is not None and not isinstance(row[column], str):
            raise StoreCorrupt(f"connector '{name}' is corrupt in the store: bad {column}")
    return Connector(
        id=str(row["id"]),
        name=name,
        connector_type=str(row["connector_type"]),
        auth_method=str(row["auth_method"]),
        resource_type=row["resource_type"],
        resource_id=row["resource_id"],
        config=config,
        labels=labels,
        expiration_seconds=expiration,
        expires_at=None if expires_at is None else parse_time(expires_at, name, "expires_at"),
        created_at=parse_time(row["created_at"], name, "created_at"),
        updated_at=parse_time(row["updated_at"], name, "updated_at"),
        revision=int(row["revision"]),
        description=str(row["description"]),
    )


def unreadable(row: Row) -> Connector | None:
    """A row whose columns cannot be read back, as a tampered connector (never used)."""
    try:
        created = parse_time(row["created_at"], str(row["name"]), "created_at")
        return Connector(
            id=str(row["id"]),
            name=str(row["name"]),
            connector_type=str(row["connector_type"]),
            auth_method=str(row["auth_method"]),
            resource_type=None,
            resource_id=None,
            config={},
            labels={},
            expiration_seconds=None,
            expires_at=None,
            created_at=created,
            updated_at=created,
            revision=int(row["revision"]),
            tampered=True,
        )
    except (BrokerError, TypeError, ValueError, IndexError, KeyError):
        return None


def list_row(box: SecretBox, row: Row, location: str) -> Connector | None:
    """A row for a listing: one that cannot be read is listed unusable (tampered).

    One unreadable row must not take every other connector down with it; a row
    whose name cannot even be read is left out (None) and logged.
    """
    try:
        return open_row(box, row, location)
    except StoreCorrupt as exc:
        log.error("store_row_corrupt", error=exc.message)
        return unreadable(row)


def to_create(connector: Connector, now: datetime) -> Connector:
    """What a backend inserts: a connector with an empty id gets a new id, timestamps
    and revision 1 (one with an id, e.g. a migrated one, keeps them)."""
    if connector.id:
        stored = replace(connector, revision=max(connector.revision, 1))
    else:
        stored = replace(
            connector, id=str(uuid.uuid4()), created_at=now, updated_at=now, revision=1
        )
    return normalized(stored)


def normalized(c: Connector) -> Connector:
    """Private copies of the mutable parts, so callers' later edits do not leak in."""
    return replace(
        c,
        config={k: list(v) if isinstance(v, list) else v for k, v in c.config.items()},
        labels=dict(c.labels),
    )


def dumps(obj: Mapping[str, Any]) -> str:
    return json.dumps(obj, ensure_ascii=False, allow_nan=False, separators=(",", ":"))


def _is_value(value: object) -> bool:
    if isinstance(value, str | int):  # bool is an int
        return True
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def check_value(connector: str, key: object, value: object) -> None:
    if not isinstance(key, str):
        raise InvalidArgument(f"connector '{connector}' has a non-text attribute name")
    if not _is_value(value):
        raise InvalidArgument(
            f"attribute '{key}' of connector '{connector}' must be text, a whole number, "
            f"true/false or a list of text, not {type(value).__name__}",
            field=key,
        )


def check_stored_value(connector: str, column: str, key: str, value: object) -> None:
    if not _is_value(value):
        raise StoreCorrupt(
            f"connector '{connector}' is corrupt in the store: attribute '{key}' in "
            f"{column} has an unsupported value"
        )


def load_mapping(raw: object, connector: str, column: str) -> dict[str, Any]:
    try:
        obj = json.loads(raw)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        obj = None
    if not isinstance(obj, dict):
        raise StoreCorrupt(
            f"connector '{connector}' is corrupt in the store: {column} is not a JSON object"
        )
    return obj


def fmt_time(value: datetime, field: str) -> str:
    """RFC 3339 in UTC with microseconds: exact round-trip and text order = time order."""
    if value.tzinfo is None or value.utcoffset() is None:
        raise InvalidArgument(f"{field} must carry a time zone", field=field)
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def utc(value: datetime, field: str) -> datetime:
    """An aware time in UTC (what a ``timestamptz`` column takes), naive ones refused."""
    if value.tzinfo is None or value.utcoffset() is None:
        raise InvalidArgument(f"{field} must carry a time zone", field=field)
    return value.astimezone(UTC)


def parse_time(raw: object, connector: str, field: str) -> datetime:
    """A stored time (RFC 3339 text, or a ``timestamptz`` value) as an aware UTC time."""
    value: datetime | None
    if isinstance(raw, datetime):
        value = raw
    else:
        try:
            value = datetime.fromisoformat(str(raw))
        except ValueError:
            value = None
    if value is None or value.tzinfo is None:
        raise StoreCorrupt(
            f"connector '{connector}' is corrupt in the store: {field} is not an RFC 3339 time"
        )
    return value.astimezone(UTC)
