"""Turning API messages into the CLI's stable JSON shapes and readable tables."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from rich.console import Console
from rich.table import Table

from broker.api.v1 import broker_pb2 as pb

console = Console()


def rfc3339(message: Any, name: str) -> str | None:
    if not message.HasField(name):
        return None
    stamp: datetime = getattr(message, name).ToDatetime(tzinfo=UTC)
    return stamp.strftime("%Y-%m-%dT%H:%M:%SZ")


def remaining(message: Any, name: str) -> int | None:
    if not message.HasField(name):
        return None
    stamp: datetime = getattr(message, name).ToDatetime(tzinfo=UTC)
    return int((stamp - datetime.now(UTC)).total_seconds())


def human_remaining(seconds: int | None) -> str:
    if seconds is None:
        return "-"
    if seconds <= 0:
        return "EXPIRED"
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours >= 48:
        return f"{hours // 24}d{hours % 24}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s"


def connector_json(c: pb.Connector) -> dict[str, Any]:
    return {
        "name": c.name,
        "id": c.id,
        "connector_type": c.connector_type,
        "auth_method": c.auth_method,
        "resource_types": list(c.resource_types),
        "resource_id": c.resource_id if c.HasField("resource_id") else None,
        "scope": c.scope,
        "expiration_seconds": c.expiration_seconds if c.HasField("expiration_seconds") else None,
        "expires_at": rfc3339(c, "expires_at"),
        "expires_in_seconds": remaining(c, "expires_at"),
        "labels": dict(sorted(c.labels.items())),
        "config": dict(sorted(c.config.items())),
        "description": c.description,
        "revision": c.revision,
        "created_at": rfc3339(c, "created_at"),
        "updated_at": rfc3339(c, "updated_at"),
    }


def credential_json(c: pb.Credential) -> dict[str, Any]:
    return {
        "connector": c.connector,
        "connector_type": c.connector_type,
        "auth_method": c.auth_method,
        "resource_type": c.resource_type,
        "resource_id": c.resource_id,
        "expires_at": rfc3339(c, "expires_at"),
        "config": dict(sorted(c.config.items())),
        "session_policy": json.loads(c.session_policy) if c.HasField("session_policy") else None,
    }


def resource_json(r: pb.ResourceResult) -> dict[str, Any]:
    return {
        "connector": r.connector,
        "connector_type": r.connector_type,
        "resource_type": r.resource_type,
        "resource_ids": list(r.resource_ids),
        "error": r.error if r.HasField("error") else None,
    }


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=False) + "\n")


def print_table(title: str | None, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    table = Table(title=title, show_lines=False)
    for col in columns:
        table.add_column(col, overflow="fold")
    for row in rows:
        table.add_row(*["-" if v is None or v == "" else str(v) for v in row])
    console.print(table)


def print_connectors(connectors: Sequence[pb.Connector]) -> None:
    print_table(
        None,
        ["NAME", "TYPE", "AUTH METHOD", "RESOURCE TYPES", "RESOURCE ID", "EXPIRES IN", "LABELS"],
        [
            (
                c.name,
                c.connector_type,
                c.auth_method,
                ", ".join(c.resource_types),
                c.resource_id if c.HasField("resource_id") else "<multiple>",
                human_remaining(remaining(c, "expires_at")),
                ", ".join(f"{k}={v}" for k, v in sorted(c.labels.items())),
            )
            for c in connectors
        ],
    )


def print_connector(c: pb.Connector) -> None:
    data = connector_json(c)
    rows = [
        (k, human_remaining(data["expires_in_seconds"]) if k == "expires_in_seconds" else v)
        for k, v in data.items()
        if k not in ("config", "labels")
    ]
    rows.append(("labels", ", ".join(f"{k}={v}" for k, v in data["labels"].items())))
    print_table(f"Connector '{c.name}'", ["PROPERTY", "VALUE"], rows)
    print_table("Configuration", ["ATTRIBUTE", "VALUE"], list(data["config"].items()))


def print_resources(results: Sequence[pb.ResourceResult]) -> None:
    print_table(
        None,
        ["CONNECTOR", "TYPE", "RESOURCE TYPE", "RESOURCE IDS / ERROR"],
        [
            (
                r.connector,
                r.connector_type,
                r.resource_type,
                f"[red]error: {r.error}[/red]"
                if r.HasField("error")
                else "\n".join(r.resource_ids),
            )
            for r in results
        ],
    )


def print_credential(c: pb.Credential) -> None:
    data = credential_json(c)
    rows = [(k, v) for k, v in data.items() if k not in ("config", "session_policy")]
    print_table(f"Credential for {c.resource_type} '{c.resource_id}'", ["PROPERTY", "VALUE"], rows)
    print_table("Configuration", ["ATTRIBUTE", "VALUE"], list(data["config"].items()))
    if data["session_policy"] is not None:
        console.print("Session policy:")
        console.print_json(json.dumps(data["session_policy"]))
