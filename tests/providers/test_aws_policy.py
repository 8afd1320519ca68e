"""Session policies: precedence, the STS shape, and down-scoping judged by moto's IAM evaluator.

moto does not enforce session policies, so the generated documents are
evaluated with moto's own policy evaluator (the one its IAM enforcement uses):
what is not explicitly allowed is denied.
"""

from __future__ import annotations

import json

import pytest
from moto.iam.access_control import IAMPolicy, PermissionResult

from broker.errors import InvalidArgument
from broker.providers.aws.policy import (
    SessionPolicy,
    generated_policy,
    session_policy,
)

REGION = "eu-west-1"
ACCOUNT = "123456789012"
OTHER_ACCOUNT = "210987654321"
ARNS = ["arn:aws:iam::aws:policy/ReadOnlyAccess", "arn:aws:iam::123456789012:policy/team"]
INLINE = '{"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "sqs:*"}]}'


def allowed(policy: str, action: str, resource: str) -> bool:
    return IAMPolicy(policy).is_action_permitted(action, resource) == PermissionResult.PERMITTED


def test_explicit_policy_wins_over_arns_wins_over_generated() -> None:
    both = {"policy": INLINE, "policy_arns": ARNS}
    explicit = session_policy(both, "s3-bucket", "s3://a", REGION, None)
    assert json.loads(explicit.inline or "") == json.loads(INLINE)
    assert explicit.sts_params() == {"Policy": explicit.inline}
    assert explicit.audit_text == explicit.inline

    arns = session_policy({"policy_arns": ARNS}, "s3-bucket", "s3://a", REGION, None)
    assert arns.sts_params() == {"PolicyArns": [{"arn": ARNS[0]}, {"arn": ARNS[1]}]}
    assert json.loads(arns.audit_text or "") == ARNS

    generated = session_policy({}, "s3-bucket", "s3://a", REGION, None)
    assert generated.inline == generated_policy("s3-bucket", "s3://a", REGION, None)
    assert set(generated.sts_params()) == {"Policy"}

    none = session_policy({}, "aws-generic", REGION, REGION, None)
    assert none == SessionPolicy() and none.sts_params() == {} and none.audit_text is None


def test_inline_policy_is_sent_compact() -> None:
    policy = session_policy({"policy": INLINE}, "aws-generic", REGION, REGION, None)
    assert policy.inline is not None and " " not in policy.inline


def test_s3_policy_grants_one_bucket_only() -> None:
    policy = generated_policy("s3-bucket", "s3://bucket-a", REGION, None)
    assert policy is not None
    for action in ("s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:DeleteObjectVersion"):
        assert allowed(policy, action, "arn:aws:s3:::bucket-a/path/key")
        assert not allowed(policy, action, "arn:aws:s3:::bucket-b/path/key")
        assert not allowed(policy, action, "arn:aws:s3:::bucket-a-evil/key")
    for action in ("s3:ListBucket", "s3:GetBucketVersioning", "s3:ListBucketVersions"):
        assert allowed(policy, action, "arn:aws:s3:::bucket-a")
        assert not allowed(policy, action, "arn:aws:s3:::bucket-b")
    assert allowed(policy, "s3:ListAllMyBuckets", "*")
    assert not allowed(policy, "s3:DeleteBucket", "arn:aws:s3:::bucket-a")
    assert not allowed(policy, "s3:PutBucketPolicy", "arn:aws:s3:::bucket-a")
    assert not allowed(policy, "ec2:RunInstances", "*")
    statements = json.loads(policy)["Statement"]
    list_all = [s for s in statements if "s3:ListAllMyBuckets" in json.dumps(s["Action"])]
    assert [s["Resource"] for s in list_all] == ["*"]


def test_eks_policy_grants_one_cluster_only() -> None:
    policy = generated_policy("kubernetes-cluster", "prod", REGION, ACCOUNT)
    assert policy is not None
    arn = f"arn:aws:eks:{REGION}:{ACCOUNT}:cluster/"
    assert allowed(policy, "eks:DescribeCluster", arn + "prod")
    assert not allowed(policy, "eks:DescribeCluster", arn + "staging")
    assert not allowed(policy, "eks:DescribeCluster", arn + "prod-2")
    assert not allowed(
        policy, "eks:DescribeCluster", f"arn:aws:eks:us-east-1:{ACCOUNT}:cluster/prod"
    )
    assert allowed(policy, "eks:ListClusters", "*")
    assert not allowed(policy, "eks:DeleteCluster", arn + "prod")
    assert not allowed(policy, "eks:UpdateClusterConfig", arn + "prod")


def test_ecr_policy_grants_the_regions_repositories_only() -> None:
    policy = generated_policy("docker-registry", "x", REGION, ACCOUNT)
    assert policy is not None
    repo = f"arn:aws:ecr:{REGION}:{ACCOUNT}:repository/team/app"
    for action in ("ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer", "ecr:PutImage"):
        assert allowed(policy, action, repo)
        assert not allowed(policy, action, f"arn:aws:ecr:us-east-1:{ACCOUNT}:repository/app")
        assert not allowed(policy, action, f"arn:aws:ecr:{REGION}:{OTHER_ACCOUNT}:repository/a")
    assert allowed(policy, "ecr:InitiateLayerUpload", repo)
    assert allowed(policy, "ecr:GetAuthorizationToken", "*")
    assert not allowed(policy, "ecr:DeleteRepository", repo)
    assert not allowed(policy, "ecr:SetRepositoryPolicy", repo)


def test_generic_has_no_generated_policy() -> None:
    assert generated_policy("aws-generic", REGION, REGION, ACCOUNT) is None
    with pytest.raises(InvalidArgument):
        generated_policy("gcs-bucket", "x", REGION, ACCOUNT)
