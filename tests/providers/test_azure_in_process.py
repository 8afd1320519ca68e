"""The azure connector type against the Entra/ARM/ACR stand-ins, carried in process.

Every request goes through the provider's real code (azure-identity's async
credentials, the ARM REST calls, the ACR exchange) on an InProcessTransport,
to public-cloud URLs (login.microsoftonline.com, management.azure.com,
NAME.azurecr.io) that the one test application answers.
"""

from __future__ import annotations

import base64
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import jwt
import pytest
from aiohttp import web

from broker.clock import FakeClock
from broker.errors import (
    CredentialsRejected,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    UpstreamError,
)
from broker.model import Connector, Value
from broker.providers.azure import AzureProvider
from broker.providers.base import ProviderContext
from broker.providers.testing import InProcessTransport
from tests.providers.connectors import make_connector
from tests.servers.azure_arm import ACR_USER, AzureCloud, Cluster
from tests.servers.azure_entra import AKS_RESOURCE, EntraAuthority, make_rsa_cert

SUB = "11111111-2222-3333-4444-555555555555"
OTHER_SUB = "99999999-2222-3333-4444-555555555555"
CA = make_rsa_cert("aks ca")[0]


@pytest.fixture
def entra() -> EntraAuthority:
    return EntraAuthority(token_lifetime=3600)


@pytest.fixture
def cloud(entra: EntraAuthority) -> AzureCloud:
    cloud = AzureCloud(entra, subscriptions=[SUB, OTHER_SUB])
    cloud.clusters = [
        Cluster(SUB, "rg-a", "prod", "https://prod-dns.hcp.westeurope.azmk8s.io:443", CA),
        Cluster(SUB, "rg-a", "dup", "https://dup-a.azmk8s.io:443", CA),
        Cluster(SUB, "rg-b", "dup", "https://dup-b.azmk8s.io:443", CA),
        Cluster(OTHER_SUB, "rg-z", "elsewhere", "https://z.azmk8s.io:443", CA),
    ]
    cloud.registries = {SUB: ["brokeracr", "otheracr", "thirdacr"], OTHER_SUB: ["farawayacr"]}
    return cloud


@pytest.fixture
async def transport(entra: EntraAuthority, cloud: AzureCloud) -> AsyncIterator[InProcessTransport]:
    app = web.Application()
    entra.routes(app)
    cloud.routes(app)
    async with InProcessTransport(app) as transport:
        yield transport


def make_provider(transport: InProcessTransport, **env: str) -> AzureProvider:
    enable = env.pop("implicit", "") == "yes"
    return AzureProvider(
        ProviderContext(
            clock=FakeClock(datetime.now(UTC)),
            env=env,
            request_timeout=5.0,
            transport=transport,
            enable_implicit_auth=enable,
        )
    )


@pytest.fixture
async def provider(transport: InProcessTransport) -> AsyncIterator[AzureProvider]:
    azure = make_provider(transport)
    yield azure
    await azure.aclose()


def connector(
    method: str = "service-principal",
    *,
    resource_type: str | None = None,
    resource_id: str | None = None,
    expires_at: datetime | None = None,
    **config: Value,
) -> Connector:
    return make_connector(
        "azure",
        method,
        config,
        name="az-conn",
        resource_type=resource_type,
        resource_id=resource_id,
        expires_at=expires_at,
    )


def secret_connector(entra: EntraAuthority, **extra: Value) -> Connector:
    app = entra.add_secret_app()
    return connector(
        tenant_id=entra.tenant,
        client_id=app.client_id,
        client_secret=app.secret,
        subscription_id=SUB,
        **extra,
    )


