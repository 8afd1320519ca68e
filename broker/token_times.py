"""What a stored credential says about its own lifetime.

A connector's stored credential (a kubernetes bearer token, a registry
password, an OAuth2 token) is handed to clients as it is. Its expiry is the
connector's ``expires_at`` where the user gave one; a JWT also carries its
own ``exp`` (when it dies) and ``iat`` (when it was issued). Those claims are
read without verifying the signature: they only ever make the broker stop
serving a token *earlier*, never later, and a forged claim harms nobody but
the token's holder. Anything that is not a JWT says nothing.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from datetime import UTC, datetime

#: Longer values are not looked at (a JWT in a header stays well below this).
_MAX_TOKEN = 64 * 1024


def jwt_times(token: str) -> tuple[datetime | None, datetime | None]:
    """``(iat, exp)`` of a JWT, either None when absent; ``(None, None)`` for a non-JWT."""
    if len(token) > _MAX_TOKEN or token.count(".") != 2:
        return None, None
    payload = token.split(".")[1]
    try:
        raw = base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
        claims = json.loads(raw)
    except (binascii.Error, ValueError):
        return None, None
    if not isinstance(claims, dict):
        return None, None
    return _epoch(claims.get("iat")), _epoch(claims.get("exp"))


def _epoch(value: object) -> datetime | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    try:
        return datetime.fromtimestamp(value, UTC)
    except (OverflowError, OSError, ValueError):
        return None


def stored_window(
    token: str, expires_at: datetime | None
) -> tuple[datetime | None, datetime | None]:
    """``(issued_at, expires_at)`` for a stored credential handed through as is.

    The expiry is the earlier of the connector's ``expires_at`` and a JWT's
    ``exp``. The issue time is the JWT's ``iat`` when its ``exp`` is the expiry
    (the token's own lifetime is then known); otherwise nobody declared it
    (None), and the whole margin of the credential's kind applies.
    """
    iat, exp = jwt_times(token)
    if exp is None or (expires_at is not None and expires_at < exp):
        return None, expires_at
    return iat, exp
