"""HTTP plumbing shared by providers: TLS settings from connector attributes, error mapping.

Private registries, Kubernetes API servers and local emulators often use
their own CA, so every provider that speaks HTTP takes the same two
attributes: ``certificate_authority`` (PEM; becomes the *only* trust root,
as in a kubeconfig) and ``insecure`` (skip verification entirely — honoured,
never silently ignored). Failures are turned into typed errors that name the
service and URL and tell the user which attribute fixes a TLS problem.

Where the connections go is the one I/O seam: :class:`Transport`, handed to
every provider in its ``ProviderContext``. The default opens TCP (and TLS)
connections; :class:`broker.providers.testing.InProcessTransport` hands each
request to an aiohttp application in the same process instead (httpx's
``MockTransport`` idea), so provider tests need no server, port or certificate.
"""

from __future__ import annotations

import os
import ssl
import tempfile
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp

from broker.errors import BrokerError, InvalidArgument, UpstreamError

#: What a failed HTTP call can raise below the response level.
TRANSPORT_ERRORS: tuple[type[BaseException], ...] = (aiohttp.ClientError, TimeoutError, OSError)

_TLS_HINT = (
    "set certificate_authority to the PEM of the CA that signed its certificate, "
    "or insecure=true to skip TLS verification"
)


def ssl_context(
    *,
    certificate_authority: str | None = None,
    insecure: bool = False,
    client_certificate: str | None = None,
    client_key: str | None = None,
) -> ssl.SSLContext:
    """A client TLS context from connector attributes.

    With ``certificate_authority`` only that CA is trusted (the system store
    is not loaded), so a connector pinned to its private CA cannot be fooled
    by a publicly trusted certificate. ``insecure`` disables hostname and
    chain checks. ``client_certificate``/``client_key`` (PEM) enable mTLS.
    """
    if certificate_authority:
        try:
            context = ssl.create_default_context(cadata=certificate_authority)
        except (ssl.SSLError, ValueError):
            raise InvalidArgument(
                "attribute 'certificate_authority' holds no usable CA certificate",
                field="certificate_authority",
            ) from None
    else:
        context = ssl.create_default_context()
    if insecure:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if client_certificate or client_key:
        _load_client_pair(context, client_certificate, client_key)
    return context


def _load_client_pair(context: ssl.SSLContext, cert_pem: str | None, key_pem: str | None) -> None:
    """Load a PEM client certificate and key.

    Python's ssl module only loads key pairs from files, so they are written to
    a private (0700) temp dir as 0600 files and removed at once.
    """
    if not cert_pem or not key_pem:
        missing = "client_key" if cert_pem else "client_certificate"
        raise InvalidArgument(
            f"attribute '{missing}' is required with a client certificate", field=missing
        )
    with tempfile.TemporaryDirectory(prefix="broker-tls-") as tmp:
        cert_path, key_path = Path(tmp, "cert.pem"), Path(tmp, "key.pem")
        for path, text in ((cert_path, cert_pem), (key_path, key_pem)):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as handle:
                handle.write(text)
        try:
            context.load_cert_chain(cert_path, key_path)
        except (ssl.SSLError, ValueError):
            # Never echo the key; say which pair is wrong.
            raise InvalidArgument(
                "attributes 'client_certificate' and 'client_key' are not a matching PEM "
                "certificate and private key",
                field="client_certificate",
            ) from None


class Transport:
    """Where providers' HTTP connections go: TCP and TLS to the network.

    Subclasses replace :meth:`connector` (tests: an in-process application).
    Everything else about a session (TLS settings from the connector, the
    timeout, no environment proxies) stays in :func:`client_session`, so a
    replaced transport changes where bytes go, never what is checked.
    """

    #: True for the network itself; an AWS client then uses aiobotocore's own HTTP stack.
    network = True

    def connector(self, ssl: ssl.SSLContext) -> aiohttp.BaseConnector:
        """A connector for one session; ``ssl`` is the TLS context its requests use."""
        return aiohttp.TCPConnector(ssl=ssl)


#: The network, for callers that were handed no transport.
NETWORK = Transport()


