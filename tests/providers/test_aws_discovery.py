"""aws discovery against moto: every auth method verifies, listings paginate, errors are clear."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest

from broker.errors import (
    CredentialsRejected,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    UpstreamError,
)
from broker.providers.aws import AwsProvider
from broker.providers.base import ProviderContext
from tests.servers.moto import (
    ACCOUNT,
    REGION,
    MotoServer,
    aws_connector,
    make_aws_env_safe,
    moto_for_test,
)
from tests.servers.ports import free_port

REGISTRY = f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com"
ALL_TYPES = ("aws-generic", "s3-bucket", "kubernetes-cluster", "docker-registry")


Make = Callable[..., AwsProvider]


@pytest.fixture
def moto(monkeypatch: pytest.MonkeyPatch) -> Iterator[MotoServer]:
    yield from moto_for_test(monkeypatch)


@pytest.fixture
async def provider() -> AsyncIterator[Make]:
    """Makes providers (page size 2: three of anything needs two pages), closed at the end."""
    made: list[AwsProvider] = []

    def make(**context: Any) -> AwsProvider:
        settings: dict[str, Any] = {"request_timeout": 5.0, **context}
        made.append(AwsProvider(ProviderContext(**settings), page_size=2))
        return made[-1]

    yield make
    for aws in made:
        await aws.aclose()


def populate(moto: MotoServer) -> None:
    s3 = moto.client("s3")
    for name in ("bucket-a", "bucket-b", "logs.example.com"):
        s3.create_bucket(Bucket=name)
    moto.create_clusters(["alpha", "beta", "gamma"])
    ecr = moto.client("ecr")
    for name in ("app", "team/api", "web"):
        ecr.create_repository(repositoryName=name)


def keys_for(moto: MotoServer, user: str = "alice", policy: str | None = None) -> dict[str, str]:
    kwargs = {} if policy is None else {"policy": policy}
    key, secret = moto.create_user(user, **kwargs)
    return {
        "region": REGION,
        "endpoint_url": moto.url,
        "aws_access_key_id": key,
        "aws_secret_access_key": secret,
    }


EXPECTED = {
    "aws-generic": [REGION],
    "s3-bucket": ["s3://bucket-a", "s3://bucket-b", "s3://logs.example.com"],
    "kubernetes-cluster": ["alpha", "beta", "gamma"],
    "docker-registry": [REGISTRY],
}


@pytest.mark.anyio
@pytest.mark.parametrize(
    "method", ["secret-key", "sts-token", "iam-role", "session-token", "federation-token"]
)
async def test_every_method_discovers_every_type(
    moto: MotoServer, method: str, provider: Make
) -> None:
    populate(moto)
    config: dict[str, Any] = keys_for(moto)
    extra: dict[str, Any] = {}
    aws = provider()
    if method == "iam-role":
        config["role_arn"] = moto.create_role("deployer")
    if method == "sts-token":
        creds = moto.client(
            "sts", key=config["aws_access_key_id"], secret=config["aws_secret_access_key"]
        ).get_session_token(DurationSeconds=900)["Credentials"]
        config["aws_access_key_id"] = creds["AccessKeyId"]
        config["aws_secret_access_key"] = creds["SecretAccessKey"]
        config["aws_session_token"] = creds["SessionToken"]
        extra["expires_at"] = creds["Expiration"]
    conn = aws_connector(aws, method, **extra, **config)
    moto.clear_requests()
    for rt in ALL_TYPES:
        assert await aws.discover(conn, rt, None) == EXPECTED[rt], rt
    # GetCallerIdentity comes first, with the connector's own keys.
    first = moto.requests[0]
    assert first.params.get("Action") == "GetCallerIdentity"
    assert config["aws_access_key_id"] in first.headers["authorization"]


@pytest.mark.anyio
async def test_listings_follow_every_page(moto: MotoServer, provider: Make) -> None:
    populate(moto)
    aws = provider()
    conn = aws_connector(aws, "secret-key", **keys_for(moto))
    moto.clear_requests()
    await aws.discover(conn, "kubernetes-cluster", None)
    pages = [r for r in moto.requests if r.method == "GET" and r.path == "/clusters"]
    assert len(pages) == 2
    assert "maxResults=2" in pages[0].query
    assert "nextToken" in pages[1].query
    moto.clear_requests()
    await aws.discover(conn, "docker-registry", None)
    # moto answers DescribeRepositories in one page whatever maxResults says.
    repo_pages = moto.recorded("DescribeRepositories")
    assert json.loads(repo_pages[0].body) == {"maxResults": 2}


@pytest.mark.anyio
async def test_one_resource_is_checked_by_id(moto: MotoServer, provider: Make) -> None:
    populate(moto)
    aws = provider()
    conn = aws_connector(aws, "secret-key", **keys_for(moto))
    assert await aws.discover(conn, "s3-bucket", "arn:aws:s3:::bucket-b") == ["s3://bucket-b"]
    assert await aws.discover(conn, "kubernetes-cluster", "beta") == ["beta"]
    assert await aws.discover(conn, "docker-registry", f"https://{REGISTRY}/app") == [REGISTRY]
    assert await aws.discover(conn, "aws-generic", REGION) == [REGION]
    with pytest.raises(NotFound) as err:
        await aws.discover(conn, "s3-bucket", "s3://no-such-bucket")
    assert "no-such-bucket" in err.value.message
    with pytest.raises(NotFound) as err:
        await aws.discover(conn, "kubernetes-cluster", "delta")
    assert "delta" in err.value.message
    with pytest.raises(NotFound):
        await aws.discover(conn, "docker-registry", f"210987654321.dkr.ecr.{REGION}.amazonaws.com")
    with pytest.raises(InvalidArgument):
        await aws.discover(conn, "kubernetes-cluster", "arn:aws:eks:us-west-2:1:cluster/x")


@pytest.mark.anyio
async def test_bad_keys_are_rejected_naming_the_key_id_not_the_secret(
    moto: MotoServer, provider: Make
) -> None:
    config = keys_for(moto)
    moto.enable_auth()
    aws = provider()
    wrong_secret = aws_connector(
        aws, "secret-key", **{**config, "aws_secret_access_key": "Wrong-Secret-Value-123"}
    )
    with pytest.raises(CredentialsRejected) as err:
        await aws.discover(wrong_secret, "s3-bucket", None)
    assert config["aws_access_key_id"] in err.value.message
    assert "Wrong-Secret-Value-123" not in err.value.message
    unknown = aws_connector(
        aws, "session-token", **{**config, "aws_access_key_id": "AKIAUNKNOWNKEY000000"}
    )
    with pytest.raises(CredentialsRejected) as err:
        await aws.discover(unknown, "aws-generic", None)
    assert "AKIAUNKNOWNKEY000000" in err.value.message
    assert config["aws_secret_access_key"] not in err.value.message


@pytest.mark.anyio
async def test_missing_permission_is_named(moto: MotoServer, provider: Make) -> None:
    populate(moto)
    only_s3 = json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": "s3:ListAllMyBuckets", "Resource": "*"}],
        }
    )
    config = keys_for(moto, "bob", only_s3)
    moto.enable_auth()
    aws = provider()
    conn = aws_connector(aws, "secret-key", **config)
    assert len(await aws.discover(conn, "s3-bucket", None)) == 3
    with pytest.raises(PermissionDenied) as err:
        await aws.discover(conn, "docker-registry", None)
    assert "lack permission ecr:DescribeRegistry on *" in err.value.message
    assert "bob" in err.value.message or config["aws_access_key_id"] in err.value.message


@pytest.mark.anyio
async def test_role_assumption_denied_is_named(moto: MotoServer, provider: Make) -> None:
    no_sts = json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}],
        }
    )
    config = keys_for(moto, "carol", no_sts)
    role = moto.create_role("admin")
    moto.enable_auth()
    aws = provider()
    conn = aws_connector(aws, "iam-role", role_arn=role, **config)
    with pytest.raises(PermissionDenied) as err:
        await aws.discover(conn, "aws-generic", None)
    assert f"sts:AssumeRole on {role}" in err.value.message


@pytest.mark.anyio
async def test_unreachable_endpoint_is_a_retryable_upstream_error(
    monkeypatch: pytest.MonkeyPatch, provider: Make
) -> None:
    make_aws_env_safe(monkeypatch)
    aws = provider(request_timeout=1.0)
    conn = aws_connector(
        aws,
        "secret-key",
        region=REGION,
        endpoint_url=f"http://127.0.0.1:{free_port()}",
        aws_access_key_id="AKIAIOSFODNN7EXAMPLE",
        aws_secret_access_key="secret",
    )
    with pytest.raises(UpstreamError) as err:
        await aws.discover(conn, "aws-generic", None)
    assert err.value.retryable
    assert "sts:GetCallerIdentity" in err.value.message


@pytest.mark.anyio
async def test_registry_default_id_needs_the_account(moto: MotoServer, provider: Make) -> None:
    aws = provider()
    conn = aws_connector(aws, "secret-key", **keys_for(moto))
    assert aws.default_resource_id(conn, "docker-registry") is None
    assert await aws.resolve_default_resource_id(conn, "docker-registry") == REGISTRY
    assert aws.default_resource_id(conn, "docker-registry") == REGISTRY
    assert await aws.resolve_default_resource_id(conn, "aws-generic") == REGION
    role = aws_connector(
        aws,
        "iam-role",
        name="r",
        role_arn="arn:aws:iam::210987654321:role/x",
        **keys_for(moto, "d"),
    )
    assert (
        await aws.resolve_default_resource_id(role, "docker-registry")
        == f"210987654321.dkr.ecr.{REGION}.amazonaws.com"
    )


@pytest.mark.anyio
async def test_implicit_uses_the_injected_environment(
    moto: MotoServer, tmp_path: Any, provider: Make
) -> None:
    populate(moto)
    config = keys_for(moto)
    env = {
        "HOME": str(tmp_path),
        "AWS_ACCESS_KEY_ID": config["aws_access_key_id"],
        "AWS_SECRET_ACCESS_KEY": config["aws_secret_access_key"],
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    moto.enable_auth()
    aws = provider(enable_implicit_auth=True, env=env)
    conn = aws_connector(aws, "implicit", region=REGION, endpoint_url=moto.url)
    assert await aws.discover(conn, "s3-bucket", None) == EXPECTED["s3-bucket"]
    assert config["aws_access_key_id"] in moto.requests[-1].headers["authorization"]

    # A profile from the injected HOME, not the test process's.
    (tmp_path / ".aws").mkdir()
    (tmp_path / ".aws" / "credentials").write_text(
        f"[ci]\naws_access_key_id = {config['aws_access_key_id']}\n"
        f"aws_secret_access_key = {config['aws_secret_access_key']}\n"
    )
    profile_env = {"HOME": str(tmp_path), "AWS_EC2_METADATA_DISABLED": "true"}
    aws2 = provider(enable_implicit_auth=True, env=profile_env)
    conn2 = aws_connector(aws2, "implicit", region=REGION, endpoint_url=moto.url, profile_name="ci")
    assert await aws2.discover(conn2, "s3-bucket", None) == EXPECTED["s3-bucket"]

    nothing = provider(enable_implicit_auth=True, env={"AWS_EC2_METADATA_DISABLED": "true"})
    conn3 = aws_connector(nothing, "implicit", region=REGION, endpoint_url=moto.url)
    with pytest.raises(FailedPrecondition) as err:
        await nothing.discover(conn3, "aws-generic", None)
    assert "no AWS credentials" in err.value.message


@pytest.mark.anyio
async def test_implicit_is_refused_at_use_when_disabled(moto: MotoServer, provider: Make) -> None:
    enabled = provider(enable_implicit_auth=True, env={})
    conn = aws_connector(enabled, "implicit", region=REGION, endpoint_url=moto.url)
    disabled = provider()
    with pytest.raises(InvalidArgument) as err:
        await disabled.discover(conn, "aws-generic", None)
    assert "BROKER_ENABLE_IMPLICIT_AUTH_METHODS=true" in err.value.message
    with pytest.raises(InvalidArgument):
        await disabled.mint(conn, "aws-generic", REGION)
    assert moto.requests == []
