"""Official AWS SDKs, unmodified, through the container credentials endpoint: boto3's
default chain for every aws auth method (a forced refresh each), botocore's own
RefreshableCredentials across two renewals of short sessions, the aws CLI through the
endpoint and through credential_process, and the AWS SDK for JavaScript v3 through both.

moto runs in this process with auth off (its GetSessionToken keys are fixed ones its
auth does not know); the endpoint's answers are checked as every SDK needs them:
AccessKeyId, SecretAccessKey, Token and an RFC 3339 Expiration, never the stored key.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.daemon import Daemon, running_daemon
from tests.servers.moto import ACCOUNT, REGION, MotoServer, moto_for_test, no_ambient_aws

NODE_DIR = Path(__file__).parent / "node"
RFC3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
#: The daemon's own AWS keys (implicit auth): temporary, with no known expiry.
DAEMON_KEY = "ASIADAEMONDAEMON0001"
DAEMON_SECRET = "daemon-Secret-0001"
#: Short sessions for the renewal test (STS itself grants 900 s at least): the margin is
#: 3/4 of so short a life (18 s), so the cache renews ~4 s after each mint, 2 s before
#: the margin; botocore picks each renewal up within its 0.5 s polling.
SHORT = timedelta(seconds=24)


@pytest.fixture
def moto(monkeypatch: pytest.MonkeyPatch) -> Iterator[MotoServer]:
    yield from moto_for_test(monkeypatch)


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    home = tmp_path_factory.mktemp("sdk-home")
    env = {
        **no_ambient_aws(home),
        "BROKER_ENABLE_IMPLICIT_AUTH_METHODS": "true",
        "AWS_ACCESS_KEY_ID": DAEMON_KEY,
        "AWS_SECRET_ACCESS_KEY": DAEMON_SECRET,
        "AWS_SESSION_TOKEN": "daemon-session-token",
    }
    with running_daemon(home / "data", env=env) as d:
        yield d


def _sdk_env(tmp: Path, extra: dict[str, str]) -> dict[str, str]:
    """A client's environment: nothing AWS but what the test gives it."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("AWS_", "BROKER_", "PYTHON", "NODE_"))
    }
    env.update(
        {
            "HOME": str(tmp),
            "AWS_CONFIG_FILE": str(tmp / "none-config"),
            "AWS_SHARED_CREDENTIALS_FILE": str(tmp / "none-credentials"),
            "AWS_EC2_METADATA_DISABLED": "true",
            "AWS_DEFAULT_REGION": REGION,
            "AWS_REGION": REGION,
            **extra,
        }
    )
    return env


def _register(daemon: Daemon, moto: MotoServer, name: str, method: str, *extra: str) -> str:
    """An aws-generic connector; returns its stored secret key (or the daemon's).
    sts-token's stored keys are temporary themselves (an AssumeRole session)."""
    if method == "implicit":
        daemon.cli(
            "connector", "register", name, "--type", "aws", "--auth-method", "implicit",
            f"region={REGION}", f"endpoint_url={moto.url}", "--resource-type", "aws-generic",
            *extra,
        )  # fmt: skip
        return DAEMON_SECRET
    key, secret = moto.create_user(f"{name}-user")
    keys = [f"aws_access_key_id={key}", f"aws_secret_access_key={secret}"]
    if method == "sts-token":
        role = moto.create_role(f"{name}-role")
        sts = moto.client("sts", key=key, secret=secret)
        token = sts.assume_role(RoleArn=role, RoleSessionName=name)["Credentials"]
        keys = [
            f"aws_access_key_id={token['AccessKeyId']}",
            f"aws_secret_access_key={token['SecretAccessKey']}",
            f"aws_session_token={token['SessionToken']}",
            "--expires-at",
            token["Expiration"].astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        ]
        secret = token["SecretAccessKey"]
    daemon.cli(
        "connector", "register", name, "--type", "aws", "--auth-method", method,
        f"region={REGION}", f"endpoint_url={moto.url}", *keys,
        "--resource-type", "aws-generic", *extra,
    )  # fmt: skip
    return secret


def _endpoint_document(env: dict[str, str]) -> dict[str, Any]:
    request = urllib.request.Request(
        env["AWS_CONTAINER_CREDENTIALS_FULL_URI"],
        headers={"Authorization": env["AWS_CONTAINER_AUTHORIZATION_TOKEN"]},
    )
    with urllib.request.urlopen(request, timeout=10) as reply:
        doc: dict[str, Any] = json.loads(reply.read())
    return doc


