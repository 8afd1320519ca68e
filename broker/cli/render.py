"""Turning API messages into the CLI's stable JSON shapes and readable tables.

The JSON shapes live in :mod:`broker.cli.shapes` (no rich: the fast path prints JSON
without it) and are re-exported here.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from rich.console import Console

from broker.api.v1 import broker_pb2 as pb
from broker.cli.shapes import cell as cell
from broker.cli.shapes import connector_json as connector_json
from broker.cli.shapes import connectors_table, credential_tables
from broker.cli.shapes import credential_json as credential_json
from broker.cli.shapes import human_remaining as human_remaining
from broker.cli.shapes import print_data as print_data
from broker.cli.shapes import print_json as print_json
from broker.cli.shapes import remaining as remaining
from broker.cli.shapes import resource_json as resource_json
from broker.cli.shapes import rfc3339 as rfc3339

console = Console()


def print_table(title: str | None, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """Drawn by broker.cli.table (rich's look, but identifiers are never broken; cells
    are plain text, not rich markup); lists joined with commas."""
    from broker.cli import table

    # full: PEMs are summarized (or not: --full) by the caller, which knows which asked
    table.print_table(title, columns, [[cell(v, full=True) for v in row] for row in rows])


def print_connectors(connectors: Sequence[pb.Connector]) -> None:
    print_table(*connectors_table(connectors))


def print_connector(c: pb.Connector, full: bool = False) -> None:
    """Properties, then configuration; a PEM as fingerprint + subject unless ``full``."""
    data = connector_json(c)
    rows = [
        (k, human_remaining(data["expires_in_seconds"]) if k == "expires_in_seconds" else v)
        for k, v in data.items()
        if k not in ("config", "labels")
    ]
    rows.append(("labels", cell(data["labels"])))
    print_table(f"Connector '{c.name}'", ["PROPERTY", "VALUE"], rows)
    print_table(
        "Configuration",
        ["ATTRIBUTE", "VALUE"],
        [(k, cell(v, full)) for k, v in data["config"].items()],
    )


def print_resources(results: Sequence[pb.ResourceResult]) -> None:
    print_table(
        None,
        ["CONNECTOR", "TYPE", "RESOURCE TYPE", "RESOURCE IDS / ERROR"],
        [
            (
                r.connector,
                r.connector_type,
                r.resource_type,
                "\n".join([*r.resource_ids, f"error: {r.error}"])
                if r.HasField("error")
                else "\n".join(r.resource_ids) or "none found",
            )
            for r in results
        ],
    )


def print_credential(c: pb.Credential, full: bool = False) -> None:
    for table in credential_tables(c, full):
        print_table(*table)
    policy = credential_json(c)["session_policy"]
    if policy is not None:
        console.print("Session policy:")
        console.print_json(json.dumps(policy))
