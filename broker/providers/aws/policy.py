"""Session policies: which one applies to a minted session, and the generated least-privilege ones.

Precedence: an explicit inline ``policy`` wins, then ``policy_arns`` (sent to
STS as ``PolicyArns=[{"arn": ...}]``, the shape the API wants), else a policy
generated for the one resource being requested. List actions that IAM cannot
scope to a resource (``s3:ListAllMyBuckets``, ``eks:ListClusters``) are
granted on ``*``: scoped to an ARN they would simply never match.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from broker.errors import InvalidArgument
from broker.model import Value
from broker.providers.aws.ids import bucket_name, check_policy_arn, cluster_arn, partition_of
from broker.providers.aws.spec import RT_ECR, RT_EKS, RT_GENERIC, RT_S3

#: STS accepts at most 10 managed session policies.
MAX_POLICY_ARNS = 10

S3_BUCKET_ACTIONS = (
    "s3:ListBucket",
    "s3:GetObject",
    "s3:PutObject",
    "s3:DeleteObject",
    "s3:GetBucketVersioning",
    "s3:ListBucketVersions",
    "s3:DeleteObjectVersion",
)
EKS_CLUSTER_ACTIONS = ("eks:DescribeCluster",)
ECR_REPOSITORY_ACTIONS = (
    "ecr:DescribeRepositories",
    "ecr:DescribeImages",
    "ecr:ListImages",
    "ecr:BatchGetImage",
    "ecr:BatchCheckLayerAvailability",
    "ecr:GetDownloadUrlForLayer",
    "ecr:InitiateLayerUpload",
    "ecr:UploadLayerPart",
    "ecr:CompleteLayerUpload",
    "ecr:PutImage",
)


@dataclass(frozen=True)
class SessionPolicy:
    """The policy a minted session carries: inline JSON, managed ARNs, or none."""

    inline: str | None = None
    arns: tuple[str, ...] = ()

    @property
    def audit_text(self) -> str | None:
        """What ClientCredential.session_policy shows: the document, the ARN list, or None."""
        if self.inline is not None:
            return self.inline
        if self.arns:
            return json.dumps(list(self.arns))
        return None

    def sts_params(self) -> dict[str, Any]:
        """Keyword arguments for AssumeRole / GetFederationToken."""
        if self.inline is not None:
            return {"Policy": self.inline}
        if self.arns:
            return {"PolicyArns": [{"arn": arn} for arn in self.arns]}
        return {}


def check_policy(text: str, *, field: str = "policy") -> None:
    """An IAM policy document: a JSON object whose Statement holds Effect'ed statements."""
    try:
        doc = json.loads(text)
    except ValueError:
        raise InvalidArgument(f"attribute '{field}' is not valid JSON", field=field) from None
    if not isinstance(doc, dict):
        raise InvalidArgument(
            f"attribute '{field}' must be a JSON object (an IAM policy document)", field=field
        )
    statements = doc.get("Statement")
    if isinstance(statements, dict):
        statements = [statements]
    if not isinstance(statements, list) or not statements:
        raise InvalidArgument(
            f"attribute '{field}' must have a non-empty 'Statement' (an IAM policy document)",
            field=field,
        )
    for index, statement in enumerate(statements):
        if not isinstance(statement, dict) or statement.get("Effect") not in ("Allow", "Deny"):
            raise InvalidArgument(
                f"attribute '{field}': Statement[{index}] needs Effect 'Allow' or 'Deny'",
                field=field,
            )
        if "Action" not in statement and "NotAction" not in statement:
            raise InvalidArgument(
                f"attribute '{field}': Statement[{index}] needs Action or NotAction", field=field
            )


def configured_arns(config: Mapping[str, Value]) -> tuple[str, ...]:
    """The ``policy_arns`` attribute, checked (ARN shape, at most 10)."""
    raw = config.get("policy_arns")
    if raw is None or raw == "" or raw == []:
        return ()
    items = raw if isinstance(raw, list) else [p.strip() for p in str(raw).split(",")]
    arns = tuple(check_policy_arn(a) for a in items if a)
    if len(arns) > MAX_POLICY_ARNS:
        raise InvalidArgument(
            f"attribute 'policy_arns' holds {len(arns)} ARNs; STS accepts at most "
            f"{MAX_POLICY_ARNS}",
            field="policy_arns",
        )
    return arns


def configured_policy(config: Mapping[str, Value]) -> SessionPolicy | None:
    """The explicit session policy, if the connector configures one."""
    inline = config.get("policy")
    if isinstance(inline, str) and inline.strip():
        return SessionPolicy(inline=_compact(inline))
    arns = configured_arns(config)
    if arns:
        return SessionPolicy(arns=arns)
    return None


def needs_account(config: Mapping[str, Value], resource_type: str) -> bool:
    """Whether picking the policy needs the account ID (generated EKS / ECR policies)."""
    return configured_policy(config) is None and resource_type in (RT_EKS, RT_ECR)


def generated_policy(
    resource_type: str, resource_id: str, region: str, account: str | None
) -> str | None:
    """The least-privilege inline policy for one resource (None for aws-generic)."""
    partition = partition_of(region).name
    statements: list[dict[str, Any]]
    if resource_type == RT_S3:
        bucket = bucket_name(resource_id)
        statements = [
            {
                "Sid": "BucketAccess",
                "Effect": "Allow",
                "Action": list(S3_BUCKET_ACTIONS),
                "Resource": [
                    f"arn:{partition}:s3:::{bucket}",
                    f"arn:{partition}:s3:::{bucket}/*",
                ],
            },
            {
                "Sid": "ListBuckets",
                "Effect": "Allow",
                "Action": "s3:ListAllMyBuckets",
                "Resource": "*",
            },
        ]
    elif resource_type == RT_EKS:
        assert account is not None
        statements = [
            {
                "Sid": "DescribeCluster",
                "Effect": "Allow",
                "Action": list(EKS_CLUSTER_ACTIONS),
                "Resource": cluster_arn(region, account, resource_id),
            },
            {
                "Sid": "ListClusters",
                "Effect": "Allow",
                "Action": "eks:ListClusters",
                "Resource": "*",
            },
        ]
    elif resource_type == RT_ECR:
        assert account is not None
        statements = [
            {
                "Sid": "PushPull",
                "Effect": "Allow",
                "Action": list(ECR_REPOSITORY_ACTIONS),
                "Resource": f"arn:{partition}:ecr:{region}:{account}:repository/*",
            },
            _statement("Login", "ecr:GetAuthorizationToken", "*"),
        ]
    elif resource_type == RT_GENERIC:
        return None
    else:  # pragma: no cover - callers check the type first
        raise InvalidArgument(f"unknown resource type '{resource_type}'", field="resource_type")
    return json.dumps({"Version": "2012-10-17", "Statement": statements}, separators=(",", ":"))


def session_policy(
    config: Mapping[str, Value],
    resource_type: str,
    resource_id: str,
    region: str,
    account: str | None,
) -> SessionPolicy:
    """The policy for one minted session: explicit > ARNs > generated (> none)."""
    explicit = configured_policy(config)
    if explicit is not None:
        return explicit
    generated = generated_policy(resource_type, resource_id, region, account)
    return SessionPolicy(inline=generated) if generated else SessionPolicy()


def _statement(sid: str, action: str | list[str], resource: str | list[str]) -> dict[str, Any]:
    return {"Sid": sid, "Effect": "Allow", "Action": action, "Resource": resource}


def _compact(text: str) -> str:
    """Whitespace-free JSON: STS limits the packed size of inline policies."""
    return json.dumps(json.loads(text), separators=(",", ":"))
