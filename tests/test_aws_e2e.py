"""aws connectors end to end: the real daemon and `broker` CLI against moto, and real clients.

moto runs in this process (tests.servers.moto); the daemon subprocess reaches
it by URL. IAM/signature enforcement is on wherever moto supports it (STS, IAM,
S3, ECR); EKS calls need it off (moto's EKS signature check fails every GET).
Clients: kubectl (exec plugin) against the Kubernetes test API server that
checks EKS tokens the way EKS does, a real docker-registry for ECR logins,
skopeo, and the `aws` CLI through credential_process.
"""

from __future__ import annotations

import base64
import configparser
import json
import os
import shutil
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import grpc
import pytest
import yaml

from broker.api.v1 import broker_pb2 as pb
from broker.providers.aws.eks_token import eks_token
from broker.providers.aws.session import AwsCredentials
from tests.daemon import Daemon, running_daemon
from tests.servers.kube_api import KubeApiServer, kubectl_version
from tests.servers.moto import (
    ACCOUNT,
    REGION,
    MotoServer,
    TokenRejected,
    moto_for_test,
    no_ambient_aws,
    verify_eks_token,
)
from tests.servers.registry import RegistryServer, start_registry
from tests.test_frontends import _make_oci_image

BIN = Path(sys.executable).parent
ECR_HOST = f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com"
#: What moto's GetAuthorizationToken hands out (base64 of "AWS:<this>").
ECR_PASSWORD = f"{ACCOUNT}-auth-token"
CREDENTIAL_KEYS = {
    "connector",
    "connector_type",
    "auth_method",
    "resource_type",
    "resource_id",
    "expires_at",
    "config",
    "session_policy",
}


@pytest.fixture
def moto(monkeypatch: pytest.MonkeyPatch) -> Iterator[MotoServer]:
    yield from moto_for_test(monkeypatch)


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    home = tmp_path_factory.mktemp("aws-home")
    env = no_ambient_aws(home)
    with running_daemon(home / "data", env=env) as d:
        yield d


@pytest.fixture(scope="module")
def ecr_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    # A local registry whose htpasswd user matches the ECR login moto issues.
    with start_registry(tmp_path_factory.mktemp("ecr"), users={"AWS": ECR_PASSWORD}) as r:
        yield r


def _keys(moto: MotoServer, user: str) -> list[str]:
    key, secret = moto.create_user(user)
    return [
        f"region={REGION}",
        f"endpoint_url={moto.url}",
        f"aws_access_key_id={key}",
        f"aws_secret_access_key={secret}",
    ]


def _stamp(text: str | None) -> datetime:
    assert text is not None
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _helper_env(daemon: Daemon, **extra: str) -> dict[str, str]:
    return {**daemon.env, "BROKER_HELPER_SOCKET": str(daemon.data_dir / "helper.sock"), **extra}


def _parallel(calls: list[Callable[[], Any]]) -> list[Any]:
    """CLI processes take ~0.7 s to start: run independent ones side by side."""
    with ThreadPoolExecutor(max_workers=3) as pool:
        return list(pool.map(lambda call: call(), calls))


# -- every key-based auth method, auth enforced ------------------------------------


