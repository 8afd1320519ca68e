"""The ``database`` setting: an SQLite path or a ``postgresql://`` URL, and its safe form.

A PostgreSQL URL may carry a password (``postgresql://user:PASSWORD@host/db``,
or ``?password=``). Everything the daemon shows or logs about the store goes
through :func:`redact`, so the password never reaches a log line, ``broker
config show`` or ``broker status``. The password is better kept out of the
URL altogether: libpq's ``PGPASSWORD`` variable and ``~/.pgpass`` file work too
(see the README).
"""

from __future__ import annotations

from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

SCHEMES = ("postgresql://", "postgres://")
#: What stands in for a password in everything shown.
MASK = "***"
#: Query parameters that are secrets themselves (libpq names).
_SECRET_PARAMS = frozenset({"password", "sslpassword"})


def is_postgres_url(value: str) -> bool:
    return value.strip().lower().startswith(SCHEMES)


def redact(url: str) -> str:
    """The URL with its password (in the user part or the query) replaced by ``***``."""
    parts = urlsplit(url)
    netloc = parts.netloc
    userinfo, at, hosts = netloc.rpartition("@")
    if at and ":" in userinfo:
        user = userinfo.split(":", 1)[0]
        netloc = f"{user}:{MASK}@{hosts}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        if any(k in _SECRET_PARAMS for k, _ in pairs):
            query = urlencode([(k, MASK if k in _SECRET_PARAMS else v) for k, v in pairs])
            query = query.replace("%2A%2A%2A", MASK)
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def password_of(url: str) -> str | None:
    """The password the URL carries, if any (to scrub it from driver error text)."""
    parts = urlsplit(url)
    userinfo, at, _ = parts.netloc.rpartition("@")
    if at and ":" in userinfo:
        return userinfo.split(":", 1)[1] or None
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if key == "password" and value:
            return value
    return None


def scrub(text: str, url: str) -> str:
    """``text`` with the URL's password (raw or as it appears percent-encoded) masked."""
    secret = password_of(url)
    if secret:
        for form in sorted({secret, unquote(secret)}, key=len, reverse=True):
            text = text.replace(form, MASK)
    return text
