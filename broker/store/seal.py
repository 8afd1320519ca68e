"""What a connector's secrets blob is sealed to: the associated data of its AES-GCM blob.

A connector row keeps its non-secret fields in plain columns (so an operator
can read them) and its secret attributes in one AES-GCM blob. The blob alone
is not enough: the non-secret fields decide *where* and *how* the daemon
uses the secrets. Someone who can write the database file but does not hold
the key could otherwise point ``registry`` / ``server`` / ``endpoint_url`` at
their own host and the daemon would send the password there on the next
verify or mint. So the blob's associated data (AD) is computed from those
fields: change any of them without the key and the blob no longer opens, the
store reports the connector as *tampered* and nothing is sent anywhere.

Every backend (SQLite today, PostgreSQL later) must seal with
:func:`connector_secrets_ad` exactly, from the connector's values (not from
a backend's column encoding), so rows mean the same thing everywhere.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from broker.model import Connector, Value

#: Domain separation and format of the current AD; a new format gets a new tag
#: (and a migration that re-seals every row).
SEAL_FORMAT = b"credential-broker:connector-secrets:v2\n"

#: The AD of schema version 1: the connector id only (see :func:`legacy_secrets_ad`).
_LEGACY_PREFIX = "credential-broker:connector-secrets:"


def canonical_json(obj: Any) -> bytes:
    """One byte string per value: sorted keys, no whitespace, UTF-8, no NaN.

    JSON keeps ``true`` apart from ``1`` and a list apart from its text, so two
    configs that the providers would read differently never encode the same.
    """
    return json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def config_digest(plain_config: Mapping[str, Value]) -> str:
    """SHA-256 (hex) of the canonical JSON of every non-secret attribute."""
    return hashlib.sha256(canonical_json(dict(plain_config))).hexdigest()


def connector_secrets_ad(connector: Connector, plain_config: Mapping[str, Value]) -> bytes:
    """The associated data sealing a connector's secrets blob to the rest of its row.

    ``plain_config`` is the connector's non-secret attributes, exactly as stored
    (``connector.config`` itself is not read: it may hold the secrets).

    Each part and why it is in it:

    - ``id``: binds the blob to its row; a blob copied into another row
      (another connector's secrets) does not open there.
    - ``name``: what callers and policy rules name; swapping the names of two
      rows would hand out one connector's credentials under the other's name.
    - ``connector_type`` and ``auth_method``: decide which provider code reads
      the secrets and how; a different type or method could send them to a
      different service or in a different form.
    - ``resource_type`` and ``resource_id``: the connector's scope; widening or
      moving it would issue credentials for resources it was never meant for.
    - ``labels``: policy rules select connectors by label; a changed label
      could grant someone a connector no rule gave them.
    - a SHA-256 digest of every non-secret config attribute (canonical JSON,
      sorted keys): these say where the secrets go (``registry``, ``server``,
      ``endpoint_url``, CA certificates, ``insecure``) and what is asked for
      (role ARNs, policies). A digest keeps the AD small whatever the config.
    - ``expiration_seconds`` and ``expires_at``: session length and validity
      of the stored credential, bounds of least privilege.
    - ``description``: harmless on its own, sealed so that the rule is simply
      "every field but bookkeeping".

    Not included: ``created_at``, ``updated_at`` and ``revision``, bookkeeping
    that the store itself changes and nothing reads to decide where or how
    secrets are used (every write re-seals the blob anyway), and ``tampered``,
    which is the outcome of this check, not stored data.

    Never change what this returns for a given row: that would make every
    stored row look tampered. A new format gets a new :data:`SEAL_FORMAT`, a
    new function, and a migration that opens rows with this one.
    """
    c = connector
    parts = {
        "id": c.id,
        "name": c.name,
        "connector_type": c.connector_type,
        "auth_method": c.auth_method,
        "resource_type": c.resource_type,
        "resource_id": c.resource_id,
        "labels": dict(c.labels),
        "config_sha256": config_digest(plain_config),
        "expiration_seconds": c.expiration_seconds,
        "expires_at": None if c.expires_at is None else _canonical_time(c.expires_at),
        "description": c.description,
    }
    return SEAL_FORMAT + canonical_json(parts)


def legacy_secrets_ad(connector_id: str) -> bytes:
    """The AD rows had up to schema version 1 (connector id only); for the re-seal migration."""
    return f"{_LEGACY_PREFIX}{connector_id}".encode()


def _canonical_time(value: datetime) -> str:
    """UTC with microseconds, the same text for the same instant whatever its zone."""
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError("expires_at must carry a time zone")
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
