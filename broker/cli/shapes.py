"""What the CLI prints and parses without typer or rich: the output choice, KEY=VALUE
arguments and the stable JSON shapes of API messages.

Kept apart from :mod:`broker.cli.render` (rich tables) and :mod:`broker.cli.options`
(typer declarations) so the fast path (:mod:`broker.cli.fast`) can print JSON without
importing either; both re-export what is defined here.
"""

from __future__ import annotations

import enum
import json
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from broker.errors import InvalidArgument

if TYPE_CHECKING:
    from broker.api.v1 import broker_pb2 as pb


class Output(enum.StrEnum):
    """``--output``: a table for people, JSON or YAML (the same data) for programs."""

    table = "table"
    json = "json"
    yaml = "yaml"


#: Values read with KEY=@path are bounded like any attribute.
MAX_FILE_BYTES = 256 * 1024


def parse_pairs(items: list[str] | None, what: str, *, files: bool = False) -> dict[str, str]:
    """``KEY=VALUE`` arguments into a dict; with ``files``, ``KEY=@path`` reads the value from
    a file and ``KEY=-`` from stdin (once), so a secret never shows in ``ps`` or history."""
    out: dict[str, str] = {}
    stdin_key: str | None = None
    for item in items or []:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise InvalidArgument(f"{what} '{key or item}' must be written KEY=VALUE", field=what)
        if files and value == "-":
            if stdin_key is not None:
                raise InvalidArgument(
                    f"only one attribute can be read from stdin ('{stdin_key}=-' and "
                    f"'{key}=-'): give the other as KEY=@FILE",
                    field=key,
                )
            stdin_key = key
            value = _read_stdin(key)
        elif files and value.startswith("@"):
            value = _read_file(key, value[1:])
        out[key] = value
    return out


def inline_keys(items: list[str] | None) -> list[str]:
    """Keys whose value was written on the command line itself (not ``@file``, not ``-``)."""
    keys = []
    for item in items or []:
        key, sep, value = item.partition("=")
        if sep and value != "-" and not value.startswith("@"):
            keys.append(key.strip())
    return keys


def _read_stdin(key: str) -> str:
    """The whole of stdin, less one trailing newline (``echo`` adds it; a value never ends
    in one). A terminal gets a hidden prompt instead, as ``docker login`` does."""
    if sys.stdin is None:
        raise InvalidArgument(f"attribute '{key}=-' reads stdin, but there is none", field=key)
    if sys.stdin.isatty():
        import getpass

        return getpass.getpass(f"{key}: ")
    data = sys.stdin.read(MAX_FILE_BYTES + 1)
    if len(data.encode()) > MAX_FILE_BYTES:
        raise InvalidArgument(
            f"stdin for attribute '{key}' is larger than {MAX_FILE_BYTES} bytes", field=key
        )
    if data.endswith("\r\n"):
        return data[:-2]
    return data[:-1] if data.endswith("\n") else data


def _read_file(key: str, name: str) -> str:
    from pathlib import Path

    path = Path(name).expanduser()
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            raise InvalidArgument(
                f"file {path} for attribute '{key}' is larger than {MAX_FILE_BYTES} bytes",
                field=key,
            )
        return path.read_text()
    except OSError as exc:
        raise InvalidArgument(
            f"cannot read file {path} for attribute '{key}': {exc.strerror}", field=key
        ) from None
    except UnicodeDecodeError:
        raise InvalidArgument(f"file {path} for attribute '{key}' is not text", field=key) from None


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


#: A table as print_table takes it: title, column headings, rows.
Table = tuple[str | None, list[str], list[tuple[Any, ...]]]


def connectors_table(connectors: Sequence[pb.Connector]) -> Table:
    return (
        None,
        ["NAME", "TYPE", "AUTH METHOD", "RESOURCE TYPES", "RESOURCE ID", "EXPIRES IN", "LABELS"],
        [
            (
                c.name,
                c.connector_type,
                c.auth_method,
                ", ".join(c.resource_types),
                served_id(c),
                human_remaining(remaining(c, "expires_at")),
                ", ".join(f"{k}={v}" for k, v in sorted(c.labels.items())),
            )
            for c in connectors
        ],
    )


def served_id(c: pb.Connector) -> str:
    """The RESOURCE ID column: the connector's resource ID; for a docker connector without
    one, the one registry it serves (its ``registry``, Docker Hub when unset), as the
    daemon's DockerProvider.registry reads it; else ``<multiple>``."""
    if c.HasField("resource_id"):
        return c.resource_id
    if c.connector_type == "docker":
        return c.config.get("registry") or "docker.io"
    return "<multiple>"


def credential_tables(c: pb.Credential, full: bool = False) -> list[Table]:
    """Its properties and its configuration (the session policy is printed after them);
    PEM values as fingerprint and subject unless ``full``."""
    data = credential_json(c)
    rows = [(k, v) for k, v in data.items() if k not in ("config", "session_policy")]
    config = [(k, cell(v, full)) for k, v in data["config"].items()]
    return [
        (f"Credential for {c.resource_type} '{c.resource_id}'", ["PROPERTY", "VALUE"], rows),
        ("Configuration", ["ATTRIBUTE", "VALUE"], config),
    ]


_PEM = "-----BEGIN "


def cell(value: Any, full: bool = False) -> Any:
    """A value as a table shows it: lists joined with commas, dicts as ``k=v`` pairs, and
    a PEM (a CA bundle: dozens of lines) as its fingerprint and subject unless ``full``."""
    if isinstance(value, list | tuple):
        return ", ".join(str(v) for v in value)
    if isinstance(value, dict):
        return ", ".join(f"{k}={v}" for k, v in value.items())
    if isinstance(value, str) and not full and _PEM in value:
        return pem_summary(value)
    return value


def pem_summary(text: str) -> str:
    """``sha256 AB:CD:.. subject CN=..`` per certificate, as ``openssl x509 -fingerprint
    -sha256`` prints it (grouped 8 bytes a word, so a table wraps it between groups).
    cryptography is imported only here: a table without PEMs never pays for it."""
    import base64
    import hashlib
    import re

    out = []
    for label, body in re.findall(r"-----BEGIN ([A-Z0-9 ]+)-----(.*?)-----END \1-----", text, re.S):
        try:
            der = base64.b64decode("".join(body.split()), validate=True)
        except ValueError:
            out.append(f"{label} (not base64)")
            continue
        digest = hashlib.sha256(der).hexdigest().upper()
        pairs = [digest[i : i + 2] for i in range(0, len(digest), 2)]
        groups = " ".join(":".join(pairs[i : i + 8]) for i in range(0, len(pairs), 8))
        subject = _subject(der) if label == "CERTIFICATE" else None
        kind = "" if label == "CERTIFICATE" else f"{label} "
        out.append(f"{kind}sha256 {groups}" + (f" subject {subject}" if subject else ""))
    return "\n".join(out) or text


def _subject(der: bytes) -> str | None:
    try:
        from cryptography import x509

        return x509.load_der_x509_certificate(der).subject.rfc4514_string()
    except ValueError:
        return None


def properties_table(title: str, data: dict[str, Any]) -> Table:
    """One PROPERTY / VALUE row per key; lists comma-separated."""
    return (
        title,
        ["PROPERTY", "VALUE"],
        [(k, cell(v)) for k, v in data.items()],
    )


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=False) + "\n")


def print_data(output: Output, data: Any) -> None:
    """``data`` as JSON or YAML (PyYAML, imported only for ``--output yaml``)."""
    if output is Output.yaml:
        import yaml

        sys.stdout.write(yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
    else:
        print_json(data)