def test_key_methods_register_verify_and_mint(moto: MotoServer, daemon: Daemon) -> None:
    keys = _keys(moto, "alice")
    s3 = moto.client("s3")
    for bucket in ("bucket-a", "bucket-b"):
        s3.create_bucket(Bucket=bucket)
    role = moto.create_role("deployer")
    alice_key = keys[2].split("=", 1)[1]
    alice_secret = keys[3].split("=", 1)[1]
    sts = moto.client("sts", key=alice_key, secret=alice_secret)
    token = sts.assume_role(RoleArn=role, RoleSessionName="handed-over")["Credentials"]
    moto.enable_auth()

    # Auth really is enforced: a wrong secret is refused and nothing is stored.
    wrong = daemon.cli(
        "connector",
        "register",
        "aws-wrong",
        "--type",
        "aws",
        "--auth-method",
        "secret-key",
        "--resource-type",
        "s3-bucket",
        *keys[:3],
        "aws_secret_access_key=Wrong-Secret-Value-123",
        check=False,
    )
    assert wrong.returncode == 1
    assert "failed verification" in wrong.stderr
    assert "Wrong-Secret-Value-123" not in wrong.stderr

    sts_keys = [
        f"region={REGION}",
        f"endpoint_url={moto.url}",
        f"aws_access_key_id={token['AccessKeyId']}",
        f"aws_secret_access_key={token['SecretAccessKey']}",
        f"aws_session_token={token['SessionToken']}",
    ]
    token_expiry = token["Expiration"].astimezone(UTC).replace(microsecond=0)
    methods: dict[str, list[str]] = {
        "secret-key": keys,
        "sts-token": [*sts_keys, "--expires-at", token_expiry.strftime("%Y-%m-%dT%H:%M:%SZ")],
        "iam-role": [*keys, f"role_arn={role}"],
        "session-token": keys,
        "federation-token": keys,
    }

    def register(method: str, args: list[str]) -> Callable[[], Any]:
        return lambda: daemon.cli_json(
            "connector",
            "register",
            f"aws-{method}",
            "--type",
            "aws",
            "--auth-method",
            method,
            "--resource-type",
            "s3-bucket",
            *args,
        )

    registered = _parallel([register(m, a) for m, a in methods.items()])
    for method, reply in zip(methods, registered, strict=True):
        assert reply["connector"]["auth_method"] == method
        assert reply["connector"]["scope"] == "multi-instance"
        assert reply["resources"] == [
            {
                "connector": f"aws-{method}",
                "connector_type": "aws",
                "resource_type": "s3-bucket",
                "resource_ids": ["s3://bucket-a", "s3://bucket-b"],
                "error": None,
            }
        ], method

    moto.clear_requests()
    before = datetime.now(UTC).replace(microsecond=0)

    def verify_and_get(method: str) -> Callable[[], tuple[Any, Any]]:
        name = f"aws-{method}"
        return lambda: (
            daemon.cli_json("connector", "verify", name),
            daemon.cli_json(
                "credentials", "get", name, "-r", "s3-bucket", "--resource-id", "s3://bucket-b"
            ),
        )

    results = _parallel([verify_and_get(m) for m in methods])
    after = datetime.now(UTC) + timedelta(seconds=1)
    creds: dict[str, dict[str, Any]] = {}
    for method, (verified, cred) in zip(methods, results, strict=True):
        assert verified[0]["resource_ids"] == ["s3://bucket-a", "s3://bucket-b"], method
        assert verified[0]["error"] is None
        assert set(cred) == CREDENTIAL_KEYS, method
        assert cred["connector_type"] == "aws"
        assert (cred["resource_type"], cred["resource_id"]) == ("s3-bucket", "s3://bucket-b")
        assert cred["config"]["region"] == REGION
        assert cred["config"]["endpoint_url"] == moto.url
        creds[method] = cred

    # Handed through: the stored keys, long-lived or with the token's own expiry.
    assert creds["secret-key"]["auth_method"] == "secret-key"
    assert creds["secret-key"]["expires_at"] is None
    assert creds["secret-key"]["config"]["aws_access_key_id"] == alice_key
    assert "aws_session_token" not in creds["secret-key"]["config"]
    assert creds["sts-token"]["auth_method"] == "sts-token"
    assert _stamp(creds["sts-token"]["expires_at"]) == token_expiry
    assert creds["sts-token"]["config"]["aws_session_token"] == token["SessionToken"]
    for method in ("secret-key", "sts-token", "session-token"):
        assert creds[method]["session_policy"] is None, method

    # Minted: temporary keys for the connector's session length, down-scoped by a policy.
    lifetimes = {"iam-role": 3600, "session-token": 43200, "federation-token": 43200}
    for method, seconds in lifetimes.items():
        cred = creds[method]
        assert cred["auth_method"] == "sts-token", method
        assert cred["config"]["aws_access_key_id"] != alice_key
        assert cred["config"]["aws_session_token"]
        expiry = _stamp(cred["expires_at"])
        assert before + timedelta(seconds=seconds) <= expiry <= after + timedelta(seconds=seconds)
    for method, target in (("iam-role", "AssumeRole"), ("federation-token", "GetFederationToken")):
        policy = creds[method]["session_policy"]
        statements = {tuple(sorted(_list(s["Resource"]))): s for s in policy["Statement"]}
        assert ("arn:aws:s3:::bucket-b", "arn:aws:s3:::bucket-b/*") in statements, policy
        assert ("*",) in statements and _list(statements[("*",)]["Action"]) == [
            "s3:ListAllMyBuckets"
        ]
        assert "arn:aws:s3:::bucket-a" not in json.dumps(policy)
        # The working role session (no policy) may be reused; the client's carries one.
        (sent,) = [r for r in moto.recorded(target) if "Policy" in r.params]
        assert json.loads(sent.params["Policy"]) == policy  # what STS got is what is shown
    assert moto.recorded("GetSessionToken")[0].params["DurationSeconds"] == "43200"
    assert len(moto.recorded("GetFederationToken")[0].params["Name"]) <= 32

    # The assumed-role keys work against (auth-enforcing) moto. (moto's GetSessionToken and
    # GetFederationToken return fixed keys its own auth does not know, so those cannot.)
    role_cfg = creds["iam-role"]["config"]
    client = moto.client(
        "s3",
        key=role_cfg["aws_access_key_id"],
        secret=role_cfg["aws_secret_access_key"],
        aws_session_token=role_cfg["aws_session_token"],
    )
    assert client.list_objects_v2(Bucket="bucket-b")["KeyCount"] == 0

    # describe --client: the same credential (cached), secrets hidden, plain bucket name accepted.
    shown = daemon.cli_json(
        "connector",
        "describe",
        "aws-iam-role",
        "--client",
        "--resource-type",
        "s3-bucket",
        "--resource-id",
        "bucket-b",
    )
    assert set(shown) == CREDENTIAL_KEYS
    assert shown["resource_id"] == "s3://bucket-b"
    assert shown["config"]["aws_access_key_id"] == role_cfg["aws_access_key_id"]
    assert shown["config"]["aws_secret_access_key"] == "[HIDDEN]"
    assert shown["config"]["aws_session_token"] == "[HIDDEN]"
    assert shown["session_policy"] == creds["iam-role"]["session_policy"]
    log = daemon.log()
    for secret in (alice_secret, token["SecretAccessKey"], role_cfg["aws_secret_access_key"]):
        assert secret not in log


