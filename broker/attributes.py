"""Parsing and checking configuration attribute values against their specs.

Input arrives as text (CLI ``KEY=VALUE``, gRPC string maps); this turns it
into typed values once, at the edge, with errors that name the attribute and
never echo a secret value.
"""

from __future__ import annotations

import base64
import binascii
import json
from urllib.parse import urlparse

from broker.errors import InvalidArgument
from broker.model import AttributeSpec, AttrKind, Secret, Value

_TRUE = {"true", "yes", "1", "on"}
_FALSE = {"false", "no", "0", "off"}

#: Bound on one attribute's size: key files and CA bundles fit easily; garbage does not.
MAX_ATTRIBUTE_BYTES = 256 * 1024


def parse_value(spec: AttributeSpec, raw: Value) -> Value:
    """Parse ``raw`` as ``spec`` says; raise InvalidArgument naming the attribute.

    A secret attribute's text comes back as :class:`Secret` (redacted in any repr).
    """
    value = _parse_value(spec, raw)
    return Secret(value) if spec.secret and isinstance(value, str) else value


def _parse_value(spec: AttributeSpec, raw: Value) -> Value:
    name = spec.name
    if isinstance(raw, str) and len(raw.encode()) > MAX_ATTRIBUTE_BYTES:
        raise InvalidArgument(
            f"attribute '{name}' is larger than {MAX_ATTRIBUTE_BYTES} bytes", field=name
        )
    kind = spec.kind
    if kind is AttrKind.BOOL:
        if isinstance(raw, bool):
            return raw
        text = str(raw).strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
        raise InvalidArgument(f"attribute '{name}' must be true or false", field=name)
    if kind is AttrKind.INT:
        if isinstance(raw, bool):
            raise InvalidArgument(f"attribute '{name}' must be a whole number", field=name)
        try:
            return int(raw)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            raise InvalidArgument(
                f"attribute '{name}' must be a whole number", field=name
            ) from None
    if kind is AttrKind.LIST:
        return _parse_list(name, raw)
    if not isinstance(raw, str):
        raise InvalidArgument(f"attribute '{name}' must be text", field=name)
    if kind is AttrKind.JSON:
        try:
            json.loads(raw)
        except ValueError as exc:
            # Never echo the document: key files are secrets.
            raise InvalidArgument(
                f"attribute '{name}' is not valid JSON (line {getattr(exc, 'lineno', '?')})",
                field=name,
            ) from None
        return raw
    if kind is AttrKind.PEM:
        return normalize_pem(name, raw)
    if kind is AttrKind.URL:
        parsed = urlparse(raw.strip())
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise InvalidArgument(
                f"attribute '{name}' must be an http(s) URL, got '{raw}'", field=name
            )
        return raw.strip()
    if raw == "" and spec.required:
        raise InvalidArgument(f"attribute '{name}' must not be empty", field=name)
    return raw


def _parse_list(name: str, raw: Value) -> list[str]:
    if isinstance(raw, list):
        items = raw
    elif isinstance(raw, str):
        text = raw.strip()
        if text.startswith("["):
            try:
                items = json.loads(text)
            except ValueError:
                raise InvalidArgument(
                    f"attribute '{name}' must be a JSON list or comma-separated text", field=name
                ) from None
            if not isinstance(items, list):
                raise InvalidArgument(f"attribute '{name}' must be a list", field=name)
        else:
            items = [part.strip() for part in text.split(",") if part.strip()]
    else:
        raise InvalidArgument(f"attribute '{name}' must be a list", field=name)
    if not all(isinstance(i, str) and i for i in items):
        raise InvalidArgument(f"attribute '{name}' must be a list of non-empty text", field=name)
    return [str(i) for i in items]


def normalize_pem(name: str, raw: str) -> str:
    """Accept PEM text or base64-encoded PEM; return PEM text."""
    text = raw.strip()
    if "-----BEGIN " not in text:
        try:
            decoded = base64.b64decode(text, validate=True).decode("ascii")
        except (binascii.Error, UnicodeDecodeError, ValueError):
            raise InvalidArgument(
                f"attribute '{name}' must be PEM text or base64-encoded PEM", field=name
            ) from None
        text = decoded.strip()
        if "-----BEGIN " not in text:
            raise InvalidArgument(
                f"attribute '{name}' must be PEM text or base64-encoded PEM", field=name
            )
    if "-----END " not in text:
        raise InvalidArgument(f"attribute '{name}' holds truncated PEM (no END line)", field=name)
    return text + "\n"


def render_value(value: Value) -> str:
    """The text form of a typed value (gRPC maps carry text)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return json.dumps(value)
    return str(value)
