"""aiobotocore clients with explicit credentials, and the daemon's own chain for implicit auth.

Every client gets its credentials, region and endpoint passed explicitly, from
a session isolated from the daemon's ``~/.aws`` files and ``AWS_PROFILE``: a
stray profile on the daemon host must never change what a connector with
stored keys does. Only implicit auth reads the daemon's environment, and it
reads the one injected through ProviderContext, not ``os.environ``.
"""

from __future__ import annotations

import os
import ssl
from collections import OrderedDict
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import anyio
from aiobotocore.config import AioConfig
from aiobotocore.credentials import (
    AioContainerProvider,
    AioEnvProvider,
    AioInstanceMetadataProvider,
    create_credential_resolver,
)
from aiobotocore.httpsession import AIOHTTPSession
from aiobotocore.session import AioSession
from aiobotocore.utils import AioContainerMetadataFetcher
from botocore.exceptions import NoCredentialsError

from broker.providers.base import AwsClientFactory
from broker.providers.http import NETWORK, Transport

#: Attempts per AWS call, first try included: one. botocore would retry throttling, 5xx
#: and connection errors up to three times, with its own backoff, under the cache's
#: retries and backoff (:mod:`broker.cache.policy`); a failure goes back to the cache.
MAX_ATTEMPTS = 1

# Session variables pinned so the daemon's AWS config files and profile are not read.
_ISOLATED: dict[str, tuple[Any, Any, Any, Any]] = {
    "profile": (None, None, None, None),
    "config_file": (None, None, os.devnull, None),
    "credentials_file": (None, None, os.devnull, None),
}


_SHARED: dict[str, Any] = {}


def _new_session(session_vars: dict[str, tuple[Any, Any, Any, Any]]) -> AioSession:
    """A session sharing the process-wide botocore data loader (its parsed-model cache).

    Parsing the endpoint and service models takes hundreds of milliseconds;
    every session of the process reuses the first one's.
    """
    session = AioSession(session_vars=session_vars)
    loader = _SHARED.get("data_loader")
    if loader is None:
        _SHARED["data_loader"] = session.get_component("data_loader")
    else:
        session.register_component("data_loader", loader)
    return session


@dataclass(frozen=True)
class AwsCredentials:
    """One set of AWS keys; ``expires_at`` None means long-lived (or unknown, for implicit)."""

    access_key_id: str
    secret_access_key: str = field(repr=False)
    session_token: str | None = field(default=None, repr=False)
    expires_at: datetime | None = None
    #: The connector's own keys (stored, or its working role session): clients are pooled.
    reusable: bool = False
    #: When STS issued the session, as it declared it (``Expiration`` minus the requested
    #: ``DurationSeconds``); None for keys nobody declared a lifetime for (stored, borrowed).
    issued_at: datetime | None = None


@dataclass(frozen=True)
class Endpoint:
    """Where a connector's AWS calls go; ``connector`` names it in error messages."""

    connector: str
    region: str
    endpoint_url: str | None


@dataclass
class _Pooled:
    client: Any
    #: The keys the client signs with: a changed secret retires the client.
    credentials: AwsCredentials
    users: int = 0
    retired: bool = False


def _transport_session(transport: Transport) -> type[AIOHTTPSession]:
    """aiobotocore's HTTP session with its connections made by ``transport`` (tests).

    Only a non-network transport needs this; it replaces the one method of
    aiobotocore's session that builds the connector (TLS stays the transport's).
    """

    class TransportSession(AIOHTTPSession):  # type: ignore[misc]
        async def _create_connector(self, proxy_url: str | None) -> Any:
            return transport.connector(ssl.create_default_context())

    return TransportSession


class AwsClients:
    """Makes aiobotocore clients sharing one isolated session (and its model cache).

    Clients for a connector's own (``reusable``) credentials are pooled: a new
    client builds its TLS context and opens new connections, tens of
    milliseconds per AWS call otherwise. The pool is keyed by service,
    endpoint and access key ID (never by secret text); a client whose key ID
    comes back with another secret is replaced. Clients for freshly minted
    session keys are used once and closed. A pooled client pushed out of the
    pool is closed once its last user is done.

    Every call is one attempt bounded by ``request_timeout`` (connect and read):
    retries are the cache's.
    """

    def __init__(
        self,
        request_timeout: float,
        *,
        pool_size: int = 64,
        transport: Transport = NETWORK,
        factory: AwsClientFactory | None = None,
    ) -> None:
        self._factory: AwsClientFactory = factory or _new_session(_ISOLATED)
        common: dict[str, Any] = {
            "connect_timeout": request_timeout,
            "read_timeout": request_timeout,
            "retries": {"total_max_attempts": MAX_ATTEMPTS, "mode": "standard"},
            "ignore_configured_endpoint_urls": True,
        }
        if not transport.network:
            common["http_session_cls"] = _transport_session(transport)
        self._config = AioConfig(**common)
        # S3-compatible stores and emulators behind endpoint_url rarely do virtual hosts.
        self._path_style = AioConfig(**common, s3={"addressing_style": "path"})
        self._pool: OrderedDict[tuple[str, ...], _Pooled] = OrderedDict()
        self._pool_size = pool_size
        self._lock = anyio.Lock()

    @property
    def config(self) -> AioConfig:
        """What every client is configured with (attempts, timeouts)."""
        return self._config

    @asynccontextmanager
    async def client(
        self, service: str, where: Endpoint, credentials: AwsCredentials
    ) -> AsyncIterator[Any]:
        if not credentials.reusable:
            async with self._create(service, where, credentials) as client:
                yield client
            return
        entry = await self._lease(service, where, credentials)
        try:
            yield entry.client
        finally:
            entry.users -= 1
            if entry.retired and entry.users == 0:
                await entry.client.__aexit__(None, None, None)

    async def aclose(self) -> None:
        async with self._lock:
            entries = list(self._pool.values())
            self._pool.clear()
        for entry in entries:
            await _retire(entry)

    async def _lease(self, service: str, where: Endpoint, creds: AwsCredentials) -> _Pooled:
        key = (service, where.region, where.endpoint_url or "", creds.access_key_id)
        async with self._lock:
            entry = self._pool.get(key)
            if entry is not None and not _same_keys(entry.credentials, creds):
                del self._pool[key]
                await _retire(entry)
                entry = None
            if entry is not None:
                self._pool.move_to_end(key)
            else:
                client = await self._create(service, where, creds).__aenter__()
                entry = self._pool[key] = _Pooled(client, creds)
                while len(self._pool) > self._pool_size:
                    _, old = self._pool.popitem(last=False)
                    await _retire(old)
            entry.users += 1
            return entry

    def _create(self, service: str, where: Endpoint, credentials: AwsCredentials) -> Any:
        config = self._path_style if service == "s3" and where.endpoint_url else self._config
        return self._factory.create_client(
            service,
            region_name=where.region,
            endpoint_url=where.endpoint_url or None,
            aws_access_key_id=credentials.access_key_id,
            aws_secret_access_key=credentials.secret_access_key,
            aws_session_token=credentials.session_token,
            config=config,
        )


