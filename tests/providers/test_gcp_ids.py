"""gcp connector type without a server: resource IDs, key file checks, error parsing."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from functools import cache
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from broker.errors import (
    CredentialsRejected,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    UpstreamError,
)
from broker.model import Connector, Value
from broker.providers.base import ProviderContext
from broker.providers.gcp import GcpProvider
from broker.providers.gcp.api import Endpoints, api_error
from broker.providers.gcp.keys import parse_key
from broker.providers.gcp.spec import SPEC
from broker.providers.gcp.tokens import parse_rfc3339
from broker.providers.registry import ProviderRegistry
from tests.providers.connectors import make_connector
from tests.servers.google_accounts import ServiceAccountKey, UserAccount, shared_rsa_key

PROJECT = "broker-test"
TOKEN_URI = "http://127.0.0.1:9/token"


@pytest.fixture(autouse=True)
def _no_real_google(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    empty = tmp_path / "gcloud-empty"
    empty.mkdir()
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(empty))
    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
    yield


@cache
def sa_key() -> ServiceAccountKey:
    return ServiceAccountKey(
        f"ids@{PROJECT}.iam.gserviceaccount.com", PROJECT, TOKEN_URI, shared_rsa_key()
    )


def sa_info(**changes: object) -> dict[str, object]:
    info: dict[str, object] = dict(sa_key().info())
    for key, value in changes.items():
        if value is None:
            info.pop(key, None)
        else:
            info[key] = value
    return info


def gcp_connector(method: str = "service-account", **config: Value) -> Connector:
    return make_connector("gcp", method, config, name="gcp-conn")


@pytest.fixture
def provider() -> GcpProvider:
    return GcpProvider(ProviderContext())


@pytest.fixture
def conn() -> Connector:
    return gcp_connector(service_account_json=sa_key().json())


def test_registry_loads_the_builtin() -> None:
    provider = ProviderRegistry.discover(ProviderContext(), plugins=False).get("gcp")
    assert isinstance(provider, GcpProvider)
    assert provider.spec is SPEC
    assert SPEC.resource_type_names == (
        "gcp-generic",
        "gcs-bucket",
        "kubernetes-cluster",
        "docker-registry",
    )
    impersonation = SPEC.auth_method("impersonation")
    assert impersonation is not None
    assert impersonation.max_expiration_seconds == impersonation.default_expiration_seconds == 3600
    token = SPEC.auth_method("oauth2-token")
    assert token is not None and token.requires_expires_at and not token.mints_tokens
    for method in ("service-account", "user-account", "impersonation", "external-account"):
        spec = SPEC.auth_method(method)
        assert spec is not None
        assert all(a.secret for a in spec.attributes if a.name.endswith("_json"))


# -- resource IDs --------------------------------------------------------------


@pytest.mark.parametrize(
    ("resource_type", "raw", "expected"),
    [
        ("gcp-generic", " broker-test ", "broker-test"),
        ("gcs-bucket", "gs://my-bucket", "gs://my-bucket"),
        ("gcs-bucket", "my-bucket", "gs://my-bucket"),
        ("gcs-bucket", "gs://my_bucket.example.com/", "gs://my_bucket.example.com"),
        ("kubernetes-cluster", "prod", "prod"),
        ("kubernetes-cluster", "europe-west1/prod", "europe-west1/prod"),
        ("kubernetes-cluster", "us-central1-a/prod-2", "us-central1-a/prod-2"),
        ("kubernetes-cluster", f"projects/{PROJECT}/locations/us-east1/clusters/c1", "us-east1/c1"),
        ("kubernetes-cluster", f"gke_{PROJECT}_us-east1_c1", "us-east1/c1"),
        ("docker-registry", f"gcr.io/{PROJECT}", f"gcr.io/{PROJECT}"),
        ("docker-registry", f"https://EU.gcr.io/{PROJECT}/app:1.0", f"eu.gcr.io/{PROJECT}"),
        ("docker-registry", f"asia.gcr.io/{PROJECT}/", f"asia.gcr.io/{PROJECT}"),
        ("docker-registry", f"us.gcr.io/{PROJECT}", f"us.gcr.io/{PROJECT}"),
        (
            "docker-registry",
            f"europe-west1-docker.pkg.dev/{PROJECT}/images",
            f"europe-west1-docker.pkg.dev/{PROJECT}/images",
        ),
        (
            "docker-registry",
            f"https://us-docker.pkg.dev/{PROJECT}/images/team/app@sha256:ab",
            f"us-docker.pkg.dev/{PROJECT}/images",
        ),
    ],
)
def test_canonical_ids(
    provider: GcpProvider, conn: Connector, resource_type: str, raw: str, expected: str
) -> None:
    assert provider.canonical_resource_id(conn, resource_type, raw) == expected


@pytest.mark.parametrize(
    ("resource_type", "raw", "reason"),
    [
        ("gcp-generic", "other-project", "serves project 'broker-test'"),
        ("gcp-generic", "Bad_Project", "not a project ID"),
        ("gcs-bucket", "", "no bucket name"),
        ("gcs-bucket", "gs://", "no bucket name"),
        ("gcs-bucket", "ab", "3 to 63"),
        ("gcs-bucket", "x" * 64, "3 to 63"),
        ("gcs-bucket", "My-Bucket", "lower-case"),
        ("gcs-bucket", "-bucket", "start and end"),
        ("gcs-bucket", "gs://bucket/object.txt", "object path"),
        ("gcs-bucket", "192.168.1.1", "IP address"),
        ("gcs-bucket", "goog-bucket", "goog"),
        ("gcs-bucket", "my-g00gle-bucket", "google"),
        ("gcs-bucket", "a..b", "at most 63 between dots"),
        ("kubernetes-cluster", "Prod", "cluster names"),
        ("kubernetes-cluster", "1prod", "cluster names"),
        ("kubernetes-cluster", "a/b/c", "too many"),
        ("kubernetes-cluster", "US_EAST/prod", "not a location"),
        ("kubernetes-cluster", "projects/other-proj/locations/l1/clusters/c", "other-proj"),
        ("kubernetes-cluster", "projects/x/clusters/c", "malformed resource name"),
        ("kubernetes-cluster", "gke_a_b", "malformed kubeconfig"),
        ("docker-registry", "gcr.io/other-project", "project 'other-project'"),
        ("docker-registry", "gcr.io", "no project"),
        ("docker-registry", "docker.io/library", "not a gcr.io or pkg.dev host"),
        ("docker-registry", f"http://gcr.io/{PROJECT}", "only https"),
        ("docker-registry", f"us-docker.pkg.dev/{PROJECT}", "PROJECT/REPOSITORY"),
        ("docker-registry", f"us-docker.pkg.dev/{PROJECT}/Repo_1", "repository ID"),
        ("docker-registry", f"UPPER_-docker.pkg.dev/{PROJECT}/r", "bad location"),
        ("docker-registry", "gcr.io/NotAProject", "not a project ID"),
    ],
)
def test_bad_ids_are_refused_naming_the_field(
    provider: GcpProvider, conn: Connector, resource_type: str, raw: str, reason: str
) -> None:
    with pytest.raises(InvalidArgument) as err:
        provider.canonical_resource_id(conn, resource_type, raw)
    assert err.value.field == "resource_id"
    assert reason in str(err.value)


def test_unknown_resource_type_is_refused(provider: GcpProvider, conn: Connector) -> None:
    with pytest.raises(InvalidArgument) as err:
        provider.canonical_resource_id(conn, "s3-bucket", "b")
    assert err.value.field == "resource_type"


def test_registry_user_info_is_not_echoed(provider: GcpProvider, conn: Connector) -> None:
    with pytest.raises(InvalidArgument) as err:
        provider.canonical_resource_id(conn, "docker-registry", "https://u:s3cr3t@gcr.io/x")
    assert "s3cr3t" not in str(err.value)


def test_generic_default_is_the_project(provider: GcpProvider, conn: Connector) -> None:
    assert provider.default_resource_id(conn, "gcp-generic") == PROJECT
    assert provider.default_resource_id(conn, "gcs-bucket") is None


# -- key material ----------------------------------------------------------------

_EC_PEM = (
    ec.generate_private_key(ec.SECP256R1())
    .private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    .decode()
)


def _secret_fragments() -> list[str]:
    lines = sa_key().private_key_pem.splitlines()
    return [lines[1], lines[5], lines[-2]]


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("{not json", "not valid JSON"),
        ("__TRUNCATED__", "not valid JSON"),
        ("[1, 2]", "not a JSON object"),
        (
            json.dumps(sa_info(type="authorized_user")),
            "type 'authorized_user', expected 'service_account' (use auth method 'user-account'",
        ),
        (json.dumps(sa_info(type=None)), "no 'type' key"),
        (json.dumps(sa_info(private_key=None)), "lacks required key(s) private_key"),
        (
            json.dumps(sa_info(client_email=None, private_key=None)),
            "lacks required key(s) client_email, private_key",
        ),
        (json.dumps(sa_info(client_email=42)), "client_email"),
        (json.dumps(sa_info(client_email="not-an-email")), "not an email address"),
        ("__BAD_KEY__", "not an unencrypted PEM private key"),
        ("__GARBLED_KEY__", "not an unencrypted PEM private key"),
        (json.dumps(sa_info(private_key=_EC_PEM)), "not an RSA key"),
        (json.dumps(sa_info(token_uri="http://oauth2.example.com/token")), "not an https://"),
        (json.dumps(sa_info(token_uri="ftp://127.0.0.1/token")), "not an https://"),
    ],
)
def test_bad_service_account_json(provider: GcpProvider, text: str, reason: str) -> None:
    full = sa_key().json()
    if text == "__TRUNCATED__":
        text = full[: len(full) // 2]
    elif text == "__BAD_KEY__":
        text = json.dumps(
            sa_info(private_key="-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
        )
    elif text == "__GARBLED_KEY__":
        pem = sa_key().private_key_pem
        text = json.dumps(sa_info(private_key=pem[:200] + "x" + pem[201:]))
    with pytest.raises(InvalidArgument) as err:
        provider.validate(gcp_connector(service_account_json=text))
    message = str(err.value)
    assert err.value.field == "service_account_json"
    assert message.startswith("attribute 'service_account_json' ")
    assert reason in message
    for fragment in _secret_fragments():
        assert fragment not in message


def test_bad_user_account_json_never_echoes_secrets(provider: GcpProvider) -> None:
    user = UserAccount("bob@example.com", TOKEN_URI)
    info = user.info()
    del info["refresh_token"]
    with pytest.raises(InvalidArgument) as err:
        provider.validate(gcp_connector("user-account", user_account_json=json.dumps(info)))
    assert "lacks required key(s) refresh_token" in str(err.value)
    assert user.client_secret not in str(err.value)
    with pytest.raises(InvalidArgument) as err:
        provider.validate(gcp_connector("user-account", user_account_json=sa_key().json()))
    assert "use auth method 'service-account'" in str(err.value)


def test_external_account_json_checks(provider: GcpProvider, tmp_path: Path) -> None:
    base = {
        "type": "external_account",
        "audience": "//iam.googleapis.com/x",
        "subject_token_type": "urn:ietf:params:oauth:token-type:jwt",
        "token_url": "https://sts.googleapis.com/v1/token",
        "project_id": PROJECT,
    }
    cases = [
        ({}, "credential_source"),
        ({"credential_source": {"executable": {"command": "x"}}}, "not supported"),
        ({"credential_source": {"environment_id": "aws1"}}, "not supported"),
        (
            {
                "credential_source": {"file": "/f"},
                "service_account_impersonation_url": "https://iam/x",
            },
            "serviceAccounts/EMAIL",
        ),
    ]
    for extra, reason in cases:
        doc = json.dumps({**base, **extra})
        with pytest.raises(InvalidArgument) as err:
            provider.validate(gcp_connector("external-account", external_account_json=doc))
        assert reason in str(err.value)
    good = json.dumps({**base, "credential_source": {"file": str(tmp_path / "t")}})
    provider.validate(gcp_connector("external-account", external_account_json=good))


def test_project_comes_from_the_key_or_is_required(provider: GcpProvider) -> None:
    provider.validate(gcp_connector(service_account_json=sa_key().json()))
    no_project = json.dumps(sa_info(project_id=None))
    with pytest.raises(InvalidArgument) as err:
        provider.validate(gcp_connector(service_account_json=no_project))
    assert err.value.field == "project_id"
    assert "gcp-conn" in str(err.value)
    explicit = gcp_connector(service_account_json=no_project, project_id="other-project")
    assert provider.default_resource_id(explicit, "gcp-generic") == "other-project"
    with pytest.raises(InvalidArgument) as err:
        provider.validate(gcp_connector("oauth2-token", token="ya29.x"))
    assert err.value.field == "project_id"
    with pytest.raises(InvalidArgument) as err:
        provider.validate(gcp_connector("oauth2-token", token="ya29.x", project_id="Bad!"))
    assert err.value.field == "project_id"
    user = UserAccount("bob@example.com", TOKEN_URI, quota_project_id="quota-project")
    quota = gcp_connector("user-account", user_account_json=user.json())
    assert provider.default_resource_id(quota, "gcp-generic") == "quota-project"


@pytest.mark.parametrize("target", ["", "not an email", "a/b@c.com", "x@y@z"])
def test_bad_target_principal(provider: GcpProvider, target: str) -> None:
    conn = gcp_connector(
        "impersonation", service_account_json=sa_key().json(), target_principal=target
    )
    with pytest.raises(InvalidArgument) as err:
        provider.validate(conn)
    assert err.value.field == "target_principal"


def test_implicit_is_refused_without_the_daemon_flag(provider: GcpProvider) -> None:
    conn = gcp_connector("implicit", project_id=PROJECT)
    with pytest.raises(InvalidArgument) as err:
        provider.implicit_allowed(conn)
    assert "BROKER_ENABLE_IMPLICIT_AUTH_METHODS" in str(err.value)


# -- Google errors and times ---------------------------------------------------------


def _error(message: str, **extra: object) -> bytes:
    return json.dumps({"error": {"code": 403, "message": message, **extra}}).encode()


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (
            _error(
                "a@b does not have storage.buckets.list access to the Google Cloud project. "
                "Permission 'storage.buckets.list' denied on resource (or it may not exist)."
            ),
            "credentials lack permission storage.buckets.list on project 'p'",
        ),
        (
            _error('Required "container.clusters.list" permission(s) for "projects/123".'),
            "credentials lack permission container.clusters.list on project 'p'",
        ),
        (
            _error(
                "denied",
                details=[
                    {
                        "reason": "IAM_PERMISSION_DENIED",
                        "metadata": {"permission": "artifactregistry.x.list"},
                    }
                ],
            ),
            "credentials lack permission artifactregistry.x.list on project 'p'",
        ),
        (
            _error("Cloud Storage API has not been used in project 1 before or it is disabled."),
            "cannot list things: the API is disabled for project 'p'",
        ),
        (_error("nope"), "credentials may not list things (project 'p'): nope"),
        (b"<html>forbidden</html>", "credentials may not list things (project 'p')"),
    ],
)
def test_403_becomes_a_permission_message(body: bytes, expected: str) -> None:
    error = api_error(403, body, action="list things", resource="project 'p'")
    assert isinstance(error, PermissionDenied)
    assert str(error).startswith(expected)


def test_other_statuses_map_to_typed_errors() -> None:
    assert isinstance(api_error(401, b"", action="a", resource="r"), CredentialsRejected)
    assert isinstance(api_error(404, b"", action="a", resource="r"), NotFound)
    for status, retryable in ((429, True), (503, True), (400, False)):
        error = api_error(status, b"{}", action="a", resource="r")
        assert isinstance(error, UpstreamError)
        assert error.retryable is retryable


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2030-01-01T00:00:00Z", datetime(2030, 1, 1, tzinfo=UTC)),
        ("2030-01-01T00:00:00.123456789Z", datetime(2030, 1, 1, 0, 0, 0, 123456, tzinfo=UTC)),
        ("2030-01-01T02:00:00.5+02:00", datetime(2030, 1, 1, 0, 0, 0, 500000, tzinfo=UTC)),
    ],
)
def test_rfc3339(text: str, expected: datetime) -> None:
    assert parse_rfc3339(text) == expected


def test_rfc3339_refuses_garbage() -> None:
    with pytest.raises(ValueError):
        parse_rfc3339("tomorrow")


def test_endpoint_overrides() -> None:
    urls = Endpoints.from_env(
        {"BROKER_GCP_STORAGE_URL": "http://127.0.0.1:1/x/", "GCE_METADATA_HOST": "169.254.169.254"}
    )
    assert urls.storage == "http://127.0.0.1:1/x"
    assert urls.container == "https://container.googleapis.com"
    assert urls.metadata_host == "169.254.169.254"
    with pytest.raises(FailedPrecondition) as err:
        Endpoints.from_env({"BROKER_GCP_CONTAINER_URL": "container.example.com"})
    assert "BROKER_GCP_CONTAINER_URL" in str(err.value)
    with pytest.raises(FailedPrecondition):
        Endpoints.from_env({"BROKER_GCP_METADATA_HOST": "http://x/"})


def test_key_parse_reports_the_file_label() -> None:
    with pytest.raises(InvalidArgument) as err:
        parse_key("{}", "auto_configure", None, label="ADC file /x.json")
    assert str(err.value).startswith("ADC file /x.json has no 'type' key")
