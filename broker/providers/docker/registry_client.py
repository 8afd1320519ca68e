"""Checking a username/password against a registry's ``/v2/`` endpoint, as ``docker login`` does.

No Docker engine is needed: the distribution API answers ``GET /v2/`` with
401 and a challenge, either ``Basic`` (htpasswd registries) or ``Bearer``
(token auth: Docker Hub, Harbor, GitLab, ...). For Bearer the password is
exchanged at the challenge's realm for a token, which must then open
``/v2/``. Each step's failure is mapped to an error that says which of
registry, token service or credentials is at fault, never echoing the password.

Scheme rule: HTTPS is always tried first. Plain HTTP is used only when the
HTTPS handshake shows the peer does not speak TLS *and* either ``insecure``
is true or the registry is on loopback (``localhost``, 127.0.0.0/8, ``[::1]``),
mirroring the Docker engine's insecure-registry rule. A certificate that
fails verification never triggers the fallback.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import structlog

from broker.errors import (
    BrokerError,
    CredentialsRejected,
    PermissionDenied,
    UpstreamError,
)
from broker.providers.docker.ids import api_host, is_loopback
from broker.providers.http import (
    NETWORK,
    TRANSPORT_ERRORS,
    Transport,
    client_session,
    speaks_no_tls,
    transport_error,
)

log = structlog.get_logger(__name__)

#: Bound on a token service reply: real ones are a few KiB.
MAX_TOKEN_RESPONSE = 1024 * 1024

_SCHEME = re.compile(r"\s*,?\s*([A-Za-z][A-Za-z0-9_.+-]*)(?=\s|$)")
_PARAM = re.compile(r'\s*,?\s*([A-Za-z0-9_.-]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,"]*))')


@dataclass(frozen=True)
class Challenge:
    """One ``WWW-Authenticate`` challenge: scheme (lower-case) and its parameters."""

    scheme: str
    params: dict[str, str] = field(default_factory=dict)


def parse_challenges(values: Iterable[str]) -> list[Challenge]:
    """Parse ``WWW-Authenticate`` header values (RFC 7235 auth-params, quoted or not)."""
    challenges: list[Challenge] = []
    for value in values:
        pos = 0
        current: Challenge | None = None
        while pos < len(value):
            param = _PARAM.match(value, pos) if current is not None else None
            if param and current is not None:
                quoted, bare = param.group(2), param.group(3)
                text = re.sub(r"\\(.)", r"\1", quoted) if quoted is not None else bare
                current.params[param.group(1).lower()] = text
                pos = param.end()
                continue
            scheme = _SCHEME.match(value, pos)
            if not scheme:
                break  # malformed tail: keep what parsed
            current = Challenge(scheme.group(1).lower())
            challenges.append(current)
            pos = scheme.end()
    return challenges


def basic_authorization(username: str, password: str) -> str:
    """The ``Authorization`` value for HTTP Basic auth (RFC 7617, UTF-8)."""
    raw = f"{username}:{password}".encode()
    return "Basic " + base64.b64encode(raw).decode("ascii")


@dataclass(frozen=True)
class _Reply:
    status: int
    challenges: list[Challenge]
    body: bytes


class _Session:
    """One verification run: the registry's name for messages and the HTTP session."""

    def __init__(
        self, http: aiohttp.ClientSession, registry: str, username: str, timeout: float
    ) -> None:
        self.http = http
        self.registry = registry
        self.username = username
        self.timeout = timeout

    async def get_raw(
        self,
        url: str,
        *,
        headers: dict[str, str] | None = None,
        params: dict[str, str] | None = None,
    ) -> _Reply:
        async with self.http.get(url, headers=headers, params=params) as resp:
            body = await resp.content.read(MAX_TOKEN_RESPONSE)
            return _Reply(
                resp.status, parse_challenges(resp.headers.getall("WWW-Authenticate", [])), body
            )

    async def get(
        self,
        url: str,
        *,
        service: str,
        headers: dict[str, str] | None = None,
        params: dict[str, str] | None = None,
    ) -> _Reply:
        try:
            return await self.get_raw(url, headers=headers, params=params)
        except TRANSPORT_ERRORS as exc:
            raise transport_error(exc, service=service, url=url, timeout=self.timeout) from exc

    # -- messages ---------------------------------------------------------
    @property
    def name(self) -> str:
        return f"registry '{self.registry}'"

    def rejected(self, detail: str = "") -> CredentialsRejected:
        return CredentialsRejected(
            f"{self.name} refused the credentials for user '{self.username}'{detail}"
        )

    def unexpected(self, status: int, url: str, service: str | None = None) -> BrokerError:
        who = service or self.name
        if status == 403:
            return PermissionDenied(
                f"{who} denied user '{self.username}' access (HTTP 403 at {url})"
            )
        if status == 404 and service is None:
            return UpstreamError(
                f"{who} has no Docker registry v2 API (HTTP 404 at {url}); "
                "check the registry attribute",
                retryable=False,
            )
        retryable = status == 429 or status >= 500
        return UpstreamError(f"{who} answered HTTP {status} at {url}", retryable=retryable)


