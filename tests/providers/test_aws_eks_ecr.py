"""EKS tokens and ECR logins from aws connectors, checked against moto like EKS / ECR would.

The EKS token is decoded and checked the way the EKS authenticator checks it
(prefix, STS host, GetCallerIdentity, 60-s presign, signed x-k8s-aws-id, recent
date), its signature recomputed independently where the test knows the keys,
and moto's STS asked whose keys signed it.
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import pytest

from broker.clock import FakeClock
from broker.errors import InvalidArgument, NotFound, UpstreamError
from broker.providers.aws import AwsProvider
from broker.providers.aws.eks_token import eks_token
from broker.providers.aws.policy import generated_policy
from broker.providers.aws.session import AwsCredentials
from broker.providers.base import ProviderContext
from tests.servers.moto import (
    ACCOUNT,
    REGION,
    MotoServer,
    TokenRejected,
    aws_connector,
    decode_eks_token,
    expected_signature,
    moto_for_test,
    verify_eks_token,
)
from tests.servers.tls import make_ca

REGISTRY = f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com"
CLUSTER_ARN = f"arn:aws:eks:{REGION}:{ACCOUNT}:cluster/prod"
Make = Callable[..., AwsProvider]


@pytest.fixture
def moto(monkeypatch: pytest.MonkeyPatch) -> Iterator[MotoServer]:
    yield from moto_for_test(monkeypatch)


@pytest.fixture
def clock() -> FakeClock:
    # Real time: moto stamps STS expiries with the wall clock.
    return FakeClock(start=datetime.now(UTC).replace(microsecond=0))


@pytest.fixture
async def provider(clock: FakeClock) -> AsyncIterator[Make]:
    made: list[AwsProvider] = []

    def make(**context: Any) -> AwsProvider:
        settings: dict[str, Any] = {"request_timeout": 5.0, "clock": clock, **context}
        made.append(AwsProvider(ProviderContext(**settings)))
        return made[-1]

    yield make
    for aws in made:
        await aws.aclose()


def keys_for(moto: MotoServer, user: str = "alice") -> dict[str, str]:
    key, secret = moto.create_user(user)
    return {
        "region": REGION,
        "endpoint_url": moto.url,
        "aws_access_key_id": key,
        "aws_secret_access_key": secret,
    }


def sts_host(moto: MotoServer) -> str:
    return urlsplit(moto.url).netloc


@pytest.fixture
def cluster(moto: MotoServer) -> str:
    """Cluster 'prod' whose endpoint and CA are real-looking (moto invents garbage)."""
    moto.create_clusters(["prod", "staging"])
    ca = make_ca("eks test CA")
    moto.set_cluster_endpoint("prod", "https://127.0.0.1:6443", ca.cert_pem)
    return ca.cert_pem


# -- EKS ------------------------------------------------------------------------


@pytest.mark.anyio
async def test_eks_credential_from_an_assumed_role(
    moto: MotoServer, provider: Make, clock: FakeClock, cluster: str
) -> None:
    config = keys_for(moto)
    role = moto.create_role("eks-admin")
    aws = provider()
    conn = aws_connector(aws, "iam-role", name="kube", role_arn=role, **config)
    cred = await aws.mint(conn, "kubernetes-cluster", CLUSTER_ARN)
    assert (cred.connector_type, cred.auth_method) == ("kubernetes", "token")
    assert cred.resource_id == "prod"
    assert cred.config["server"] == "https://127.0.0.1:6443"
    assert cred.config["certificate_authority"] == cluster
    assert cred.config["cluster_name"] == CLUSTER_ARN
    assert cred.secret_names == {"token"}
    assert cred.expires_at == clock.now() + timedelta(minutes=14)
    assert cred.session_policy == generated_policy("kubernetes-cluster", "prod", REGION, ACCOUNT)
    # One session for the client (scoped), one for the connector's own lookup (DescribeCluster).
    policies = [r.params.get("Policy") for r in moto.recorded("AssumeRole")]
    assert sorted(policies, key=str) == sorted([cred.session_policy, None], key=str)

    token = str(cred.config["token"])
    parts = decode_eks_token(token, sts_host=sts_host(moto), now=clock.now())
    assert parts.signed_at == clock.now()
    assert parts.query["X-Amz-Security-Token"]
    identity = verify_eks_token(
        moto, token, cluster="prod", sts_host=sts_host(moto), now=clock.now()
    )
    assert identity["Arn"] == f"arn:aws:sts::{ACCOUNT}:assumed-role/eks-admin/broker-kube"
    # Stale after 15 minutes, as STS would have it.
    await clock.advance(15 * 60 + 1)
    with pytest.raises(TokenRejected, match="not recent"):
        decode_eks_token(token, sts_host=sts_host(moto), now=clock.now())


@pytest.mark.anyio
async def test_eks_token_signature_binds_the_cluster(
    moto: MotoServer, provider: Make, clock: FakeClock, cluster: str
) -> None:
    config = keys_for(moto)
    aws = provider()
    conn = aws_connector(aws, "secret-key", **config)
    cred = await aws.mint(conn, "kubernetes-cluster", "prod")
    token = str(cred.config["token"])
    assert token.startswith("k8s-aws-v1.") and "=" not in token
    parts = decode_eks_token(token, sts_host=sts_host(moto), now=clock.now())
    assert "X-Amz-Security-Token" not in parts.query
    assert parts.access_key_id == config["aws_access_key_id"]
    signature = parts.query["X-Amz-Signature"]
    assert signature == expected_signature(parts, "prod", config["aws_secret_access_key"])
    assert signature != expected_signature(parts, "staging", config["aws_secret_access_key"])
    identity = verify_eks_token(
        moto, token, cluster="prod", sts_host=sts_host(moto), now=clock.now()
    )
    assert identity["Arn"] == f"arn:aws:iam::{ACCOUNT}:user/alice"
    assert cred.expires_at == clock.now() + timedelta(minutes=14)
    assert cred.session_policy is None


@pytest.mark.anyio
async def test_eks_token_never_outlives_the_connectors_token(
    moto: MotoServer, provider: Make, clock: FakeClock, cluster: str
) -> None:
    config = keys_for(moto)
    aws = provider()
    dies = clock.now() + timedelta(minutes=5)
    conn = aws_connector(
        aws,
        "sts-token",
        clock=clock,
        expires_at=dies,
        aws_session_token="session-token-value",
        **config,
    )
    cred = await aws.mint(conn, "kubernetes-cluster", "prod")
    assert cred.expires_at == dies
    parts = decode_eks_token(str(cred.config["token"]), sts_host=sts_host(moto), now=clock.now())
    assert parts.query["X-Amz-Security-Token"] == "session-token-value"


@pytest.mark.anyio
async def test_eks_lookup_failures_are_clear(
    moto: MotoServer, provider: Make, cluster: str
) -> None:
    aws = provider()
    conn = aws_connector(aws, "session-token", **keys_for(moto))
    with pytest.raises(NotFound) as err:
        await aws.mint(conn, "kubernetes-cluster", "missing")
    assert "missing" in err.value.message
    assert moto.recorded("GetSessionToken") == []  # nothing minted for a missing cluster
    with pytest.raises(UpstreamError) as err:  # moto's invented CA data
        await aws.mint(conn, "kubernetes-cluster", "staging")
    assert "certificate authority" in err.value.message


def test_token_for_aws_itself_targets_the_regional_sts() -> None:
    signed_at = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    creds = AwsCredentials("AKIAIOSFODNN7EXAMPLE", "secret")
    for region, host in (
        ("eu-west-1", "sts.eu-west-1.amazonaws.com"),
        ("cn-north-1", "sts.cn-north-1.amazonaws.com.cn"),
    ):
        token, expires = eks_token(creds, "prod", region, None, signed_at)
        parts = decode_eks_token(token, sts_host=host, now=signed_at)
        assert parts.query["X-Amz-Date"] == "20300102T030405Z"
        assert parts.query["X-Amz-Credential"].split("/")[1:4] == ["20300102", region, "sts"]
        assert parts.query["X-Amz-Signature"] == expected_signature(parts, "prod", "secret")
        assert expires == signed_at + timedelta(minutes=14)
    short = AwsCredentials("ASIAX", "s", "t", expires_at=signed_at + timedelta(minutes=3))
    assert eks_token(short, "prod", "eu-west-1", None, signed_at)[1] == short.expires_at


def test_token_checker_refuses_malformed_tokens() -> None:
    """The checker the tests (and the daemon suite's API server) rely on can fail."""
    now = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    good, _ = eks_token(AwsCredentials("AKIAX", "s"), "prod", "eu-west-1", None, now)
    host = "sts.eu-west-1.amazonaws.com"
    url = base64.urlsafe_b64decode(good[11:] + "==").decode()

    def encode(text: str) -> str:
        return "k8s-aws-v1." + base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")

    bad = {
        "prefix": good[len("k8s-aws-v1.") :],
        "STS endpoint": encode(url.replace(host, "sts.evil.example")),
        "X-Amz-Expires": encode(url.replace("X-Amz-Expires=60", "X-Amz-Expires=900")),
        "signed headers": encode(url.replace("host%3Bx-k8s-aws-id", "host")),
        "Action": encode(url.replace("GetCallerIdentity", "AssumeRole")),
        "padded": good + "==",
    }
    for reason, token in bad.items():
        with pytest.raises(TokenRejected, match=reason):
            decode_eks_token(token, sts_host=host, now=now)
    with pytest.raises(TokenRejected, match="not recent"):
        decode_eks_token(good, sts_host=host, now=now + timedelta(minutes=16))
    assert decode_eks_token(good, sts_host=host, now=now).signed_at == now


# -- ECR ------------------------------------------------------------------------


@pytest.mark.anyio
async def test_ecr_login_from_an_assumed_role(
    moto: MotoServer, provider: Make, clock: FakeClock
) -> None:
    config = keys_for(moto)
    role = moto.create_role("pusher")
    moto.enable_auth()
    aws = provider()
    conn = aws_connector(aws, "iam-role", role_arn=role, expiration_seconds=900, **config)
    registry = await aws.resolve_default_resource_id(conn, "docker-registry")
    assert registry == REGISTRY
    moto.clear_requests()
    cred = await aws.mint(conn, "docker-registry", f"https://{REGISTRY}/team/app")
    assert (cred.connector_type, cred.auth_method) == ("docker", "password")
    assert cred.resource_id == REGISTRY
    assert cred.config == {
        "username": "AWS",
        "password": f"{ACCOUNT}-auth-token",
        "registry": REGISTRY,
    }
    assert cred.secret_names == {"password"}
    assert cred.session_policy == generated_policy("docker-registry", REGISTRY, REGION, ACCOUNT)
    # ECR token (12 h) outlives the 15-min session: the session's expiry wins.
    [assume] = moto.recorded("AssumeRole")
    assert assume.params["Policy"] == cred.session_policy
    [login] = moto.recorded("GetAuthorizationToken")
    assert "Credential=ASIA" in login.headers["authorization"]  # the minted session signed it
    assert cred.expires_at is not None
    assert timedelta(minutes=14) < cred.expires_at - datetime.now(UTC) <= timedelta(minutes=15)


@pytest.mark.anyio
async def test_ecr_expiry_is_the_earlier_of_token_and_session(
    moto: MotoServer, provider: Make
) -> None:
    config = keys_for(moto)
    ecr_expiry = datetime.now(UTC).replace(microsecond=0) + timedelta(minutes=20)
    moto.ecr_token_expiry = lambda: ecr_expiry
    aws = provider()
    role = aws_connector(aws, "iam-role", role_arn=moto.create_role("r"), **config)
    assert (await aws.mint(role, "docker-registry", REGISTRY)).expires_at == ecr_expiry
    keys = aws_connector(aws, "secret-key", name="k", **config)
    assert (await aws.mint(keys, "docker-registry", REGISTRY)).expires_at == ecr_expiry
    session = aws_connector(aws, "session-token", name="s", expiration_seconds=900, **config)
    session_expiry = (await aws.mint(session, "docker-registry", REGISTRY)).expires_at
    assert session_expiry is not None and session_expiry < ecr_expiry


@pytest.mark.anyio
async def test_ecr_of_another_account_is_refused(moto: MotoServer, provider: Make) -> None:
    aws = provider()
    conn = aws_connector(aws, "session-token", **keys_for(moto))
    other = f"210987654321.dkr.ecr.{REGION}.amazonaws.com"
    with pytest.raises(InvalidArgument) as err:
        await aws.mint(conn, "docker-registry", other)
    assert other in err.value.message and ACCOUNT in err.value.message
    assert moto.recorded("GetSessionToken") == []
    assert moto.recorded("GetAuthorizationToken") == []
