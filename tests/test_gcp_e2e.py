"""gcp connectors end to end: the real daemon and `broker` CLI against the Google test server.

The daemon's BROKER_GCP_* overrides point every Google API at tests.servers.google,
which verifies each JWT assertion against the key's public half and checks every
bearer token. Real clients: kubectl (exec plugin) against the Kubernetes test API
server, which asks the Google server whether the token is live; a real
docker-registry that takes oauth2accesstoken + the token, reached through
docker-credential-broker. No Google host is ever contacted: the daemon and every
CLI run with CLOUDSDK_CONFIG pointing at an empty dir and no GOOGLE_* variables.
"""

from __future__ import annotations

import base64
import json
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.daemon import Daemon, running_daemon
from tests.servers.google import GoogleServer
from tests.servers.google_accounts import ServiceAccountKey
from tests.servers.kube_api import KubeApiServer, kubectl_version
from tests.servers.registry import start_registry

BIN = Path(sys.executable).parent
PROJECT = "broker-test"
#: Source tokens live an hour; impersonated ones what the connector asks (see below).
TOKEN_LIFETIME = 3600


@pytest.fixture(scope="module")
def google() -> Iterator[GoogleServer]:
    with GoogleServer(token_lifetime=TOKEN_LIFETIME) as server:
        yield server


@pytest.fixture(scope="module")
def kube(google: GoogleServer) -> Iterator[KubeApiServer]:
    with KubeApiServer(token_validator=google.validate_token) as api:
        yield api


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("gcp-home")
    (home / "gcloud-empty").mkdir()
    return home


@pytest.fixture(scope="module")
def daemon(google: GoogleServer, home: Path) -> Iterator[Daemon]:
    env = {"HOME": str(home), "CLOUDSDK_CONFIG": str(home / "gcloud-empty"), **google.env()}
    with running_daemon(home / "data", env=env) as d:
        yield d


def _parallel(calls: list[Callable[[], Any]]) -> list[Any]:
    """CLI processes take ~0.7 s to start: run independent ones side by side."""
    with ThreadPoolExecutor(max_workers=3) as pool:
        return list(pool.map(lambda call: call(), calls))


def _stamp(text: str | None) -> datetime:
    assert text is not None
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _key_body(key: ServiceAccountKey) -> str:
    """A line from the middle of the private key: must never show up in output or logs."""
    return key.private_key_pem.splitlines()[5]


