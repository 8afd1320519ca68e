"""aws connector type, offline parts: schema, resource IDs, validation, error mapping."""

from __future__ import annotations

import pytest
from botocore.exceptions import ClientError

from broker.errors import (
    CredentialsRejected,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    UpstreamError,
)
from broker.providers.aws import SPEC, AwsProvider
from broker.providers.aws.failures import Call, translate
from broker.providers.aws.sts import FEDERATED_NAME_MAX, ROLE_SESSION_NAME_MAX, derived_name
from broker.providers.base import ProviderContext
from tests.servers.moto import aws_connector

KEY = "AKIAIOSFODNN7EXAMPLE"
SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYzEXAMPLEKEY"
ROLE = "arn:aws:iam::123456789012:role/deploy"
KEYS = {"region": "eu-west-1", "aws_access_key_id": KEY, "aws_secret_access_key": SECRET}


@pytest.fixture
def provider() -> AwsProvider:
    return AwsProvider(ProviderContext(enable_implicit_auth=True))


# -- schema -------------------------------------------------------------------


def test_auth_methods_have_exactly_the_spec_attributes() -> None:
    common = ["region", "endpoint_url"]
    keys = ["aws_access_key_id", "aws_secret_access_key"]
    policies = ["policy_arns", "policy"]
    expected = {
        "implicit": [*common, "profile_name", "role_arn", *policies],
        "secret-key": [*common, *keys],
        "sts-token": [*common, *keys, "aws_session_token"],
        "iam-role": [*common, *keys, "role_arn", *policies],
        "session-token": [*common, *keys],
        "federation-token": [*common, *keys, *policies],
    }
    assert {m.auth_method: [a.name for a in m.attributes] for m in SPEC.auth_methods} == expected
    for method in SPEC.auth_methods:
        assert method.attribute("region").required  # type: ignore[union-attr]
        endpoint = method.attribute("endpoint_url")
        assert endpoint is not None and endpoint.kind == "url" and not endpoint.required
        assert method.secret_names <= {"aws_secret_access_key", "aws_session_token"}
    sts_token = SPEC.auth_method("sts-token")
    assert sts_token is not None
    assert sts_token.secret_names == {"aws_secret_access_key", "aws_session_token"}
    assert sts_token.requires_expires_at and not sts_token.mints_tokens


@pytest.mark.parametrize(
    ("method", "bounds"),
    [
        ("implicit", (900, 43200, 3600)),
        ("iam-role", (900, 43200, 3600)),
        ("session-token", (900, 129600, 43200)),
        ("federation-token", (900, 129600, 43200)),
        # secret-key: the bounds of the sessions the container endpoint mints from the key.
        ("secret-key", (900, 129600, 3600)),
        ("sts-token", (None, None, None)),
    ],
)
def test_expiration_bounds(method: str, bounds: tuple[int | None, ...]) -> None:
    spec = SPEC.auth_method(method)
    assert spec is not None
    found = (
        spec.min_expiration_seconds,
        spec.max_expiration_seconds,
        spec.default_expiration_seconds,
    )
    assert found == bounds
    assert spec.implicit == (method == "implicit")
    assert {rt.resource_type: rt.supports_instances for rt in SPEC.resource_types} == {
        "aws-generic": False,
        "s3-bucket": True,
        "kubernetes-cluster": True,
        "docker-registry": False,
    }


def test_expiration_out_of_bounds_is_refused(provider: AwsProvider) -> None:
    with pytest.raises(InvalidArgument) as err:
        aws_connector(provider, "iam-role", expiration_seconds=43201, role_arn=ROLE, **KEYS)
    assert err.value.field == "expiration_seconds"
    with pytest.raises(InvalidArgument):
        aws_connector(provider, "session-token", expiration_seconds=899, **KEYS)
    assert aws_connector(provider, "session-token", expiration_seconds=129600, **KEYS)


# -- resource IDs ---------------------------------------------------------------

