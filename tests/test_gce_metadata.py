"""The GCE metadata endpoint against real Google clients, end to end: the real daemon and
`broker env gcp`, the Google test server behind it (which checks every assertion and signs
ID tokens), and unmodified clients configured only by the variables `broker env gcp` prints:

- Python google-auth: ``google.auth.default()`` and ``compute_engine.Credentials`` through
  three refreshes each (short-lived tokens), ``IDTokenCredentials`` through three refreshes,
  ``fetch_id_token``, the project ID;
- gcloud-aio-auth: token and project;
- Node.js google-auth-library (tests/node, installed by `make test`);
- the gcloud CLI, where installed.

No Google host is ever contacted: every client runs with an empty CLOUDSDK_CONFIG and
no GOOGLE_* variables, and the daemon's Google endpoints point at the test server.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from broker.cache import policy
from broker.model import ClientCredential
from tests.daemon import Daemon, running_daemon
from tests.servers.google import CLOUD_PLATFORM, GoogleServer

PROJECT = "gce-project"
NUMBER = "271828182845"
AUDIENCE = "https://service.example/api"
EMAIL_SCOPE = "https://www.googleapis.com/auth/userinfo.email"
NODE_DIR = Path(__file__).parent / "node"
#: Token lifetime for the refresh tests: short enough for three refreshes in seconds.
#: The client refreshes ~1/4 of the life + 1.5 s after each fetch (its threshold is the
#: margin, 3/4 of the life, less 1.5 s): ~3.3 s apart at 7 s, while the cache renews
#: every ~1.2 s, so each refresh finds a token outside the margin.
SHORT_LIFETIME = 7
V1 = "/computeMetadata/v1"


@pytest.fixture(scope="module")
def google() -> Iterator[GoogleServer]:
    with GoogleServer(token_lifetime=3600) as server:
        server.add_project(PROJECT, NUMBER)
        yield server


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("gce-home")


@pytest.fixture(scope="module")
def daemon(google: GoogleServer, home: Path) -> Iterator[Daemon]:
    (home / "gcloud-empty").mkdir()
    env = {"HOME": str(home), "CLOUDSDK_CONFIG": str(home / "gcloud-empty"), **google.env()}
    with running_daemon(home / "data", env=env) as d:
        yield d


def _register(daemon: Daemon, google: GoogleServer, home: Path, name: str) -> str:
    """A service-account connector (project from the key); returns its email."""
    key = google.service_account(name, PROJECT)
    path = key.write(home / f"{name}.json")
    daemon.register_gcp(name, path)
    return key.email


def _client_env(home: Path, grant_env: dict[str, str], tag: str) -> dict[str, str]:
    """A client's environment: the grant's variables and nothing Google-ish of ours."""
    config = home / f"gcloud-{tag}"
    config.mkdir(exist_ok=True)
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("GOOGLE_", "GCE_", "CLOUDSDK_", "GCLOUD_", "METADATA_"))
    }
    env.update({"CLOUDSDK_CONFIG": str(config), "HOME": str(home), **grant_env})
    return env


def _get(base: str, path: str, flavor: bool = True) -> tuple[int, dict[str, str], str]:
    headers = {"Metadata-Flavor": "Google"} if flavor else {}
    request = urllib.request.Request(base + path, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as reply:
            return reply.status, dict(reply.headers), reply.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read().decode()


def _ok(base: str, path: str) -> str:
    status, headers, body = _get(base, path)
    assert (status, headers["Metadata-Flavor"]) == (200, "Google"), (path, status, body)
    return body


def _run(args: list[str], env: dict[str, str], cwd: Path | None = None) -> Any:
    result = subprocess.run(
        args, capture_output=True, text=True, env=env, cwd=cwd, timeout=110, check=False
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------- the paths


def test_every_path_answers_as_a_metadata_server(
    daemon: Daemon, google: GoogleServer, home: Path
) -> None:
    email = _register(daemon, google, home, "paths")
    grant = daemon.cli_json("env", "gcp", "paths")
    address = grant["env"]["GCE_METADATA_HOST"]
    assert grant["env"] == {
        "GCE_METADATA_HOST": address,
        "GCE_METADATA_IP": address,
        "GCE_METADATA_ROOT": address,
    }
    printed = daemon.cli("env", "gcp", "paths").stdout
    for name in ("GCE_METADATA_HOST", "GCE_METADATA_IP", "GCE_METADATA_ROOT"):
        assert f"export {name}=127.0.0.1:" in printed
    base = f"http://{address}"

    assert _ok(base, "/") == "computeMetadata/\n"
    assert _ok(base, f"{V1}/") == "instance/\nproject/\nuniverse/\n"
    listing = _ok(base, f"{V1}/instance")  # detection probes (Node) ask without the slash
    assert listing == _ok(base, f"{V1}/instance/")
    assert {"id", "zone", "service-accounts/"} <= set(listing.split())
    assert _ok(base, f"{V1}/instance/service-accounts/").split() == ["default/", f"{email}/"]
    for account in ("default", email):
        prefix = f"{V1}/instance/service-accounts/{account}"
        assert _ok(base, f"{prefix}/email") == email
        assert _ok(base, f"{prefix}/aliases") == "default\n"
        assert _ok(base, f"{prefix}/scopes") == f"{CLOUD_PLATFORM}\n"
        assert _ok(base, f"{prefix}/").split() == [
            "aliases",
            "email",
            "identity",
            "scopes",
            "token",
        ]
        assert json.loads(_ok(base, f"{prefix}/?recursive=true")) == {
            "aliases": ["default"],
            "email": email,
            "scopes": [CLOUD_PLATFORM],
        }
        token = json.loads(_ok(base, f"{prefix}/token"))
        assert google.validate_token(token["access_token"]) == email
        assert 3500 <= token["expires_in"] <= 3600 and token["token_type"] == "Bearer"
    listed = json.loads(_ok(base, f"{V1}/instance/service-accounts/?recursive=true"))
    assert listed["default"] == listed[email]
    assert _ok(base, f"{V1}/project/project-id") == PROJECT
    assert _ok(base, f"{V1}/project/numeric-project-id") == NUMBER  # from Resource Manager
    assert json.loads(_ok(base, f"{V1}/project/?recursive=true")) == {
        "attributes": {},
        "numericProjectId": int(NUMBER),
        "projectId": PROJECT,
    }
    assert _ok(base, f"{V1}/universe/universe-domain") == "googleapis.com"
    instance = json.loads(_ok(base, f"{V1}/instance/?recursive=true"))
    assert instance["serviceAccounts"][email]["email"] == email
    assert isinstance(instance["id"], int) and instance["zone"].startswith("projects/")

    # scopes=: a token for those scopes (its own cache entry), not the cloud-platform one
    default = json.loads(_ok(base, f"{V1}/instance/service-accounts/default/token"))
    scoped = json.loads(
        _ok(base, f"{V1}/instance/service-accounts/{email}/token?scopes={EMAIL_SCOPE}")
    )
    assert scoped["access_token"] != default["access_token"]
    assert google.token_scope(scoped["access_token"]) == EMAIL_SCOPE
    again = json.loads(_ok(base, f"{V1}/instance/service-accounts/default/token"))
    assert again["access_token"] == default["access_token"]  # served from the cache

    # identity: an ID token for the audience, signed upstream, with the email for format=full
    full = _ok(
        base, f"{V1}/instance/service-accounts/default/identity?audience={AUDIENCE}&format=full"
    )
    claims = google.verify_id_token(full, AUDIENCE)
    assert claims["email"] == email and claims["email_verified"] is True
    status, _, body = _get(base, f"{V1}/instance/service-accounts/default/identity")
    assert status == 400 and "audience" in body

    # Every answer carries the flavor header: 404s and the 403 for a missing header too.
    for path in (f"{V1}/nothing-here", f"{V1}/instance/service-accounts/other@x.example/email"):
        status, headers, _ = _get(base, path)
        assert (status, headers["Metadata-Flavor"]) == (404, "Google"), path
    status, headers, _ = _get(base, f"{V1}/project/project-id", flavor=False)
    assert (status, headers["Metadata-Flavor"]) == (403, "Google")


def test_the_account_is_the_connectors_or_a_stable_alias(
    daemon: Daemon, google: GoogleServer, home: Path
) -> None:
    user = google.user_account("grace@example.com")
    daemon.cli(
        "connector",
        "register",
        "gce-user",
        "--type",
        "gcp",
        "--auth-method",
        "user-account",
        f"user_account_json={user.json()}",
        f"project_id={PROJECT}",
        "project_number=42",
    )
    base = "http://" + daemon.cli_json("env", "gcp", "gce-user")["env"]["GCE_METADATA_HOST"]
    accounts = f"{V1}/instance/service-accounts"
    assert _ok(base, f"{accounts}/default/email") == "grace@example.com"  # from the id_token
    assert _ok(base, f"{accounts}/grace@example.com/email") == "grace@example.com"
    assert _ok(base, f"{V1}/project/numeric-project-id") == "42"  # the attribute
    status, headers, body = _get(base, f"{accounts}/default/identity?audience={AUDIENCE}")
    assert (status, headers["Metadata-Flavor"]) == (412, "Google")
    assert "service accounts only" in json.loads(body)["error"]

    expires = (datetime.now(UTC) + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    daemon.cli(
        "connector",
        "register",
        "gce-stored",
        "--type",
        "gcp",
        "--auth-method",
        "oauth2-token",
        "token=ya29.stored-elsewhere",
        f"project_id={PROJECT}",
        "--expires-at",
        expires,
    )
    base = "http://" + daemon.cli_json("env", "gcp", "gce-stored")["env"]["GCE_METADATA_HOST"]
    alias = "gce-stored@credential-broker.invalid"  # nobody upstream names this identity
    assert _ok(base, f"{accounts}/default/email") == alias
    assert _ok(base, f"{accounts}/").split() == ["default/", f"{alias}/"]
    token = json.loads(_ok(base, f"{accounts}/{alias}/token"))
    assert token["access_token"] == "ya29.stored-elsewhere"

    source = google.service_account("gce-source", PROJECT)
    target = google.add_principal(f"gce-target@{PROJECT}.iam.gserviceaccount.com")
    google.allow_impersonation(source.email, target)
    daemon.cli(
        "connector",
        "register",
        "gce-imp",
        "--type",
        "gcp",
        "--auth-method",
        "impersonation",
        f"service_account_json={source.json()}",
        f"target_principal={target}",
    )
    base = "http://" + daemon.cli_json("env", "gcp", "gce-imp")["env"]["GCE_METADATA_HOST"]
    assert _ok(base, f"{accounts}/default/email") == target
    # The connector's alias stays valid whatever the account is.
    assert _ok(base, f"{accounts}/gce-imp@credential-broker.invalid/email") == target
    id_token = _ok(base, f"{accounts}/{target}/identity?audience={AUDIENCE}&format=full")
    assert google.verify_id_token(id_token, AUDIENCE)["email"] == target
    assert google.id_tokens[-1].via == "generateIdToken"


def test_a_grant_refuses_connectors_that_hand_out_no_token(
    daemon: Daemon, google: GoogleServer, home: Path
) -> None:
    key = google.service_account("gce-keyfile", PROJECT).write(home / "gce-keyfile.json")
    daemon.register_gcp("gce-keyfile", key, "generate_temporary_tokens=false")
    result = daemon.cli("env", "gcp", "gce-keyfile", check=False)
    assert result.returncode == 1
    assert "the metadata endpoint serves tokens" in result.stderr
    assert "generate_temporary_tokens=true" in result.stderr


# --------------------------------------------------------------------------- real clients

GOOGLE_AUTH = r"""
import datetime, json, sys, time
import google.auth
import google.auth._helpers as helpers
import google.auth.transport.requests as transport
from google.auth import compute_engine
from google.auth.compute_engine import _metadata
from google.oauth2 import id_token