def test_service_account_end_to_end(
    daemon: Daemon, google: GoogleServer, kube: KubeApiServer, tmp_path: Path
) -> None:
    key = google.service_account("broker")
    key_file = key.write(tmp_path / "key.json")
    for bucket in ("assets", "logs", "media"):  # three: the listing spans pages of two
        google.add_bucket(PROJECT, bucket)
    google.add_cluster(PROJECT, "us-central1", "prod", f"127.0.0.1:{kube.port}", kube.ca_pem)
    google.add_repository(PROJECT, "us-central1", "images")

    registered = daemon.cli_json(
        "connector",
        "register",
        "gsa",
        "--type",
        "gcp",
        "--auth-method",
        "service-account",
        f"service_account_json=@{key_file}",
    )
    assert "project_id" not in registered["connector"]["config"]  # the key file names it
    assert registered["connector"]["config"]["service_account_json"] == "[HIDDEN]"
    found = {r["resource_type"]: r for r in registered["resources"]}
    assert {t: r["error"] for t, r in found.items()} == dict.fromkeys(found, None)
    assert found["gcp-generic"]["resource_ids"] == [PROJECT]
    assert found["gcs-bucket"]["resource_ids"] == ["gs://assets", "gs://logs", "gs://media"]
    assert found["kubernetes-cluster"]["resource_ids"] == ["prod"]
    assert (
        f"us-central1-docker.pkg.dev/{PROJECT}/images" in found["docker-registry"]["resource_ids"]
    )
    assert f"gcr.io/{PROJECT}" in found["docker-registry"]["resource_ids"]

    def get(resource_type: str, resource_id: str | None = None) -> Callable[[], Any]:
        args = ["-r", resource_type] + (["-i", resource_id] if resource_id else [])
        return lambda: daemon.cli_json("credentials", "get", "gsa", *args)

    before = datetime.now(UTC).replace(microsecond=0)
    verified, generic, bucket, gcr, gke = _parallel(
        [
            lambda: daemon.cli_json("connector", "verify", "gsa", "-r", "gcs-bucket"),
            get("gcp-generic"),
            get("gcs-bucket", "assets"),
            get("docker-registry", f"https://gcr.io/{PROJECT}"),
            get("kubernetes-cluster", "prod"),
        ]
    )
    after = datetime.now(UTC) + timedelta(seconds=1)
    assert verified[0]["resource_ids"] == ["gs://assets", "gs://logs", "gs://media"]
    for cred in (generic, bucket, gcr, gke):
        # Short-lived tokens of the service account, never the key.
        assert cred["session_policy"] is None
        expiry = _stamp(cred["expires_at"])
        assert before + timedelta(seconds=TOKEN_LIFETIME) <= expiry
        assert expiry <= after + timedelta(seconds=TOKEN_LIFETIME)
        assert "private_key" not in json.dumps(cred)
    assert (generic["connector_type"], generic["auth_method"]) == ("gcp", "oauth2-token")
    assert generic["resource_id"] == PROJECT
    assert generic["config"]["project_id"] == PROJECT
    assert google.validate_token(generic["config"]["token"]) == key.email
    assert (bucket["resource_type"], bucket["resource_id"]) == ("gcs-bucket", "gs://assets")
    assert google.validate_token(bucket["config"]["token"]) == key.email
    assert (gcr["connector_type"], gcr["auth_method"]) == ("docker", "password")
    assert gcr["resource_id"] == f"gcr.io/{PROJECT}"
    assert gcr["config"]["username"] == "oauth2accesstoken"
    assert gcr["config"]["registry"] == "gcr.io"
    assert google.validate_token(gcr["config"]["password"]) == key.email
    assert (gke["connector_type"], gke["auth_method"]) == ("kubernetes", "token")
    assert gke["config"]["server"] == f"https://127.0.0.1:{kube.port}"
    assert gke["config"]["certificate_authority"].strip() == kube.ca_pem.strip()
    assert gke["config"]["cluster_name"] == f"gke_{PROJECT}_us-central1_prod"
    assert google.validate_token(gke["config"]["token"]) == key.email

    # kubectl through the exec plugin, the API server asking Google whether the token is live.
    kubeconfig = tmp_path / "kubeconfig"
    daemon.cli(
        "login", "kubernetes", "gsa", "--resource-id", "prod", "--kubeconfig", str(kubeconfig)
    )
    assert "ya29." not in kubeconfig.read_text()
    kubectl = kubectl_version(kubeconfig, daemon.env)
    assert kubectl.returncode == 0, kubectl.stderr
    assert json.loads(kubectl.stdout)["gitVersion"].startswith("v1.30")
    assert key.email in kube.users
    # A token Google never issued is refused by the same server.
    forged = kube.write_kubeconfig(tmp_path / "forged", token="ya29.forged-token")
    refused = kubectl_version(forged)
    assert refused.returncode != 0 and "Unauthorized" in refused.stderr

    # docker: login, then the helper by host alone. gcr.io hosts map to the project; an
    # Artifact Registry host to a connector fixed on a repository there.
    ar_repo = f"us-central1-docker.pkg.dev/{PROJECT}/images"
    config_dir = tmp_path / "docker"
    _parallel(
        [
            lambda: daemon.cli(
                "login", "docker", "gsa", "-i", f"gcr.io/{PROJECT}", "--config", str(config_dir)
            ),
            lambda: daemon.register_gcp("gar", key_file, "-r", "docker-registry", "-i", ar_repo),
        ]
    )
    daemon.cli("login", "docker", "gar", "--config", str(config_dir))
    assert json.loads((config_dir / "config.json").read_text())["credHelpers"] == {
        "gcr.io": "broker",
        "us-central1-docker.pkg.dev": "broker",
    }

    for server_url in ("https://gcr.io", "eu.gcr.io", "us-central1-docker.pkg.dev"):
        got = daemon.docker_helper_get(server_url)
        assert got.returncode == 0, server_url + got.stdout + got.stderr
        answer = json.loads(got.stdout)
        assert answer["Username"] == "oauth2accesstoken"
        assert google.validate_token(answer["Secret"]) == key.email
    unknown = daemon.docker_helper_get("europe-west1-docker.pkg.dev")
    assert unknown.returncode == 1
    assert unknown.stdout.strip() == "credentials not found in native keychain"
    answer = json.loads(daemon.docker_helper_get("gcr.io").stdout)
    # gcr.io cannot resolve here: a local registry configured with the live token stands in.
    (tmp_path / "reg").mkdir()
    with start_registry(tmp_path / "reg", users={"oauth2accesstoken": answer["Secret"]}) as reg:
        auth = base64.b64encode(f"{answer['Username']}:{answer['Secret']}".encode()).decode()
        request = urllib.request.Request(
            f"{reg.url}/v2/", headers={"Authorization": f"Basic {auth}"}
        )
        with urllib.request.urlopen(request, timeout=10) as reply:
            assert reply.status == 200
        forged_auth = base64.b64encode(b"oauth2accesstoken:ya29.forged-token").decode()
        request = urllib.request.Request(
            f"{reg.url}/v2/", headers={"Authorization": f"Basic {forged_auth}"}
        )
        with pytest.raises(urllib.error.HTTPError) as refused_login:
            urllib.request.urlopen(request, timeout=10)
        assert refused_login.value.code == 401
        refused_login.value.close()

    assert _key_body(key) not in daemon.log()


