"""Blob containers through azure-storage-blob's aio client: listing, and SAS for one container.

A container's client credential is a user-delegation SAS: the broker asks the
account for a user-delegation key with its Entra token, then signs a SAS for
that one container (read, add, create, write, delete, list) that expires with
the connector's expiration, and never later than the key. This is Azure's
counterpart of an S3 session policy: the SAS reaches no other container.

azure-storage-blob costs ~0.10-0.14 s to import (``python -X importtime``, on
top of azure-identity); it is imported on the first blob call only.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import Any

import aiohttp

from broker.errors import (
    BrokerError,
    CredentialsRejected,
    NotFound,
    PermissionDenied,
    UpstreamError,
)
from broker.providers.azure.entra import AccessToken
from broker.providers.azure.ids import BlobRef

#: Permissions a container SAS grants: everything on the blobs of that container.
SAS_PERMISSIONS = "racwdl"
#: The key (and so the SAS) starts a little in the past: storage servers' clocks drift.
CLOCK_SKEW = timedelta(minutes=5)
_MESSAGE_LIMIT = 300


class _StaticCredential:
    """An AsyncTokenCredential that answers with one token the broker already holds."""

    def __init__(self, token: AccessToken) -> None:
        self._token = token

    async def get_token(self, *scopes: str, **kwargs: Any) -> Any:
        from azure.core.credentials import AccessToken as SdkToken

        return SdkToken(self._token.value, int(self._token.expires_at.timestamp()))

    async def close(self) -> None:
        """Nothing to release."""

    async def __aenter__(self) -> _StaticCredential:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None = None,
        exc_value: BaseException | None = None,
        traceback: TracebackType | None = None,
    ) -> None:
        """Nothing to release."""


def _client(
    account_url: str, token: AccessToken, session: aiohttp.ClientSession, timeout: float
) -> Any:
    from azure.core.pipeline.transport import AioHttpTransport
    from azure.storage.blob.aio import BlobServiceClient

    transport = AioHttpTransport(
        session=session, session_owner=False, connection_timeout=timeout, read_timeout=timeout
    )
    return BlobServiceClient(
        account_url, credential=_StaticCredential(token), transport=transport, retry_total=0
    )


def _error(exc: BaseException, action: str) -> BrokerError:
    from azure.core.exceptions import ClientAuthenticationError, HttpResponseError

    status = getattr(exc, "status_code", None)
    code = getattr(exc, "error_code", None) or ""
    text = f"cannot {action}: " + (f"{status} {code} " if status else "")
    text += " ".join(str(getattr(exc, "reason", "") or "").split())[:_MESSAGE_LIMIT]
    if isinstance(exc, ClientAuthenticationError) or status == 401:
        return CredentialsRejected(text)
    if status == 403:
        return PermissionDenied(text)
    if status == 404:
        return NotFound(text)
    if isinstance(exc, HttpResponseError):
        return UpstreamError(text, retryable=status is None or status >= 500 or status == 429)
    return UpstreamError(f"cannot {action}: {type(exc).__name__}: {str(exc)[:200]}", retryable=True)


async def list_containers(
    account_url: str,
    account: str,
    token: AccessToken,
    session: aiohttp.ClientSession,
    request_timeout: float,
) -> list[str]:
    from azure.core.exceptions import AzureError

    client = _client(account_url, token, session, request_timeout)
    try:
        async with client:
            return sorted([f"az://{account}/{c.name}" async for c in client.list_containers()])
    except AzureError as exc:
        raise _error(exc, f"list the containers of storage account '{account}'") from None


async def check_container(
    account_url: str,
    ref: BlobRef,
    token: AccessToken,
    session: aiohttp.ClientSession,
    request_timeout: float,
) -> str:
    from azure.core.exceptions import AzureError

    client = _client(account_url, token, session, request_timeout)
    try:
        async with client:
            await client.get_container_client(ref.container).get_container_properties()
    except AzureError as exc:
        raise _error(exc, f"read container '{ref.canonical}'") from None
    return ref.canonical


@dataclass(frozen=True)
class ContainerSas:
    token: str
    expires_at: datetime
    starts_at: datetime

    def __repr__(self) -> str:
        return f"ContainerSas([HIDDEN], expires_at={self.expires_at.isoformat()})"


async def container_sas(
    account_url: str,
    ref: BlobRef,
    token: AccessToken,
    lifetime: int,
    *,
    now: datetime,
    session: aiohttp.ClientSession,
    request_timeout: float,
) -> ContainerSas:
    """A user-delegation SAS for the one container ``ref`` names, ``lifetime`` seconds long."""
    from azure.core.exceptions import AzureError
    from azure.storage.blob import ContainerSasPermissions, generate_container_sas

    start = (now - CLOCK_SKEW).replace(microsecond=0)
    expiry = (now + timedelta(seconds=lifetime)).replace(microsecond=0)
    client = _client(account_url, token, session, request_timeout)
    try:
        async with client:
            key = await client.get_user_delegation_key(start, expiry)
    except AzureError as exc:
        raise _error(exc, f"get a user delegation key of storage account '{ref.account}'") from None
    key_expiry = _parse_time(getattr(key, "signed_expiry", None))
    if key_expiry is not None and key_expiry < expiry:
        expiry = key_expiry  # the storage service shortened the key: the SAS dies with it
    sas = generate_container_sas(
        ref.account,
        ref.container,
        user_delegation_key=key,
        permission=ContainerSasPermissions.from_string(SAS_PERMISSIONS),
        start=start,
        expiry=expiry,
        protocol="https,http" if account_url.startswith("http://") else "https",
    )
    return ContainerSas(sas, expiry, start)


def _parse_time(text: object) -> datetime | None:
    if not isinstance(text, str) or not text:
        return None
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