VALID = [
    ("aws-generic", "eu-west-1", "eu-west-1"),
    ("s3-bucket", "my-bucket", "s3://my-bucket"),
    ("s3-bucket", "s3://my-bucket", "s3://my-bucket"),
    ("s3-bucket", "s3://my-bucket/", "s3://my-bucket"),
    ("s3-bucket", "arn:aws:s3:::my-bucket", "s3://my-bucket"),
    ("s3-bucket", "logs.example.com", "s3://logs.example.com"),
    ("kubernetes-cluster", "prod_cluster-1", "prod_cluster-1"),
    ("kubernetes-cluster", "arn:aws:eks:eu-west-1:123456789012:cluster/prod", "prod"),
    (
        "docker-registry",
        "123456789012.dkr.ecr.eu-west-1.amazonaws.com",
        "123456789012.dkr.ecr.eu-west-1.amazonaws.com",
    ),
    (
        "docker-registry",
        "https://123456789012.dkr.ecr.eu-west-1.amazonaws.com/team/app",
        "123456789012.dkr.ecr.eu-west-1.amazonaws.com",
    ),
    (
        "docker-registry",
        "123456789012.DKR.ECR.eu-west-1.amazonaws.com/app:1.0",
        "123456789012.dkr.ecr.eu-west-1.amazonaws.com",
    ),
    (
        "docker-registry",
        "arn:aws:ecr:eu-west-1:123456789012:repository/team/app",
        "123456789012.dkr.ecr.eu-west-1.amazonaws.com",
    ),
    (
        "docker-registry",
        "arn:aws:ecr:eu-west-1:123456789012:repository",
        "123456789012.dkr.ecr.eu-west-1.amazonaws.com",
    ),
]


@pytest.mark.parametrize(("rt", "raw", "canonical"), VALID)
def test_canonical_ids(provider: AwsProvider, rt: str, raw: str, canonical: str) -> None:
    conn = aws_connector(provider, "secret-key", **KEYS)
    assert provider.canonical_resource_id(conn, rt, raw) == canonical
    # Canonical forms are fixed points.
    assert provider.canonical_resource_id(conn, rt, canonical) == canonical


INVALID = [
    ("aws-generic", "not a region"),
    ("s3-bucket", "ab"),
    ("s3-bucket", "Upper-Case"),
    ("s3-bucket", "under_score"),
    ("s3-bucket", "two..dots"),
    ("s3-bucket", "192.168.1.1"),
    ("s3-bucket", "-leading-dash"),
    ("s3-bucket", "xn--punycode"),
    ("s3-bucket", "s3://bucket/some/key"),
    ("s3-bucket", "arn:aws:s3:eu-west-1:123456789012:bucket"),
    ("s3-bucket", "arn:aws:iam:::bucket"),
    ("s3-bucket", "a" * 64),
    ("kubernetes-cluster", "-bad"),
    ("kubernetes-cluster", "has space"),
    ("kubernetes-cluster", "arn:aws:eks:eu-west-1:123456789012:nodegroup/x"),
    ("kubernetes-cluster", "arn:aws:eks:eu-west-1::cluster/x"),
    ("kubernetes-cluster", "arn:aws:s3:::bucket"),
    ("docker-registry", "docker.io"),
    ("docker-registry", "12345.dkr.ecr.eu-west-1.amazonaws.com"),
    ("docker-registry", "http://123456789012.dkr.ecr.eu-west-1.amazonaws.com"),
    ("docker-registry", "arn:aws:ecr:eu-west-1:123456789012:cluster/x"),
    ("docker-registry", "arn:aws:ecr:eu-west-1::repository/x"),
]


@pytest.mark.parametrize(("rt", "raw"), INVALID)
def test_bad_ids_are_refused_naming_the_input(provider: AwsProvider, rt: str, raw: str) -> None:
    conn = aws_connector(provider, "secret-key", **KEYS)
    with pytest.raises(InvalidArgument) as err:
        provider.canonical_resource_id(conn, rt, raw)
    assert err.value.field == "resource_id"
    assert raw[:40] in err.value.message


