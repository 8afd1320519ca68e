"""What the GCE metadata endpoint needs from the gcp provider, against the Google test server:
whose tokens they are (``account``), tokens for other scopes, ID tokens for an audience
(signature, audience, expiry checked as a relying party would), and the project number."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from broker import variants
from broker.clock import FakeClock
from broker.errors import FailedPrecondition, InvalidArgument, PermissionDenied
from broker.providers.base import ProviderContext
from broker.providers.gcp import GcpProvider
from broker.variants import CLOUD_PLATFORM_SCOPE
from tests.providers.test_gcp import PROJECT, connector, sa_connector
from tests.servers.google import GoogleServer

T0 = datetime(2030, 1, 1, tzinfo=UTC)
EMAIL_SCOPE = "https://www.googleapis.com/auth/userinfo.email"
AUDIENCE = "https://service.example/api"


@pytest.fixture(autouse=True)
def _no_real_google(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    empty = tmp_path / "gcloud-empty"
    empty.mkdir()
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(empty))
    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
    yield


@pytest.fixture(scope="module")
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


def test_variant_strings_are_checked_and_normal() -> None:
    assert variants.scopes_variant([CLOUD_PLATFORM_SCOPE]) == ""
    assert variants.scopes_variant(["b", "a", "b"]) == "scopes:a b"
    assert variants.parse("scopes:a b") == variants.Variant(scopes=("a", "b"))
    got = variants.parse(variants.id_token_variant(AUDIENCE, include_email=True))
    assert (got.audience, got.include_email, got.is_id_token) == (AUDIENCE, True, True)
    for bad in ([], ["has space"], ["x"] * 0, [f"s{i}" for i in range(40)], ["a" * 300]):
        with pytest.raises(InvalidArgument):
            variants.scopes_variant(bad)
    for audience in ("", "two words", "x" * 2000):
        with pytest.raises(InvalidArgument):
            variants.id_token_variant(audience, include_email=False)
    with pytest.raises(InvalidArgument):
        variants.parse("sdk-session")


@pytest.mark.anyio
async def test_tokens_name_their_account(
    provider: GcpProvider, google: GoogleServer, tmp_path: Path
) -> None:
    key = google.service_account("named")
    cred = await provider.mint(sa_connector(key), "gcp-generic", PROJECT)
    assert cred.config["account"] == key.email

    user = google.user_account("carol@example.com")
    conn = connector("user-account", user_account_json=user.json(), project_id=PROJECT)
    cred = await provider.mint(conn, "gcp-generic", PROJECT)
    assert cred.config["account"] == "carol@example.com"  # from the refresh answer's id_token
    silent = google.user_account("dave@example.com")
    object.__setattr__(silent, "openid", False)
    conn = connector("user-account", user_account_json=silent.json(), project_id=PROJECT)
    cred = await provider.mint(conn, "gcp-generic", PROJECT)
    assert "account" not in cred.config  # nobody said: the endpoint uses its alias

    source = google.service_account("imp-source")
    target = google.add_principal(f"imp-target@{PROJECT}.iam.gserviceaccount.com")
    google.allow_impersonation(source.email, target)
    conn = connector("impersonation", service_account_json=source.json(), target_principal=target)
    cred = await provider.mint(conn, "gcs-bucket", "gs://bucket-1")
    assert cred.config["account"] == target

    federated = "principal://iam.googleapis.com/pools/ci/subject/x"
    plain = google.external_account(federated)
    conn = connector(
        "external-account",
        external_account_json=plain.json(tmp_path / "subject"),
        project_id=PROJECT,
    )
    cred = await provider.mint(conn, "gcp-generic", PROJECT)
    assert "account" not in cred.config


@pytest.mark.anyio
async def test_scopes_variant_mints_a_token_for_those_scopes(
    provider: GcpProvider, google: GoogleServer, tmp_path: Path
) -> None:
    key = google.service_account("scoped")
    conn = sa_connector(key)
    assert provider.variant_for(conn, "gcp-generic", "scopes:" + CLOUD_PLATFORM_SCOPE) == ""
    variant = variants.scopes_variant([EMAIL_SCOPE, CLOUD_PLATFORM_SCOPE])
    assert provider.variant_for(conn, "gcp-generic", variant) == variant
    cred = await provider.mint_variant(conn, "gcp-generic", PROJECT, variant)
    token = str(cred.config["token"])
    assert google.token_scope(token) == f"{CLOUD_PLATFORM_SCOPE} {EMAIL_SCOPE}"
    assert cred.config["scopes"] == f"{CLOUD_PLATFORM_SCOPE} {EMAIL_SCOPE}"
    assert cred.config["account"] == key.email

    user = google.user_account("erin@example.com")
    conn = connector("user-account", user_account_json=user.json(), project_id=PROJECT)
    only_email = variants.scopes_variant([EMAIL_SCOPE])
    cred = await provider.mint_variant(conn, "gcp-generic", PROJECT, only_email)
    assert google.token_scope(str(cred.config["token"])) == EMAIL_SCOPE

    source = google.service_account("scoped-source")
    target = google.add_principal(f"scoped-target@{PROJECT}.iam.gserviceaccount.com")
    google.allow_impersonation(source.email, target)
    conn = connector("impersonation", service_account_json=source.json(), target_principal=target)
    cred = await provider.mint_variant(conn, "gcp-generic", PROJECT, only_email)
    assert google.token_scope(str(cred.config["token"])) == EMAIL_SCOPE
    assert google.issued[-2].scope == CLOUD_PLATFORM_SCOPE  # the source's own token

    with pytest.raises(FailedPrecondition):
        provider.variant_for(conn, "kubernetes-cluster", only_email)


@pytest.mark.anyio
async def test_id_tokens_for_an_audience(
    provider: GcpProvider, google: GoogleServer, clock: FakeClock, tmp_path: Path
) -> None:
    key = google.service_account("idtok")
    full = variants.id_token_variant(AUDIENCE, include_email=True)
    cred = await provider.mint_variant(sa_connector(key), "gcp-generic", PROJECT, full)
    assert (cred.auth_method, cred.secret_names) == ("id-token", frozenset({"id_token"}))
    claims = google.verify_id_token(str(cred.config["id_token"]), AUDIENCE)
    assert claims["email"] == key.email and cred.config["account"] == key.email
    assert cred.config["audience"] == AUDIENCE
    assert google.id_tokens[-1].via == "jwt"  # the token endpoint's id_token
    # exp is wall time; the credential's expiry is placed on the daemon's clock.
    assert cred.expires_at is not None
    assert timedelta(seconds=1790) <= cred.expires_at - clock.now() <= timedelta(seconds=1800)

    source = google.service_account("id-source")
    target = google.add_principal(f"id-target@{PROJECT}.iam.gserviceaccount.com")
    conn = connector("impersonation", service_account_json=source.json(), target_principal=target)
    with pytest.raises(PermissionDenied) as err:
        await provider.mint_variant(conn, "gcp-generic", PROJECT, full)
    assert "roles/iam.serviceAccountOpenIdTokenCreator" in str(err.value)
    google.allow_impersonation(source.email, target)
    standard = variants.id_token_variant(AUDIENCE, include_email=False)
    cred = await provider.mint_variant(conn, "gcp-generic", PROJECT, standard)
    claims = google.verify_id_token(str(cred.config["id_token"]), AUDIENCE)
    assert "email" not in claims and google.id_tokens[-1].via == "generateIdToken"
    assert cred.config["account"] == target
    cred = await provider.mint_variant(conn, "gcp-generic", PROJECT, full)
    assert google.verify_id_token(str(cred.config["id_token"]), AUDIENCE)["email"] == target

    user = google.user_account("frank@example.com")
    conn = connector("user-account", user_account_json=user.json(), project_id=PROJECT)
    with pytest.raises(FailedPrecondition) as refused:
        provider.variant_for(conn, "gcp-generic", full)
    assert "service accounts only" in str(refused.value)
    stored = connector(
        "oauth2-token", token="ya29.x", project_id=PROJECT, expires_at=T0 + timedelta(hours=1)
    )
    with pytest.raises(FailedPrecondition):
        await provider.mint_variant(stored, "gcp-generic", PROJECT, full)


@pytest.mark.anyio
async def test_implicit_metadata_server_account_scopes_and_identity(
    google: GoogleServer, tmp_path: Path
) -> None:
    google.metadata_principal = f"vm@{PROJECT}.iam.gserviceaccount.com"
    empty = tmp_path / "no-gcloud"
    empty.mkdir(exist_ok=True)
    gce = GcpProvider(
        ProviderContext(
            enable_implicit_auth=True,
            env={**google.env(), "CLOUDSDK_CONFIG": str(empty)},
            request_timeout=5.0,
        )
    )
    try:
        conn = connector("implicit", project_id=PROJECT)
        cred = await gce.mint(conn, "gcp-generic", PROJECT)
        assert cred.config["account"] == google.metadata_principal
        scoped = variants.scopes_variant([EMAIL_SCOPE])
        cred = await gce.mint_variant(conn, "gcp-generic", PROJECT, scoped)
        assert google.token_scope(str(cred.config["token"])) == EMAIL_SCOPE
        full = variants.id_token_variant(AUDIENCE, include_email=True)
        cred = await gce.mint_variant(conn, "gcp-generic", PROJECT, full)
        claims = google.verify_id_token(str(cred.config["id_token"]), AUDIENCE)
        assert claims["email"] == google.metadata_principal
    finally:
        google.metadata_principal = None
        await gce.aclose()


@pytest.mark.anyio
async def test_project_number_from_the_attribute_or_resource_manager(
    provider: GcpProvider, google: GoogleServer
) -> None:
    key = google.service_account("numbers", "numbered-project")
    conn = sa_connector(key)
    token = str((await provider.mint(conn, "gcp-generic", "numbered-project")).config["token"])
    with pytest.raises(PermissionDenied) as err:
        await provider.project_number(conn, token)
    assert "resourcemanager.projects.get" in str(err.value)
    assert "project_number attribute" in str(err.value)
    google.add_project("numbered-project", "123456789012")
    assert await provider.project_number(conn, token) == "123456789012"
    before = google.count("/crm/")
    assert await provider.project_number(conn, token) == "123456789012"
    assert google.count("/crm/") == before  # asked once
    assert await provider.project_number(sa_connector(key, project_number="42"), token) == "42"
    with pytest.raises(InvalidArgument) as bad:
        provider.validate(sa_connector(key, project_number="not-a-number"))
    assert bad.value.field == "project_number"
    assert json.loads(key.json())["project_id"] == "numbered-project"
