"""``slow`` and ``slow-twin``: test connector types whose discovery asks a local HTTP server.

They exist so discovery's concurrency is observable from outside the daemon:
every ``discover()`` is one ``GET /discover`` (pages followed) to the
:mod:`tests.plugins.slow_upstream` server, which delays, counts in-flight
calls and notices when the daemon gives up on one. The IDs come back as the
upstream spells them (mixed case, padded, repeated): canonical form is the
engine's job. ``slow-twin`` is the same code under another connector type, to
tell the per-provider limit from the global one.
"""

from __future__ import annotations

import re

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

RESOURCE_TYPES = ("slow-resource", "slow-other")
_ID_RE = re.compile(r"^[a-z0-9][a-z0-9._-]*$")

TOKEN_METHOD = AuthMethodSpec(
    auth_method="token",
    name="Bearer token",
    description="A token the test upstream checks on every call.",
    attributes=(
        AttributeSpec(
            "url", "Base URL of the slow test upstream.", kind=AttrKind.URL, required=True
        ),
        AttributeSpec("token", "Bearer token.", required=True, secret=True),
    ),
)


def _spec(connector_type: str) -> ConnectorTypeSpec:
    return ConnectorTypeSpec(
        connector_type=connector_type,
        name=f"Slow test upstream ({connector_type})",
        description="Discovery asks a local test server that can be slow, fail or hang.",
        resource_types=tuple(
            ResourceTypeSpec(rt, rt, "Things the test upstream lists.", supports_instances=True)
            for rt in RESOURCE_TYPES
        ),
        auth_methods=(TOKEN_METHOD,),
    )


class SlowProvider(Provider):
    """Lists resources by asking the test upstream; one aiohttp session for all calls."""

    spec = _spec("slow")

    def __init__(self, context: ProviderContext | None = None) -> None:
        super().__init__(context)
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            # No pool cap: the broker's own limits must be the only ones observed.
            self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        return self._session

    def canonical_resource_id(self, connector: Connector, resource_type: str, raw: str) -> str:
        if resource_type not in RESOURCE_TYPES:
            raise InvalidArgument(f"no resource type '{resource_type}'", field="resource_type")
        text = raw.strip().lower()
        if not _ID_RE.match(text):
            raise InvalidArgument(f"'{raw}' is not a {resource_type} ID", field="resource_id")
        return text

    async def discover(
        self, connector: Connector, resource_type: str, resource_id: str | None
    ) -> list[str]:
        url = f"{str(connector.config['url']).rstrip('/')}/discover"
        headers = {
            "Authorization": f"Bearer {connector.config['token']}",
            "X-Connector": connector.name,
            "X-Connector-Type": self.spec.connector_type,
        }
        found: list[str] = []
        page = ""
        while True:
            params = {"type": resource_type, "page": page}
            try:
                async with self._client().get(url, params=params, headers=headers) as resp:
                    if resp.status in (401, 403):
                        raise CredentialsRejected(
                            f"slow upstream {url} refused the credentials (HTTP {resp.status})"
                        )
                    if resp.status != 200:
                        raise UpstreamError(f"slow upstream {url} answered HTTP {resp.status}")
                    body = await resp.json()
            except aiohttp.ClientError as exc:
                raise UpstreamError(f"cannot reach slow upstream {url}: {exc}") from None
            found.extend(str(i) for i in body["ids"])
            page = str(body.get("next") or "")
            if not page:
                break
        if resource_id is None:
            return found
        wanted = self.canonical_resource_id(connector, resource_type, resource_id)
        return [i for i in found if i.strip().lower() == wanted]

    async def mint(
        self, connector: Connector, resource_type: str, resource_id: str
    ) -> ClientCredential:
        return ClientCredential(
            connector_type=self.spec.connector_type,
            auth_method="token",
            resource_type=resource_type,
            resource_id=self.canonical_resource_id(connector, resource_type, resource_id),
            config={"token": str(connector.config["token"])},
            secret_names=frozenset({"token"}),
        )

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


class TwinProvider(SlowProvider):
    """The same upstream under a second connector type (its own per-provider limit)."""

    spec = _spec("slow-twin")
