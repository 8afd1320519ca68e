"""Entra ID access tokens through azure-identity's async credentials.

Why azure-identity (not a hand-written client-credentials POST): it is the
Azure SDKs' own implementation of the secret, certificate (RS256 client
assertion with the x5t thumbprint, audience = the token endpoint), workload
identity and managed identity flows, so the broker authenticates exactly as
the Azure CLI and SDKs do. Its import costs ~0.16 s (on top of aiohttp and
cryptography, measured with ``python -X importtime``), so it is imported on
the first mint, never at daemon start or by the CLI.

Every call builds a fresh credential on the provider's aiohttp session
(the ProviderContext transport, no session of its own): the credential's
in-memory cache is then never what answers, each token is really issued when
asked for (its ``issued_at`` is true), and the cache policy, not the SDK,
decides when to ask again. ``retry_total=0``: one attempt, the cache retries.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aiohttp

from broker.errors import BrokerError, ConnectorExpired, CredentialsRejected, UpstreamError
from broker.model import Connector
from broker.providers.azure.settings import AzureSettings

#: How much of Entra's error description ends up in ours (AADSTS code and first sentence).
_MESSAGE_LIMIT = 300


@dataclass(frozen=True)
class AccessToken:
    value: str
    expires_at: datetime
    #: Where it came from, for messages.
    source: str

    def __repr__(self) -> str:
        return f"AccessToken([HIDDEN], expires_at={self.expires_at.isoformat()})"


def _transport(session: aiohttp.ClientSession, request_timeout: float) -> Any:
    from azure.core.pipeline.transport import AioHttpTransport

    return AioHttpTransport(
        session=session,
        session_owner=False,
        connection_timeout=request_timeout,
        read_timeout=request_timeout,
    )


def _credential(
    settings: AzureSettings, session: aiohttp.ClientSession, request_timeout: float
) -> Any:
    """The azure-identity async credential for the connector's identity."""
    from azure.identity.aio import (
        CertificateCredential,
        ClientSecretCredential,
        DefaultAzureCredential,
        WorkloadIdentityCredential,
    )

    common: dict[str, Any] = {
        "authority": settings.endpoints.authority,
        "transport": _transport(session, request_timeout),
        "retry_total": 0,
    }
    tenant, client = settings.tenant, settings.client_id
    if tenant and client and settings.client_secret:
        return ClientSecretCredential(tenant, client, settings.client_secret, **common)
    if tenant and client and settings.certificate:
        return CertificateCredential(
            tenant, client, certificate_data=settings.certificate.encode(), **common
        )
    if tenant and client and settings.federated_token_file:
        return WorkloadIdentityCredential(
            tenant_id=tenant,
            client_id=client,
            token_file_path=settings.federated_token_file,
            **common,
        )
    # Implicit without AZURE_* service principal variables: managed identity, az login.
    return DefaultAzureCredential(
        exclude_interactive_browser_credential=True,
        exclude_visual_studio_code_credential=True,
        exclude_powershell_credential=True,
        exclude_developer_cli_credential=True,
        **common,
    )


async def get_token(
    connector: Connector,
    settings: AzureSettings,
    scope: str,
    *,
    session: aiohttp.ClientSession,
    now: datetime,
    request_timeout: float,
) -> AccessToken:
    """One fresh token for ``scope`` (a stored access-token connector hands its own)."""
    if settings.token is not None:
        return stored_token(connector, settings.token, now)
    from azure.core.exceptions import AzureError, ClientAuthenticationError

    credential = _credential(settings, session, request_timeout)
    try:
        async with credential:
            token = await credential.get_token(scope)
    except ClientAuthenticationError as exc:
        raise _rejected(exc, settings, scope) from None
    except AzureError as exc:
        raise UpstreamError(
            f"cannot get an Entra token for {scope} from {settings.endpoints.authority}: "
            f"{_brief(exc)}",
            retryable=True,
        ) from None
    except ValueError as exc:  # azure-identity's checks of tenant, scope, certificate
        raise CredentialsRejected(f"Entra token request refused locally: {exc}") from None
    return AccessToken(
        token.token, datetime.fromtimestamp(token.expires_on, UTC), f"Entra ({scope})"
    )


def stored_token(connector: Connector, token: str, now: datetime) -> AccessToken:
    expires_at = connector.expires_at
    if expires_at is None:
        raise CredentialsRejected(
            f"connector '{connector.name}' stores an access token without expires_at"
        )
    if expires_at <= now:
        raise ConnectorExpired(
            f"connector '{connector.name}' access token expired at {expires_at.isoformat()}; "
            "update it with a fresh token"
        )
    return AccessToken(token, expires_at, f"connector '{connector.name}' token")


def _rejected(exc: Any, settings: AzureSettings, scope: str) -> BrokerError:
    """Entra said no: a bad secret or assertion is the connector's fault (not retryable);
    a 5xx or a throttle may pass."""
    status = getattr(getattr(exc, "response", None), "status_code", None)
    message = _brief(exc)
    if isinstance(status, int) and (status >= 500 or status == 429):
        return UpstreamError(f"Entra ID answered {status}: {message}", retryable=True)
    if status is None and "Connection" in message:
        return UpstreamError(f"cannot reach Entra ID: {message}", retryable=True)
    who = settings.client_id or "the daemon's identity"
    return CredentialsRejected(
        f"Entra ID refused a token for {scope} to client '{who}' of tenant "
        f"'{settings.tenant or 'default'}': {message}"
    )


def _brief(exc: BaseException) -> str:
    text = " ".join(str(getattr(exc, "message", None) or exc).split())
    return text[:_MESSAGE_LIMIT] or type(exc).__name__
