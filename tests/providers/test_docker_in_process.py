"""The docker connector type on an in-process transport: a registry and its token service as
one aiohttp application, no socket. (test_docker.py runs the real registry binary.)"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
from aiohttp import web

from broker.errors import CredentialsRejected, UpstreamError
from broker.model import Connector, Value
from broker.providers.base import ProviderContext
from broker.providers.docker import DockerProvider
from broker.providers.testing import InProcessTransport

RT = "docker-registry"
REGISTRY = "registry.example.test"
AUTH = "auth.example.test"
USER = "alice"
PASSWORD = "Corr3ct-Horse-Battery"
TOKEN = "registry-token-issued-in-process"


class Registry:
    """A token-auth registry (``/v2/`` answers 401 with a Bearer challenge) and its token
    service, told apart by Host; ``fail_with`` answers every ``/v2/`` with that status."""

    def __init__(self, realm: str = f"https://{AUTH}/token") -> None:
        self.realm = realm
        self.fail_with: int | None = None
        self.token_requests: list[dict[str, str]] = []

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/v2/", self._v2)
        app.router.add_get("/token", self._token)
        return app

    async def _v2(self, request: web.Request) -> web.Response:
        if self.fail_with is not None:
            return web.Response(status=self.fail_with)
        if request.headers.get("Authorization") == f"Bearer {TOKEN}":
            return web.json_response({})
        challenge = f'Bearer realm="{self.realm}",service="{REGISTRY}"'
        return web.Response(status=401, headers={"WWW-Authenticate": challenge})

    async def _token(self, request: web.Request) -> web.Response:
        self.token_requests.append(dict(request.query))
        expected = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
        if request.headers.get("Authorization") != f"Basic {expected}":
            return web.Response(status=401)
        return web.json_response({"token": TOKEN})


def connector(password: str = PASSWORD, **raw: Value) -> Connector:
    now = datetime(2030, 1, 1, tzinfo=UTC)
    return Connector(
        id="id-reg",
        name="reg",
        connector_type="docker",
        auth_method="password",
        resource_type=RT,
        resource_id=None,
        config={"registry": REGISTRY, "username": USER, "password": password, **raw},
        labels={},
        expiration_seconds=None,
        expires_at=None,
        created_at=now,
        updated_at=now,
        revision=1,
    )


@pytest.fixture
def registry() -> Registry:
    return Registry()


@pytest.fixture
async def transport(registry: Registry) -> AsyncIterator[InProcessTransport]:
    async with InProcessTransport(registry.app(), hosts=[REGISTRY, AUTH]) as transport:
        yield transport


@pytest.fixture
def provider(transport: InProcessTransport) -> DockerProvider:
    return DockerProvider(ProviderContext(transport=transport, request_timeout=2.0))


@pytest.mark.anyio
async def test_a_login_goes_challenge_token_then_v2_as_docker_does(
    registry: Registry, transport: InProcessTransport, provider: DockerProvider
) -> None:
    assert await provider.discover(connector(), RT, None) == [REGISTRY]
    assert [(s.host, s.path) for s in transport.sent] == [
        (REGISTRY, "/v2/"),
        (AUTH, "/token"),
        (REGISTRY, "/v2/"),
    ]
    assert registry.token_requests == [{"account": USER, "service": REGISTRY}]


@pytest.mark.anyio
async def test_a_wrong_password_is_rejected_by_the_token_service_unechoed(
    transport: InProcessTransport, provider: DockerProvider
) -> None:
    wrong = "not-the-Pa55word"
    with pytest.raises(CredentialsRejected) as info:
        await provider.discover(connector(wrong), RT, None)
    assert "token service" in str(info.value) and wrong not in str(info.value)
    assert transport.count("/token") == 1


@pytest.mark.anyio
async def test_a_busy_registry_gets_one_attempt(
    registry: Registry, transport: InProcessTransport, provider: DockerProvider
) -> None:
    registry.fail_with = 503
    with pytest.raises(UpstreamError, match="503") as info:
        await provider.discover(connector(), RT, None)
    assert info.value.retryable is True
    assert transport.count() == 1


@pytest.mark.anyio
async def test_the_password_never_goes_to_a_plain_http_token_service() -> None:
    registry = Registry(realm=f"http://{AUTH}/token")
    async with InProcessTransport(registry.app(), hosts=[REGISTRY, AUTH]) as transport:
        provider = DockerProvider(ProviderContext(transport=transport, request_timeout=2.0))
        with pytest.raises(UpstreamError, match="unencrypted") as info:
            await provider.discover(connector(), RT, None)
    assert info.value.field == "insecure"
    assert transport.count("/token") == 0