threshold, audience, budget = float(sys.argv[1]), sys.argv[2], float(sys.argv[3])
# google-auth refreshes 3 min 45 s before expiry; these tokens live seconds, so the
# threshold shrinks with them (still inside the broker's margin, as 3:45 is inside 4:00).
helpers.REFRESH_THRESHOLD = datetime.timedelta(seconds=threshold)
request = transport.Request()
assert _metadata.is_on_gce(request)
default, project = google.auth.default()
explicit = compute_engine.Credentials()
ids = compute_engine.IDTokenCredentials(request, audience, use_metadata_identity_endpoint=True)
clients = {"default": default, "explicit": explicit, "id": ids}
got = {name: [] for name in clients}
for name, creds in clients.items():
    def counted(req, name=name, creds=creds, refresh=creds.refresh):
        refresh(req)
        got[name].append({
            "token": creds.token,
            "expiry": creds.expiry.replace(tzinfo=datetime.timezone.utc).timestamp(),
            "at": time.time(),
            "email": creds.service_account_email,
        })
    creds.refresh = counted
deadline = time.time() + budget
while time.time() < deadline and min(len(v) for v in got.values()) < 4:
    for creds in clients.values():
        headers = {}
        creds.before_request(request, "GET", "https://storage.example/", headers)
        assert headers["authorization"] == "Bearer " + creds.token
    time.sleep(0.05)