async def verify_login(
    registry: str,
    username: str,
    password: str,
    *,
    request_timeout: float,
    certificate_authority: str | None = None,
    insecure: bool = False,
    transport: Transport = NETWORK,
) -> None:
    """Prove ``username``/``password`` open the registry's ``/v2/`` endpoint, or raise.

    One attempt per request, each bounded by ``request_timeout``: retries are the cache's.

    Raises CredentialsRejected (401 after credentials), PermissionDenied (403),
    UpstreamError (unreachable, TLS, unexpected answers; ``retryable`` set).
    """
    host = api_host(registry)
    plain_ok = insecure or is_loopback(registry)
    async with client_session(
        timeout=request_timeout,
        certificate_authority=certificate_authority,
        insecure=insecure,
        transport=transport,
    ) as http:
        session = _Session(http, registry, username, request_timeout)
        base = f"https://{host}"
        try:
            first = await session.get_raw(f"{base}/v2/")
        except TRANSPORT_ERRORS as exc:
            if speaks_no_tls(exc) and not plain_ok:
                raise UpstreamError(
                    f"{session.name} does not speak TLS at {base}/v2/; plain HTTP is used "
                    "only for loopback registries or with insecure=true",
                    field="insecure",
                    retryable=False,
                ) from exc
            if not speaks_no_tls(exc):
                raise transport_error(
                    exc, service=session.name, url=f"{base}/v2/", timeout=request_timeout
                ) from exc
            log.debug("docker_registry_plain_http", registry=registry)
            base = f"http://{host}"
            first = await session.get(f"{base}/v2/", service=session.name)
        await _login(session, f"{base}/v2/", first, password, plain_ok=plain_ok)


async def _login(
    session: _Session, url: str, first: _Reply, password: str, *, plain_ok: bool
) -> None:
    if first.status == 200:
        # Open registry: docker login also accepts this; nothing to check.
        log.info("docker_registry_anonymous", registry=session.registry)
        return
    if first.status != 401:
        raise session.unexpected(first.status, url)
    by_scheme = {c.scheme: c for c in reversed(first.challenges)}
    basic = {"Authorization": basic_authorization(session.username, password)}
    if "bearer" in by_scheme:
        token = await _fetch_token(session, by_scheme["bearer"], basic, plain_ok=plain_ok)
        reply = await session.get(
            url, service=session.name, headers={"Authorization": f"Bearer {token}"}
        )
        if reply.status == 401:
            raise session.rejected(": the token its token service issued was not accepted")
    elif "basic" in by_scheme:
        reply = await session.get(url, service=session.name, headers=basic)
        if reply.status == 401:
            raise session.rejected()
    else:
        offered = ", ".join(c.scheme for c in first.challenges) or "none"
        raise UpstreamError(
            f"{session.name} asks for an unsupported authentication scheme at {url} "
            f"(offered: {offered}; supported: basic, bearer)",
            retryable=False,
        )
    if reply.status != 200:
        raise session.unexpected(reply.status, url)


async def _fetch_token(
    session: _Session, challenge: Challenge, basic: dict[str, str], *, plain_ok: bool
) -> str:
    """Exchange the password for a registry token at the challenge's realm."""
    realm = challenge.params.get("realm", "")
    parts = urlsplit(realm)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise UpstreamError(
            f"{session.name} sent a Bearer challenge without a usable realm URL",
            retryable=False,
        )
    shown = urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))
    service = f"token service of {session.name}"
    if parts.scheme == "http" and not (plain_ok or is_loopback(parts.netloc)):
        raise UpstreamError(
            f"{service} is at plain-http {shown}; refusing to send the password unencrypted "
            "(set insecure=true to allow it)",
            field="insecure",
            retryable=False,
        )
    params = {"account": session.username}
    for key in ("service", "scope"):
        if challenge.params.get(key):
            params[key] = challenge.params[key]
    reply = await session.get(realm, service=service, headers=basic, params=params)
    if reply.status in (401, 403):
        raise session.rejected(f" (token service {shown})")
    if reply.status != 200:
        raise session.unexpected(reply.status, shown, service=service)
    try:
        document = json.loads(reply.body)
    except ValueError:
        document = None
    token = None
    if isinstance(document, dict):
        token = document.get("token") or document.get("access_token")
    if not isinstance(token, str) or not token:
        raise UpstreamError(f"{service} at {shown} answered without a token", retryable=False)
    return token
