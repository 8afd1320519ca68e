"""Google REST calls: base URLs (overridable on the daemon), paging, and error mapping.

Every Google API base URL can be moved with a daemon environment variable
(private endpoints, VPC-SC, local test servers): ``BROKER_GCP_STORAGE_URL``,
``BROKER_GCP_CONTAINER_URL``, ``BROKER_GCP_ARTIFACTREGISTRY_URL``,
``BROKER_GCP_IAMCREDENTIALS_URL``, ``BROKER_GCP_RESOURCEMANAGER_URL`` and
``BROKER_GCP_METADATA_HOST``
(``host[:port]`` of the GCE metadata server; falls back to ``GCE_METADATA_HOST``).
Token endpoints are not here: they come from each key file's ``token_uri``.

Google's errors are turned into typed ones; a 403 names the missing
permission when Google's message or ``ErrorInfo`` carries it.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from broker.errors import (
    BrokerError,
    CredentialsRejected,
    FailedPrecondition,
    NotFound,
    PermissionDenied,
    UpstreamError,
)
from broker.providers.http import TRANSPORT_ERRORS, transport_error

#: Bound on pages followed in one listing (a server repeating tokens must not loop forever).
MAX_PAGES = 1000
#: How much of Google's error message ends up in ours.
_MESSAGE_LIMIT = 300

_ENV_URLS = {
    "iamcredentials": ("BROKER_GCP_IAMCREDENTIALS_URL", "https://iamcredentials.googleapis.com"),
    "storage": ("BROKER_GCP_STORAGE_URL", "https://storage.googleapis.com"),
    "container": ("BROKER_GCP_CONTAINER_URL", "https://container.googleapis.com"),
    "artifactregistry": (
        "BROKER_GCP_ARTIFACTREGISTRY_URL",
        "https://artifactregistry.googleapis.com",
    ),
    "resourcemanager": (
        "BROKER_GCP_RESOURCEMANAGER_URL",
        "https://cloudresourcemanager.googleapis.com",
    ),
}
_METADATA_VARS = ("BROKER_GCP_METADATA_HOST", "GCE_METADATA_HOST", "GCE_METADATA_ROOT")
_HOST_PORT = re.compile(r"^[A-Za-z0-9.-]+(?::[0-9]{1,5})?$|^\[[0-9A-Fa-f:.]+\](?::[0-9]{1,5})?$")

_PERMISSION_PATTERNS = (
    re.compile(r"Permission '([\w.]+)' denied"),
    re.compile(r'Required "([\w.]+)" permission'),
    re.compile(r"does not have ([a-z]+\.[\w.]+) access"),
)


@dataclass(frozen=True)
class Endpoints:
    """Base URLs of the Google APIs the provider calls (no trailing slash)."""

    iamcredentials: str
    storage: str
    container: str
    artifactregistry: str
    resourcemanager: str
    metadata_host: str

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Endpoints:
        """Read the overrides; a malformed one is a daemon setup error naming the variable."""
        urls: dict[str, str] = {}
        for key, (var, default) in _ENV_URLS.items():
            value = env.get(var, "").strip() or default
            parts = urlsplit(value)
            if parts.scheme not in ("http", "https") or not parts.netloc or parts.query:
                raise FailedPrecondition(
                    f"daemon setting {var} must be an http(s) base URL, got '{value[:80]}'"
                )
            urls[key] = value.rstrip("/")
        host = next((env[v].strip() for v in _METADATA_VARS if env.get(v, "").strip()), None)
        host = host or "metadata.google.internal"
        if not _HOST_PORT.match(host):
            raise FailedPrecondition(
                f"daemon setting BROKER_GCP_METADATA_HOST must be host[:port], got '{host[:80]}'"
            )
        return cls(metadata_host=host, **urls)


def google_message(body: bytes) -> tuple[str, str | None, str | None]:
    """(message, permission, reason) from a Google error document, as far as it has them."""
    try:
        doc = json.loads(body)
    except ValueError:
        doc = None
    message, permission, reason = "", None, None
    error = doc.get("error") if isinstance(doc, dict) else None
    if isinstance(error, dict):
        message = str(error.get("message") or "")
        for detail in error.get("details") or ():
            if not isinstance(detail, dict):
                continue
            reason = reason or (str(detail["reason"]) if "reason" in detail else None)
            meta = detail.get("metadata")
            if isinstance(meta, dict) and isinstance(meta.get("permission"), str):
                permission = meta["permission"]
    elif isinstance(error, str):  # OAuth2 style: {"error": "invalid_grant", ...}
        description = doc.get("error_description") if isinstance(doc, dict) else None
        message = f"{error}: {description}" if description else error
        reason = error
    if permission is None:
        for pattern in _PERMISSION_PATTERNS:
            match = pattern.search(message)
            if match:
                permission = match.group(1)
                break
    message = " ".join(message.split())
    if len(message) > _MESSAGE_LIMIT:
        message = message[: _MESSAGE_LIMIT - 3] + "..."
    return message, permission, reason


def api_error(status: int, body: bytes, *, action: str, resource: str) -> BrokerError:
    """The typed error for a failed Google API call: ``action`` on ``resource``."""
    message, permission, reason = google_message(body)
    said = f": {message}" if message else ""
    if status == 401:
        return CredentialsRejected(
            f"Google rejected the credentials while trying to {action} ({resource}){said}"
        )
    if status == 403:
        if reason == "SERVICE_DISABLED" or "has not been used" in message:
            return PermissionDenied(f"cannot {action}: the API is disabled for {resource}{said}")
        if permission:
            return PermissionDenied(f"credentials lack permission {permission} on {resource}")
        return PermissionDenied(f"credentials may not {action} ({resource}){said}")
    if status == 404:
        return NotFound(f"{resource} does not exist or is not visible to these credentials")
    retry = status == 429 or status >= 500
    return UpstreamError(
        f"Google answered HTTP {status} when trying to {action} ({resource}){said}",
        retryable=retry,
    )


class GoogleApi:
    """Authenticated GETs against Google REST APIs with one access token."""

    def __init__(self, session: aiohttp.ClientSession, token: str, timeout: float) -> None:
        self._session = session
        self._headers = {"Authorization": f"Bearer {token}"}
        self._timeout = timeout

    async def get(
        self,
        url: str,
        *,
        action: str,
        resource: str,
        params: Mapping[str, str] | None = None,
    ) -> dict[str, Any]:
        """GET one JSON object; errors name ``action`` and ``resource``."""
        try:
            async with self._session.get(url, headers=self._headers, params=params) as resp:
                status, body = resp.status, await resp.read()
        except TRANSPORT_ERRORS as exc:
            raise transport_error(
                exc, service="Google API", url=url, timeout=self._timeout
            ) from None
        if status >= 400:
            raise api_error(status, body, action=action, resource=resource)
        try:
            doc = json.loads(body)
        except ValueError:
            doc = None
        if not isinstance(doc, dict):
            raise UpstreamError(
                f"Google API at {url} answered with no JSON object when trying to {action}",
                retryable=True,
            )
        return doc

    async def pages(
        self,
        url: str,
        items: str,
        *,
        action: str,
        resource: str,
        params: Mapping[str, str] | None = None,
    ) -> AsyncIterator[dict[str, Any]]:
        """Every item of a paginated list (``pageToken`` / ``nextPageToken``)."""
        query = dict(params or {})
        seen: set[str] = set()
        for _ in range(MAX_PAGES):
            doc = await self.get(url, action=action, resource=resource, params=query)
            for item in doc.get(items) or ():
                if isinstance(item, dict):
                    yield item
            token = doc.get("nextPageToken")
            if not token:
                return
            if not isinstance(token, str) or token in seen:
                raise UpstreamError(
                    f"Google API at {url} repeated a page token when trying to {action}",
                    retryable=False,
                )
            seen.add(token)
            query["pageToken"] = token
        raise UpstreamError(f"more than {MAX_PAGES} pages when trying to {action}")
