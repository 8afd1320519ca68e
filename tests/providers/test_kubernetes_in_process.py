"""The kubernetes connector type on an in-process transport: the test API server's application,
no socket, no TLS. (test_kubernetes.py runs the same server over real TLS.)"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
from aiohttp import web

from broker.errors import CredentialsRejected, UpstreamError
from broker.model import Connector, Value
from broker.providers.base import ProviderContext
from broker.providers.kubernetes import RESOURCE_TYPE, SPEC, KubernetesProvider
from broker.providers.testing import InProcessTransport
from tests.providers.connectors import make_connector
from tests.servers.kube_api import KubeApiServer

TOKEN = "in-process-bearer-token"
PASSWORD = "in-process-password"
SERVER = "https://k8s.example.test:6443"


def connector(method: str, **raw: Value) -> Connector:
    spec = SPEC.auth_method(method)
    assert spec is not None
    now = datetime(2030, 1, 1, tzinfo=UTC)
    return make_connector(
        "kubernetes",
        method,
        {"server": SERVER, **raw},
        name="kc",
        resource_type=RESOURCE_TYPE,
        now=now,
    )


@pytest.fixture
def api() -> KubeApiServer:
    """The test API server, never started: its application is served in process."""
    return KubeApiServer(tokens={TOKEN: "bob"}, basic={"carol": PASSWORD}, tls=False)


@pytest.fixture
async def transport(api: KubeApiServer) -> AsyncIterator[InProcessTransport]:
    async with InProcessTransport(api.app(), hosts=["k8s.example.test:6443"]) as transport:
        yield transport


def provider(transport: InProcessTransport, **env: str) -> KubernetesProvider:
    return KubernetesProvider(ProviderContext(transport=transport, env=env, request_timeout=2.0))


@pytest.mark.anyio
async def test_a_token_is_verified_with_one_get_of_version(
    api: KubeApiServer, transport: InProcessTransport
) -> None:
    found = await provider(transport).discover(connector("token", token=TOKEN), RESOURCE_TYPE, None)
    assert found == ["k8s.example.test:6443"]
    assert api.users == ["bob"]
    assert [(s.method, s.host, s.path) for s in transport.sent] == [
        ("GET", "k8s.example.test:6443", "/version")
    ]


@pytest.mark.anyio
async def test_basic_auth_is_sent_as_basic(
    api: KubeApiServer, transport: InProcessTransport
) -> None:
    kc = connector("password", username="carol", password=PASSWORD)
    await provider(transport).discover(kc, RESOURCE_TYPE, None)
    assert [r.via for r in api.requests] == ["basic"]


@pytest.mark.anyio
async def test_a_refused_token_is_rejected_after_one_attempt_without_echoing_it(
    api: KubeApiServer, transport: InProcessTransport
) -> None:
    wrong = "not-the-token-and-secret"
    with pytest.raises(CredentialsRejected) as info:
        await provider(transport).discover(connector("token", token=wrong), RESOURCE_TYPE, None)
    assert "401" in str(info.value) and wrong not in str(info.value)
    assert transport.count("/version") == 1


@pytest.mark.anyio
@pytest.mark.parametrize(("status", "retryable"), [(503, True), (400, False)])
async def test_a_failing_server_gets_one_attempt_and_the_cache_decides_the_rest(
    api: KubeApiServer, transport: InProcessTransport, status: int, retryable: bool
) -> None:
    api.fail_with = status
    with pytest.raises(UpstreamError, match=str(status)) as info:
        await provider(transport).discover(connector("token", token=TOKEN), RESOURCE_TYPE, None)
    assert info.value.retryable is retryable
    assert transport.count() == 1  # no retries under the cache's own backoff


@pytest.mark.anyio
async def test_an_unreachable_server_is_retryable_and_named() -> None:
    async with InProcessTransport(web.Application(), hosts=["elsewhere.test"]) as transport:
        with pytest.raises(UpstreamError) as info:
            await provider(transport).discover(connector("token", token=TOKEN), RESOURCE_TYPE, None)
    assert info.value.retryable is True
    assert SERVER in str(info.value) and "refused" in str(info.value)


@pytest.mark.anyio
async def test_something_other_than_an_api_server_is_reported_on_the_server_attribute() -> None:
    async def html(request: web.Request) -> web.Response:
        return web.Response(text="<html>welcome</html>", content_type="text/html")

    app = web.Application()
    app.router.add_get("/version", html)
    async with InProcessTransport(app) as transport:
        with pytest.raises(UpstreamError, match="Kubernetes API server") as info:
            await provider(transport).discover(connector("token", token=TOKEN), RESOURCE_TYPE, None)
    assert info.value.field == "server"


@pytest.mark.anyio
async def test_the_proxy_comes_from_the_injected_environment_not_the_process(
    transport: InProcessTransport, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://process-proxy.test:3128")
    kc = connector("token", token=TOKEN)
    await provider(transport).discover(kc, RESOURCE_TYPE, None)
    await provider(transport, HTTPS_PROXY="http://daemon-proxy.test:3128").discover(
        kc, RESOURCE_TYPE, None
    )
    bypass = {"HTTPS_PROXY": "http://daemon-proxy.test:3128", "NO_PROXY": ".example.test"}
    await provider(transport, **bypass).discover(kc, RESOURCE_TYPE, None)
    assert [s.proxy for s in transport.sent] == [None, "http://daemon-proxy.test:3128", None]
