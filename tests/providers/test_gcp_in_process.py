"""The gcp connector type on an in-process transport: the Google test server's application,
never started, answers every request. (test_gcp.py runs the same server on a port.)"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from broker.clock import FakeClock
from broker.errors import UpstreamError
from broker.model import Connector, Value
from broker.providers.base import ProviderContext
from broker.providers.gcp import GcpProvider
from broker.providers.testing import InProcessTransport
from tests.providers.connectors import make_connector
from tests.servers.google import GoogleServer
from tests.servers.google_accounts import ServiceAccountKey

PROJECT = "broker-test"
T0 = datetime(2030, 1, 1, tzinfo=UTC)
CA = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"


@pytest.fixture(autouse=True)
def _no_real_google(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(tmp_path))
    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
    yield


@pytest.fixture
def google() -> GoogleServer:
    """Not started: :attr:`GoogleServer.url` names a port nobody listens on."""
    server = GoogleServer(token_lifetime=1800)
    server.port = 9
    return server


@pytest.fixture
async def transport(google: GoogleServer) -> AsyncIterator[InProcessTransport]:
    async with InProcessTransport(google.app(), hosts=["127.0.0.1:9"]) as transport:
        yield transport


@pytest.fixture
async def provider(
    google: GoogleServer, transport: InProcessTransport
) -> AsyncIterator[GcpProvider]:
    context = ProviderContext(
        clock=FakeClock(T0), env=google.env(), request_timeout=2.0, transport=transport
    )
    gcp = GcpProvider(context)
    yield gcp
    await gcp.aclose()


def connector(method: str, expiration_seconds: int | None = None, **config: Value) -> Connector:
    return make_connector(
        "gcp", method, config, name="gcp-conn", expiration_seconds=expiration_seconds, now=T0
    )


def sa_connector(key: ServiceAccountKey) -> Connector:
    return connector("service-account", service_account_json=key.json())


@pytest.mark.anyio
async def test_a_service_account_token_is_one_post_to_the_token_endpoint(
    provider: GcpProvider, google: GoogleServer, transport: InProcessTransport
) -> None:
    key = google.service_account("minter")
    cred = await provider.mint(sa_connector(key), "gcp-generic", PROJECT)
    assert google.validate_token(str(cred.config["token"])) == key.email
    assert cred.expires_at == T0 + timedelta(seconds=1800)
    assert [(s.method, s.path) for s in transport.sent] == [("POST", "/token")]


@pytest.mark.anyio
async def test_a_failing_token_endpoint_gets_one_attempt(
    provider: GcpProvider, google: GoogleServer, transport: InProcessTransport
) -> None:
    google.fail("/token", 503, times=5)
    with pytest.raises(UpstreamError) as err:
        await provider.mint(sa_connector(google.service_account()), "gcp-generic", PROJECT)
    assert err.value.retryable
    assert transport.count("/token") == 1  # gcloud-aio-auth's own retries are not used


@pytest.mark.anyio
async def test_impersonation_asks_iam_credentials_for_the_connectors_lifetime(
    provider: GcpProvider, google: GoogleServer, transport: InProcessTransport
) -> None:
    source = google.service_account("source")
    target = google.add_principal(f"target@{PROJECT}.iam.gserviceaccount.com")
    google.allow_impersonation(source.email, target)
    conn = connector(
        "impersonation",
        expiration_seconds=900,
        service_account_json=source.json(),
        target_principal=target,
    )
    cred = await provider.mint(conn, "gcp-generic", PROJECT)
    assert google.validate_token(str(cred.config["token"])) == target
    assert [s.path for s in transport.sent] == [
        "/token",
        f"/iam/v1/projects/-/serviceAccounts/{target}:generateAccessToken",
    ]
    _, impersonated = google.issued
    assert 890 <= impersonated.expires_at - time.time() <= 900  # not the source's 1800 s


@pytest.mark.anyio
async def test_a_gke_credential_carries_the_clusters_endpoint_and_ca(
    provider: GcpProvider, google: GoogleServer, transport: InProcessTransport
) -> None:
    google.add_cluster(PROJECT, "us-central1", "alpha", "10.0.0.1", CA)
    cred = await provider.mint(
        sa_connector(google.service_account("kube")), "kubernetes-cluster", "alpha"
    )
    assert (cred.connector_type, cred.config["server"]) == ("kubernetes", "https://10.0.0.1")
    assert cred.config["certificate_authority"] == CA
    assert transport.count("/container/v1/projects/broker-test/locations/-/clusters") == 1