def _same_keys(a: AwsCredentials, b: AwsCredentials) -> bool:
    return (a.secret_access_key, a.session_token) == (b.secret_access_key, b.session_token)


async def _retire(entry: _Pooled) -> None:
    """Take a client out of service: closed now if idle, else by its last user."""
    entry.retired = True
    if entry.users == 0:
        await entry.client.__aexit__(None, None, None)


class _OneAttemptFetcher(AioContainerMetadataFetcher):  # type: ignore[misc]
    """The container credential endpoint asked once, within the request timeout
    (botocore: three attempts a second apart, 2 s each): the cache retries."""

    RETRY_ATTEMPTS = 1
    SLEEP_TIME = 0

    def __init__(self, timeout: float) -> None:
        self.TIMEOUT_SECONDS = timeout
        super().__init__()


class ImplicitChain:
    """The standard AWS credential chain, bound to an injected environment.

    One session per profile is kept so refreshable credentials (instance and
    container roles, SSO) are reused and refreshed by botocore itself: they are
    the daemon's own identity, not a credential handed to anyone. Each lookup
    is one attempt (the instance metadata service: botocore's default of one;
    the container endpoint: see :class:`_OneAttemptFetcher`).
    """

    def __init__(self, env: Mapping[str, str], request_timeout: float = 10.0) -> None:
        self._env = dict(env)
        self._timeout = request_timeout
        self._sessions: dict[str | None, AioSession] = {}

    async def credentials(self, profile: str | None) -> AwsCredentials:
        session = self._sessions.get(profile)
        if session is None:
            session = self._sessions[profile] = self._session(profile)
        creds = await session.get_credentials()
        if creds is None:
            raise NoCredentialsError()
        frozen = await creds.get_frozen_credentials()
        if not frozen.access_key or not frozen.secret_key:
            raise NoCredentialsError()
        expiry = getattr(creds, "_expiry_time", None)
        expiry = expiry.astimezone(UTC) if isinstance(expiry, datetime) else None
        return AwsCredentials(
            frozen.access_key, frozen.secret_key, frozen.token or None, expiry, reusable=True
        )

    def _session(self, profile: str | None) -> AioSession:
        env = self._env
        home = env.get("HOME") or os.path.expanduser("~")
        config_file = _expand(env.get("AWS_CONFIG_FILE") or "~/.aws/config", home)
        creds_file = _expand(env.get("AWS_SHARED_CREDENTIALS_FILE") or "~/.aws/credentials", home)
        env_profile = env.get("AWS_PROFILE") or env.get("AWS_DEFAULT_PROFILE")
        session = _new_session(
            {
                "profile": (None, None, env_profile, None),
                "config_file": (None, None, config_file, None),
                "credentials_file": (None, None, creds_file, None),
            }
        )
        if profile:
            # An explicit profile outranks environment keys, as in the AWS CLI.
            session.set_config_variable("profile", profile)
        resolver = create_credential_resolver(session)
        providers = []
        imds_disabled = env.get("AWS_EC2_METADATA_DISABLED", "").lower() == "true"
        for provider in resolver.providers:
            if isinstance(provider, AioEnvProvider):
                provider = AioEnvProvider(environ=env)
            elif isinstance(provider, AioContainerProvider):
                provider = AioContainerProvider(
                    environ=env, fetcher=_OneAttemptFetcher(self._timeout)
                )
            elif isinstance(provider, AioInstanceMetadataProvider) and imds_disabled:
                continue
            providers.append(provider)
        resolver.providers = providers
        session.register_component("credential_provider", resolver)
        return session


def _expand(path: str, home: str) -> str:
    if path == "~" or path.startswith("~/"):
        return home + path[1:]
    return path
