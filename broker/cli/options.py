"""Options shared by every CLI command, and parsing of KEY=VALUE arguments."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated

import typer

from broker.cli.shapes import MAX_FILE_BYTES as MAX_FILE_BYTES
from broker.cli.shapes import Output as Output
from broker.cli.shapes import parse_pairs as parse_pairs
from broker.errors import InvalidArgument

SocketOpt = Annotated[
    Path | None,
    typer.Option(
        "--socket",
        help=(
            "The daemon's Unix socket [default: BROKER_SOCKET, BROKER_DATA_DIR/broker.sock, "
            "the pointer file written by `broker serve`, /run/broker/broker.sock]"
        ),
        show_default=False,
    ),
]
OutputOpt = Annotated[
    Output,
    typer.Option("--output", "-o", help="A table for people, or JSON / YAML (the same data)"),
]
FullOpt = Annotated[
    bool,
    typer.Option(
        "--full", help="Show PEM values (CA bundles) whole, not as sha256 fingerprint and subject"
    ),
]
ResourceTypeOpt = Annotated[str | None, typer.Option("--resource-type", "-r")]
ResourceIdOpt = Annotated[str | None, typer.Option("--resource-id", "-i")]


def parse_time(value: str | None, field: str) -> datetime | None:
    """RFC 3339 / ISO 8601 (UTC when no offset), or a relative ``+90m`` / ``+12h`` / ``+2d``."""
    if value is None:
        return None
    text = value.strip()
    if text.startswith("+") and text[-1:] in ("s", "m", "h", "d") and text[1:-1].isdigit():
        unit = {"s": 1, "m": 60, "h": 3600, "d": 86400}[text[-1]]
        return datetime.now(UTC) + timedelta(seconds=int(text[1:-1]) * unit)
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidArgument(
            f"{field} '{value}' is not a time: use RFC 3339 (2030-01-01T00:00:00Z) or +12h",
            field=field,
        ) from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
