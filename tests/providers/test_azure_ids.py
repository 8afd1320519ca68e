"""azure connector input: tenant/client/subscription IDs, endpoints, resource IDs in every form."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from broker.errors import FailedPrecondition, InvalidArgument
from broker.model import AutoConfigureOptions, Connector, Value
from broker.providers.azure import AzureProvider
from broker.providers.azure.settings import AzureSettings
from tests.providers.connectors import make_connector

TENANT = "72f988bf-86f1-41af-91ab-2d7cd011db47"
CLIENT = "04b07795-8ddb-461a-bbee-02f9e1bf7b46"
SUB = "11111111-2222-3333-4444-555555555555"
NOW = datetime(2030, 1, 1, tzinfo=UTC)


def connector(method: str = "service-principal", **config: Value) -> Connector:
    base: dict[str, Value] = {"tenant_id": TENANT, "client_id": CLIENT, "client_secret": "s3cr3t"}
    if method != "service-principal":
        base = {}
    return make_connector(
        "azure",
        method,
        {**base, "subscription_id": SUB, **config},
        name="az",
        now=NOW,
    )


@pytest.mark.parametrize(
    ("config", "field"),
    [
        ({"tenant_id": "not a tenant"}, "tenant_id"),
        ({"tenant_id": "contoso"}, "tenant_id"),
        ({"client_id": "1234"}, "client_id"),
        ({"client_id": CLIENT + "0"}, "client_id"),
        ({"subscription_id": "my-subscription"}, "subscription_id"),
        (
            {"client_certificate": "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----"},
            "client_certificate",
        ),
        ({"client_secret": ""}, "client_secret"),
        ({"authority_host": "http://login.example"}, "authority_host"),
        ({"arm_endpoint": "management.azure.com"}, "arm_endpoint"),
        ({"blob_endpoint": "https://127.0.0.1:10000/devstoreaccount1"}, "blob_endpoint"),
        ({"acr_scheme": "ftp"}, "acr_scheme"),
        ({"storage_endpoint_suffix": "core..windows.net"}, "storage_endpoint_suffix"),
        ({"blob_credential": "account-key"}, "blob_credential"),
    ],
)
def test_bad_configuration_names_the_field(config: dict[str, Value], field: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        AzureProvider().validate(connector(**config))
    assert err.value.field == field
    assert "s3cr3t" not in err.value.message


def test_secret_and_certificate_are_exclusive_and_a_domain_tenant_is_fine() -> None:
    with pytest.raises(InvalidArgument, match="exactly one"):
        AzureProvider().validate(connector(client_certificate="x"))
    settings = AzureSettings.from_connector(connector(tenant_id="Contoso.OnMicrosoft.com"), {})
    assert settings.tenant == "contoso.onmicrosoft.com"
    assert "s3cr3t" not in repr(settings)


@pytest.mark.parametrize(
    ("resource_type", "raw", "canonical"),
    [
        ("azure-generic", SUB.upper(), SUB),
        ("azure-generic", f"/subscriptions/{SUB}", SUB),
        ("blob-container", "az://mystore/data", "az://mystore/data"),
        ("blob-container", "az://mystore/data/", "az://mystore/data"),
        ("blob-container", "https://MyStore.blob.core.windows.net/data", "az://mystore/data"),
        (
            "blob-container",
            f"/subscriptions/{SUB}/resourceGroups/rg/providers/Microsoft.Storage/storageAccounts/"
            "mystore/blobServices/default/containers/data",
            "az://mystore/data",
        ),
        ("blob-container", "az://mystore/$web", "az://mystore/$web"),
        ("kubernetes-cluster", "prod", "prod"),
        ("kubernetes-cluster", "RG-Prod/prod", "rg-prod/prod"),
        (
            "kubernetes-cluster",
            f"/subscriptions/{SUB}/resourcegroups/RG-Prod/providers/"
            "Microsoft.ContainerService/managedClusters/prod",
            "rg-prod/prod",
        ),
        ("docker-registry", "MyACR.azurecr.io", "myacr.azurecr.io"),
        ("docker-registry", "https://myacr.azurecr.io/team/app:v1", "myacr.azurecr.io"),
        (
            "docker-registry",
            f"/subscriptions/{SUB}/resourceGroups/rg/providers/Microsoft.ContainerRegistry/"
            "registries/myacr",
            "myacr.azurecr.io",
        ),
    ],
)
def test_every_accepted_form_becomes_the_canonical_id(
    resource_type: str, raw: str, canonical: str
) -> None:
    assert AzureProvider().canonical_resource_id(connector(), resource_type, raw) == canonical


@pytest.mark.parametrize(
    ("resource_type", "raw", "reason"),
    [
        ("azure-generic", "99999999-2222-3333-4444-555555555555", "not this connector's"),
        ("blob-container", "mystore/data", "no az://"),
        ("blob-container", "az://My_Store/data", "storage account names"),
        ("blob-container", "az://mystore/Data", "container names"),
        ("blob-container", "az://mystore/a--b", "container names"),
        ("blob-container", "az://mystore/data/blob.txt", "blob path"),
        ("blob-container", "https://mystore.blob.core.chinacloudapi.cn/data", "the host is not"),
        (
            "blob-container",
            "/subscriptions/99999999-2222-3333-4444-555555555555/resourceGroups/rg/providers/"
            "Microsoft.Storage/storageAccounts/mystore/blobServices/default/containers/data",
            "connector serves subscription",
        ),
        ("kubernetes-cluster", "a/b/c", "too many"),
        ("kubernetes-cluster", "-prod", "cluster names"),
        (
            "kubernetes-cluster",
            f"/subscriptions/{SUB}/resourceGroups/rg/providers/Microsoft.Compute/vms/x",
            "not a Microsoft.ContainerService",
        ),
        ("docker-registry", "myacr.azurecr.cn", "the host is not"),
        ("docker-registry", "acr.azurecr.io", "5 to 50"),
        ("docker-registry", "https://user:pw@myacr.azurecr.io", "user name"),
        ("docker-registry", "/subscriptions/x/resourceGroups/rg", "malformed"),
    ],
)
def test_bad_resource_ids_are_typed_errors_naming_resource_id(
    resource_type: str, raw: str, reason: str
) -> None:
    with pytest.raises(InvalidArgument, match=reason) as err:
        AzureProvider().canonical_resource_id(connector(), resource_type, raw)
    assert err.value.field == "resource_id"


def test_sovereign_suffixes_move_the_accepted_hosts() -> None:
    china = connector(storage_endpoint_suffix="core.chinacloudapi.cn", acr_suffix="azurecr.cn")
    provider = AzureProvider()
    assert (
        provider.canonical_resource_id(
            china, "blob-container", "https://store1.blob.core.chinacloudapi.cn/logs"
        )
        == "az://store1/logs"
    )
    assert provider.canonical_resource_id(china, "docker-registry", "reg01.azurecr.cn") == (
        "reg01.azurecr.cn"
    )
    assert provider.registry_resource_id(china, "reg01.azurecr.cn") == "reg01.azurecr.cn"
    assert provider.registry_resource_id(china, "reg01.azurecr.io") is None


def test_auto_configure_from_azure_env_and_the_cli_profile(tmp_path: Path) -> None:
    provider = AzureProvider()
    env = {
        "AZURE_TENANT_ID": TENANT,
        "AZURE_CLIENT_ID": CLIENT,
        "AZURE_CLIENT_SECRET": "from-env",
        "AZURE_SUBSCRIPTION_ID": SUB,
        "HOME": str(tmp_path),
    }
    found = provider.auto_configure(AutoConfigureOptions(), env)
    assert found.auth_method == "service-principal"
    assert dict(found.config) == {
        "tenant_id": TENANT,
        "client_id": CLIENT,
        "client_secret": "from-env",
        "subscription_id": SUB,
    }
    with pytest.raises(FailedPrecondition, match="az login"):
        provider.auto_configure(AutoConfigureOptions(), {"HOME": str(tmp_path)})
    (tmp_path / ".azure").mkdir()
    profile = {
        "subscriptions": [
            {
                "id": "00000000-0000-0000-0000-00000000000a",
                "tenantId": "t-other",
                "isDefault": False,
            },
            {"id": SUB, "tenantId": TENANT, "isDefault": True},
        ]
    }
    # The CLI writes its profile with a byte order mark.
    (tmp_path / ".azure" / "azureProfile.json").write_text(
        "\ufeff" + json.dumps(profile), encoding="utf-8"
    )
    cli = provider.auto_configure(AutoConfigureOptions(), {"HOME": str(tmp_path)})
    assert cli.auth_method == "implicit"
    assert dict(cli.config) == {"tenant_id": TENANT, "subscription_id": SUB}


def test_endpoint_attributes_build_the_urls_the_provider_calls() -> None:
    urls = AzureSettings.from_connector(
        connector(
            acr_scheme="http",
            blob_endpoint="https://127.0.0.1:10000/{account}",
            arm_endpoint="https://management.usgovcloudapi.net/",
        ),
        {},
    ).endpoints
    assert urls.acr_url("myacr.azurecr.io") == "http://myacr.azurecr.io"
    assert urls.blob_url("store1") == "https://127.0.0.1:10000/store1"
    assert urls.arm_scope == "https://management.usgovcloudapi.net/.default"
    templated = AzureSettings.from_connector(
        connector(acr_endpoint="https://10.0.0.5/acr/{name}"), {}
    ).endpoints
    assert templated.acr_url("myacr.azurecr.io") == "https://10.0.0.5/acr/myacr"
    assert templated.blob_url("store1") == "https://store1.blob.core.windows.net"