@pytest.mark.anyio
async def test_generic_is_one_entra_post_for_an_arm_token_with_its_real_expiry(
    provider: AzureProvider, entra: EntraAuthority, transport: InProcessTransport
) -> None:
    conn = secret_connector(entra)
    assert provider.default_resource_id(conn, "azure-generic") == SUB
    before = int(time.time())
    cred = await provider.mint(conn, "azure-generic", f"/subscriptions/{SUB.upper()}")
    claims = entra.validate(str(cred.config["token"]), "https://management.azure.com")
    assert claims is not None and claims["appid"] == conn.config["client_id"]
    assert cred.resource_id == SUB and cred.connector_type == "azure"
    assert cred.expires_at is not None
    assert before + 3600 - 5 <= cred.expires_at.timestamp() <= int(time.time()) + 3600 + 5
    assert [(s.method, s.host, s.path) for s in transport.sent] == [
        ("POST", "login.microsoftonline.com", f"/{entra.tenant}/oauth2/v2.0/token")
    ]
    assert entra.requests[-1][1:] == ("https://management.azure.com/.default", "secret", True)


@pytest.mark.anyio
async def test_a_certificate_signs_the_client_assertion(
    provider: AzureProvider, entra: EntraAuthority
) -> None:
    app = entra.add_certificate_app()
    assert app.cert_pem is not None and app.key_pem is not None
    conn = connector(
        tenant_id=entra.domain,
        client_id=app.client_id,
        client_certificate=app.cert_pem + app.key_pem,
        subscription_id=SUB,
    )
    cred = await provider.mint(conn, "azure-generic", SUB)
    assert entra.validate(str(cred.config["token"]), "https://management.azure.com")
    assert entra.requests[-1][2:] == ("assertion", True)
    # Another key with the registered client ID: Entra refuses the assertion.
    other_cert, other_key, _ = make_rsa_cert("impostor")
    forged = connector(
        tenant_id=entra.tenant,
        client_id=app.client_id,
        client_certificate=other_cert + other_key,
    )
    with pytest.raises(CredentialsRejected, match="AADSTS700027"):
        await provider.mint(forged, "azure-generic", entra.tenant)


@pytest.mark.anyio
async def test_a_wrong_secret_is_rejected_after_one_attempt(
    provider: AzureProvider, entra: EntraAuthority, transport: InProcessTransport
) -> None:
    app = entra.add_secret_app()
    conn = connector(tenant_id=entra.tenant, client_id=app.client_id, client_secret="wrong")
    with pytest.raises(CredentialsRejected, match="AADSTS7000215") as err:
        await provider.mint(conn, "azure-generic", entra.tenant)
    assert not err.value.retryable
    assert "wrong" not in str(err.value)
    assert transport.count() == 1


@pytest.mark.anyio
async def test_aks_gets_server_ca_and_a_token_for_the_aks_server_app(
    provider: AzureProvider, entra: EntraAuthority, cloud: AzureCloud
) -> None:
    conn = secret_connector(entra)
    assert await provider.discover(conn, "kubernetes-cluster", None) == [
        "prod",
        "rg-a/dup",
        "rg-b/dup",
    ]
    cred = await provider.mint(conn, "kubernetes-cluster", "prod")
    assert cred.connector_type == "kubernetes" and cred.resource_id == "prod"
    assert cred.config["server"] == "https://prod-dns.hcp.westeurope.azmk8s.io:443"
    assert str(cred.config["certificate_authority"]).strip() == CA.strip()
    claims = entra.validate(str(cred.config["token"]), AKS_RESOURCE)
    assert claims is not None
    assert entra.requests[-1][1] == f"{AKS_RESOURCE}/.default"
    arm_id = (
        f"/subscriptions/{SUB}/resourceGroups/RG-B/providers/"
        "Microsoft.ContainerService/managedClusters/dup"
    )
    assert provider.canonical_resource_id(conn, "kubernetes-cluster", arm_id) == "rg-b/dup"
    cred_b = await provider.mint(conn, "kubernetes-cluster", arm_id)
    assert cred_b.config["server"] == "https://dup-b.azmk8s.io:443"
    with pytest.raises(InvalidArgument, match="several resource groups"):
        await provider.mint(conn, "kubernetes-cluster", "dup")
    with pytest.raises(NotFound):
        await provider.discover(conn, "kubernetes-cluster", "rg-a/missing")