def client_session(
    *,
    timeout: float,
    certificate_authority: str | None = None,
    insecure: bool = False,
    client_certificate: str | None = None,
    client_key: str | None = None,
    transport: Transport = NETWORK,
) -> aiohttp.ClientSession:
    """An aiohttp session using :func:`ssl_context`; ``timeout`` bounds each request.

    Environment proxies are ignored (``trust_env=False``): the daemon talks to
    what the connector names, not to whatever its environment points at.
    One request is one attempt: nothing here retries (the cache owns retries).
    Must be created inside a running event loop and closed by the caller.
    """
    context = ssl_context(
        certificate_authority=certificate_authority,
        insecure=insecure,
        client_certificate=client_certificate,
        client_key=client_key,
    )
    return aiohttp.ClientSession(
        connector=transport.connector(context),
        timeout=aiohttp.ClientTimeout(total=timeout),
        trust_env=False,
    )


def env_proxy(url: str, env: Mapping[str, str]) -> str | None:
    """The proxy ``env`` names for ``url``, as curl and kubectl read it, or None.

    ``HTTPS_PROXY`` / ``HTTP_PROXY`` by the URL's scheme (lower-case names win),
    unless ``NO_PROXY`` covers the host. ``env`` is the injected environment
    (the daemon's own), never read from ``os.environ`` here.
    """
    proxies: dict[str, str] = {}
    for lower_only in (False, True):
        for name, value in env.items():
            if value and name.lower().endswith("_proxy") and (name.islower() or not lower_only):
                proxies[name.lower().removesuffix("_proxy")] = value
    parts = urlsplit(url)
    proxy = proxies.get(parts.scheme)
    if proxy is None or _no_proxy(parts.hostname or "", proxies.get("no", "")):
        return None
    return proxy


def _no_proxy(host: str, no_proxy: str) -> bool:
    """Whether ``NO_PROXY`` covers ``host``: ``*``, the host itself, or a domain above it."""
    host = host.lower().strip("[]")
    for entry in no_proxy.lower().replace(" ", "").split(","):
        domain = entry.removeprefix("*").lstrip(".").strip("[]")
        if entry == "*" or (domain and (host == domain or host.endswith("." + domain))):
            return True
    return False


def speaks_no_tls(exc: BaseException) -> bool:
    """True if a TLS handshake failed because the peer is not a TLS server at all.

    A certificate that fails verification is *not* this case: the peer speaks
    TLS and falling back to plain HTTP would only dodge the check.
    """
    return isinstance(exc, aiohttp.ClientSSLError) and not isinstance(
        exc, aiohttp.ClientConnectorCertificateError
    )


def transport_error(
    exc: BaseException, *, service: str, url: str, timeout: float | None = None
) -> BrokerError:
    """A typed error for a request that got no HTTP response, naming ``service`` and ``url``.

    TLS problems are configuration errors (not retryable) with a hint at the
    attributes that fix them; refused connections, DNS failures and timeouts
    may pass, so they are retryable.
    """
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        reason = getattr(exc.certificate_error, "verify_message", None) or "untrusted certificate"
        return UpstreamError(
            f"TLS verification of {service} at {url} failed ({reason}): {_TLS_HINT}",
            field="certificate_authority",
            retryable=False,
        )
    if isinstance(exc, aiohttp.ClientSSLError):
        return UpstreamError(
            f"TLS handshake with {service} at {url} failed ({_os_reason(exc)}); "
            "check that it serves HTTPS on that port",
            retryable=False,
        )
    if isinstance(exc, TimeoutError):
        limit = f" within {timeout:g}s" if timeout is not None else " in time"
        return UpstreamError(f"{service} at {url} did not answer{limit}", retryable=True)
    if isinstance(exc, aiohttp.ClientConnectorError):
        return UpstreamError(f"cannot reach {service} at {url}: {_os_reason(exc)}", retryable=True)
    return UpstreamError(
        f"request to {service} at {url} failed: {type(exc).__name__}: {exc}", retryable=True
    )


def _os_reason(exc: BaseException) -> str:
    os_error = getattr(exc, "os_error", None)
    if isinstance(os_error, ssl.SSLError) and os_error.reason:
        return str(os_error.reason).lower().replace("_", " ")
    if isinstance(os_error, ConnectionRefusedError):
        return "connection refused"
    if isinstance(os_error, OSError) and os_error.strerror:
        return os_error.strerror
    return str(exc) or type(exc).__name__