def test_impersonation_expiry_comes_from_expire_time(
    daemon: Daemon, google: GoogleServer, tmp_path: Path
) -> None:
    source = google.service_account("impersonator")
    target = google.add_principal(f"deployer@{PROJECT}.iam.gserviceaccount.com")
    google.allow_impersonation(source.email, target)
    stranger = google.add_principal(f"stranger@{PROJECT}.iam.gserviceaccount.com")
    key_file = source.write(tmp_path / "source.json")
    common = [
        "--type",
        "gcp",
        "--auth-method",
        "impersonation",
        "--resource-type",
        "gcp-generic",
        f"service_account_json=@{key_file}",
    ]
    before = datetime.now(UTC).replace(microsecond=0)
    registered, denied = _parallel(
        [
            lambda: daemon.cli_json(
                "connector",
                "register",
                "gimp",
                *common,
                f"target_principal={target}",
                "--expiration-seconds",
                "1200",
            ),
            lambda: daemon.cli(
                "connector",
                "register",
                "gimp-no",
                *common,
                f"target_principal={stranger}",
                check=False,
            ),
        ]
    )
    assert registered["resources"][0]["resource_ids"] == [PROJECT]
    assert denied.returncode == 1
    assert "failed verification" in denied.stderr and stranger in denied.stderr
    assert _key_body(source) not in denied.stderr

    cred = daemon.cli_json("credentials", "get", "gimp", "-r", "gcp-generic")
    after = datetime.now(UTC) + timedelta(seconds=1)
    assert google.validate_token(cred["config"]["token"]) == target
    # The IAM Credentials API was asked for 1200 s and its expireTime is what is reported,
    # not the one-hour expiry of the source token.
    expiries = {
        datetime.fromtimestamp(int(t.expires_at), UTC)
        for t in google.issued
        if t.principal == target and t.via == "impersonation"
    }
    assert _stamp(cred["expires_at"]) in expiries
    assert before + timedelta(seconds=1200) <= _stamp(cred["expires_at"])
    assert _stamp(cred["expires_at"]) <= after + timedelta(seconds=1200)