@pytest.mark.anyio
async def test_acr_login_is_the_null_guid_and_an_exchanged_refresh_token(
    provider: AzureProvider, entra: EntraAuthority, cloud: AzureCloud, transport: InProcessTransport
) -> None:
    conn = secret_connector(entra)
    # Three registries, two per page: nextLink followed.
    assert await provider.discover(conn, "docker-registry", None) == [
        "brokeracr.azurecr.io",
        "otheracr.azurecr.io",
        "thirdacr.azurecr.io",
    ]
    cred = await provider.mint(conn, "docker-registry", "https://BrokerACR.azurecr.io/team/app")
    assert cred.resource_id == "brokeracr.azurecr.io"
    assert cred.config["username"] == ACR_USER
    assert cred.config["registry"] == "brokeracr.azurecr.io"
    refresh = str(cred.config["password"])
    claims = jwt.decode(refresh, options={"verify_signature": False})
    assert cred.expires_at is not None and int(cred.expires_at.timestamp()) == claims["exp"]
    assert transport.sent[-1].host == "brokeracr.azurecr.io"
    assert transport.sent[-1].path == "/oauth2/exchange"
    # The registry takes it as docker does: basic auth at /oauth2/token, then the bearer.
    session_transport = transport
    from broker.providers.http import client_session

    async with client_session(timeout=5, transport=session_transport) as http:
        basic = base64.b64encode(f"{ACR_USER}:{refresh}".encode()).decode()
        async with http.get(
            "https://brokeracr.azurecr.io/oauth2/token",
            params={"service": "brokeracr.azurecr.io", "scope": "repository:app:pull"},
            headers={"Authorization": f"Basic {basic}"},
        ) as reply:
            assert reply.status == 200
            access = (await reply.json())["access_token"]
        async with http.get(
            "https://brokeracr.azurecr.io/v2/", headers={"Authorization": f"Bearer {access}"}
        ) as reply:
            assert reply.status == 200
        async with http.get(
            "https://otheracr.azurecr.io/v2/", headers={"Authorization": f"Bearer {access}"}
        ) as reply:
            assert reply.status == 401  # scoped to its own registry
    assert provider.registry_resource_id(conn, "brokeracr.azurecr.io") == "brokeracr.azurecr.io"
    assert await provider.registry_hosts(conn) == {
        "brokeracr.azurecr.io": ACR_USER,
        "otheracr.azurecr.io": ACR_USER,
        "thirdacr.azurecr.io": ACR_USER,
    }
    assert provider.registry_resource_id(conn, "gcr.io") is None


@pytest.mark.anyio
async def test_arm_errors_are_typed_per_resource_type(
    provider: AzureProvider, entra: EntraAuthority, cloud: AzureCloud
) -> None:
    conn = secret_connector(entra)
    cloud.grants[str(conn.config["client_id"])] = {OTHER_SUB}
    with pytest.raises(PermissionDenied, match="AuthorizationFailed"):
        await provider.discover(conn, "docker-registry", None)
    with pytest.raises(NotFound, match="not visible"):
        await provider.discover(conn, "azure-generic", None)
    cloud.arm_audience = "https://somewhere-else"  # ARM now refuses every token
    with pytest.raises(CredentialsRejected, match="InvalidAuthenticationToken"):
        await provider.discover(conn, "kubernetes-cluster", None)


@pytest.mark.anyio
async def test_an_entra_scope_the_app_has_no_consent_for_is_refused(
    provider: AzureProvider, entra: EntraAuthority
) -> None:
    app = entra.add_secret_app(resources={"https://management.azure.com"})
    conn = connector(
        tenant_id=entra.tenant,
        client_id=app.client_id,
        client_secret=app.secret,
        subscription_id=SUB,
    )
    with pytest.raises(CredentialsRejected, match="AADSTS65001"):
        await provider.mint(conn, "kubernetes-cluster", "rg-a/prod")