@pytest.mark.parametrize(
    ("rt", "raw"),
    [
        ("aws-generic", "us-east-2"),
        ("kubernetes-cluster", "arn:aws:eks:us-east-2:123456789012:cluster/prod"),
        ("docker-registry", "123456789012.dkr.ecr.us-east-2.amazonaws.com"),
        ("docker-registry", "arn:aws:ecr:us-east-2:123456789012:repository/app"),
    ],
)
def test_region_mismatch_names_both_regions(provider: AwsProvider, rt: str, raw: str) -> None:
    conn = aws_connector(provider, "secret-key", name="euro", **KEYS)
    with pytest.raises(InvalidArgument) as err:
        provider.canonical_resource_id(conn, rt, raw)
    assert err.value.field == "resource_id"
    for part in (raw, "us-east-2", "eu-west-1", "euro"):
        assert part in err.value.message


def test_unknown_resource_type_is_refused(provider: AwsProvider) -> None:
    conn = aws_connector(provider, "secret-key", **KEYS)
    with pytest.raises(InvalidArgument) as err:
        provider.canonical_resource_id(conn, "gcs-bucket", "b")
    assert err.value.field == "resource_type"


def test_single_instance_connector_is_canonicalised(provider: AwsProvider) -> None:
    conn = aws_connector(
        provider,
        "secret-key",
        resource_type="s3-bucket",
        resource_id="arn:aws:s3:::data",
        **KEYS,
    )
    assert conn.resource_id == "s3://data"
    assert provider.default_resource_id(conn, "aws-generic") == "eu-west-1"
    assert provider.default_resource_id(conn, "s3-bucket") is None


# -- validation -----------------------------------------------------------------

BAD_CONFIGS = [
    ("secret-key", {"region": "Europe"}, "region"),
    ("secret-key", {"aws_access_key_id": "short"}, "aws_access_key_id"),
    ("secret-key", {"endpoint_url": "ftp://x"}, "endpoint_url"),
    ("iam-role", {"role_arn": "arn:aws:iam::123:role/x"}, "role_arn"),
    ("iam-role", {"role_arn": "deploy"}, "role_arn"),
    ("iam-role", {"role_arn": ROLE, "policy": "{not json"}, "policy"),
    ("iam-role", {"role_arn": ROLE, "policy": "[1, 2]"}, "policy"),
    ("iam-role", {"role_arn": ROLE, "policy": '{"Version": "2012-10-17"}'}, "policy"),
    (
        "federation-token",
        {"policy": '{"Statement": [{"Action": "s3:*", "Resource": "*"}]}'},
        "policy",
    ),
    ("federation-token", {"policy": '{"Statement": [{"Effect": "Allow"}]}'}, "policy"),
    ("federation-token", {"policy_arns": "arn:aws:iam::aws:role/x"}, "policy_arns"),
    ("federation-token", {"policy_arns": "ReadOnlyAccess"}, "policy_arns"),
    (
        "federation-token",
        {"policy_arns": ",".join(f"arn:aws:iam::aws:policy/P{i}" for i in range(11))},
        "policy_arns",
    ),
]


@pytest.mark.parametrize(("method", "override", "field"), BAD_CONFIGS)
def test_bad_configuration_names_the_attribute(
    provider: AwsProvider, method: str, override: dict[str, str], field: str
) -> None:
    with pytest.raises(InvalidArgument) as err:
        aws_connector(provider, method, **{**KEYS, **override})
    assert err.value.field == field
    assert field in err.value.message
    assert SECRET not in err.value.message


def test_missing_keys_are_refused(provider: AwsProvider) -> None:
    with pytest.raises(InvalidArgument) as err:
        aws_connector(provider, "secret-key", region="eu-west-1", aws_access_key_id=KEY)
    assert err.value.field == "aws_secret_access_key"
    with pytest.raises(InvalidArgument) as err:
        aws_connector(provider, "sts-token", **KEYS)
    assert err.value.field in ("aws_session_token", "expires_at")


