"""Talking to one API server with kubernetes-asyncio, and turning failures into typed errors.

The client is configured in memory from :class:`ClusterSettings`, never from
a kubeconfig file. kubernetes-asyncio (like Python's ssl module) only reads
CA bundles and client key pairs from files, so they are written to a private
(0700) temp directory as 0600 files, read once while the client is built,
and removed before any request is sent. ``insecure`` really turns TLS
verification off; otherwise only ``certificate_authority`` is trusted when
it is set, the system store when not. Like kubectl, the client honours the
``HTTPS_PROXY``/``NO_PROXY`` environment.
"""

from __future__ import annotations

import base64
import errno
import json
import os
import tempfile
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import aiohttp
from kubernetes_asyncio.client import ApiClient, Configuration, VersionApi
from kubernetes_asyncio.client.exceptions import ApiException

from broker.errors import BrokerError, CredentialsRejected, UpstreamError
from broker.model import HIDDEN
from broker.providers.http import TRANSPORT_ERRORS, transport_error
from broker.providers.kubernetes.settings import ClusterSettings

#: Statuses worth retrying: the server is there but busy or restarting.
_RETRYABLE_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
#: Bound on how much of a server's Status message is quoted back to the user.
_MAX_QUOTED = 200


def _write_private(path: Path, text: str) -> str:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    return str(path)


@contextmanager
def _tls_files(settings: ClusterSettings) -> Iterator[dict[str, str]]:
    """Write the CA and client pair to 0600 files that live only while the client is built."""
    with tempfile.TemporaryDirectory(prefix="broker-kube-") as tmp:
        files: dict[str, str] = {}
        if settings.certificate_authority and not settings.insecure:
            files["ca"] = _write_private(Path(tmp, "ca.pem"), settings.certificate_authority)
        if settings.client_certificate and settings.client_key:
            files["cert"] = _write_private(Path(tmp, "client.pem"), settings.client_certificate)
            files["key"] = _write_private(Path(tmp, "client-key.pem"), settings.client_key)
        yield files


def build_configuration(settings: ClusterSettings, files: dict[str, str]) -> Configuration:
    """A kubernetes-asyncio Configuration for the settings (token or basic auth included)."""
    configuration = Configuration(host=settings.server)
    configuration.verify_ssl = not settings.insecure
    configuration.ssl_ca_cert = files.get("ca")
    configuration.cert_file = files.get("cert")
    configuration.key_file = files.get("key")
    if settings.token:
        configuration.api_key = {"BearerToken": settings.token}
        configuration.api_key_prefix = {"BearerToken": "Bearer"}
    elif settings.username is not None and settings.password is not None:
        # kubernetes-asyncio sends every credential through the BearerToken slot.
        pair = f"{settings.username}:{settings.password}".encode()
        configuration.api_key = {"BearerToken": base64.b64encode(pair).decode()}
        configuration.api_key_prefix = {"BearerToken": "Basic"}
    return configuration


@asynccontextmanager
async def api_client(settings: ClusterSettings) -> AsyncIterator[ApiClient]:
    """An ApiClient for the cluster; closed (its connections released) on exit."""
    with _tls_files(settings) as files:
        # The constructor loads the CA and key pair into its SSL context right away.
        client = ApiClient(build_configuration(settings, files))
    try:
        yield client
    finally:
        await client.close()


def _quoted_message(exc: ApiException, settings: ClusterSettings) -> str:
    """The server's Status message, shortened, with any echoed secret blanked."""
    try:
        body: Any = json.loads(exc.body or "")
        message = str(body.get("message", "")) if isinstance(body, dict) else ""
    except (ValueError, TypeError):
        message = ""
    for secret in (settings.token, settings.password):
        if secret:
            message = message.replace(secret, HIDDEN)
    return message[:_MAX_QUOTED]


def status_error(exc: ApiException, settings: ClusterSettings, path: str) -> BrokerError:
    """A typed error for an HTTP error answer to ``GET path``."""
    where = f"cluster '{settings.cluster_name}' at {settings.server}"
    status = int(exc.status or 0)
    answer = f"HTTP {status} {exc.reason}" if exc.reason else f"HTTP {status}"
    detail = _quoted_message(exc, settings)
    if detail.lower() == str(exc.reason or "").lower():
        detail = ""  # "Unauthorized: Unauthorized" says nothing twice
    suffix = f": {detail}" if detail else ""
    if status in (401, 403):
        return CredentialsRejected(
            f"{where} refused the credentials ({answer} for GET {path}){suffix}"
        )
    if status == 404:
        suffix += "; is the server URL that of a Kubernetes API server?"
    return UpstreamError(
        f"{where} answered {answer} to GET {path}{suffix}",
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


async def fetch_version(settings: ClusterSettings, request_timeout: float) -> str:
    """GET /version with the settings' credentials; return the server's gitVersion."""
    where = f"Kubernetes cluster '{settings.cluster_name}'"
    try:
        async with api_client(settings) as client:
            info = await VersionApi(client).get_code(_request_timeout=request_timeout)
    except ApiException as exc:
        raise status_error(exc, settings, "/version") from None
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
    except (ValueError, TypeError, AttributeError):
        # The answer was not a VersionInfo object: something else listens there.
        raise UpstreamError(
            f"{where} at {settings.server} did not answer GET /version like a Kubernetes "
            "API server; check the server URL",
            field="server",
            retryable=False,
        ) from None
    return str(getattr(info, "git_version", "") or "")