def _list(value: str | list[str]) -> list[str]:
    return [value] if isinstance(value, str) else sorted(value)


# -- an sts-token connector running out ----------------------------------------------


def test_expired_sts_token_connector(moto: MotoServer, daemon: Daemon) -> None:
    keys = _keys(moto, "bob")
    moto.client("s3").create_bucket(Bucket="logs")
    role = moto.create_role("reader")
    sts = moto.client("sts", key=keys[2].split("=", 1)[1], secret=keys[3].split("=", 1)[1])
    token = sts.assume_role(RoleArn=role, RoleSessionName="short")["Credentials"]
    moto.enable_auth()
    name = "aws-short"
    daemon.cli(
        "connector",
        "register",
        name,
        "--type",
        "aws",
        "--auth-method",
        "sts-token",
        f"region={REGION}",
        f"endpoint_url={moto.url}",
        f"aws_access_key_id={token['AccessKeyId']}",
        f"aws_secret_access_key={token['SecretAccessKey']}",
        f"aws_session_token={token['SessionToken']}",
        "--expires-at",
        "+1h",
        "--resource-type",
        "s3-bucket",
    )
    (listed,) = daemon.cli_json("connector", "list", "--name", name)
    assert 3500 < listed["expires_in_seconds"] <= 3600
    # The token turns out to die sooner: record that (no re-verify), then let it pass.
    expires_at = (datetime.now(UTC) + timedelta(seconds=3)).replace(microsecond=0)
    updated = daemon.cli_json(
        "connector",
        "update",
        name,
        "--expires-at",
        f"{expires_at:%Y-%m-%dT%H:%M:%SZ}",
        "--no-verify",
    )["connector"]
    assert _stamp(updated["expires_at"]) == expires_at
    assert 0 <= updated["expires_in_seconds"] <= 3
    time.sleep(max(0.0, (expires_at - datetime.now(UTC)).total_seconds()) + 0.1)

    stamp = expires_at.strftime("%Y-%m-%dT%H:%M:%SZ")
    expected = f"connector '{name}' credentials expired at {stamp}"
    got, verify, described, table = _parallel(
        [
            lambda: daemon.cli(
                "credentials",
                "get",
                name,
                "-r",
                "s3-bucket",
                "-i",
                "logs",
                "-o",
                "json",
                check=False,
            ),
            lambda: daemon.cli("connector", "verify", name, check=False),
            lambda: daemon.cli_json("connector", "describe", name),
            lambda: daemon.cli("connector", "list", "--name", name),
        ]
    )
    assert got.returncode == 1 and got.stdout == ""
    assert expected in got.stderr, got.stderr
    assert verify.returncode == 1 and expected in verify.stderr
    assert described["expires_in_seconds"] <= 0
    assert "EXPIRED" in table.stdout
    with daemon.stub() as stub:
        calls: list[Callable[[], object]] = [
            lambda: stub.GetCredentials(
                pb.GetCredentialsRequest(connector=name, resource_id="logs"), timeout=10
            ),
            lambda: stub.VerifyConnector(pb.VerifyConnectorRequest(name=name), timeout=10),
        ]
        for call in calls:
            with pytest.raises(grpc.RpcError) as err:
                call()
            assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert expected in (err.value.details() or "")
    helper = subprocess.run(
        [
            str(BIN / "broker-aws-credential"),
            name,
            "--resource-type=s3-bucket",
            "--resource-id=logs",
        ],
        capture_output=True,
        text=True,
        env=_helper_env(daemon),
        timeout=30,
    )
    assert helper.returncode == 1 and expected in helper.stderr
    assert helper.stdout == ""


