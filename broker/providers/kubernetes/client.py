"""Talking to one API server with the connector's own credentials, typed errors.

Verification is ``GET /version``; minting (:mod:`.tokens`) a TokenRequest
POST. Both use aiohttp through :func:`send`: one HTTP stack for the provider.
Each is one request, sent through the provider context's transport
(:class:`broker.providers.http.Transport`) like every other provider's, so
tests can answer it in process. TLS comes from the settings as for every
HTTP provider (:func:`broker.providers.http.ssl_context`): ``insecure``
really turns verification off; otherwise only ``certificate_authority`` is
trusted when it is set, the system store when not; a client key pair lives in
0600 files only while the context loads it. Like kubectl, the request goes
through the proxy the daemon's ``HTTPS_PROXY`` / ``NO_PROXY`` name (read from
the injected environment). One attempt, bounded by the request timeout: the
cache owns retries.
"""

from __future__ import annotations

import base64
import errno
import json
from collections.abc import Mapping
from typing import Any

import aiohttp

from broker.errors import BrokerError, CredentialsRejected, UpstreamError
from broker.model import HIDDEN
from broker.providers.http import (
    NETWORK,
    TRANSPORT_ERRORS,
    Transport,
    client_session,
    env_proxy,
    transport_error,
)
from broker.providers.kubernetes.settings import ClusterSettings

#: Statuses worth retrying: the server is there but busy or restarting.
_RETRYABLE_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
#: Bound on how much of a server's Status message is quoted back to the user.
_MAX_QUOTED = 200
#: Bound on the answer read: a version document or a Status object is a few hundred bytes.
_MAX_BODY = 64 * 1024
#: The path every Kubernetes API server answers for any authenticated user.
VERSION_PATH = "/version"


def authorization(settings: ClusterSettings) -> dict[str, str]:
    """The ``Authorization`` header of the settings' token or basic credentials (none for a
    client certificate alone)."""
    if settings.token:
        return {"Authorization": f"Bearer {settings.token}"}
    if settings.username is not None and settings.password is not None:
        pair = f"{settings.username}:{settings.password}".encode()
        return {"Authorization": "Basic " + base64.b64encode(pair).decode()}
    return {}


def quoted_message(body: bytes, settings: ClusterSettings) -> str:
    """The server's Status message, shortened, with any echoed secret blanked."""
    try:
        doc: Any = json.loads(body or b"")
        message = str(doc.get("message", "")) if isinstance(doc, dict) else ""
    except (ValueError, TypeError):
        message = ""
    for secret in (settings.token, settings.password):
        if secret:
            message = message.replace(secret, HIDDEN)
    return message[:_MAX_QUOTED]


def status_error(
    status: int,
    reason: str | None,
    body: bytes,
    settings: ClusterSettings,
    path: str,
    method: str = "GET",
) -> BrokerError:
    """A typed error for an HTTP error answer to ``METHOD path``."""
    where = f"cluster '{settings.cluster_name}' at {settings.server}"
    answer = f"HTTP {status} {reason}" if reason else f"HTTP {status}"
    detail = quoted_message(body, settings)
    if detail.lower() == str(reason or "").lower():
        detail = ""  # "Unauthorized: Unauthorized" says nothing twice
    suffix = f": {detail}" if detail else ""
    if status in (401, 403):
        return CredentialsRejected(
            f"{where} refused the credentials ({answer} for {method} {path}){suffix}"
        )
    if status == 404:
        suffix += "; is the server URL that of a Kubernetes API server?"
    return UpstreamError(
        f"{where} answered {answer} to {method} {path}{suffix}",
        retryable=status in _RETRYABLE_STATUSES,
    )


def _hung_up(exc: BaseException) -> bool:
    """The server dropped an established connection without an HTTP answer.

    Under TLS 1.3 that is how a server refusing the client certificate looks:
    the handshake completes on the client's side, then the server hangs up
    (a plain disconnect or a reset, with no alert the client can read).
    """
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return True
    return (
        isinstance(exc, aiohttp.ClientOSError)
        and not isinstance(exc, aiohttp.ClientConnectorError)
        and exc.errno == errno.ECONNRESET
    )


async def send(
    settings: ClusterSettings,
    method: str,
    path: str,
    request_timeout: float,
    *,
    body: Mapping[str, Any] | None = None,
    transport: Transport = NETWORK,
    env: Mapping[str, str] | None = None,
) -> tuple[int, str | None, bytes]:
    """One request to the API server with the settings' own credentials:
    ``(status, reason, body)``; transport failures as typed errors."""
    where = f"Kubernetes cluster '{settings.cluster_name}'"
    url = settings.server + path
    headers = {"Accept": "application/json", **authorization(settings)}
    try:
        async with (
            client_session(
                timeout=request_timeout,
                certificate_authority=None if settings.insecure else settings.certificate_authority,
                insecure=settings.insecure,
                client_certificate=settings.client_certificate,
                client_key=settings.client_key,
                transport=transport,
            ) as http,
            http.request(
                method, url, headers=headers, json=body, proxy=env_proxy(url, env or {})
            ) as resp,
        ):
            return resp.status, resp.reason, await resp.content.read(_MAX_BODY)
    except TRANSPORT_ERRORS as exc:
        if _hung_up(exc) and settings.client_certificate:
            raise UpstreamError(
                f"{where} at {settings.server} closed the connection without answering; "
                "if it checks client certificates, it did not accept client_certificate "
                "(is it signed by a CA the cluster trusts?)",
                retryable=True,
            ) from None
        raise transport_error(
            exc, service=where, url=settings.server, timeout=request_timeout
        ) from None


async def fetch_version(
    settings: ClusterSettings,
    request_timeout: float,
    *,
    transport: Transport = NETWORK,
    env: Mapping[str, str] | None = None,
) -> str:
    """GET /version with the settings' credentials; return the server's gitVersion."""
    where = f"Kubernetes cluster '{settings.cluster_name}'"
    status, reason, body = await send(
        settings, "GET", VERSION_PATH, request_timeout, transport=transport, env=env
    )
    if status >= 400:
        raise status_error(status, reason, body, settings, VERSION_PATH)
    try:
        doc = json.loads(body)
    except ValueError:
        doc = None
    version = doc.get("gitVersion") if isinstance(doc, dict) else None
    if not isinstance(version, str):
        # Not a version document: something else listens there.
        raise UpstreamError(
            f"{where} at {settings.server} did not answer GET /version like a Kubernetes "
            "API server; check the server URL",
            field="server",
            retryable=False,
        )
    return version
