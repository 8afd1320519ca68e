"""The gcp connector type against the local Google test server (tokens, impersonation, APIs)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from broker.attributes import parse_value
from broker.clock import FakeClock, SystemClock
from broker.errors import (
    ConnectorExpired,
    CredentialsRejected,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    UpstreamError,
)
from broker.model import Connector, Value
from broker.providers.base import ProviderContext
from broker.providers.gcp import GcpProvider
from broker.providers.gcp.spec import SPEC
from broker.providers.gcp.tokens import parse_rfc3339
from tests.providers.connectors import make_connector
from tests.servers.google import GoogleServer
from tests.servers.google_accounts import ServiceAccountKey, new_rsa_key, shared_rsa_key
from tests.servers.ports import free_port

PROJECT = "broker-test"
T0 = datetime(2030, 1, 1, tzinfo=UTC)


@pytest.fixture(autouse=True)
def _no_real_google(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    empty = tmp_path / "gcloud-empty"
    empty.mkdir()
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(empty))
    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
    yield


@pytest.fixture
def google() -> Iterator[GoogleServer]:
    with GoogleServer(token_lifetime=1800) as server:
        yield server


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(T0)


@pytest.fixture
async def provider(google: GoogleServer, clock: FakeClock) -> AsyncIterator[GcpProvider]:
    gcp = GcpProvider(ProviderContext(clock=clock, env=google.env(), request_timeout=5.0))
    yield gcp
    await gcp.aclose()


def connector(
    method: str,
    *,
    expiration_seconds: int | None = None,
    expires_at: datetime | None = None,
    **raw: Value,
) -> Connector:
    """A connector as the daemon builds it: attributes parsed, defaults filled."""
    spec = SPEC.auth_method(method)
    assert spec is not None
    config: dict[str, Value] = {}
    for attr in spec.attributes:
        if attr.name in raw:
            config[attr.name] = parse_value(attr, raw[attr.name])
        elif attr.default is not None:
            config[attr.name] = attr.default
    now = datetime.now(UTC)
    return make_connector(
        "gcp",
        method,
        config,
        name="gcp-conn",
        expiration_seconds=expiration_seconds,
        expires_at=expires_at,
        now=now,
    )


def sa_connector(key: ServiceAccountKey, **raw: Value) -> Connector:
    return connector("service-account", service_account_json=key.json(), **raw)


# -- tokens ------------------------------------------------------------------------


@pytest.mark.anyio
async def test_service_account_token_from_the_jwt_server(
    provider: GcpProvider, google: GoogleServer, clock: FakeClock
) -> None:
    key = google.service_account("minter")
    cred = await provider.mint(sa_connector(key), "gcp-generic", PROJECT)
    assert (cred.connector_type, cred.auth_method) == ("gcp", "oauth2-token")
    assert cred.resource_id == PROJECT
    assert cred.config["project_id"] == PROJECT
    assert cred.secret_names == frozenset({"token"})
    assert google.validate_token(str(cred.config["token"])) == key.email
    assert cred.issued_at == T0
    assert cred.expires_at == T0 + timedelta(seconds=1800)  # the server's expires_in
    [issued] = google.issued
    assert (issued.via, issued.scope) == ("jwt", "https://www.googleapis.com/auth/cloud-platform")


@pytest.mark.anyio
async def test_wrong_key_is_rejected_without_echoing_it(
    provider: GcpProvider, google: GoogleServer
) -> None:
    real = google.service_account("victim")
    forged = ServiceAccountKey(real.email, PROJECT, google.token_uri, new_rsa_key())
    with capture_logs() as logs, pytest.raises(CredentialsRejected) as err:
        await provider.mint(sa_connector(forged), "gcs-bucket", "gs://some-bucket")
    message = str(err.value)
    assert "Invalid JWT Signature" in message
    assert real.email in message
    body = forged.private_key_pem.splitlines()[3]
    assert body not in message
    assert body not in repr(logs)
    assert google.issued == []


@pytest.mark.anyio
async def test_token_endpoint_failures_are_single_attempts(
    provider: GcpProvider, google: GoogleServer
) -> None:
    key = google.service_account("flaky")
    google.fail("/token", 503)
    with pytest.raises(UpstreamError) as err:
        await provider.mint(sa_connector(key), "gcp-generic", PROJECT)
    assert err.value.retryable
    assert google.count("/token") == 1  # gcloud-aio-auth's 5 retries are not used
    cred = await provider.mint(sa_connector(key), "gcp-generic", PROJECT)
    assert google.validate_token(str(cred.config["token"])) == key.email


@pytest.mark.anyio
async def test_unreachable_token_endpoint_is_retryable(provider: GcpProvider) -> None:
    key = ServiceAccountKey(
        f"nowhere@{PROJECT}.iam.gserviceaccount.com",
        PROJECT,
        f"http://127.0.0.1:{free_port()}/token",
        shared_rsa_key(),
    )
    with pytest.raises(UpstreamError) as err:
        await provider.mint(sa_connector(key), "gcp-generic", PROJECT)
    assert err.value.retryable
    assert "cannot reach Google token endpoint" in str(err.value)


@pytest.mark.anyio
async def test_user_account_refresh_grant(provider: GcpProvider, google: GoogleServer) -> None:
    user = google.user_account("alice@example.com")
    conn = connector("user-account", user_account_json=user.json(), project_id=PROJECT)
    cred = await provider.mint(conn, "gcs-bucket", "my-bucket")
    assert cred.resource_id == "gs://my-bucket"
    assert google.validate_token(str(cred.config["token"])) == "alice@example.com"
    assert google.issued[-1].via == "refresh"

    wrong_secret = {**user.info(), "client_secret": "not-the-secret"}
    with pytest.raises(CredentialsRejected) as err:
        await provider.mint(
            connector(
                "user-account", user_account_json=json.dumps(wrong_secret), project_id=PROJECT
            ),
            "gcp-generic",
            PROJECT,
        )
    assert "invalid_client" in str(err.value)
    assert user.refresh_token not in str(err.value)
    revoked = {**user.info(), "refresh_token": "1//revoked"}
    with pytest.raises(CredentialsRejected) as err:
        await provider.mint(
            connector("user-account", user_account_json=json.dumps(revoked), project_id=PROJECT),
            "gcp-generic",
            PROJECT,
        )
    assert "invalid_grant" in str(err.value)


@pytest.mark.anyio
async def test_impersonation_expiry_comes_from_expire_time(google: GoogleServer) -> None:
    source = google.service_account("source")
    target = google.add_principal(f"target@{PROJECT}.iam.gserviceaccount.com")
    google.allow_impersonation(source.email, target)
    conn = connector(
        "impersonation",
        service_account_json=source.json(),
        target_principal=target,
        expiration_seconds=900,
    )
    gcp = GcpProvider(ProviderContext(clock=SystemClock(), env=google.env(), request_timeout=5.0))
    try:
        before = datetime.now(UTC)
        cred = await gcp.mint(conn, "gcp-generic", PROJECT)
    finally:
        await gcp.aclose()
    token = str(cred.config["token"])
    assert google.validate_token(token) == target
    source_token, impersonated = google.issued
    assert (source_token.principal, source_token.via) == (source.email, "jwt")
    assert impersonated.via == "impersonation"
    assert cred.expires_at is not None
    assert cred.expires_at.timestamp() == int(impersonated.expires_at)
    # 900 s asked for, not the source token's 1800 s.
    assert timedelta(seconds=890) <= cred.expires_at - before <= timedelta(seconds=905)


@pytest.mark.anyio
async def test_impersonation_refusals(provider: GcpProvider, google: GoogleServer) -> None:
    source = google.service_account("lonely")
    target = google.add_principal(f"guarded@{PROJECT}.iam.gserviceaccount.com")
    conn = connector("impersonation", service_account_json=source.json(), target_principal=target)
    with pytest.raises(PermissionDenied) as err:
        await provider.mint(conn, "gcp-generic", PROJECT)
    message = str(err.value)
    assert f"{source.email} may not impersonate {target}" in message
    assert "iam.serviceAccounts.getAccessToken" in message
    ghost = connector(
        "impersonation",
        service_account_json=source.json(),
        target_principal=f"ghost@{PROJECT}.iam.gserviceaccount.com",
    )
    with pytest.raises(NotFound):
        await provider.mint(ghost, "gcp-generic", PROJECT)


@pytest.mark.anyio
async def test_oauth2_token_is_handed_through(provider: GcpProvider, clock: FakeClock) -> None:
    expires = T0 + timedelta(minutes=42)
    conn = connector("oauth2-token", token="ya29.given", project_id=PROJECT, expires_at=expires)
    cred = await provider.mint(conn, "gcs-bucket", "gs://bucket-1")
    assert cred.config == {"token": "ya29.given", "project_id": PROJECT}
    assert cred.expires_at == expires
    await clock.advance(43 * 60)
    with pytest.raises(ConnectorExpired):
        await provider.mint(conn, "gcs-bucket", "gs://bucket-1")


@pytest.mark.anyio
async def test_keys_handed_out_when_temporary_tokens_are_off(
    provider: GcpProvider, google: GoogleServer
) -> None:
    key = google.service_account("keyed")
    conn = sa_connector(key, generate_temporary_tokens="false")
    gcs = await provider.mint(conn, "gcs-bucket", "bucket-9")
    assert (gcs.connector_type, gcs.auth_method, gcs.expires_at) == (
        "gcp",
        "service-account",
        None,
    )
    assert json.loads(str(gcs.config["service_account_json"])) == key.info()
    assert gcs.secret_names == frozenset({"service_account_json"})
    reg = await provider.mint(conn, "docker-registry", f"gcr.io/{PROJECT}")
    assert reg.config["username"] == "_json_key"
    assert json.loads(str(reg.config["password"]))["client_email"] == key.email
    assert google.issued == []  # nothing minted


# -- implicit --------------------------------------------------------------------


@pytest.mark.anyio
async def test_implicit_is_refused_unless_enabled(
    provider: GcpProvider, google: GoogleServer
) -> None:
    with pytest.raises(InvalidArgument) as err:
        await provider.mint(connector("implicit", project_id=PROJECT), "gcp-generic", PROJECT)
    assert err.value.field == "auth_method"
    assert google.requests == []


@pytest.mark.anyio
async def test_implicit_uses_the_daemon_adc_file_then_metadata(
    google: GoogleServer, tmp_path: Path
) -> None:
    key = google.service_account("daemon")
    path = key.write(tmp_path / "daemon-key.json")
    env = {**google.env(), "GOOGLE_APPLICATION_CREDENTIALS": str(path)}
    gcp = GcpProvider(ProviderContext(enable_implicit_auth=True, env=env, request_timeout=5.0))
    try:
        conn = connector("implicit")  # the project comes from the daemon's key file
        gcp.validate(conn)
        cred = await gcp.mint(conn, "gcp-generic", PROJECT)
        assert google.validate_token(str(cred.config["token"])) == key.email

        google.metadata_principal = f"vm@{PROJECT}.iam.gserviceaccount.com"
        empty = tmp_path / "no-gcloud"
        empty.mkdir()
        gce = GcpProvider(
            ProviderContext(
                enable_implicit_auth=True,
                env={**google.env(), "CLOUDSDK_CONFIG": str(empty)},
                request_timeout=5.0,
            )
        )
        with pytest.raises(InvalidArgument) as err:
            gce.validate(conn)  # no file names a project
        assert err.value.field == "project_id"
        cred = await gce.mint(connector("implicit", project_id=PROJECT), "gcp-generic", PROJECT)
        await gce.aclose()
        assert google.validate_token(str(cred.config["token"])) == google.metadata_principal
        assert google.issued[-1].via == "metadata"
    finally:
        await gcp.aclose()


# -- GCS ------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_gcs_listing_follows_pages(provider: GcpProvider, google: GoogleServer) -> None:
    key = google.service_account("lister")
    names = ["bucket-e", "bucket-a", "bucket-c", "bucket-b", "bucket-d"]
    for name in names:
        google.add_bucket(PROJECT, name)
    google.add_bucket("other-project", "foreign-bucket")
    conn = sa_connector(key)
    found = await provider.discover(conn, "gcs-bucket", None)
    assert found == [f"gs://{n}" for n in sorted(names)]
    assert google.count("/gcs/storage/v1/b", 200) == 3  # page size 2
    assert await provider.discover(conn, "gcs-bucket", "bucket-c") == ["gs://bucket-c"]
    with pytest.raises(NotFound) as err:
        await provider.discover(conn, "gcs-bucket", "gs://no-such-bucket")
    assert "no-such-bucket" in str(err.value)
    assert await provider.discover(conn, "gcp-generic", None) == [PROJECT]


@pytest.mark.anyio
async def test_403_names_the_missing_permission(
    provider: GcpProvider, google: GoogleServer
) -> None:
    key = google.service_account("powerless")
    for permission in (
        "storage.buckets.list",
        "storage.buckets.get",
        "container.clusters.list",
        "artifactregistry.repositories.list",
    ):
        google.deny(key.email, permission)
    google.add_location(PROJECT, "us-central1")
    conn = sa_connector(key)
    cases = [
        (
            "gcs-bucket",
            None,
            f"credentials lack permission storage.buckets.list on project '{PROJECT}'",
        ),
        (
            "gcs-bucket",
            "b-1",
            "credentials lack permission storage.buckets.get on GCS bucket 'b-1'",
        ),
        (
            "kubernetes-cluster",
            None,
            f"credentials lack permission container.clusters.list on project '{PROJECT}'",
        ),
        (
            "docker-registry",
            None,
            "credentials lack permission artifactregistry.repositories.list on project "
            f"'{PROJECT}' location 'us-central1'",
        ),
    ]
    for resource_type, resource_id, expected in cases:
        with pytest.raises(PermissionDenied) as err:
            await provider.discover(conn, resource_type, resource_id)
        assert str(err.value) == expected


@pytest.mark.anyio
async def test_rejected_api_token_and_server_errors(
    provider: GcpProvider, google: GoogleServer, clock: FakeClock
) -> None:
    stale = connector(
        "oauth2-token", token="ya29.unknown", project_id=PROJECT, expires_at=T0 + timedelta(hours=1)
    )
    with pytest.raises(CredentialsRejected):
        await provider.discover(stale, "gcs-bucket", None)
    key = google.service_account("unlucky")
    google.fail("/gcs/", 502)
    with pytest.raises(UpstreamError) as err:
        await provider.discover(sa_connector(key), "gcs-bucket", None)
    assert err.value.retryable
    assert "HTTP 502" in str(err.value)


# -- GKE ------------------------------------------------------------------------------


@pytest.fixture
def clusters(google: GoogleServer) -> str:
    ca = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
    google.add_cluster(PROJECT, "us-central1", "alpha", "10.0.0.1", ca)
    google.add_cluster(PROJECT, "us-central1", "dup", "10.0.0.2", ca)
    google.add_cluster(PROJECT, "europe-west1-b", "dup", "10.0.0.3", ca)
    google.add_cluster("other-project", "us-east1", "foreign", "10.9.9.9", ca)
    return ca


@pytest.mark.anyio
async def test_gke_clusters_across_locations(
    provider: GcpProvider, google: GoogleServer, clusters: str
) -> None:
    conn = sa_connector(google.service_account("gke"))
    assert await provider.discover(conn, "kubernetes-cluster", None) == [
        "alpha",
        "europe-west1-b/dup",
        "us-central1/dup",
    ]
    assert await provider.discover(conn, "kubernetes-cluster", "alpha") == ["alpha"]
    with pytest.raises(NotFound):
        await provider.discover(conn, "kubernetes-cluster", "europe-west1-b/alpha")
    with pytest.raises(InvalidArgument) as err:
        await provider.mint(conn, "kubernetes-cluster", "dup")
    assert "europe-west1-b, us-central1" in str(err.value)
    assert "use LOCATION/dup" in str(err.value)


@pytest.mark.anyio
async def test_gke_client_credential_shape(
    provider: GcpProvider, google: GoogleServer, clusters: str
) -> None:
    key = google.service_account("kube")
    cred = await provider.mint(
        sa_connector(key), "kubernetes-cluster", f"gke_{PROJECT}_europe-west1-b_dup"
    )
    assert (cred.connector_type, cred.auth_method) == ("kubernetes", "token")
    assert cred.resource_id == "europe-west1-b/dup"
    assert cred.config["server"] == "https://10.0.0.3"
    assert cred.config["certificate_authority"] == clusters
    assert cred.config["cluster_name"] == f"gke_{PROJECT}_europe-west1-b_dup"
    assert google.validate_token(str(cred.config["token"])) == key.email
    assert cred.expires_at == T0 + timedelta(seconds=1800)
    assert cred.secret_names == frozenset({"token"})


# -- registries ---------------------------------------------------------------------------


@pytest.mark.anyio
async def test_artifact_registry_and_gcr_ids(provider: GcpProvider, google: GoogleServer) -> None:
    google.add_repository(PROJECT, "us-central1", "images")
    google.add_repository(PROJECT, "us-central1", "jars", fmt="MAVEN")
    google.add_repository(PROJECT, "us-central1", "more-images")
    google.add_repository(PROJECT, "europe-west1", "eu-images")
    google.add_repository(PROJECT, "us", "gcr.io")  # a gcr.io-domain repository
    google.add_location(PROJECT, "asia-east1")
    conn = sa_connector(google.service_account("registry"))
    assert await provider.discover(conn, "docker-registry", None) == [
        f"asia.gcr.io/{PROJECT}",
        f"eu.gcr.io/{PROJECT}",
        f"europe-west1-docker.pkg.dev/{PROJECT}/eu-images",
        f"gcr.io/{PROJECT}",
        f"us-central1-docker.pkg.dev/{PROJECT}/images",
        f"us-central1-docker.pkg.dev/{PROJECT}/more-images",
        f"us.gcr.io/{PROJECT}",
    ]
    # 4 locations at 2 per page; us-central1 holds 3 repositories at 2 per page.
    assert google.count(f"/ar/v1/projects/{PROJECT}/locations", 200) == 2 + 2 + 1 + 1 + 1
    ar = f"us-central1-docker.pkg.dev/{PROJECT}/images"
    assert await provider.discover(conn, "docker-registry", f"https://{ar}/app:1") == [ar]
    with pytest.raises(InvalidArgument) as err:
        await provider.discover(
            conn, "docker-registry", f"us-central1-docker.pkg.dev/{PROJECT}/jars"
        )
    assert "MAVEN" in str(err.value)
    with pytest.raises(NotFound):
        await provider.discover(conn, "docker-registry", f"us-docker.pkg.dev/{PROJECT}/nope")


@pytest.mark.anyio
async def test_registry_client_credential(provider: GcpProvider, google: GoogleServer) -> None:
    key = google.service_account("pusher")
    cred = await provider.mint(
        sa_connector(key),
        "docker-registry",
        f"https://europe-west1-docker.pkg.dev/{PROJECT}/r1/app",
    )
    assert (cred.connector_type, cred.auth_method) == ("docker", "password")
    assert cred.resource_id == f"europe-west1-docker.pkg.dev/{PROJECT}/r1"
    assert cred.config["username"] == "oauth2accesstoken"
    assert cred.config["registry"] == "europe-west1-docker.pkg.dev"
    assert google.validate_token(str(cred.config["password"])) == key.email
    assert cred.expires_at == T0 + timedelta(seconds=1800)
    gcr = await provider.mint(sa_connector(key), "docker-registry", f"eu.gcr.io/{PROJECT}")
    assert gcr.config["registry"] == "eu.gcr.io"


# -- external accounts ------------------------------------------------------------------------


@pytest.mark.anyio
async def test_external_account_with_impersonation(
    provider: GcpProvider, google: GoogleServer, tmp_path: Path
) -> None:
    federated = "principal://iam.googleapis.com/pools/ci/subject/repo:main"
    target = google.add_principal(f"ci@{PROJECT}.iam.gserviceaccount.com")
    google.allow_impersonation(federated, target)
    plain = google.external_account(federated)
    conn = connector(
        "external-account",
        external_account_json=plain.json(tmp_path / "subject-1"),
        project_id=PROJECT,
    )
    cred = await provider.mint(conn, "gcp-generic", PROJECT)
    assert google.validate_token(str(cred.config["token"])) == federated
    via = google.external_account(federated, impersonate=target)
    conn = connector(
        "external-account",
        external_account_json=via.json(tmp_path / "subject-2"),
        project_id=PROJECT,
    )
    cred = await provider.mint(conn, "gcp-generic", PROJECT)
    assert google.validate_token(str(cred.config["token"])) == target
    assert [t.via for t in google.issued] == ["sts", "sts", "impersonation"]
    assert cred.expires_at is not None
    assert cred.expires_at == parse_rfc3339(
        datetime.fromtimestamp(int(google.issued[-1].expires_at), UTC).isoformat()
    )
