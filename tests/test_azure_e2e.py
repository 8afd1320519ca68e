"""azure connectors end to end: the real daemon, `broker` CLI, kubectl and the docker helper.

Entra, ARM and ACR are the loopback TLS stand-ins (tests.servers.azure_storage.AzureStandIn),
which check the client secret, scopes, audiences, signatures and expiry of every token;
blob storage is Azurite. The connector's endpoint attributes point there, with the test CA
as its only trust root. kubectl reaches the Kubernetes test API server (standing in for an
AKS API server) through the exec plugin; that server accepts only live Entra tokens issued
for the AKS server application.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.daemon import Daemon, running_daemon
from tests.servers.azure_arm import ACR_USER, Cluster
from tests.servers.azure_entra import AKS_RESOURCE
from tests.servers.azure_proxy import ConnectProxy
from tests.servers.azure_storage import ACCOUNT, AzureStandIn, Azurite, start_azurite
from tests.servers.kube_api import KubeApiServer, kubectl_version
from tests.servers.registry import TokenServer, start_registry
from tests.servers.tls import CertificateAuthority, make_ca
from tests.test_frontends import _make_oci_image
from tests.watching import renewed_token, stamp, watch_events

BIN = Path(sys.executable).parent
SUB = "11111111-2222-3333-4444-555555555555"
ACR_HOST = "brokeracr.azurecr.io"


@pytest.fixture(scope="module")
def ca() -> CertificateAuthority:
    return make_ca("azure e2e CA")


@pytest.fixture(scope="module")
def stand_in(ca: CertificateAuthority) -> Iterator[AzureStandIn]:
    with AzureStandIn(ca, hosts=(ACR_HOST,)) as server:
        server.cloud.subscriptions = [SUB]
        server.cloud.storage_accounts = {SUB: [ACCOUNT]}
        server.cloud.registries = {SUB: ["brokeracr"]}
        yield server


@pytest.fixture(scope="module")
def kube(stand_in: AzureStandIn) -> Iterator[KubeApiServer]:
    def entra_user(token: str) -> str | None:
        claims = stand_in.entra.validate(token, AKS_RESOURCE)
        return None if claims is None else f"entra:{claims['appid']}"

    with KubeApiServer(token_validator=entra_user) as api:
        stand_in.cloud.clusters = [Cluster(SUB, "rg-aks", "prod", api.url, api.ca_pem)]
        yield api


@pytest.fixture(scope="module")
def azurite(
    tmp_path_factory: pytest.TempPathFactory, ca: CertificateAuthority
) -> Iterator[Azurite]:
    with start_azurite(tmp_path_factory.mktemp("azurite"), ca) as server:
        server.seed(
            tmp_path_factory.mktemp("ca"), {"builds": {"artifact.txt": b"build 42"}, "private": {}}
        )
        yield server


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    home = tmp_path_factory.mktemp("azure-home")
    with running_daemon(home / "data", env={"HOME": str(home)}) as d:
        yield d


def _register(
    daemon: Daemon,
    name: str,
    stand_in: AzureStandIn,
    azurite: Azurite,
    tmp: Path,
    *extra: str,
    subscription: str | None = SUB,
) -> dict[str, Any]:
    app = stand_in.entra.add_secret_app()
    ca_file = stand_in.ca.write(tmp, f"ca-{name}")
    secret_file = tmp / f"secret-{name}"
    secret_file.write_text(str(app.secret))
    config = {**stand_in.connector_config(), "blob_endpoint": f"{azurite.url}/{{account}}"}
    config.pop("certificate_authority")
    return daemon.cli_json(
        "connector",
        "register",
        name,
        "--type",
        "azure",
        "--auth-method",
        "service-principal",
        f"tenant_id={stand_in.entra.tenant}",
        f"client_id={app.client_id}",
        f"client_secret=@{secret_file}",
        *([f"subscription_id={subscription}"] if subscription else []),
        f"certificate_authority=@{ca_file}",
        *(f"{k}={v}" for k, v in config.items()),
        *extra,
    )


def test_register_verify_list_get_kubectl_and_docker_helper(
    daemon: Daemon,
    stand_in: AzureStandIn,
    kube: KubeApiServer,
    azurite: Azurite,
    tmp_path: Path,
) -> None:
    registered = _register(
        daemon, "az", stand_in, azurite, tmp_path, "--expiration-seconds", "1200"
    )
    assert registered["connector"]["config"]["client_secret"] == "[HIDDEN]"
    found = {r["resource_type"]: r for r in registered["resources"]}
    assert {t: r["error"] for t, r in found.items()} == dict.fromkeys(found, None)
    assert found["azure-generic"]["resource_ids"] == [SUB]
    assert found["blob-container"]["resource_ids"] == [
        f"az://{ACCOUNT}/builds",
        f"az://{ACCOUNT}/private",
    ]
    assert found["kubernetes-cluster"]["resource_ids"] == ["prod"]
    assert found["docker-registry"]["resource_ids"] == ["brokeracr.azurecr.io"]

    verified = daemon.cli_json("connector", "verify", "az", "-r", "kubernetes-cluster")
    assert verified[0]["resource_ids"] == ["prod"]
    listed = daemon.cli("connector", "list-resources", "--output", "json").stdout
    assert "brokeracr.azurecr.io" in listed and f"az://{ACCOUNT}/builds" in listed

    def get(resource_type: str, resource_id: str | None = None) -> dict[str, Any]:
        args = ["-r", resource_type] + (["-i", resource_id] if resource_id else [])
        return daemon.cli_json("credentials", "get", "az", *args)  # type: ignore[no-any-return]

    before = datetime.now(UTC) - timedelta(seconds=1)
    generic = get("azure-generic")
    assert (generic["connector_type"], generic["auth_method"]) == ("azure", "access-token")
    assert stand_in.entra.validate(generic["config"]["token"], stand_in.url) is not None
    assert stamp(generic["expires_at"]) >= before + timedelta(seconds=3600)

    blob = get("blob-container", f"https://{ACCOUNT}.blob.core.windows.net/builds")
    assert blob["resource_id"] == f"az://{ACCOUNT}/builds"
    expiry = stamp(blob["expires_at"])
    assert before + timedelta(seconds=1200) <= expiry <= datetime.now(UTC) + timedelta(seconds=1201)
    from azure.core.exceptions import HttpResponseError
    from azure.storage.blob import ContainerClient

    ca_file = str(stand_in.ca.write(tmp_path, "verify-ca"))
    builds = ContainerClient.from_container_url(
        blob["config"]["container_url"],
        credential=blob["config"]["sas_token"],
        connection_verify=ca_file,
    )
    assert builds.download_blob("artifact.txt").readall() == b"build 42"
    builds.close()
    private = ContainerClient(
        azurite.account_url,
        "private",
        credential=blob["config"]["sas_token"],
        connection_verify=ca_file,
    )
    with pytest.raises(HttpResponseError) as refused:
        list(private.list_blobs())
    assert refused.value.status_code == 403
    private.close()

    aks = get(
        "kubernetes-cluster",
        f"/subscriptions/{SUB}/resourceGroups/rg-aks/providers/"
        "Microsoft.ContainerService/managedClusters/prod",
    )
    assert aks["resource_id"] == "rg-aks/prod"
    assert aks["config"]["server"] == kube.url
    assert stand_in.entra.validate(aks["config"]["token"], AKS_RESOURCE) is not None

    # kubectl through the exec plugin: the API server takes only live AKS-audience tokens.
    kubeconfig = tmp_path / "kubeconfig"
    daemon.cli(
        "login", "kubernetes", "az", "--resource-id", "prod", "--kubeconfig", str(kubeconfig)
    )
    assert aks["config"]["token"] not in kubeconfig.read_text()
    kubectl = kubectl_version(kubeconfig, daemon.env)
    assert kubectl.returncode == 0, kubectl.stderr
    assert any(user.startswith("entra:") for user in kube.users)
    arm_token = generic["config"]["token"]  # live, but for ARM: the API server refuses it
    forged = kube.write_kubeconfig(tmp_path / "forged", token=arm_token)
    refused_kube = kubectl_version(forged)
    assert refused_kube.returncode != 0 and "Unauthorized" in refused_kube.stderr

    # docker: the helper serves *.azurecr.io from the azure connector.
    got = daemon.docker_helper_get("https://brokeracr.azurecr.io")
    assert got.returncode == 0, got.stdout + got.stderr
    answer = json.loads(got.stdout)
    assert answer["Username"] == ACR_USER
    # The refresh token works at the registry's token endpoint as docker uses it.
    basic = base64.b64encode(f"{ACR_USER}:{answer['Secret']}".encode()).decode()
    request = urllib.request.Request(
        f"{stand_in.url}/acr/brokeracr/oauth2/token?service=brokeracr.azurecr.io"
        "&scope=repository:app:pull",
        headers={"Authorization": f"Basic {basic}"},
    )
    import ssl

    context = ssl.create_default_context(cafile=ca_file)
    with urllib.request.urlopen(request, timeout=10, context=context) as reply:
        assert reply.status == 200 and json.load(reply)["access_token"]
    listed_hosts = subprocess.run(
        [str(BIN / "docker-credential-broker"), "list"],
        capture_output=True,
        text=True,
        timeout=30,
        env={**daemon.env, "BROKER_HELPER_SOCKET": str(daemon.data_dir / "helper.sock")},
    )
    assert json.loads(listed_hosts.stdout)[ACR_HOST] == ACR_USER
    unknown = daemon.docker_helper_get("otheracr.azurecr.cn")
    assert unknown.returncode == 1
    assert str(stand_in.entra.apps) not in daemon.log()
    for app in stand_in.entra.apps.values():
        assert app.secret is None or app.secret not in daemon.log()


@pytest.mark.slow
def test_watch_sees_the_entra_token_renewed(
    daemon: Daemon, stand_in: AzureStandIn, azurite: Azurite, tmp_path: Path
) -> None:
    stand_in.entra.token_lifetime = 8
    try:
        _register(
            daemon, "az-short", stand_in, azurite, tmp_path, "-r", "azure-generic", "--no-verify"
        )
        events = watch_events(daemon, "az-short", 2, 30)
    finally:
        stand_in.entra.token_lifetime = 3600
    assert stand_in.entra.validate(renewed_token(events), stand_in.url)


class _AcrTokenSigner(TokenServer):
    """Signs the access tokens the real registry verifies; never started: the ACR stand-in's
    /oauth2/token (behind the registry host) is the realm that hands them out."""

    @property
    def realm(self) -> str:
        return f"https://{ACR_HOST}/oauth2/token"


def test_skopeo_pushes_and_inspects_through_the_docker_helper(
    daemon: Daemon, stand_in: AzureStandIn, azurite: Azurite, tmp_path: Path
) -> None:
    _register(daemon, "acr", stand_in, azurite, tmp_path, "-r", "docker-registry", "--no-verify")
    (tmp_path / "registry").mkdir()
    signer = _AcrTokenSigner(tmp_path / "registry", {}, service=ACR_HOST, issuer="acr-stand-in")
    cert_dir = tmp_path / "certs"
    cert_dir.mkdir()
    (cert_dir / "ca.crt").write_text(stand_in.ca.cert_pem)
    # broker login docker: the credHelpers entry, and 'acr' preferred over 'az' for the host.
    daemon.cli("login", "docker", "acr", "-i", ACR_HOST, "--config", str(tmp_path / "docker"))
    authfile = tmp_path / "docker" / "config.json"
    assert json.loads(authfile.read_text())["credHelpers"] == {ACR_HOST: "broker"}
    src = tmp_path / "img"
    _make_oci_image(src)
    with (
        start_registry(tmp_path / "registry", token_server=signer) as registry,
        ConnectProxy({f"{ACR_HOST}:443": stand_in.port}) as proxy,
    ):
        stand_in.cloud.registry_backend = registry.url
        stand_in.cloud.registry_tokens = signer.issue
        env = {
            **daemon.env,
            "PATH": f"{BIN}:{daemon.env.get('PATH', '/usr/bin:/bin')}",
            "HTTPS_PROXY": proxy.url,
            "BROKER_HELPER_SOCKET": str(daemon.data_dir / "helper.sock"),
        }

        def skopeo(*args: str, auth: Path = authfile) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                ["skopeo", *args[:1], "--authfile", str(auth), *args[1:]],
                capture_output=True,
                text=True,
                timeout=60,
                env=env,
            )

        try:
            push = skopeo(
                "copy",
                "--dest-cert-dir",
                str(cert_dir),
                f"oci:{src}:v1",
                f"docker://{ACR_HOST}/team/app:v1",
            )
            assert push.returncode == 0, push.stderr
            inspect = skopeo(
                "inspect", "--cert-dir", str(cert_dir), f"docker://{ACR_HOST}/team/app:v1"
            )
            assert inspect.returncode == 0, inspect.stderr
            assert json.loads(inspect.stdout)["Name"] == f"{ACR_HOST}/team/app"
            # Without the helper the registry refuses: the token came from the broker's login.
            anonymous = tmp_path / "anonymous.json"
            anonymous.write_text("{}")
            refused = skopeo(
                "inspect",
                "--cert-dir",
                str(cert_dir),
                f"docker://{ACR_HOST}/team/app:v1",
                auth=anonymous,
            )
            assert refused.returncode != 0
            assert "unauthorized" in refused.stderr.lower() or "401" in refused.stderr
        finally:
            stand_in.cloud.registry_backend = None
            stand_in.cloud.registry_tokens = None
    assert f"{ACR_HOST}:443" in proxy.seen
    exchanges = [c for c in stand_in.cloud.calls if c[1].endswith("/oauth2/exchange")]
    assert exchanges and all(status == 200 for _, _, status in exchanges)


def test_auto_configure_from_azure_env(
    daemon: Daemon, stand_in: AzureStandIn, azurite: Azurite, tmp_path: Path
) -> None:
    app = stand_in.entra.add_secret_app()
    ca_file = stand_in.ca.write(tmp_path, "ca-auto")
    endpoints = {
        k: v for k, v in stand_in.connector_config().items() if k != "certificate_authority"
    }
    registered = daemon.cli_json(
        "connector",
        "register",
        "az-auto",
        "--type",
        "azure",
        "--auto-configure",
        "-r",
        "azure-generic",
        f"certificate_authority=@{ca_file}",
        *(f"{k}={v}" for k, v in endpoints.items()),
        env={
            "AZURE_TENANT_ID": stand_in.entra.tenant,
            "AZURE_CLIENT_ID": app.client_id,
            "AZURE_CLIENT_SECRET": str(app.secret),
            "AZURE_SUBSCRIPTION_ID": SUB,
        },
    )
    connector = registered["connector"]
    assert connector["auth_method"] == "service-principal"
    assert connector["config"]["client_secret"] == "[HIDDEN]"
    assert connector["config"]["subscription_id"] == SUB
    assert registered["resources"][0]["resource_ids"] == [SUB]
    assert str(app.secret) not in daemon.log()


def test_list_resources_without_a_subscription_spans_every_enabled_one(
    daemon: Daemon,
    stand_in: AzureStandIn,
    kube: KubeApiServer,
    azurite: Azurite,
    tmp_path: Path,
) -> None:
    """As az does: every Enabled subscription the principal sees (a Disabled one skipped,
    a failing one named in a partial error), IDs unambiguous across them."""
    second, disabled, broken = (f"{n}2222222-2222-3333-4444-555555555555" for n in "234")
    cloud = stand_in.cloud
    saved = (cloud.subscriptions, cloud.disabled, cloud.failing, cloud.registries, cloud.clusters)
    cloud.subscriptions = [SUB, second, disabled, broken]
    cloud.disabled = {disabled}
    cloud.failing = {broken: 503}
    cloud.registries = {**cloud.registries, second: ["secondacr"], disabled: ["ghostacr"]}
    cloud.clusters = [
        *cloud.clusters,
        Cluster(second, "rg-aks", "prod", kube.url, kube.ca_pem),
        Cluster(disabled, "rg-aks", "ghost", kube.url, kube.ca_pem),
    ]
    try:
        _register(daemon, "az-all", stand_in, azurite, tmp_path, subscription=None)
        pages = sum(1 for c in cloud.calls if c[1] == "/subscriptions")
        listed = daemon.cli_json("connector", "list-resources", "--name", "az-all", "--refresh")
        # Four types, one enumeration shared by all: 4 subscriptions at 2 a page = 2 GETs.
        assert sum(1 for c in cloud.calls if c[1] == "/subscriptions") - pages == 2
        found = {r["resource_type"]: r for r in listed}
        assert found["azure-generic"] == {
            "connector": "az-all",
            "connector_type": "azure",
            "resource_type": "azure-generic",
            "resource_ids": [SUB, second, broken],
            "error": None,
        }
        assert found["kubernetes-cluster"]["resource_ids"] == [
            f"{SUB}/rg-aks/prod",
            f"{second}/rg-aks/prod",
        ]
        assert found["docker-registry"]["resource_ids"] == [ACR_HOST, "secondacr.azurecr.io"]
        assert found["blob-container"]["resource_ids"] == [
            f"az://{ACCOUNT}/builds",
            f"az://{ACCOUNT}/private",
        ]
        for listing in found.values():
            if listing["resource_type"] != "azure-generic":
                error = listing["error"]
                assert error.startswith(f"1 of 3 subscriptions failed: subscription '{broken}'")
                assert "503" in error and SUB not in error and second not in error
        assert not [c for c in cloud.calls if c[1].startswith(f"/subscriptions/{disabled}/")]
        kept = daemon.cli_json(
            "connector", "list-resources", "--name", "az-all", "--exclude-errors"
        )
        assert {r["resource_type"]: r["error"] for r in kept} == dict.fromkeys(found)
        # Filtering connectors by a subscription: az-all may serve any GUID (no ARM call);
        # a connector with subscription_id only its own.
        _register(daemon, "az-one", stand_in, azurite, tmp_path, "--no-verify")
        calls = len(cloud.calls)

        def serving(sub: str) -> set[str]:
            return {
                c["name"]
                for c in daemon.cli_json(
                    "connector", "list", "--resource-type", "azure-generic", "--resource-id", sub
                )
            } & {"az-all", "az-one"}

        assert serving(second) == {"az-all"}
        assert serving(f"/subscriptions/{SUB.upper()}") == {"az-all", "az-one"}
        assert len(cloud.calls) == calls

        # The credential is minted in the cluster's own subscription.
        aks = daemon.cli_json(
            "credentials",
            "get",
            "az-all",
            "-r",
            "kubernetes-cluster",
            "-i",
            f"{second}/rg-aks/prod",
        )
        assert aks["resource_id"] == f"{second}/rg-aks/prod"
        assert aks["config"]["server"] == kube.url
        assert cloud.calls[-1][1].startswith(f"/subscriptions/{second}/resourceGroups/rg-aks/")
        generic = daemon.cli_json(
            "credentials", "get", "az-all", "-r", "azure-generic", "-i", second
        )
        assert generic["config"]["subscription_id"] == second
    finally:
        (cloud.subscriptions, cloud.disabled, cloud.failing, cloud.registries, cloud.clusters) = (
            saved
        )
