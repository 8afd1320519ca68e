"""``bench-fake``: a benchmark-only connector type whose mints ask a local fake upstream.

Every :meth:`BenchProvider.mint` is one ``GET /mint?resource=ID`` to the
:mod:`fakeprovider.upstream` server, which delays, counts mints per resource,
fails on demand and decides the credential's lifetime. The daemon finds the
type through the ``broker.connector_types`` entry point of the dist-info
directory next to this package: put ``bench/fakeprovider`` on the daemon's
``PYTHONPATH``.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime

import aiohttp

from broker.errors import CredentialsRejected, InvalidArgument, UpstreamError
from broker.model import (
    AttributeSpec,
    AttrKind,
    AuthMethodSpec,
    ClientCredential,
    Connector,
    ConnectorTypeSpec,
    ResourceTypeSpec,
)
from broker.providers.base import Provider, ProviderContext

CONNECTOR_TYPE = "bench-fake"
RESOURCE_TYPE = "bench-resource"
_ID_RE = re.compile(r"^[a-z0-9][a-z0-9._-]*$")

TOKEN_METHOD = AuthMethodSpec(
    auth_method="token",
    name="Bearer token",
    description="A token the fake upstream checks on every mint.",
    attributes=(
        AttributeSpec("url", "Base URL of the fake upstream.", kind=AttrKind.URL, required=True),
        AttributeSpec("token", "Bearer token.", required=True, secret=True),
    ),
)


class BenchProvider(Provider):
    """Mints by asking the fake upstream; one aiohttp session for all calls."""

    spec = ConnectorTypeSpec(
        connector_type=CONNECTOR_TYPE,
        name="Benchmark fake upstream",
        description="Short-lived tokens from a local fake upstream that counts mints.",
        resource_types=(
            ResourceTypeSpec(
                RESOURCE_TYPE, "Bench resource", "Anything the upstream mints for.", True
            ),
        ),
        auth_methods=(TOKEN_METHOD,),
    )

    def __init__(self, context: ProviderContext | None = None) -> None:
        super().__init__(context)
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            # No pool cap: the cache's single-flight must be the only limit observed.
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0),
                timeout=aiohttp.ClientTimeout(total=self.context.request_timeout),
            )
        return self._session

    def canonical_resource_id(self, connector: Connector, resource_type: str, raw: str) -> str:
        if resource_type != RESOURCE_TYPE:
            raise InvalidArgument(f"no resource type '{resource_type}'", field="resource_type")
        text = raw.strip().lower()
        if not _ID_RE.match(text):
            raise InvalidArgument(f"'{raw}' is not a {resource_type} ID", field="resource_id")
        return text

    async def discover(
        self, connector: Connector, resource_type: str, resource_id: str | None
    ) -> list[str]:
        return [resource_id] if resource_id else []

    async def mint(
        self, connector: Connector, resource_type: str, resource_id: str
    ) -> ClientCredential:
        url = f"{str(connector.config['url']).rstrip('/')}/mint"
        headers = {"Authorization": f"Bearer {connector.config['token']}"}
        requested = datetime.now(UTC)  # every answer is a fresh token: issued on request
        try:
            async with self._client().get(
                url, params={"resource": resource_id}, headers=headers
            ) as resp:
                if resp.status in (401, 403):
                    raise CredentialsRejected(f"fake upstream refused the token ({resp.status})")
                if resp.status != 200:
                    raise UpstreamError(f"fake upstream answered HTTP {resp.status}")
                body = await resp.json()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise UpstreamError(f"cannot reach fake upstream {url}: {exc!r}") from None
        expires = body.get("expires_at")
        return ClientCredential(
            connector_type=CONNECTOR_TYPE,
            auth_method="token",
            resource_type=resource_type,
            resource_id=resource_id,
            config={"token": str(body["token"])},
            secret_names=frozenset({"token"}),
            expires_at=None if expires is None else datetime.fromtimestamp(expires, UTC),
            issued_at=requested,
        )

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
