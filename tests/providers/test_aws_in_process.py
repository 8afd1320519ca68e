"""The aws connector type on an in-process transport: real aiobotocore clients, a fake AWS
application (tests/providers/fake_aws.py), no socket. (The moto tests run over a socket.)

What these pin down: one attempt per AWS call (botocore's retries are off, the cache
retries), no working role session kept between calls, accounts remembered by key ID,
and the AWS client factory injected through the provider context.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from typing import Any

import pytest
from aiobotocore.session import AioSession

from broker.errors import CredentialsRejected, UpstreamError
from broker.model import Connector
from broker.providers.aws import AwsProvider
from broker.providers.base import ProviderContext
from broker.providers.testing import InProcessTransport
from tests.providers.fake_aws import ACCOUNT, FakeAws
from tests.servers.moto import REGION, aws_connector

KEY_ID = "AKIAINPROCESSTEST001"
SECRET = "in-process-secret-access-key"
ROLE = f"arn:aws:iam::{ACCOUNT}:role/broker-test"
ECR_HOST = f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com"
CA = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"


class RecordingFactory:
    """An AWS client factory that makes real clients and remembers which keys it was given."""

    def __init__(self) -> None:
        self._session = AioSession()
        self.made: list[tuple[str, str, str]] = []

    def create_client(self, service_name: str, **kwargs: Any) -> AbstractAsyncContextManager[Any]:
        keys = (kwargs["aws_access_key_id"], kwargs["aws_secret_access_key"])
        self.made.append((service_name, *keys))
        return self._session.create_client(service_name, **kwargs)  # type: ignore[no-any-return]


@pytest.fixture
def aws() -> FakeAws:
    return FakeAws()


@pytest.fixture
async def transport(aws: FakeAws) -> AsyncIterator[InProcessTransport]:
    async with InProcessTransport(aws.app()) as transport:
        yield transport


@pytest.fixture
async def made(transport: InProcessTransport) -> AsyncIterator[list[AwsProvider]]:
    providers: list[AwsProvider] = []
    yield providers
    for provider in providers:
        await provider.aclose()


def new_provider(
    made: list[AwsProvider], transport: InProcessTransport, **context: Any
) -> AwsProvider:
    made.append(AwsProvider(ProviderContext(transport=transport, request_timeout=2.0, **context)))
    return made[-1]


@pytest.fixture
def provider(made: list[AwsProvider], transport: InProcessTransport) -> AwsProvider:
    return new_provider(made, transport)


def keys(provider: AwsProvider, method: str, secret: str = SECRET, **config: Any) -> Connector:
    return aws_connector(
        provider,
        method,
        region=REGION,
        aws_access_key_id=KEY_ID,
        aws_secret_access_key=secret,
        **config,
    )


@pytest.mark.anyio
async def test_a_session_token_is_one_sts_call_signed_with_the_stored_key(
    aws: FakeAws, transport: InProcessTransport, provider: AwsProvider
) -> None:
    cred = await provider.mint(keys(provider, "session-token"), "aws-generic", REGION)
    assert [(c.action, c.access_key_id) for c in aws.calls] == [("GetSessionToken", KEY_ID)]
    assert cred.config["aws_session_token"] == "session-token-1"
    assert [s.host for s in transport.sent] == [f"sts.{REGION}.amazonaws.com"]


@pytest.mark.anyio
@pytest.mark.parametrize(("status", "code"), [(400, "Throttling"), (503, "ServiceUnavailable")])
async def test_a_busy_aws_is_asked_once_and_the_cache_retries(
    aws: FakeAws, provider: AwsProvider, status: int, code: str
) -> None:
    aws.fail("GetSessionToken", status, code)
    with pytest.raises(UpstreamError) as err:
        await provider.mint(keys(provider, "session-token"), "aws-generic", REGION)
    assert err.value.retryable
    assert len(aws.actions("GetSessionToken")) == 1  # botocore would have tried three times


@pytest.mark.anyio
async def test_rejected_keys_name_the_key_id_never_the_secret(
    aws: FakeAws, provider: AwsProvider
) -> None:
    aws.fail("GetSessionToken", 403, "InvalidClientTokenId")
    with pytest.raises(CredentialsRejected) as err:
        await provider.mint(keys(provider, "session-token"), "aws-generic", REGION)
    assert KEY_ID in str(err.value) and SECRET not in str(err.value)


@pytest.mark.anyio
async def test_no_working_role_session_is_kept_between_calls(
    aws: FakeAws, provider: AwsProvider
) -> None:
    aws.add_cluster("prod", "https://prod.eks.test", CA)
    conn = keys(provider, "iam-role", role_arn=ROLE)
    for _ in range(2):
        cred = await provider.mint(conn, "kubernetes-cluster", "prod")
        assert cred.config["server"] == "https://prod.eks.test"
    # Each mint: the working role (no policy) for DescribeCluster, then the client's session.
    assert [c.action for c in aws.calls] == ["AssumeRole", "DescribeCluster", "AssumeRole"] * 2
    working, describe = aws.calls[0], aws.calls[1]
    assert "Policy" not in working.params and "Policy" in aws.calls[2].params
    assert describe.access_key_id.startswith("ASIAFAKE")  # signed with the working session


@pytest.mark.anyio
async def test_the_account_is_remembered_by_key_id_not_by_secret(
    aws: FakeAws, provider: AwsProvider
) -> None:
    first = await provider.mint(keys(provider, "secret-key"), "docker-registry", ECR_HOST)
    assert first.config["username"] == "AWS"
    rotated = keys(provider, "secret-key", secret="rotated-secret-of-the-same-key")
    await provider.mint(rotated, "docker-registry", ECR_HOST)
    assert [c.action for c in aws.calls] == [
        "GetCallerIdentity",
        "GetAuthorizationToken",
        "GetAuthorizationToken",
    ]
    assert provider.default_resource_id(rotated, "docker-registry") == ECR_HOST


@pytest.mark.anyio
async def test_the_injected_client_factory_pools_by_key_id_and_follows_a_new_secret(
    aws: FakeAws, made: list[AwsProvider], transport: InProcessTransport
) -> None:
    factory = RecordingFactory()
    provider = new_provider(made, transport, aws_clients=factory)
    conn = keys(provider, "session-token")
    await provider.mint(conn, "aws-generic", REGION)
    await provider.mint(conn, "aws-generic", REGION)
    await provider.mint(keys(provider, "session-token", secret="new-secret"), "aws-generic", REGION)
    assert factory.made == [("sts", KEY_ID, SECRET), ("sts", KEY_ID, "new-secret")]
    assert len(aws.actions("GetSessionToken")) == 3