def test_bad_key_files_are_refused_without_echoing_the_key(
    daemon: Daemon, google: GoogleServer, tmp_path: Path
) -> None:
    key = google.service_account("broken", fresh_key=True)
    info = key.info()
    truncated = tmp_path / "truncated.json"
    truncated.write_text(key.json()[: len(key.json()) // 2])
    wrong_type = tmp_path / "wrong-type.json"
    wrong_type.write_text(json.dumps({**info, "type": "authorized_user"}))
    bad_pem = tmp_path / "bad-pem.json"
    lines = key.private_key_pem.splitlines()
    bad_pem.write_text(json.dumps({**info, "private_key": "\n".join(lines[:8] + lines[9:])}))
    revoked = tmp_path / "revoked.json"
    key.write(revoked)
    google.revoke_key(key.email)  # well-formed, but Google no longer knows the key

    def register(name: str, path: Path) -> Callable[[], Any]:
        return lambda: daemon.register_gcp(name, path, check=False)

    results = _parallel(
        [
            register("bad1", truncated),
            register("bad2", wrong_type),
            register("bad3", bad_pem),
            register("bad4", revoked),
        ]
    )
    expected = [
        "attribute 'service_account_json' is not valid JSON",
        "attribute 'service_account_json' has type 'authorized_user', expected 'service_account'"
        " (use auth method 'user-account' for it)",
        "attribute 'service_account_json' has a private_key that is not an unencrypted PEM",
        "failed verification",
    ]
    for result, message in zip(results, expected, strict=True):
        assert result.returncode == 1
        assert message in result.stderr, result.stderr
        assert "Traceback" not in result.stderr
        for line in lines[1:-1]:
            assert line not in result.stderr
    assert "broken@" in results[3].stderr  # names the account it tried
    assert daemon.cli_json("connector", "list", "--name", "bad4") == []
    log = daemon.log()
    assert all(line not in log for line in lines[1:-1])


def test_auto_configure_from_adc(daemon: Daemon, google: GoogleServer, tmp_path: Path) -> None:
    sa = google.service_account("adc-sa", project="adc-project")
    sa_config = tmp_path / "gcloud-sa"
    sa_config.mkdir()
    sa.write(sa_config / "application_default_credentials.json")
    user = google.user_account("alice@example.com")
    user_config = tmp_path / "gcloud-user"
    user_config.mkdir()
    user.write(user_config / "application_default_credentials.json")

    def auto(name: str, config_dir: Path, *extra: str, **env: str) -> Callable[[], Any]:
        return lambda: daemon.cli_json(
            "connector",
            "register",
            name,
            "--type",
            "gcp",
            "--auto-configure",
            "--resource-type",
            "gcp-generic",
            *extra,
            env={"CLOUDSDK_CONFIG": str(config_dir), **env},
        )

    from_sa, with_project, from_user = _parallel(
        [
            auto("auto-sa", sa_config),
            auto("auto-sa-project", sa_config, "--project", "other-project"),
            auto("auto-user", user_config, GOOGLE_CLOUD_PROJECT="user-project"),
        ]
    )
    assert from_sa["connector"]["auth_method"] == "service-account"
    assert from_sa["connector"]["config"]["project_id"] == "adc-project"
    assert from_sa["connector"]["config"]["service_account_json"] == "[HIDDEN]"
    assert from_sa["resources"][0]["resource_ids"] == ["adc-project"]
    assert with_project["connector"]["config"]["project_id"] == "other-project"
    assert with_project["resources"][0]["resource_ids"] == ["other-project"]
    assert from_user["connector"]["auth_method"] == "user-account"
    assert from_user["connector"]["config"]["project_id"] == "user-project"

    cred = daemon.cli_json("credentials", "get", "auto-user", "-r", "gcp-generic")
    assert cred["resource_id"] == "user-project"
    assert google.validate_token(cred["config"]["token"]) == "alice@example.com"
    # Nothing found: a clear error, nothing stored.
    empty = tmp_path / "gcloud-none"
    empty.mkdir()
    missing = daemon.cli(
        "connector",
        "register",
        "auto-none",
        "--type",
        "gcp",
        "--auto-configure",
        env={"CLOUDSDK_CONFIG": str(empty), "HOME": str(tmp_path)},
        check=False,
    )
    assert missing.returncode == 1
    assert "no Application Default Credentials found" in missing.stderr
    assert _key_body(sa) not in daemon.log()
