"""`broker exec` with a gcp connector: google-auth's default chain finds the metadata
grant `broker exec` opened (the Google test server behind the daemon checks every
assertion), the grant's server is gone once the child exits, and --env-only gives
GOOGLE_OAUTH_ACCESS_TOKEN / CLOUDSDK_AUTH_ACCESS_TOKEN.
"""

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

from tests.daemon import BROKER, Daemon, running_daemon
from tests.servers.google import GoogleServer

PROJECT = "exec-project"

GOOGLE_AUTH_CHILD = """
import json, os
import google.auth
from google.auth.transport.requests import Request
creds, project = google.auth.default()
creds.refresh(Request())
print(json.dumps({"token": creds.token, "project": project, "class": type(creds).__name__,
                  "host": os.environ["GCE_METADATA_HOST"]}))
"""


@pytest.fixture(scope="module")
def google() -> Iterator[GoogleServer]:
    with GoogleServer(token_lifetime=3600) as server:
        server.add_project(PROJECT, "314159265358")
        yield server


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("exec-gcp-home")
    (home / "gcloud-empty").mkdir()
    return home


@pytest.fixture(scope="module")
def daemon(google: GoogleServer, home: Path) -> Iterator[Daemon]:
    env = {"HOME": str(home), "CLOUDSDK_CONFIG": str(home / "gcloud-empty"), **google.env()}
    with running_daemon(home / "data", env=env) as d:
        key = google.service_account("exec-gcp", PROJECT)
        path = key.write(home / "exec-gcp.json")
        d.cli(
            "connector", "register", "exec-gcp", "--type", "gcp",
            "--auth-method", "service-account", f"service_account_json=@{path}",
        )  # fmt: skip
        yield d


def _exec(daemon: Daemon, home: Path, *args: str, **extra: str) -> subprocess.CompletedProcess[str]:
    env = {
        k: v
        for k, v in daemon.env.items()
        if not k.startswith(("GOOGLE_", "GCE_", "CLOUDSDK_", "METADATA_"))
    }
    path = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update(
        PATH=path,
        BROKER_SOCKET=str(daemon.socket),
        CLOUDSDK_CONFIG=str(home / "gcloud-empty"),
        **extra,
    )
    return subprocess.run(
        [*BROKER, "exec", *args], capture_output=True, text=True, env=env, timeout=60
    )


def test_google_auth_through_the_metadata_grant(
    daemon: Daemon, google: GoogleServer, home: Path, tmp_path: Path
) -> None:
    # A key file in the parent's environment would win over the metadata server.
    stale = tmp_path / "stale-key.json"
    stale.write_text("{}")
    result = _exec(
        daemon, home, "exec-gcp", "--", sys.executable, "-c", GOOGLE_AUTH_CHILD,
        GOOGLE_APPLICATION_CREDENTIALS=str(stale),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    got = json.loads(result.stdout)
    assert got["class"] == "Credentials" and got["project"] == PROJECT
    assert got["token"]
    # The child has exited: the grant's metadata server is gone.
    request = urllib.request.Request(
        f"http://{got['host']}/computeMetadata/v1/project/project-id",
        headers={"Metadata-Flavor": "Google"},
    )
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(request, timeout=5)
    assert [g for g in daemon.cli_json("env", "list") if g["connector"] == "exec-gcp"] == []


def test_env_only_access_token(daemon: Daemon, home: Path) -> None:
    child = (
        "import json, os; print(json.dumps({k: v for k, v in os.environ.items()"
        " if k.startswith(('GOOGLE_', 'CLOUDSDK_AUTH', 'GCE_'))}))"
    )
    result = _exec(
        daemon, home, "exec-gcp", "--env-only", "--", sys.executable, "-c", child,
        GOOGLE_APPLICATION_CREDENTIALS="/stale/key.json",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    env = json.loads(result.stdout)
    token = env.pop("GOOGLE_OAUTH_ACCESS_TOKEN")
    assert token and env.pop("CLOUDSDK_AUTH_ACCESS_TOKEN") == token
    assert env == {"GOOGLE_CLOUD_PROJECT": PROJECT}, env