print(json.dumps({
    "type": type(default).__name__,
    "project": project,
    "metadata_project": _metadata.get_project_id(request),
    "fetched": id_token.fetch_id_token(request, audience),
    "got": got,
}))
"""


def _margin(lifetime: float) -> float:
    """The broker's margin for a Google token of ``lifetime`` seconds (broker.cache.policy)."""
    now = datetime.now(UTC)
    token = ClientCredential(
        "gcp",
        "oauth2-token",
        "gcp-generic",
        PROJECT,
        {},
        issued_at=now,
        expires_at=now + timedelta(seconds=lifetime),
    )
    return policy.margin(token).total_seconds()


@pytest.mark.slow
def test_google_auth_refreshes_three_times_never_getting_an_expiring_token(
    daemon: Daemon, google: GoogleServer, home: Path
) -> None:
    margin = _margin(SHORT_LIFETIME)
    # The client refreshes `threshold` s before expiry (expires_in is whole seconds, so
    # up to 1 s earlier): always inside the margin, where the cache has a new token.
    threshold = margin - 1.5
    assert threshold >= 0.3, margin
    google.token_lifetime = SHORT_LIFETIME  # for every token of this connector
    try:
        email = _register(daemon, google, home, "gce-refresh")
        grant = daemon.cli_json("env", "gcp", "gce-refresh")
        out = _run(
            [sys.executable, "-c", GOOGLE_AUTH, str(threshold), AUDIENCE, "90"],
            _client_env(home, grant["env"], "google-auth"),
        )
    finally:
        google.token_lifetime = 3600
    assert out["type"] == "Credentials"  # google.auth.default() found the metadata server
    assert out["project"] == out["metadata_project"] == PROJECT
    assert google.verify_id_token(out["fetched"], AUDIENCE, check_expiry=False)["email"] == email
    for name, refreshes in out["got"].items():
        assert len(refreshes) >= 4, (name, len(refreshes))  # the first fetch + 3 refreshes
        tokens = [r["token"] for r in refreshes]
        # Every refresh got a new token: never the expiring one again.
        assert len(set(tokens)) == len(tokens), name
        for got in refreshes:
            # ... and never one inside the margin (expires_in is rounded down: 1 s).
            assert got["expiry"] - got["at"] >= margin - 1.0, (name, got)
            assert got["email"] == email
            if name == "id":
                claims = google.verify_id_token(got["token"], AUDIENCE, check_expiry=False)
                assert claims["email"] == email
            else:
                assert google.issued_to(got["token"]) == email
    # After its first refresh google-auth asks for the account by email: that path works.
    assert out["got"]["default"][0]["email"] == email


