"""The PostgreSQL store's statements and the store_meta keys it keeps (constants only)."""

from __future__ import annotations

from broker.store import postgres_migrations as migrations

KEY_FINGERPRINT = "key_fingerprint"
COMPACTED_THROUGH = "compacted_through"

COLUMNS = (
    "id, name, connector_type, auth_method, resource_type, resource_id, description, "
    "config, secrets, labels, expiration_seconds, expires_at, created_at, updated_at, revision"
)
SELECT = f"SELECT {COLUMNS} FROM connectors"  # noqa: S608 (fixed column list)
INSERT = (
    f"INSERT INTO connectors ({COLUMNS}) "  # noqa: S608
    "VALUES ($1, $2, $3, $4, $5, $6, $7, $8::jsonb, $9, $10::jsonb, $11, $12, $13, $14, $15)"
)
UPDATE = (
    "UPDATE connectors SET id = $1, name = $2, connector_type = $3, auth_method = $4, "
    "resource_type = $5, resource_id = $6, description = $7, config = $8::jsonb, "
    "secrets = $9, labels = $10::jsonb, expiration_seconds = $11, expires_at = $12, "
    "created_at = $13, updated_at = $14, revision = $15 WHERE id = $16 AND revision = $17"
)
FETCH = SELECT + " WHERE name = $1 OR id = $1 ORDER BY (name = $1) DESC LIMIT 1"
FETCH_FOR_UPDATE = FETCH + " FOR UPDATE"
CAS_BY_ID = "SELECT id, name, revision, created_at FROM connectors WHERE id = $1 FOR UPDATE"
CAS_BY_NAME = "SELECT id, name, revision, created_at FROM connectors WHERE name = $1 FOR UPDATE"
RECORD_CHANGE = f"""
    WITH change_lock AS (SELECT pg_advisory_xact_lock({migrations.CHANGE_LOCK})),
    change AS (
        -- Rows come from change_lock, so the id (nextval) is drawn only once it is held.
        INSERT INTO changes (connector_id, connector_name, revision, kind)
        SELECT $1, $2, $3, $4 FROM change_lock
        RETURNING change_id
    )
    SELECT change_id, pg_notify(
        '{migrations.CHANGE_CHANNEL}',
        json_build_object(
            'change_id', change_id, 'connector_id', $1::text, 'name', $2::text,
            'revision', $3::bigint, 'kind', $4::text
        )::text
    ) FROM change
"""  # noqa: S608 (constants only)
CHANGES_AFTER = (
    "SELECT change_id, connector_id, connector_name, revision, kind FROM changes "
    "WHERE change_id > $1 ORDER BY change_id LIMIT $2"
)

#: SQLSTATE classes meaning "the database cannot serve now; try again": connection
#: exceptions, transaction rollbacks (serialization, deadlock), insufficient resources,
#: operator intervention (shutdown, restart, "cannot connect now").
UNAVAILABLE_CLASSES = ("08", "40", "53", "57")