@pytest.mark.anyio
async def test_access_token_is_handed_through_until_expires_at(
    provider: AzureProvider, entra: EntraAuthority, transport: InProcessTransport
) -> None:
    token = entra.issue("someone", "https://management.azure.com")
    until = datetime.now(UTC) + timedelta(minutes=30)
    conn = connector("access-token", token=token, subscription_id=SUB, expires_at=until)
    cred = await provider.mint(conn, "azure-generic", SUB)
    assert cred.config["token"] == token and cred.expires_at == until
    assert cred.issued_at is None
    assert transport.count() == 0
    assert await provider.discover(conn, "docker-registry", "brokeracr.azurecr.io") == [
        "brokeracr.azurecr.io"
    ]
    expired = connector(
        "access-token", token=token, expires_at=datetime.now(UTC) - timedelta(seconds=1)
    )
    with pytest.raises(FailedPrecondition, match="expired"):
        await provider.mint(expired, "azure-generic", "default")


@pytest.mark.anyio
async def test_implicit_needs_the_daemon_switch_and_reads_azure_env(
    transport: InProcessTransport, entra: EntraAuthority
) -> None:
    app = entra.add_secret_app()
    env = {
        "AZURE_TENANT_ID": entra.tenant,
        "AZURE_CLIENT_ID": app.client_id,
        "AZURE_CLIENT_SECRET": str(app.secret),
        "AZURE_SUBSCRIPTION_ID": SUB,
    }
    conn = connector("implicit")
    off = make_provider(transport, **env)
    with pytest.raises(InvalidArgument, match="BROKER_ENABLE_IMPLICIT_AUTH_METHODS"):
        await off.mint(conn, "azure-generic", SUB)
    on = make_provider(transport, implicit="yes", **env)
    try:
        cred = await on.mint(conn, "azure-generic", SUB)
        claims = entra.validate(str(cred.config["token"]), "https://management.azure.com")
        assert claims is not None and claims["appid"] == app.client_id
    finally:
        await off.aclose()
        await on.aclose()


@pytest.mark.anyio
async def test_implicit_workload_identity_federation_from_the_token_file(
    transport: InProcessTransport, entra: EntraAuthority, tmp_path: Path
) -> None:
    issuer = "https://oidc.prod-aks.azure.com/cluster-1/"
    app = entra.add_federated_app(issuer, "system:serviceaccount:ci:deployer")
    token_file = tmp_path / "azure-identity-token"
    env = {
        "AZURE_TENANT_ID": entra.tenant,
        "AZURE_CLIENT_ID": app.client_id,
        "AZURE_FEDERATED_TOKEN_FILE": str(token_file),
        "implicit": "yes",
    }
    provider = make_provider(transport, **env)
    conn = connector("implicit", subscription_id=SUB)
    try:
        token_file.write_text(app.federated_token())
        cred = await provider.mint(conn, "azure-generic", SUB)
        claims = entra.validate(str(cred.config["token"]), "https://management.azure.com")
        assert claims is not None and claims["appid"] == app.client_id
        assert entra.requests[-1][2:] == ("federated", True)
        # Another service account's token: no federated identity record matches.
        token_file.write_text(app.federated_token(sub="system:serviceaccount:ci:intruder"))
        with pytest.raises(CredentialsRejected, match="AADSTS700213"):
            await provider.mint(conn, "azure-generic", SUB)
    finally:
        await provider.aclose()


@pytest.mark.anyio
async def test_an_unreachable_authority_is_a_retryable_upstream_error(
    entra: EntraAuthority,
) -> None:
    app = web.Application()
    entra.routes(app)
    async with InProcessTransport(app, hosts=["login.chinacloudapi.cn"]) as transport:
        provider = make_provider(transport)
        try:
            with pytest.raises(UpstreamError) as err:
                await provider.mint(secret_connector(entra), "azure-generic", SUB)
            assert err.value.retryable
            assert "login.microsoftonline.com" in err.value.message
            # The sovereign authority is reached once the connector names it.
            china = secret_connector(entra, authority_host="https://login.chinacloudapi.cn")
            cred = await provider.mint(china, "azure-generic", SUB)
            assert entra.validate(str(cred.config["token"]), "https://management.azure.com")
            assert [s.host for s in transport.sent] == ["login.chinacloudapi.cn"]
        finally:
            await provider.aclose()
