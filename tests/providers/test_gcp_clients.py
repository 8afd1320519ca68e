"""gcp client credentials used by real clients: a GKE token against the Kubernetes test API
server (which asks the Google test server whether the token is live) and a registry login
against a real docker-registry."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path

import anyio
import pytest

from broker.errors import CredentialsRejected
from broker.model import ClientCredential, Connector, Value
from broker.providers.base import ProviderContext
from broker.providers.docker import DockerProvider
from broker.providers.gcp import GcpProvider
from broker.providers.kubernetes import KubernetesProvider
from tests.servers.google import GoogleServer
from tests.servers.kube_api import KubeApiServer
from tests.servers.registry import start_registry

PROJECT = "broker-test"


@pytest.fixture(autouse=True)
def _no_real_google(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    empty = tmp_path / "gcloud-empty"
    empty.mkdir()
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(empty))
    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
    yield


@pytest.fixture
def google() -> Iterator[GoogleServer]:
    with GoogleServer() as server:
        yield server


@pytest.fixture
async def gcp(google: GoogleServer) -> AsyncIterator[GcpProvider]:
    provider = GcpProvider(ProviderContext(env=google.env(), request_timeout=5.0))
    yield provider
    await provider.aclose()


def as_connector(cred: ClientCredential, **extra: Value) -> Connector:
    """A connector of the credential's own type, as a consumer would register it."""
    now = datetime.now(UTC)
    return Connector(
        id="id-client",
        name="client",
        connector_type=cred.connector_type,
        auth_method=cred.auth_method,
        resource_type=cred.resource_type,
        resource_id=None,
        config={**cred.config, **extra},
        labels={},
        expiration_seconds=None,
        expires_at=None,
        created_at=now,
        updated_at=now,
        revision=1,
    )


def gcp_connector(json_key: str) -> Connector:
    now = datetime.now(UTC)
    return Connector(
        id="id-gcp",
        name="gcp-conn",
        connector_type="gcp",
        auth_method="service-account",
        resource_type=None,
        resource_id=None,
        config={"service_account_json": json_key},
        labels={},
        expiration_seconds=None,
        expires_at=None,
        created_at=now,
        updated_at=now,
        revision=1,
    )


@pytest.mark.anyio
async def test_gke_credential_opens_the_api_server(gcp: GcpProvider, google: GoogleServer) -> None:
    key = google.service_account("kubectl")
    with KubeApiServer(token_validator=google.validate_token) as api:
        google.add_cluster(PROJECT, "us-central1", "prod", f"127.0.0.1:{api.port}", api.ca_pem)
        cred = await gcp.mint(gcp_connector(key.json()), "kubernetes-cluster", "prod")
        kube = KubernetesProvider(ProviderContext(request_timeout=5.0))
        client = as_connector(cred)
        assert await kube.discover(client, "kubernetes-cluster", None) == [
            f"gke_{PROJECT}_us-central1_prod"
        ]
        assert api.users == [key.email]
        # A token the Google server never issued is refused by the API server.
        forged = as_connector(cred, token="ya29.forged")
        with pytest.raises(CredentialsRejected):
            await kube.discover(forged, "kubernetes-cluster", None)


@pytest.mark.anyio
async def test_registry_credential_logs_in(
    gcp: GcpProvider, google: GoogleServer, tmp_path: Path
) -> None:
    key = google.service_account("pusher")
    cred = await gcp.mint(gcp_connector(key.json()), "docker-registry", f"gcr.io/{PROJECT}")
    assert cred.config["registry"] == "gcr.io"
    # A registry that, like Google's, takes oauth2accesstoken + the live token.
    with start_registry(tmp_path, users={"oauth2accesstoken": str(cred.config["password"])}) as reg:
        docker = DockerProvider(ProviderContext(request_timeout=5.0))
        login = as_connector(cred, registry=reg.address)
        assert await docker.discover(login, "docker-registry", None) == [reg.address]


@pytest.mark.anyio
async def test_concurrent_mints_share_one_session(gcp: GcpProvider, google: GoogleServer) -> None:
    key = google.service_account("busy")
    conn = gcp_connector(key.json())
    results: list[ClientCredential] = []

    async def one(bucket: str) -> None:
        results.append(await gcp.mint(conn, "gcs-bucket", bucket))

    async with anyio.create_task_group() as group:
        for i in range(8):
            group.start_soon(one, f"bucket-{i}")
    tokens = {str(c.config["token"]) for c in results}
    assert len(tokens) == 8
    assert all(google.validate_token(t) == key.email for t in tokens)
    session = gcp._session
    assert session is not None and not session.closed
    await gcp.aclose()
    assert session.closed