GCLOUD_AIO = r"""
import asyncio, json
from gcloud.aio.auth import Token

async def main():
    async with Token() as token:
        print(json.dumps({"token": await token.get(), "project": await token.get_project()}))

asyncio.run(main())
"""


def test_gcloud_aio_auth_token_and_project(
    daemon: Daemon, google: GoogleServer, home: Path
) -> None:
    email = _register(daemon, google, home, "gce-aio")
    grant = daemon.cli_json("env", "gcp", "gce-aio")
    out = _run([sys.executable, "-c", GCLOUD_AIO], _client_env(home, grant["env"], "aio"))
    assert google.validate_token(out["token"]) == email
    assert out["project"] == PROJECT


def test_node_google_auth_library(daemon: Daemon, google: GoogleServer, home: Path) -> None:
    if not (NODE_DIR / "node_modules" / "google-auth-library").is_dir():
        pytest.fail("tests/node/node_modules is missing google-auth-library: run `make test-deps`")
    email = _register(daemon, google, home, "gce-node")
    grant = daemon.cli_json("env", "gcp", "gce-node")
    env = _client_env(home, grant["env"], "node")
    out = _run(["node", "gce.js", AUDIENCE, EMAIL_SCOPE], env, cwd=NODE_DIR)
    assert out["available"] is True and out["client"] == "Compute"
    assert google.validate_token(out["token"]) == email
    assert google.validate_token(out["scopedToken"]) is None  # not cloud-platform...
    assert google.issued_to(out["scopedToken"]) == email  # ...but the account's,
    assert google.token_scope(out["scopedToken"]) == EMAIL_SCOPE  # for the scope asked
    assert out["email"] == email
    assert out["project"] == out["metadataProject"] == PROJECT
    assert out["numericProject"] == NUMBER
    assert out["universe"] == "googleapis.com"
    assert google.verify_id_token(out["idToken"], AUDIENCE)["email"] == email


@pytest.mark.skipif(shutil.which("gcloud") is None, reason="the gcloud CLI is not installed")
def test_gcloud_cli(daemon: Daemon, google: GoogleServer, home: Path) -> None:
    email = _register(daemon, google, home, "gce-gcloud")
    grant = daemon.cli_json("env", "gcp", "gce-gcloud")
    env = _client_env(home, grant["env"], "gcloud")  # gcloud reads GCE_METADATA_ROOT
    commands = [
        ["gcloud", "auth", "print-access-token"],
        ["gcloud", "auth", "print-identity-token", f"--audiences={AUDIENCE}"],
        ["gcloud", "config", "list", "--format=json"],
    ]

    def run(command: list[str]) -> str:
        result = subprocess.run(
            command, capture_output=True, text=True, env=env, timeout=110, check=False
        )
        assert result.returncode == 0, result.stderr[-2000:]
        return result.stdout.strip()

    with ThreadPoolExecutor(max_workers=3) as pool:
        token, identity, config = pool.map(run, commands)
    assert google.validate_token(token) == email
    assert google.verify_id_token(identity, AUDIENCE)["email"] == email
    core = json.loads(config)["core"]
    assert (core["account"], core["project"]) == (email, PROJECT)
