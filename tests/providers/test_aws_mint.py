"""aws minting against moto: every auth method, session policies as actually sent to STS."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from broker.errors import FailedPrecondition, InvalidArgument
from broker.model import ClientCredential
from broker.providers.aws import AwsProvider
from broker.providers.aws.policy import generated_policy
from broker.providers.base import VARIANT_SDK_SESSION, ProviderContext
from tests.servers.moto import ACCOUNT, REGION, MotoServer, aws_connector, moto_for_test

ARNS = ["arn:aws:iam::aws:policy/AmazonS3ReadOnlyAccess", "arn:aws:iam::123456789012:policy/x"]
INLINE = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "sqs:*"}]}
Make = Callable[..., AwsProvider]


@pytest.fixture
def moto(monkeypatch: pytest.MonkeyPatch) -> Iterator[MotoServer]:
    yield from moto_for_test(monkeypatch)


@pytest.fixture
async def provider() -> AsyncIterator[Make]:
    made: list[AwsProvider] = []

    def make(**context: Any) -> AwsProvider:
        settings: dict[str, Any] = {"request_timeout": 5.0, **context}
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


def near(when: datetime | None, seconds: int) -> bool:
    """``when`` is about ``seconds`` from now (moto stamps STS expiries with real time)."""
    assert when is not None
    delta = (when - datetime.now(UTC)).total_seconds()
    return seconds - 30 <= delta <= seconds + 5


def assert_sts_credential(cred: ClientCredential, config: dict[str, str]) -> None:
    assert cred.connector_type == "aws"
    assert cred.auth_method == "sts-token"
    assert set(cred.config) == {
        "region",
        "endpoint_url",
        "aws_access_key_id",
        "aws_secret_access_key",
        "aws_session_token",
    }
    assert cred.config["region"] == REGION
    assert cred.config["endpoint_url"] == config["endpoint_url"]
    assert cred.config["aws_access_key_id"] != config["aws_access_key_id"]
    assert cred.secret_names == {"aws_secret_access_key", "aws_session_token"}


@pytest.mark.anyio
async def test_iam_role_assumes_the_role_with_a_generated_policy(
    moto: MotoServer, provider: Make
) -> None:
    config = keys_for(moto)
    role = moto.create_role("deployer")
    moto.client("s3").create_bucket(Bucket="bucket-a")
    moto.enable_auth()
    aws = provider()
    conn = aws_connector(aws, "iam-role", name="ci-deploy", role_arn=role, **config)
    moto.clear_requests()
    cred = await aws.mint(conn, "s3-bucket", "arn:aws:s3:::bucket-a")
    assert_sts_credential(cred, config)
    assert cred.resource_id == "s3://bucket-a"
    assert near(cred.expires_at, 3600)
    assert cred.session_policy == generated_policy("s3-bucket", "s3://bucket-a", REGION, None)
    [call] = moto.recorded("AssumeRole")
    assert call.params["RoleArn"] == role
    assert call.params["RoleSessionName"] == "broker-ci-deploy"
    assert call.params["DurationSeconds"] == "3600"
    assert call.params["Policy"] == cred.session_policy
    assert "PolicyArns.member.1.arn" not in call.params
    # The minted keys work (moto checks signatures and the role's policy here).
    s3 = moto.client(
        "s3",
        key=str(cred.config["aws_access_key_id"]),
        secret=str(cred.config["aws_secret_access_key"]),
        aws_session_token=str(cred.config["aws_session_token"]),
    )
    assert [b["Name"] for b in s3.list_buckets()["Buckets"]] == ["bucket-a"]


@pytest.mark.anyio
async def test_session_length_is_the_connectors_expiration(
    moto: MotoServer, provider: Make
) -> None:
    config = keys_for(moto)
    aws = provider()
    role = aws_connector(
        aws, "iam-role", expiration_seconds=900, role_arn=moto.create_role("r"), **config
    )
    fed = aws_connector(aws, "federation-token", name="fed", expiration_seconds=129600, **config)
    assert near((await aws.mint(role, "aws-generic", REGION)).expires_at, 900)
    assert moto.recorded("AssumeRole")[-1].params["DurationSeconds"] == "900"
    assert near((await aws.mint(fed, "s3-bucket", "b-1")).expires_at, 129600)
    assert moto.recorded("GetFederationToken")[-1].params["DurationSeconds"] == "129600"


@pytest.mark.anyio
async def test_policy_arns_are_sent_as_arn_objects(moto: MotoServer, provider: Make) -> None:
    config = keys_for(moto)
    role = moto.create_role("r")
    aws = provider()
    conn = aws_connector(aws, "iam-role", role_arn=role, policy_arns=",".join(ARNS), **config)
    cred = await aws.mint(conn, "s3-bucket", "bucket-a")
    params = moto.recorded("AssumeRole")[-1].params
    assert params["PolicyArns.member.1.arn"] == ARNS[0]
    assert params["PolicyArns.member.2.arn"] == ARNS[1]
    assert "Policy" not in params
    assert cred.session_policy is not None and json.loads(cred.session_policy) == ARNS

    fed = aws_connector(aws, "federation-token", name="fed", policy_arns=ARNS, **config)
    cred = await aws.mint(fed, "aws-generic", REGION)
    params = moto.recorded("GetFederationToken")[-1].params
    assert params["PolicyArns.member.1.arn"] == ARNS[0]
    assert "Policy" not in params
    assert params["Name"] == "broker-fed"


@pytest.mark.anyio
async def test_explicit_policy_wins_over_policy_arns(moto: MotoServer, provider: Make) -> None:
    config = keys_for(moto)
    aws = provider()
    conn = aws_connector(
        aws, "federation-token", policy=json.dumps(INLINE), policy_arns=ARNS, **config
    )
    cred = await aws.mint(conn, "s3-bucket", "bucket-a")
    params = moto.recorded("GetFederationToken")[-1].params
    assert json.loads(params["Policy"]) == INLINE
    assert not any(k.startswith("PolicyArns") for k in params)
    assert cred.session_policy == params["Policy"]
    assert_sts_credential(cred, config)
    assert near(cred.expires_at, 43200)


@pytest.mark.anyio
async def test_federation_token_needs_a_policy_for_generic(
    moto: MotoServer, provider: Make
) -> None:
    config = keys_for(moto)
    aws = provider()
    conn = aws_connector(aws, "federation-token", **config)
    moto.clear_requests()
    with pytest.raises(InvalidArgument) as err:
        await aws.mint(conn, "aws-generic", REGION)
    assert err.value.field == "policy"
    assert "policy_arns" in err.value.message and "aws-generic" in err.value.message
    assert moto.recorded("GetFederationToken") == []
    # Other types get a generated policy.
    cred = await aws.mint(conn, "s3-bucket", "bucket-a")
    assert cred.session_policy == generated_policy("s3-bucket", "s3://bucket-a", REGION, None)
    assert moto.recorded("GetFederationToken")[-1].params["Policy"] == cred.session_policy


@pytest.mark.anyio
async def test_role_on_generic_has_no_session_policy(moto: MotoServer, provider: Make) -> None:
    config = keys_for(moto)
    aws = provider()
    conn = aws_connector(aws, "iam-role", role_arn=moto.create_role("r"), **config)
    cred = await aws.mint(conn, "aws-generic", REGION)
    assert cred.session_policy is None
    assert cred.resource_id == REGION
    params = moto.recorded("AssumeRole")[-1].params
    assert "Policy" not in params and "PolicyArns.member.1.arn" not in params


@pytest.mark.anyio
async def test_session_token_takes_no_policy(moto: MotoServer, provider: Make) -> None:
    config = keys_for(moto)
    aws = provider()
    conn = aws_connector(aws, "session-token", **config)
    cred = await aws.mint(conn, "s3-bucket", "s3://bucket-a")
    assert_sts_credential(cred, config)
    assert cred.session_policy is None
    assert near(cred.expires_at, 43200)
    [call] = moto.recorded("GetSessionToken")
    assert call.params["DurationSeconds"] == "43200"
    assert config["aws_access_key_id"] in call.headers["authorization"]


@pytest.mark.anyio
async def test_secret_key_hands_its_keys_through(provider: Make) -> None:
    aws = provider()
    conn = aws_connector(
        aws,
        "secret-key",
        region="eu-west-1",
        aws_access_key_id="AKIAIOSFODNN7EXAMPLE",
        aws_secret_access_key="long-lived-secret",
    )
    cred = await aws.mint(conn, "s3-bucket", "bucket-a")  # no AWS call at all
    assert cred.auth_method == "secret-key"
    assert cred.expires_at is None and cred.session_policy is None
    assert cred.config == {
        "region": "eu-west-1",
        "aws_access_key_id": "AKIAIOSFODNN7EXAMPLE",
        "aws_secret_access_key": "long-lived-secret",
    }
    assert cred.secret_names == {"aws_secret_access_key"}


# -- the container endpoint's variant: temporary keys, never the long-lived ones ----------


@pytest.mark.anyio
@pytest.mark.parametrize(("seconds", "expected"), [(None, 3600), (1800, 1800)])
async def test_sdk_session_for_secret_key_is_a_session_token_minted_from_it(
    moto: MotoServer, provider: Make, seconds: int | None, expected: int
) -> None:
    config = keys_for(moto)
    aws = provider()
    conn = aws_connector(aws, "secret-key", expiration_seconds=seconds, **config)
    assert aws.variant_for(conn, "aws-generic", VARIANT_SDK_SESSION) == VARIANT_SDK_SESSION
    cred = await aws.mint_variant(conn, "aws-generic", REGION, VARIANT_SDK_SESSION)
    assert_sts_credential(cred, config)
    assert cred.config["aws_secret_access_key"] != config["aws_secret_access_key"]
    assert near(cred.expires_at, expected)
    [call] = moto.recorded("GetSessionToken")
    assert call.params["DurationSeconds"] == str(expected)
    assert config["aws_access_key_id"] in call.headers["authorization"]
    # The plain credential is still the key itself (for clients allowed long-lived secrets).
    plain = await aws.mint(conn, "aws-generic", REGION)
    assert plain.config["aws_access_key_id"] == config["aws_access_key_id"]


@pytest.mark.anyio
async def test_sdk_session_bounds_and_which_methods_share_the_plain_entry(
    provider: Make,
) -> None:
    aws = provider()
    keys = {"region": REGION, "aws_access_key_id": "AKIAIOSFODNN7EXAMPLE"}
    secret = {**keys, "aws_secret_access_key": "s"}
    with pytest.raises(InvalidArgument, match=r"outside 900\.\.129600"):
        aws_connector(aws, "secret-key", expiration_seconds=600, **secret)
    # Every other method hands out temporary keys already: same cache entry ("").
    role = f"arn:aws:iam::{ACCOUNT}:role/r"
    for method, extra in (("session-token", {}), ("iam-role", {"role_arn": role})):
        conn = aws_connector(aws, method, **secret, **extra)
        assert aws.variant_for(conn, "s3-bucket", VARIANT_SDK_SESSION) == ""
    conn = aws_connector(aws, "secret-key", **secret)
    for resource_type in ("kubernetes-cluster", "docker-registry"):
        with pytest.raises(FailedPrecondition, match="yields no AWS keys"):
            aws.variant_for(conn, resource_type, VARIANT_SDK_SESSION)
    with pytest.raises(FailedPrecondition, match="cannot issue 'other' credentials"):
        aws.variant_for(conn, "aws-generic", "other")


@pytest.mark.anyio
async def test_sts_token_hands_its_token_through_with_its_expiry(provider: Make) -> None:
    aws = provider()
    expires = datetime.now(UTC) + timedelta(hours=2)
    conn = aws_connector(
        aws,
        "sts-token",
        expires_at=expires,
        region="eu-west-1",
        aws_access_key_id="ASIAIOSFODNN7EXAMPLE",
        aws_secret_access_key="temp-secret",
        aws_session_token="temp-token",
    )
    cred = await aws.mint(conn, "aws-generic", "eu-west-1")
    assert cred.auth_method == "sts-token"
    assert cred.expires_at == expires
    assert cred.config["aws_session_token"] == "temp-token"
    assert cred.config["aws_access_key_id"] == "ASIAIOSFODNN7EXAMPLE"


@pytest.mark.anyio
async def test_implicit_mints_from_the_daemon_environment(
    moto: MotoServer, provider: Make, tmp_path: Any
) -> None:
    config = keys_for(moto)
    env = {
        "HOME": str(tmp_path),
        "AWS_ACCESS_KEY_ID": config["aws_access_key_id"],
        "AWS_SECRET_ACCESS_KEY": config["aws_secret_access_key"],
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    aws = provider(enable_implicit_auth=True, env=env)
    plain = aws_connector(aws, "implicit", region=REGION, endpoint_url=moto.url)
    cred = await aws.mint(plain, "aws-generic", REGION)
    # Long-lived daemon keys are never handed out: GetSessionToken makes them temporary.
    assert_sts_credential(cred, config)
    assert near(cred.expires_at, 3600)
    assert (
        config["aws_access_key_id"] in moto.recorded("GetSessionToken")[-1].headers["authorization"]
    )

    role = moto.create_role("daemon-role")
    with_role = aws_connector(
        aws, "implicit", name="r", region=REGION, endpoint_url=moto.url, role_arn=role
    )
    cred = await aws.mint(with_role, "s3-bucket", "bucket-a")
    assert cred.session_policy == generated_policy("s3-bucket", "s3://bucket-a", REGION, None)
    assert moto.recorded("AssumeRole")[-1].params["RoleArn"] == role

    expiry = datetime.now(UTC) + timedelta(minutes=50)
    temp_env = {
        **env,
        "AWS_SESSION_TOKEN": "daemon-session-token",
        "AWS_CREDENTIAL_EXPIRATION": expiry.isoformat(),
    }
    temp = provider(enable_implicit_auth=True, env=temp_env)
    conn = aws_connector(temp, "implicit", name="t", region=REGION, endpoint_url=moto.url)
    cred = await temp.mint(conn, "aws-generic", REGION)
    assert cred.config["aws_session_token"] == "daemon-session-token"
    assert cred.expires_at is not None
    assert abs((cred.expires_at - expiry).total_seconds()) < 1


@pytest.mark.anyio
async def test_long_connector_names_fit_sts_limits(moto: MotoServer, provider: Make) -> None:
    config = keys_for(moto)
    aws = provider()
    name = "n" * 63
    fed = aws_connector(aws, "federation-token", name=name, policy_arns=ARNS, **config)
    await aws.mint(fed, "aws-generic", REGION)
    fed_name = moto.recorded("GetFederationToken")[-1].params["Name"]
    assert len(fed_name) == 32 and fed_name.startswith("broker-nnn")
    role = aws_connector(aws, "iam-role", name=name, role_arn=moto.create_role("r"), **config)
    await aws.mint(role, "aws-generic", REGION)
    session = moto.recorded("AssumeRole")[-1].params["RoleSessionName"]
    assert len(session) == 64 and session.startswith("broker-nnn")
