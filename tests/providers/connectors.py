"""A stored connector for provider tests: what the registry hands a provider.

Provider tests only vary the type, auth method, configuration and a few optional fields;
the rest of the record (labels, revision, timestamps) is filled the same way here.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime

from broker.model import Connector, Value


def make_connector(
    connector_type: str,
    auth_method: str,
    config: Mapping[str, Value],
    *,
    name: str = "conn",
    resource_type: str | None = None,
    resource_id: str | None = None,
    expiration_seconds: int | None = None,
    expires_at: datetime | None = None,
    now: datetime | None = None,
) -> Connector:
    """A connector at revision 1, created and updated at ``now`` (default: the wall clock)."""
    created = now or datetime.now(UTC)
    return Connector(
        id=f"id-{name}",
        name=name,
        connector_type=connector_type,
        auth_method=auth_method,
        resource_type=resource_type,
        resource_id=resource_id,
        config=dict(config),
        labels={},
        expiration_seconds=expiration_seconds,
        expires_at=expires_at,
        created_at=created,
        updated_at=created,
        revision=1,
    )
