"""Unmodified SDKs fetch credentials from the broker: the real `aws` CLI and boto3 through
the container credentials endpoint, gcloud-aio-auth and google-auth through the GCE
metadata endpoint; both endpoints hardened (proxy headers, foreign Host, Origin), grants
with a TTL and an owner, metadata grants bound to a uid (checked with a real second user)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import pytest

from tests.daemon import Daemon, running_daemon
from tests.servers.google import GoogleServer
from tests.servers.moto import MotoServer, moto_for_test
from tests.users import Users, fixture_users, run_as, wait_for_audit  # noqa: F401


@pytest.fixture
def moto(monkeypatch: pytest.MonkeyPatch) -> Iterator[MotoServer]:
    yield from moto_for_test(monkeypatch)


@pytest.fixture(scope="module")
def google() -> Iterator[GoogleServer]:
    with GoogleServer(token_lifetime=3600) as server:
        yield server


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory, google: GoogleServer) -> Iterator[Daemon]:
    """One daemon for the module (a start costs ~1.5 s): each test registers connectors
    under names of its own and checks only the grants it made."""
    with running_daemon(tmp_path_factory.mktemp("sdk") / "data", env=google.env()) as d:
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
        "aws-cli",
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
    grant = daemon.cli_json("env", "aws", "aws-cli")
    env = grant["env"]
    assert env["AWS_CONTAINER_CREDENTIALS_FULL_URI"].startswith("http://127.0.0.1:")
    # The CLI retries a refused endpoint with 1 s sleeps (botocore's container fetcher):
    # the wrong-token run waits ~2 s, so it runs alongside the good one.
    with futures.ThreadPoolExecutor(2) as pool:
        good = pool.submit(_aws, env, moto.url, tmp_path)
        bad = pool.submit(
            _aws, {**env, "AWS_CONTAINER_AUTHORIZATION_TOKEN": "not-the-token"}, moto.url, tmp_path
        )
        result, wrong = good.result(), bad.result()
    assert result.returncode == 0, result.stderr
    assert "Arn" in json.loads(result.stdout)
    assert secret not in result.stdout
    assert wrong.returncode != 0
    daemon.cli("env", "revoke", grant["id"])
    revoked = _aws(env, moto.url, tmp_path)
    assert revoked.returncode != 0
    assert env["AWS_CONTAINER_AUTHORIZATION_TOKEN"] not in daemon.log()


def test_gce_metadata_endpoint_serves_gcloud_aio_auth(
    daemon: Daemon, google: GoogleServer, tmp_path: Path
) -> None:
    key = google.service_account("sdk", "sdk-project").write(tmp_path / "sa.json")
    daemon.register_gcp("gcp-aio", key)
    grant = daemon.cli_json("env", "gcp", "gcp-aio")
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
    daemon.register_gcp("gcp2", key)
    result = daemon.cli("env", "aws", "gcp2", check=False)
    assert result.returncode == 1
    assert "resource type 'aws-generic'" in result.stderr or "not 'aws'" in result.stderr


# --------------------------------------------------------------------------- hardening,
# TTL, owner and uid binding against the real daemon (see test_sdk_hardening.py for the
# FakeClock expiry and ownership cases).

REFUSED_HEADERS = [
    ("X-Forwarded-For", "10.1.2.3"),
    ("Forwarded", "for=10.1.2.3;proto=http"),
    ("Host", "evil.example:{port}"),
    ("Origin", "http://evil.example"),
]
METADATA_TOKEN = "/computeMetadata/v1/instance/service-accounts/default/token"


def _register_aws(daemon: Daemon, moto: MotoServer, name: str) -> str:
    key, secret = moto.create_user(f"{name}-user")
    daemon.cli(
        "connector",
        "register",
        name,
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
    return secret


def _register_gcp(daemon: Daemon, google: GoogleServer, tmp: Path, name: str) -> str:
    account = google.service_account(name, "sdk-project")
    key = account.write(tmp / f"{name}.json")
    daemon.register_gcp(name, key)
    return f"{name}@sdk-project.iam.gserviceaccount.com"


def _http(url: str, headers: dict[str, str]) -> tuple[int, dict[str, str], str]:
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as reply:
            return reply.status, dict(reply.headers), reply.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read().decode()


def _clean_sdk_env(tmp: Path, extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "GOOGLE_", "GCE_"))}
    env.update(
        {
            "AWS_CONFIG_FILE": str(tmp / "none"),
            "AWS_SHARED_CREDENTIALS_FILE": str(tmp / "none"),
            "AWS_DEFAULT_REGION": "us-east-1",
            "CLOUDSDK_CONFIG": str(tmp / "gcloud"),
            "HOME": str(tmp),
            **extra,
        }
    )
    return env


def test_both_endpoints_refuse_proxied_foreign_host_and_origin_requests(
    daemon: Daemon, moto: MotoServer, google: GoogleServer, tmp_path: Path
) -> None:
    _register_aws(daemon, moto, "aws-hard")
    _register_gcp(daemon, google, tmp_path, "gcp-hard")
    aws = daemon.cli_json("env", "aws", "aws-hard")["env"]
    gcp_host = daemon.cli_json("env", "gcp", "gcp-hard")["env"]["GCE_METADATA_HOST"]
    aws_url = aws["AWS_CONTAINER_CREDENTIALS_FULL_URI"]
    aws_port = aws_url.split("/")[2].split(":")[1]
    token = {"Authorization": aws["AWS_CONTAINER_AUTHORIZATION_TOKEN"]}
    flavor = {"Metadata-Flavor": "Google"}

    assert _http(aws_url, token)[0] == 200
    assert _http(f"http://{gcp_host}{METADATA_TOKEN}", flavor)[0] == 200
    for name, value in REFUSED_HEADERS:
        status, _, body = _http(aws_url, {**token, name: value.format(port=aws_port)})
        assert status == 403, (name, body)
        assert name in json.loads(body)["error"]
        gcp_port = gcp_host.split(":")[1]
        status, headers, body = _http(
            f"http://{gcp_host}{METADATA_TOKEN}", {**flavor, name: value.format(port=gcp_port)}
        )
        assert status == 403, (name, body)
        assert headers["Metadata-Flavor"] == "Google"
        assert name in json.loads(body)["error"]
        assert "Traceback" not in body
    assert "Traceback" not in daemon.log()


def test_google_auth_and_boto3_work_through_the_hardened_endpoints(
    daemon: Daemon, moto: MotoServer, google: GoogleServer, tmp_path: Path
) -> None:
    secret = _register_aws(daemon, moto, "aws-sdk")
    email = _register_gcp(daemon, google, tmp_path, "gcp-sdk")
    aws = daemon.cli_json("env", "aws", "aws-sdk")
    gcp = daemon.cli_json("env", "gcp", "gcp-sdk")

    boto = (
        "import json, sys, boto3\n"
        "sts = boto3.client('sts', endpoint_url=sys.argv[1])\n"
        "print(json.dumps(sts.get_caller_identity()['Arn']))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", boto, moto.url],
        capture_output=True,
        text=True,
        env=_clean_sdk_env(tmp_path, aws["env"]),
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    arn = json.loads(result.stdout)
    assert "aws-sdk-user" in arn or arn.startswith("arn:")
    assert secret not in result.stdout

    google_auth = (
        "import json\n"
        "import google.auth.transport.requests as tr\n"
        "from google.auth import compute_engine\n"
        "from google.auth.compute_engine import _metadata\n"
        "request = tr.Request()\n"
        "assert _metadata.is_on_gce(request)\n"
        "creds = compute_engine.Credentials()\n"
        "creds.refresh(request)\n"
        "print(json.dumps({'token': creds.token, 'email': creds.service_account_email,\n"
        "                  'project': _metadata.get_project_id(request)}))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", google_auth],
        capture_output=True,
        text=True,
        env=_clean_sdk_env(tmp_path, gcp["env"]),
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    got = json.loads(result.stdout)
    assert google.validate_token(got["token"]) == email
    assert got["project"] == "sdk-project"
    issued = wait_for_audit(
        daemon, "credential_issued", via=f"gce-metadata-endpoint grant={gcp['id']}"
    )
    assert issued[-1]["uid"] == os.getuid() and issued[-1]["principal"].startswith("uid=")
    wait_for_audit(daemon, "credential_issued", via=f"aws-container-endpoint grant={aws['id']}")


def test_ttl_owner_and_list(
    daemon: Daemon, moto: MotoServer, google: GoogleServer, tmp_path: Path
) -> None:
    _register_aws(daemon, moto, "aws-ttl")
    _register_gcp(daemon, google, tmp_path, "gcp-ttl")
    aws = daemon.cli_json("env", "aws", "aws-ttl", "--ttl", "60")
    gcp = daemon.cli_json("env", "gcp", "gcp-ttl", "--ttl", "1h30m")
    default = daemon.cli_json("env", "gcp", "gcp-ttl")
    assert 50 <= aws["expires_in_seconds"] <= 60
    assert 5390 <= gcp["expires_in_seconds"] <= 5400
    assert 12 * 3600 - 10 <= default["expires_in_seconds"] <= 12 * 3600
    assert aws["bound_uid"] is None and gcp["bound_uid"] == os.getuid()
    assert aws["owner"].startswith(f"uid={os.getuid()}")

    table = daemon.cli("env", "gcp", "gcp-ttl", "--ttl", "12h").stdout
    assert "export GCE_METADATA_HOST=" in table
    assert "# expires 20" in table
    assert "(in 11h59m" in table or "(in 12h00m" in table
    assert f"# only sockets of uid {os.getuid()} may connect" in table

    listed = daemon.cli_json("env", "list")
    assert {e["id"] for e in listed} >= {aws["id"], gcp["id"], default["id"]}
    one = next(e for e in listed if e["id"] == gcp["id"])
    assert one["owner"] == gcp["owner"] and one["bound_uid"] == os.getuid()
    assert one["kind"] == "gcp" and one["connector"] == "gcp-ttl" and "env" not in one
    assert listed[0]["id"] == aws["id"]  # soonest expiry first
    text = daemon.cli("env", "list").stdout
    assert aws["id"] in text and "BOUND UID" in text

    for bad, words in (("30", "ttl_seconds must be between 60"), ("8d", "7 days"), ("2x", "--ttl")):
        result = daemon.cli("env", "aws", "aws-ttl", "--ttl", bad, check=False)
        assert result.returncode == 1, bad
        assert words in result.stderr
    daemon.cli("env", "revoke", aws["id"])
    assert aws["id"] not in {e["id"] for e in daemon.cli_json("env", "list")}
    revoked = daemon.cli("env", "revoke", aws["id"], check=False)
    assert revoked.returncode == 1 and "of yours" in revoked.stderr


def test_a_uid_bound_metadata_endpoint_refuses_other_uids(
    daemon: Daemon, google: GoogleServer, tmp_path: Path, users: Users
) -> None:
    _register_gcp(daemon, google, tmp_path, "gcp-uid")
    mine = daemon.cli_json("env", "gcp", "gcp-uid")  # bound to the creator: root
    eves = daemon.cli_json("env", "gcp", "gcp-uid", "--bind-uid", str(users.eve.uid))
    fetch = (
        "import json, sys, urllib.request, urllib.error\n"
        "req = urllib.request.Request(sys.argv[1], headers={'Metadata-Flavor': 'Google'})\n"
        "try:\n"
        "    with urllib.request.urlopen(req, timeout=10) as r:\n"
        "        out = [r.status, r.headers['Metadata-Flavor'], r.read().decode()]\n"
        "except urllib.error.HTTPError as e:\n"
        "    out = [e.code, e.headers['Metadata-Flavor'], e.read().decode()]\n"
        "print(json.dumps(out))\n"
    )

    def as_eve(grant: dict[str, Any]) -> list[Any]:
        url = f"http://{grant['env']['GCE_METADATA_HOST']}{METADATA_TOKEN}"
        result = run_as(users.eve, ["/usr/bin/python3", "-I", "-c", fetch, url], check=True)
        out: list[Any] = json.loads(result.stdout)
        return out

    def as_root(grant: dict[str, Any]) -> tuple[int, dict[str, str], str]:
        url = f"http://{grant['env']['GCE_METADATA_HOST']}{METADATA_TOKEN}"
        return _http(url, {"Metadata-Flavor": "Google"})

    status, flavor, body = as_eve(mine)
    assert (status, flavor) == (403, "Google")
    assert f"the connection comes from uid {users.eve.uid}" in json.loads(body)["error"]
    assert as_root(mine)[0] == 200
    refused = wait_for_audit(daemon, "sdk_endpoint_refused", id=mine["id"])
    assert refused[-1]["peer_uid"] == users.eve.uid

    status, flavor, body = as_eve(eves)
    assert (status, flavor) == (200, "Google"), body
    assert google.validate_token(json.loads(body)["access_token"])
    status, _, body = as_root(eves)
    assert status == 403 and f"comes from uid {os.getuid()}" in body
