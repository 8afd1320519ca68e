"""Unmodified SDKs fetch credentials from the broker: the real `aws` CLI through the
container credentials endpoint, gcloud-aio-auth through the GCE metadata endpoint."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.daemon import Daemon, running_daemon
from tests.servers.google import GoogleServer
from tests.servers.moto import MotoServer, moto_for_test


@pytest.fixture
def moto(monkeypatch: pytest.MonkeyPatch) -> Iterator[MotoServer]:
    yield from moto_for_test(monkeypatch)


@pytest.fixture(scope="module")
def google() -> Iterator[GoogleServer]:
    with GoogleServer(token_lifetime=3600) as server:
        yield server


@pytest.fixture
def daemon(tmp_path: Path, google: GoogleServer) -> Iterator[Daemon]:
    with running_daemon(tmp_path / "data", env=google.env()) as d:
        yield d


def _aws(env: dict[str, str], moto_url: str, tmp: Path) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    clean.update(
        {
            "AWS_CONFIG_FILE": str(tmp / "none"),
            "AWS_SHARED_CREDENTIALS_FILE": str(tmp / "none"),
            "AWS_DEFAULT_REGION": "us-east-1",
            "HOME": str(tmp),
            **env,
        }
    )
    return subprocess.run(
        ["aws", "sts", "get-caller-identity", "--endpoint-url", moto_url, "--output", "json"],
        capture_output=True,
        text=True,
        env=clean,
        timeout=60,
    )


def test_aws_cli_through_container_endpoint_and_revocation(
    daemon: Daemon, moto: MotoServer, tmp_path: Path
) -> None:
    key, secret = moto.create_user("sdk-user")
    daemon.cli(
        "connector",
        "register",
        "aws1",
        "--type",
        "aws",
        "--auth-method",
        "session-token",
        "region=us-east-1",
        f"endpoint_url={moto.url}",
        f"aws_access_key_id={key}",
        f"aws_secret_access_key={secret}",
        "--resource-type",
        "aws-generic",
    )
    grant = daemon.cli_json("env", "aws", "aws1")
    env = grant["env"]
    assert env["AWS_CONTAINER_CREDENTIALS_FULL_URI"].startswith("http://127.0.0.1:")
    result = _aws(env, moto.url, tmp_path)
    assert result.returncode == 0, result.stderr
    assert "Arn" in json.loads(result.stdout)
    assert secret not in result.stdout

    wrong = _aws({**env, "AWS_CONTAINER_AUTHORIZATION_TOKEN": "not-the-token"}, moto.url, tmp_path)
    assert wrong.returncode != 0
    daemon.cli("env", "revoke", grant["id"])
    revoked = _aws(env, moto.url, tmp_path)
    assert revoked.returncode != 0
    assert env["AWS_CONTAINER_AUTHORIZATION_TOKEN"] not in daemon.log()


def test_gce_metadata_endpoint_serves_gcloud_aio_auth(
    daemon: Daemon, google: GoogleServer, tmp_path: Path
) -> None:
    key = google.service_account("sdk", "sdk-project").write(tmp_path / "sa.json")
    daemon.cli(
        "connector",
        "register",
        "gcp1",
        "--type",
        "gcp",
        "--auth-method",
        "service-account",
        f"service_account_json=@{key}",
    )
    grant = daemon.cli_json("env", "gcp", "gcp1")
    host = grant["env"]["GCE_METADATA_HOST"]
    # The header is required, as on GCE.
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(
            f"http://{host}/computeMetadata/v1/instance/service-accounts/default/token"
        )
    assert info.value.code == 403

    script = (
        "import asyncio\n"
        "from gcloud.aio.auth import Token\n"
        "async def main():\n"
        "    token = Token()\n"
        "    print(await token.get())\n"
        "    await token.close()\n"
        "asyncio.run(main())\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GOOGLE_", "GCE_"))}
    env.update(
        {
            "GCE_METADATA_HOST": host,
            "CLOUDSDK_CONFIG": str(tmp_path / "gcloud"),
            "HOME": str(tmp_path),
        }
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=60
    )
    assert result.returncode == 0, result.stderr
    token = result.stdout.strip()
    assert google.validate_token(token) == "sdk@sdk-project.iam.gserviceaccount.com"
    project = urllib.request.Request(
        f"http://{host}/computeMetadata/v1/project/project-id",
        headers={"Metadata-Flavor": "Google"},
    )
    with urllib.request.urlopen(project) as reply:
        assert reply.read().decode() == "sdk-project"
    daemon.cli("env", "revoke", grant["id"])
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(project, timeout=5)


def test_env_refuses_the_wrong_connector_type(
    daemon: Daemon, google: GoogleServer, tmp_path: Path
) -> None:
    key = google.service_account("sdk2", "sdk-project").write(tmp_path / "sa.json")
    daemon.cli(
        "connector",
        "register",
        "gcp2",
        "--type",
        "gcp",
        "--auth-method",
        "service-account",
        f"service_account_json=@{key}",
    )
    result = daemon.cli("env", "aws", "gcp2", check=False)
    assert result.returncode == 1
    assert "resource type 'aws-generic'" in result.stderr or "not 'aws'" in result.stderr
