"""Options shared by every CLI command, and parsing of KEY=VALUE arguments."""

from __future__ import annotations

import enum
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated

import typer

from broker.errors import InvalidArgument


class Output(enum.StrEnum):
    table = "table"
    json = "json"


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
OutputOpt = Annotated[Output, typer.Option("--output", "-o", help="table or json")]
ResourceTypeOpt = Annotated[str | None, typer.Option("--resource-type", "-r")]
ResourceIdOpt = Annotated[str | None, typer.Option("--resource-id", "-i")]

#: Values read with KEY=@path are bounded like any attribute.
MAX_FILE_BYTES = 256 * 1024


def parse_pairs(items: list[str] | None, what: str, *, files: bool = False) -> dict[str, str]:
    """``KEY=VALUE`` arguments into a dict; ``KEY=@path`` reads the value from a file."""
    out: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise InvalidArgument(f"{what} '{key or item}' must be written KEY=VALUE", field=what)
        if files and value.startswith("@"):
            path = Path(value[1:]).expanduser()
            try:
                if path.stat().st_size > MAX_FILE_BYTES:
                    raise InvalidArgument(
                        f"file {path} for attribute '{key}' is larger than {MAX_FILE_BYTES} bytes",
                        field=key,
                    )
                value = path.read_text()
            except OSError as exc:
                raise InvalidArgument(
                    f"cannot read file {path} for attribute '{key}': {exc.strerror}", field=key
                ) from None
            except UnicodeDecodeError:
                raise InvalidArgument(
                    f"file {path} for attribute '{key}' is not text", field=key
                ) from None
        out[key] = value
    return out


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