def test_implicit_policy_needs_a_role(provider: AwsProvider) -> None:
    with pytest.raises(InvalidArgument) as err:
        aws_connector(
            provider, "implicit", region="eu-west-1", policy_arns="arn:aws:iam::aws:policy/X"
        )
    assert err.value.field == "policy_arns"
    assert "role_arn" in err.value.message
    assert aws_connector(
        provider,
        "implicit",
        region="eu-west-1",
        role_arn=ROLE,
        policy_arns="arn:aws:iam::aws:policy/X",
    )


def test_implicit_is_refused_unless_enabled() -> None:
    disabled = AwsProvider(ProviderContext(enable_implicit_auth=False))
    with pytest.raises(InvalidArgument) as err:
        aws_connector(disabled, "implicit", region="eu-west-1")
    assert "BROKER_ENABLE_IMPLICIT_AUTH_METHODS" in err.value.message


def test_valid_policies_are_accepted(provider: AwsProvider) -> None:
    policy = '{"Version": "2012-10-17", "Statement": {"Effect": "Allow", "Action": "s3:*"}}'
    conn = aws_connector(
        provider,
        "federation-token",
        policy=policy,
        policy_arns='["arn:aws:iam::aws:policy/ReadOnlyAccess"]',
        **KEYS,
    )
    assert conn.config["policy_arns"] == ["arn:aws:iam::aws:policy/ReadOnlyAccess"]


# -- names ----------------------------------------------------------------------


def test_session_names_derive_from_the_connector_within_sts_limits() -> None:
    assert derived_name("ci", ROLE_SESSION_NAME_MAX) == "broker-ci"
    long_a = "a" * 60 + "-one"
    long_b = "a" * 60 + "-two"
    for limit in (ROLE_SESSION_NAME_MAX, FEDERATED_NAME_MAX):
        a, b = derived_name(long_a, limit), derived_name(long_b, limit)
        assert len(a) == limit and len(b) == limit
        assert a != b
        assert a.startswith("broker-aaaa")
    assert len(derived_name("x" * 25, FEDERATED_NAME_MAX)) == FEDERATED_NAME_MAX


# -- error mapping --------------------------------------------------------------


def _client_error(code: str, status: int, message: str = "boom") -> ClientError:
    return ClientError(
        {
            "Error": {"Code": code, "Message": message},
            "ResponseMetadata": {"HTTPStatusCode": status},
        },
        "Op",
    )


CALL = Call("conn", KEY, "eks:ListClusters", "arn:aws:eks:eu-west-1:123456789012:cluster/*")


@pytest.mark.parametrize(
    ("code", "status", "kind", "retryable"),
    [
        ("InvalidClientTokenId", 403, CredentialsRejected, False),
        ("SignatureDoesNotMatch", 403, CredentialsRejected, False),
        ("ExpiredToken", 400, CredentialsRejected, False),
        ("AccessDenied", 403, PermissionDenied, False),
        ("AccessDeniedException", 403, PermissionDenied, False),
        ("Throttling", 400, UpstreamError, True),
        ("TooManyRequestsException", 429, UpstreamError, True),
        ("InternalFailure", 500, UpstreamError, True),
        ("Whatever", 503, UpstreamError, True),
        ("ResourceNotFoundException", 404, NotFound, False),
        ("ValidationError", 400, InvalidArgument, False),
    ],
)
def test_aws_errors_map_to_broker_errors(
    code: str, status: int, kind: type[Exception], retryable: bool
) -> None:
    error = translate(_client_error(code, status), CALL)
    assert type(error) is kind
    assert error.retryable is retryable
    assert code in error.message
    assert SECRET not in error.message


def test_access_denied_names_permission_and_resource() -> None:
    error = translate(_client_error("AccessDenied", 403, "User x is not authorized"), CALL)
    assert "lack permission eks:ListClusters on arn:aws:eks:eu-west-1:123456789012:cluster/*" in (
        error.message
    )
    rejected = translate(_client_error("InvalidClientTokenId", 403), CALL)
    assert KEY in rejected.message and "conn" in rejected.message