def _stamp(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


BOTO_FORCED_REFRESH = """
import json, sys
import boto3

session = boto3.Session()
creds = session.get_credentials()
sts = session.client("sts", endpoint_url=sys.argv[1])

def seen():
    frozen = creds.get_frozen_credentials()
    return {"key": frozen.access_key, "secret": frozen.secret_key, "token": frozen.token,
            "expiry": creds._expiry_time.isoformat()}

first_arn = sts.get_caller_identity()["Arn"]
first = seen()
# What botocore does once the credentials enter the mandatory refresh window.
creds._protected_refresh(is_mandatory=True)
refreshed = seen()
print(json.dumps({"method": creds.method, "arn": first_arn, "first": first,
                  "refreshed": refreshed,
                  "arn_after": sts.get_caller_identity()["Arn"]}))
"""

METHODS: dict[str, tuple[str, ...]] = {
    "secret-key": ("--expiration-seconds", "1800"),
    "sts-token": (),
    "iam-role": ("role_arn=ROLE",),
    "session-token": (),
    "federation-token": ('policy={"Version":"2012-10-17","Statement":'
                         '[{"Effect":"Allow","Action":"sts:GetCallerIdentity","Resource":"*"}]}',),
    "implicit": ("role_arn=ROLE",),
}  # fmt: skip


@pytest.mark.parametrize("method", list(METHODS))
def test_boto3_default_chain_through_the_container_endpoint(
    daemon: Daemon, moto: MotoServer, tmp_path: Path, method: str
) -> None:
    role = moto.create_role("sdk-role")
    extra = tuple(a.replace("ROLE", role) for a in METHODS[method])
    name = f"sdk-{method}"
    stored_secret = _register(daemon, moto, name, method, *extra)
    grant = daemon.cli_json("env", "aws", name)
    env = grant["env"]

    doc = _endpoint_document(env)
    assert set(doc) == {"AccessKeyId", "SecretAccessKey", "Token", "Expiration"}
    assert doc["Token"] and RFC3339.match(doc["Expiration"]), doc
    assert _stamp(doc["Expiration"]) > datetime.now(UTC) + timedelta(minutes=15)
    # Temporary keys: minted ones, or sts-token's own (handed through until they expire).
    assert (doc["SecretAccessKey"] == stored_secret) == (method == "sts-token")

    result = subprocess.run(
        [sys.executable, "-c", BOTO_FORCED_REFRESH, moto.url],
        capture_output=True,
        text=True,
        env=_sdk_env(tmp_path, env),
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    got = json.loads(result.stdout)
    assert got["method"] == "container-role"
    assert got["arn"].startswith("arn:aws:") and got["arn_after"] == got["arn"]
    for creds in (got["first"], got["refreshed"]):
        assert creds["token"] == doc["Token"] and creds["secret"] == doc["SecretAccessKey"]
        assert creds["key"] == doc["AccessKeyId"]
        assert _stamp(creds["expiry"]) == _stamp(doc["Expiration"])
    assert stored_secret not in daemon.log()

    if method == "secret-key":
        # Minted from the stored key with the connector's session length, never the key.
        calls = moto.recorded("GetSessionToken")
        assert [c.params["DurationSeconds"] for c in calls] == ["1800"]
        left = _stamp(doc["Expiration"]) - datetime.now(UTC)
        assert timedelta(minutes=29) < left <= timedelta(minutes=30)
        # Other clients (allowed long-lived secrets: root is admin) still get the key.
        plain = daemon.cli_json("credentials", "get", name)
        assert plain["auth_method"] == "secret-key" and plain["expires_at"] is None


def test_grant_time_refusal_when_no_session_can_be_minted(daemon: Daemon, moto: MotoServer) -> None:
    # Implicit auth without a role hands the daemon's own temporary keys through, and
    # their expiry is unknown: no SDK could use them, so the grant itself is refused.
    _register(daemon, moto, "sdk-implicit-plain", "implicit")
    refused = daemon.cli("env", "aws", "sdk-implicit-plain", check=False)
    assert refused.returncode == 1
    message = refused.stderr.strip()
    assert "connector 'sdk-implicit-plain' cannot back the AWS container endpoint" in message
    assert "have no expiry" in message and "role_arn" in message
    assert "Traceback" not in message
    assert not [e for e in daemon.cli_json("env", "list") if e["connector"] == "sdk-implicit-plain"]


RENEWALS = """
import json, sys, time
import boto3

session = boto3.Session()
creds = session.get_credentials()
sts = session.client("sts", endpoint_url=sys.argv[1])
seen, calls = [], 0
deadline = time.time() + float(sys.argv[2])
while time.time() < deadline:
    sts.get_caller_identity()  # refreshes through RefreshableCredentials when due
    calls += 1
    frozen = creds.get_frozen_credentials()
    now = time.time()
    expiry = creds._expiry_time.timestamp()
    if not seen or seen[-1]["token"] != frozen.token:
        seen.append({"token": frozen.token, "expiry": expiry, "first_used": now})
    seen[-1]["last_used"] = now
    seen[-1]["left_at_last_use"] = expiry - now
    if len(seen) >= 3:
        break
    time.sleep(0.5)
print(json.dumps({"sessions": seen, "calls": calls, "class": type(creds).__name__}))
"""


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_refreshable_credentials_keep_working_across_two_renewals(
    daemon: Daemon, moto: MotoServer, tmp_path: Path
) -> None:
    moto.sts_lifetime = SHORT
    _register(daemon, moto, "sdk-renewing", "secret-key", "--expiration-seconds", "900")
    env = daemon.cli_json("env", "aws", "sdk-renewing")["env"]
    result = subprocess.run(
        [sys.executable, "-c", RENEWALS, moto.url, str(SHORT.total_seconds() * 3)],
        capture_output=True,
        text=True,
        env=_sdk_env(tmp_path, env),
        timeout=SHORT.total_seconds() * 3 + 30,
    )
    assert result.returncode == 0, result.stderr
    got = json.loads(result.stdout)
    assert got["class"] == "RefreshableCredentials"
    sessions = got["sessions"]
    assert len(sessions) >= 3, got  # the first and two renewals, each picked up by botocore
    assert len({s["token"] for s in sessions}) == len(sessions)
    expiries = [s["expiry"] for s in sessions]
    assert expiries == sorted(expiries) and len(set(expiries)) == len(expiries)
    for session in sessions:
        # Never served inside the margin (at least a quarter of the life): each one was
        # replaced while it still had that much time left.
        assert session["left_at_last_use"] > SHORT.total_seconds() / 4 - 2, sessions
    # Each renewal is one GetSessionToken with the connector's session length.
    calls = moto.recorded("GetSessionToken")
    assert len(calls) >= 3 and {c.params["DurationSeconds"] for c in calls} == {"900"}


def _aws_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    aws = shutil.which("aws")
    assert aws is not None, "the aws CLI is part of the test environment"
    return subprocess.run(
        [aws, *args, "--output", "json"], capture_output=True, text=True, env=env, timeout=60
    )


def _credential_process_profile(daemon: Daemon, tmp: Path, name: str) -> dict[str, str]:
    """A profile written by `broker login aws` (credential_process = broker-aws-credential)."""
    config = tmp / "aws-config"
    daemon.cli("login", "aws", name, "--profile", "brokered", env={"AWS_CONFIG_FILE": str(config)})
    assert "credential_process" in config.read_text()
    helper_bin = str(Path(sys.executable).parent)
    return {
        "AWS_CONFIG_FILE": str(config),
        "AWS_PROFILE": "brokered",
        "BROKER_HELPER_SOCKET": str(daemon.data_dir / "helper.sock"),
        "PATH": f"{helper_bin}:{os.environ['PATH']}",
    }


def test_aws_cli_through_the_container_endpoint_and_credential_process(
    daemon: Daemon, moto: MotoServer, tmp_path: Path
) -> None:
    secret = _register(daemon, moto, "sdk-cli", "secret-key")
    grant = daemon.cli_json("env", "aws", "sdk-cli")
    through_endpoint = _aws_cli(
        _sdk_env(tmp_path, grant["env"]), "sts", "get-caller-identity", "--endpoint-url", moto.url
    )
    assert through_endpoint.returncode == 0, through_endpoint.stderr
    assert json.loads(through_endpoint.stdout)["Arn"].startswith("arn:aws:")
    assert moto.recorded("GetSessionToken"), "the endpoint minted a session from the key"

    profile = _credential_process_profile(daemon, tmp_path, "sdk-cli")
    moto.clear_requests()
    through_process = _aws_cli(
        _sdk_env(tmp_path, profile), "sts", "get-caller-identity", "--endpoint-url", moto.url
    )
    assert through_process.returncode == 0, through_process.stderr
    assert json.loads(through_process.stdout)["Arn"] == f"arn:aws:iam::{ACCOUNT}:user/sdk-cli-user"
    assert secret not in through_process.stdout + through_process.stderr


def _node(env: dict[str, str], *args: str) -> dict[str, Any]:
    result = subprocess.run(
        ["node", str(NODE_DIR / "aws_sdk.js"), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    out: dict[str, Any] = json.loads(result.stdout)
    return out


def test_aws_sdk_for_javascript_through_both_front_ends(
    daemon: Daemon, moto: MotoServer, tmp_path: Path
) -> None:
    import hashlib

    secret = _register(daemon, moto, "sdk-node", "secret-key")
    stored = hashlib.sha256(secret.encode()).hexdigest()
    grant = daemon.cli_json("env", "aws", "sdk-node")
    got = _node(_sdk_env(tmp_path, grant["env"]), moto.url, REGION)
    assert got["arn"].startswith("arn:aws:") and got["arnAfterRefresh"] == got["arn"]
    for creds in (got["first"], got["refreshed"]):
        assert creds["sessionToken"] and creds["expiration"]
        assert creds["secretSha256"] != stored
        assert _stamp(creds["expiration"]) > datetime.now(UTC) + timedelta(minutes=15)

    profile = _credential_process_profile(daemon, tmp_path, "sdk-node")
    got = _node(_sdk_env(tmp_path, profile), moto.url, REGION)
    assert got["arn"] == f"arn:aws:iam::{ACCOUNT}:user/sdk-node-user"
    assert got["first"]["secretSha256"] == stored  # credential_process: the key, allowed to root