# -- EKS: kubectl through the exec plugin, token checked like EKS does ----------------


def test_eks_kubectl_end_to_end(moto: MotoServer, daemon: Daemon, tmp_path: Path) -> None:
    keys = _keys(moto, "carol")
    role = moto.create_role("eks-admin")
    moto.create_clusters(["prod", "staging"])
    sts_host = urlsplit(moto.url).netloc
    rejected: list[str] = []

    def validate(token: str) -> str | None:
        try:
            identity = verify_eks_token(
                moto, token, cluster="prod", sts_host=sts_host, now=datetime.now(UTC)
            )
        except TokenRejected as exc:
            rejected.append(str(exc))
            return None
        return identity["Arn"]

    with KubeApiServer(token_validator=validate) as kube:
        moto.set_cluster_endpoint("prod", kube.url, kube.ca_pem)
        registered = daemon.cli_json(
            "connector",
            "register",
            "aws-eks",
            "--type",
            "aws",
            "--auth-method",
            "iam-role",
            "--resource-type",
            "kubernetes-cluster",
            *keys,
            f"role_arn={role}",
        )
        assert registered["resources"][0]["resource_ids"] == ["prod", "staging"]
        kubeconfig = tmp_path / "kubeconfig"
        daemon.cli(
            "login",
            "kubernetes",
            "aws-eks",
            "--resource-id",
            f"arn:aws:eks:{REGION}:{ACCOUNT}:cluster/prod",
            "--kubeconfig",
            str(kubeconfig),
        )
        doc = yaml.safe_load(kubeconfig.read_text())
        assert stat.S_IMODE(kubeconfig.stat().st_mode) == 0o600
        (cluster,) = doc["clusters"]
        assert cluster["cluster"]["server"] == kube.url
        assert base64.b64decode(cluster["cluster"]["certificate-authority-data"]).decode() == (
            kube.ca_pem
        )
        assert "k8s-aws-v1." not in kubeconfig.read_text()  # only the exec plugin

        kubectl = kubectl_version(kubeconfig, {**daemon.env, "HOME": str(tmp_path)})
        assert kubectl.returncode == 0, kubectl.stderr + "\n".join(rejected)
        assert json.loads(kubectl.stdout)["gitVersion"].startswith("v1.30")
        assert set(kube.users) == {f"arn:aws:sts::{ACCOUNT}:assumed-role/eks-admin/broker-aws-eks"}

        # The exec plugin's answer: an EKS token, reported valid < 14 min minus kubectl's margin.
        plugin = subprocess.run(
            [str(BIN / "broker-kubectl-credential"), "aws-eks", "--resource-id", "prod"],
            capture_output=True,
            text=True,
            env=_helper_env(daemon),
            timeout=30,
        )
        status = json.loads(plugin.stdout)["status"]
        assert status["token"].startswith("k8s-aws-v1.")
        until = _stamp(status["expirationTimestamp"]) - datetime.now(UTC)
        assert timedelta(minutes=12) < until <= timedelta(minutes=13)

        # Malformed and stale tokens are refused by the server (kubectl sees 401).
        key, secret = keys[2].split("=", 1)[1], keys[3].split("=", 1)[1]
        stale, _ = eks_token(
            AwsCredentials(key, secret),
            "prod",
            REGION,
            moto.url,
            datetime.now(UTC) - timedelta(minutes=16),
        )
        fresh, _ = eks_token(
            AwsCredentials(key, secret), "prod", REGION, moto.url, datetime.now(UTC)
        )
        for bad in ("k8s-aws-v1.bm90IGEgdXJs", stale, fresh.replace("k8s-aws-v1.", "k8s-aws-v2.")):
            path = kube.write_kubeconfig(tmp_path / "bad-kubeconfig", token=bad)
            refused = kubectl_version(path, {**daemon.env, "HOME": str(tmp_path)})
            assert refused.returncode != 0
            assert "Unauthorized" in refused.stderr, refused.stderr
        assert any("not recent" in r for r in rejected)
        # The same signer's fresh token is accepted: the refusals above are about the token.
        path = kube.write_kubeconfig(tmp_path / "good-kubeconfig", token=fresh)
        ok = kubectl_version(path, {**daemon.env, "HOME": str(tmp_path)})
        assert ok.returncode == 0, ok.stderr


