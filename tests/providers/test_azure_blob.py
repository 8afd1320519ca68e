"""Blob containers against Azurite (the real Blob API) over TLS with Entra tokens.

The connector's Entra and ARM are the loopback stand-ins; Azurite runs with
``--oauth basic`` and HTTPS, so the provider's storage token really opens the
account (list containers, user-delegation key), and the SAS it hands out is
checked by Azurite: it reads its own container, and not another one.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from azure.core.exceptions import HttpResponseError
from azure.storage.blob import ContainerClient

from broker.errors import CredentialsRejected
from broker.model import Connector, Value
from broker.providers.azure import AzureProvider
from broker.providers.base import ProviderContext
from tests.providers.connectors import make_connector
from tests.servers.azure_storage import ACCOUNT, AzureStandIn, Azurite, start_azurite
from tests.servers.tls import CertificateAuthority, make_ca

SUB = "11111111-2222-3333-4444-555555555555"


@pytest.fixture(scope="module")
def ca() -> CertificateAuthority:
    return make_ca("azure test CA")


@pytest.fixture(scope="module")
def azurite(
    tmp_path_factory: pytest.TempPathFactory, ca: CertificateAuthority
) -> Iterator[Azurite]:
    with start_azurite(tmp_path_factory.mktemp("azurite"), ca) as server:
        server.seed(
            tmp_path_factory.mktemp("ca"),
            {name: {"hello.txt": f"in {name}".encode()} for name in ("reports", "secrets")},
        )
        yield server


@pytest.fixture(scope="module")
def stand_in(ca: CertificateAuthority) -> Iterator[AzureStandIn]:
    with AzureStandIn(ca) as server:
        server.cloud.subscriptions = [SUB]
        server.cloud.storage_accounts = {SUB: [ACCOUNT]}
        yield server


@pytest.fixture
async def provider() -> AsyncIterator[AzureProvider]:
    azure = AzureProvider(ProviderContext(request_timeout=10.0))
    yield azure
    await azure.aclose()


def connector(stand_in: AzureStandIn, azurite: Azurite, **extra: Value) -> Connector:
    app = stand_in.entra.add_secret_app()
    now = datetime.now(UTC)
    config: dict[str, Value] = {
        "tenant_id": stand_in.entra.tenant,
        "client_id": app.client_id,
        "client_secret": app.secret,
        "subscription_id": SUB,
        "blob_endpoint": f"{azurite.url}/{{account}}",
        **stand_in.connector_config(),
        **extra,
    }
    return make_connector(
        "azure", "service-principal", config, name="az-blob", expiration_seconds=900, now=now
    )


@pytest.mark.anyio
async def test_containers_listed_and_a_user_delegation_sas_reads_only_its_container(
    provider: AzureProvider, stand_in: AzureStandIn, azurite: Azurite, tmp_path: Path
) -> None:
    conn = connector(stand_in, azurite)
    found = await provider.discover(conn, "blob-container", None)
    assert found == [f"az://{ACCOUNT}/reports", f"az://{ACCOUNT}/secrets"]
    assert await provider.discover(conn, "blob-container", f"az://{ACCOUNT}/reports") == [
        f"az://{ACCOUNT}/reports"
    ]
    before = datetime.now(UTC)
    cred = await provider.mint(conn, "blob-container", f"az://{ACCOUNT}/reports")
    assert cred.auth_method == "sas-token" and cred.expires_at is not None
    # The connector's 900 s expiration, to the second.
    assert before + timedelta(seconds=898) <= cred.expires_at <= before + timedelta(seconds=901)
    sas = str(cred.config["sas_token"])
    assert "skoid=" in sas and "sr=c" in sas  # a user-delegation SAS for a container
    ca_file = str(azurite.ca.write(tmp_path))
    mine = ContainerClient.from_container_url(
        str(cred.config["container_url"]), credential=sas, connection_verify=ca_file
    )
    assert mine.download_blob("hello.txt").readall() == b"in reports"
    assert [b.name for b in mine.list_blobs()] == ["hello.txt"]
    mine.upload_blob("new.txt", b"written with the SAS")
    mine.close()
    other = ContainerClient(
        azurite.account_url, "secrets", credential=sas, connection_verify=ca_file
    )
    with pytest.raises(HttpResponseError) as refused:
        other.download_blob("hello.txt").readall()
    assert refused.value.status_code == 403
    other.close()


@pytest.mark.anyio
async def test_storage_token_only_when_configured_and_azurite_checks_its_audience(
    provider: AzureProvider, stand_in: AzureStandIn, azurite: Azurite
) -> None:
    conn = connector(stand_in, azurite, blob_credential="access-token")
    cred = await provider.mint(conn, "blob-container", f"az://{ACCOUNT}/secrets")
    assert cred.auth_method == "access-token"
    claims = stand_in.entra.validate(str(cred.config["token"]), "https://storage.azure.com")
    assert claims is not None
    # A token for another audience (ARM) is refused by Azurite: listing fails as rejected.
    arm_token = stand_in.entra.issue("someone", stand_in.url)
    passthrough = Connector(
        id="id-tok",
        name="az-tok",
        connector_type="azure",
        auth_method="access-token",
        resource_type=None,
        resource_id=None,
        config={
            "token": arm_token,
            "blob_endpoint": f"{azurite.url}/{{account}}",
            "certificate_authority": azurite.ca.cert_pem,
        },
        labels={},
        expiration_seconds=None,
        expires_at=datetime.now(UTC) + timedelta(hours=1),
        created_at=datetime.now(UTC),
        updated_at=datetime.now(UTC),
        revision=1,
    )
    with pytest.raises(CredentialsRejected) as err:
        await provider.discover(passthrough, "blob-container", f"az://{ACCOUNT}/secrets")
    assert "secrets" in str(err.value)
