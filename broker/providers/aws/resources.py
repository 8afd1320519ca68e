"""Calls to S3, EKS and ECR: listing what a connector reaches, and the per-resource lookups.

Every listing goes through a paginator: accounts with more buckets, clusters
or repositories than one page holds must not be silently cut short. Each call
names its IAM action and resource, so an AccessDenied says exactly which
permission the connector's credentials lack.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from broker.attributes import normalize_pem
from broker.errors import InvalidArgument, UpstreamError
from broker.providers.aws.failures import Call, aws_call
from broker.providers.aws.ids import bucket_name, cluster_arn, partition_of
from broker.providers.aws.session import AwsClients, AwsCredentials, Endpoint

#: Items per page for every paginated listing (EKS allows at most 100).
DEFAULT_PAGE_SIZE = 100


@dataclass(frozen=True)
class Cluster:
    """What a Kubernetes client needs from DescribeCluster (CA data as EKS gives it: base64)."""

    name: str
    arn: str
    endpoint: str
    ca_data: str

    def certificate_authority(self) -> str:
        """The CA as PEM text."""
        try:
            return normalize_pem("certificate_authority", self.ca_data)
        except InvalidArgument:
            raise UpstreamError(
                f"EKS cluster '{self.name}': DescribeCluster returned certificate authority "
                "data that is not base64 PEM"
            ) from None


@dataclass(frozen=True)
class EcrLogin:
    """A docker login decoded from ECR GetAuthorizationToken."""

    username: str
    password: str = field(repr=False)
    registry: str
    expires_at: datetime | None


async def list_buckets(clients: AwsClients, where: Endpoint, creds: AwsCredentials) -> list[str]:
    """Every bucket; pages follow ContinuationToken when the store sends one.

    No page size is asked for: S3-compatible stores (and moto) that ignore
    continuation tokens would otherwise silently truncate the listing.
    """
    call = Call(where.connector, creds.access_key_id, "s3:ListAllMyBuckets", "*")
    names: list[str] = []
    async with aws_call(call), clients.client("s3", where, creds) as s3:
        async for page in s3.get_paginator("list_buckets").paginate():
            names.extend(b["Name"] for b in page.get("Buckets", []))
    return [f"s3://{n}" for n in sorted(names)]


async def head_bucket(
    clients: AwsClients, where: Endpoint, creds: AwsCredentials, canonical: str
) -> None:
    name = bucket_name(canonical)
    arn = f"arn:{partition_of(where.region).name}:s3:::{name}"
    call = Call(where.connector, creds.access_key_id, "s3:ListBucket", arn)
    async with aws_call(call), clients.client("s3", where, creds) as s3:
        await s3.head_bucket(Bucket=name)


async def list_clusters(
    clients: AwsClients, where: Endpoint, creds: AwsCredentials, page_size: int
) -> list[str]:
    call = Call(where.connector, creds.access_key_id, "eks:ListClusters", "*")
    names: list[str] = []
    async with (
        aws_call(call),
        clients.client("eks", where, creds) as eks,
    ):
        pages = eks.get_paginator("list_clusters").paginate(
            PaginationConfig={"PageSize": page_size}
        )
        async for page in pages:
            names.extend(page.get("clusters", []))
    return sorted(names)


async def describe_cluster(
    clients: AwsClients, where: Endpoint, creds: AwsCredentials, account: str, name: str
) -> Cluster:
    arn = cluster_arn(where.region, account, name)
    call = Call(where.connector, creds.access_key_id, "eks:DescribeCluster", arn)
    async with (
        aws_call(call),
        clients.client("eks", where, creds) as eks,
    ):
        reply = await eks.describe_cluster(name=name)
    cluster: dict[str, Any] = reply["cluster"]
    endpoint = cluster.get("endpoint")
    ca_data = (cluster.get("certificateAuthority") or {}).get("data")
    if not endpoint or not ca_data:
        status = cluster.get("status", "unknown")
        raise UpstreamError(
            f"EKS cluster '{name}' has no API endpoint or CA yet (status {status})",
            retryable=status == "CREATING",
        )
    return Cluster(name, str(cluster.get("arn") or arn), str(endpoint), str(ca_data))


async def registry_id(clients: AwsClients, where: Endpoint, creds: AwsCredentials) -> str:
    call = Call(where.connector, creds.access_key_id, "ecr:DescribeRegistry", "*")
    async with (
        aws_call(call),
        clients.client("ecr", where, creds) as ecr,
    ):
        reply = await ecr.describe_registry()
    return str(reply["registryId"])


async def count_repositories(
    clients: AwsClients, where: Endpoint, creds: AwsCredentials, account: str, page_size: int
) -> int:
    resource = f"arn:{partition_of(where.region).name}:ecr:{where.region}:{account}:repository/*"
    call = Call(where.connector, creds.access_key_id, "ecr:DescribeRepositories", resource)
    count = 0
    async with (
        aws_call(call),
        clients.client("ecr", where, creds) as ecr,
    ):
        pages = ecr.get_paginator("describe_repositories").paginate(
            PaginationConfig={"PageSize": page_size}
        )
        async for page in pages:
            count += len(page.get("repositories", []))
    return count


async def ecr_login(clients: AwsClients, where: Endpoint, creds: AwsCredentials) -> EcrLogin:
    call = Call(where.connector, creds.access_key_id, "ecr:GetAuthorizationToken", "*")
    async with (
        aws_call(call),
        clients.client("ecr", where, creds) as ecr,
    ):
        reply = await ecr.get_authorization_token()
    data = reply.get("authorizationData") or []
    if not data:
        raise UpstreamError("ECR GetAuthorizationToken returned no token", retryable=True)
    item = data[0]
    try:
        decoded = base64.b64decode(item["authorizationToken"], validate=True).decode()
    except (binascii.Error, UnicodeDecodeError, KeyError):
        raise UpstreamError("ECR returned an authorization token that is not base64") from None
    username, sep, password = decoded.partition(":")
    if not sep or not username or not password:
        raise UpstreamError("ECR returned an authorization token that is not 'user:password'")
    registry = urlsplit(str(item.get("proxyEndpoint") or "")).netloc
    expires = item.get("expiresAt")
    return EcrLogin(
        username=username,
        password=password,
        registry=registry,
        expires_at=expires.astimezone(UTC) if isinstance(expires, datetime) else None,
    )