# -- ECR: the docker helper's login works against a registry configured to match --------


def test_ecr_login_through_the_docker_helper(
    moto: MotoServer, daemon: Daemon, ecr_registry: RegistryServer, tmp_path: Path
) -> None:
    keys = _keys(moto, "dave")
    role = moto.create_role("pusher")
    moto.client("ecr").create_repository(repositoryName="app")
    moto.enable_auth()
    registered = daemon.cli_json(
        "connector",
        "register",
        "aws-ecr",
        "--type",
        "aws",
        "--auth-method",
        "iam-role",
        "--resource-type",
        "docker-registry",
        *keys,
        f"role_arn={role}",
    )
    assert registered["resources"][0]["resource_ids"] == [ECR_HOST]
    config_dir = tmp_path / "docker"
    daemon.cli("login", "docker", "aws-ecr", "--config", str(config_dir))
    assert json.loads((config_dir / "config.json").read_text())["credHelpers"] == {
        ECR_HOST: "broker"
    }
    cred = daemon.cli_json("credentials", "get", "aws-ecr", "--resource-type", "docker-registry")
    assert (cred["connector_type"], cred["auth_method"]) == ("docker", "password")
    assert cred["config"]["registry"] == ECR_HOST
    # ECR tokens live 12 h, the role session 1 h: the credential dies with the session.
    left = _stamp(cred["expires_at"]) - datetime.now(UTC)
    assert timedelta(minutes=58) < left <= timedelta(hours=1)
    assert cred["session_policy"]["Statement"]

    for server_url in (ECR_HOST, f"https://{ECR_HOST}", f"{ECR_HOST}/app"):
        got = subprocess.run(
            [str(BIN / "docker-credential-broker"), "get"],
            input=server_url,
            capture_output=True,
            text=True,
            env=_helper_env(daemon),
            timeout=30,
        )
        assert got.returncode == 0, got.stdout + got.stderr
        answer = json.loads(got.stdout)
        assert (answer["Username"], answer["Secret"]) == ("AWS", ECR_PASSWORD), server_url

    # The canonical ECR host cannot resolve to the local registry, so no client can be
    # pointed at it by name; instead the registry is configured with the login ECR issues,
    # and the helper's answer logs in to it (and a wrong password does not).
    def v2(user: str, password: str) -> int:
        auth = base64.b64encode(f"{user}:{password}".encode()).decode()
        req = urllib.request.Request(
            f"{ecr_registry.url}/v2/", headers={"Authorization": f"Basic {auth}"}
        )
        try:
            with urllib.request.urlopen(req, timeout=10) as reply:
                return int(reply.status)
        except urllib.error.HTTPError as exc:
            return exc.code

    assert v2(answer["Username"], answer["Secret"]) == 200
    assert v2(answer["Username"], answer["Secret"] + "x") == 401
    src = tmp_path / "img"
    _make_oci_image(src)
    creds = f"--dest-creds={answer['Username']}:{answer['Secret']}"
    push = subprocess.run(
        [
            "skopeo",
            "copy",
            "--dest-tls-verify=false",
            creds,
            f"oci:{src}:v1",
            f"docker://{ecr_registry.address}/app:v1",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert push.returncode == 0, push.stderr


# -- `broker login aws` and the real aws CLI through credential_process ----------------


def test_login_aws_then_aws_cli(moto: MotoServer, daemon: Daemon, tmp_path: Path) -> None:
    aws = shutil.which("aws")
    assert aws is not None, "the aws CLI is part of the test environment"
    keys = _keys(moto, "erin")
    role = moto.create_role("data-reader")
    s3 = moto.client("s3")
    s3.create_bucket(Bucket="data-bucket")
    s3.put_object(Bucket="data-bucket", Key="hello.txt", Body=b"hi")
    key, secret = moto.create_user("frank")  # for auto-configuration below
    moto.enable_auth()
    daemon.cli(
        "connector",
        "register",
        "aws-cli",
        "--type",
        "aws",
        "--auth-method",
        "iam-role",
        *keys,
        f"role_arn={role}",
    )
    config = tmp_path / "aws" / "config"
    config.parent.mkdir()
    config.write_text("[default]\nregion = eu-west-1\n\n[profile other]\noutput = json\n")
    env = {"AWS_CONFIG_FILE": str(config)}
    login = ["login", "aws", "aws-cli", "--resource-type", "s3-bucket", "--resource-id"]
    daemon.cli(*login, "data-bucket", "--profile", "data", env=env)
    first = config.read_text()
    assert stat.S_IMODE(config.stat().st_mode) == 0o600
    parsed = configparser.RawConfigParser()
    parsed.read_string(first)
    assert parsed.get("default", "region") == "eu-west-1"
    assert parsed.get("profile other", "output") == "json"
    assert parsed.get("profile data", "region") == REGION
    assert parsed.get("profile data", "endpoint_url") == moto.url
    process = parsed.get("profile data", "credential_process")
    assert "s3://data-bucket" in process and keys[3].split("=", 1)[1] not in first
    daemon.cli(*login, "s3://data-bucket", "--profile", "data", env=env)
    assert config.read_text() == first  # idempotent

    aws_env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("AWS_", "BROKER_", "PYTHON"))
    }
    aws_env.update(
        HOME=str(tmp_path),
        AWS_CONFIG_FILE=str(config),
        AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"),
        AWS_EC2_METADATA_DISABLED="true",
    )
    moto.clear_requests()
    ls = subprocess.run(
        [aws, "--profile", "data", "--endpoint-url", moto.url, "s3", "ls", "s3://data-bucket"],
        capture_output=True,
        text=True,
        env=aws_env,
        timeout=60,
    )
    assert ls.returncode == 0, ls.stderr
    assert "hello.txt" in ls.stdout
    who = subprocess.run(
        [aws, "--profile", "data", "sts", "get-caller-identity"],  # endpoint_url: the profile's
        capture_output=True,
        text=True,
        env=aws_env,
        timeout=60,
    )
    assert who.returncode == 0, who.stderr
    assert json.loads(who.stdout)["Arn"].startswith(
        f"arn:aws:sts::{ACCOUNT}:assumed-role/data-reader/"
    )
    # The aws CLI signed with the broker's temporary key for this bucket.
    cred = daemon.cli_json("credentials", "get", "aws-cli", "-r", "s3-bucket", "-i", "data-bucket")
    listed = [r for r in list(moto.requests) if r.path.startswith("/data-bucket")]
    assert listed
    for request in listed:
        credential = request.headers["authorization"].split("Credential=")[1].split("/")[0]
        assert credential == cred["config"]["aws_access_key_id"]

    # Auto-configuration through the CLI from a profile (keys + region + endpoint_url):
    # long-lived keys become a session-token connector, verified against moto.
    home = tmp_path / "auto-home"
    (home / ".aws").mkdir(parents=True)
    (home / ".aws" / "credentials").write_text(
        f"[dev]\naws_access_key_id = {key}\naws_secret_access_key = {secret}\n"
    )
    (home / ".aws" / "config").write_text(
        f"[profile dev]\nregion = eu-west-1\nendpoint_url = {moto.url}\n"
    )
    auto = daemon.cli_json(
        "connector",
        "register",
        "aws-auto",
        "--type",
        "aws",
        "--auto-configure",
        "--profile",
        "dev",
        "--region",
        REGION,
        "--resource-type",
        "s3-bucket",
        env={"HOME": str(home), "AWS_CONFIG_FILE": "", "AWS_SHARED_CREDENTIALS_FILE": ""},
    )
    assert auto["connector"]["auth_method"] == "session-token"
    assert auto["connector"]["config"]["region"] == REGION  # --region wins over the profile
    assert auto["connector"]["config"]["endpoint_url"] == moto.url
    assert auto["connector"]["config"]["aws_access_key_id"] == key
    assert auto["resources"][0]["resource_ids"] == ["s3://data-bucket"]
