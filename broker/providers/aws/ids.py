"""AWS names: regions, partitions, ARNs and every accepted spelling of a resource ID.

The cache keys credentials by canonical ID, so ``arn:aws:s3:::b``, ``s3://b``
and ``b`` must meet here as ``s3://b``. A region inside an ID that differs
from the connector's is refused: the connector only works in its region, and
silently serving another region's cluster or registry would surprise users.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from broker.errors import InvalidArgument

_PARTITIONS = "aws|aws-cn|aws-us-gov|aws-iso|aws-iso-b"
REGION_RE = re.compile(r"^[a-z]{2}(?:-[a-z]+)+-\d{1,2}$")
ACCOUNT_RE = re.compile(r"^\d{12}$")
ROLE_ARN_RE = re.compile(rf"^arn:(?:{_PARTITIONS}):iam::\d{{12}}:role/[\w+=,.@/-]{{1,512}}$")
POLICY_ARN_RE = re.compile(
    rf"^arn:(?:{_PARTITIONS}):iam::(?:\d{{12}}|aws):policy/[\w+=,.@/-]{{1,512}}$"
)
_ARN_RE = re.compile(
    rf"^arn:(?P<partition>{_PARTITIONS}):(?P<service>[a-z0-9-]+):(?P<region>[a-z0-9-]*):"
    r"(?P<account>\d{12})?:(?P<resource>.+)$"
)
_S3_ARN_RE = re.compile(rf"^arn:(?:{_PARTITIONS}):s3:::(?P<bucket>.+)$")
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_BUCKET_BAD_PREFIXES = ("xn--", "sthree-", "amzn-s3-demo-")
_BUCKET_BAD_SUFFIXES = ("-s3alias", "--ol-s3", ".mrap", "--x-s3", "--table-s3")
_CLUSTER_RE = re.compile(r"^[0-9A-Za-z][A-Za-z0-9_-]{0,99}$")
_ECR_HOST_RE = re.compile(
    r"^(?P<account>\d{12})\.dkr\.ecr(?P<fips>-fips)?\.(?P<region>[a-z0-9-]+)\."
    r"(?P<suffix>amazonaws\.com(?:\.cn)?|c2s\.ic\.gov|sc2s\.sgov\.gov)$"
)
_ECHO_LIMIT = 120


@dataclass(frozen=True)
class Partition:
    """An AWS partition: its ARN name and DNS suffix."""

    name: str
    dns_suffix: str


def partition_of(region: str) -> Partition:
    """The partition a region belongs to (ARNs and endpoints differ per partition)."""
    if region.startswith("cn-"):
        return Partition("aws-cn", "amazonaws.com.cn")
    if region.startswith("us-gov-"):
        return Partition("aws-us-gov", "amazonaws.com")
    if region.startswith("us-isob-"):
        return Partition("aws-iso-b", "sc2s.sgov.gov")
    if region.startswith("us-iso-"):
        return Partition("aws-iso", "c2s.ic.gov")
    return Partition("aws", "amazonaws.com")


def check_region(region: str, *, field: str = "region") -> str:
    if not REGION_RE.match(region):
        raise InvalidArgument(
            f"{field} '{_clip(region)}' is not an AWS region (e.g. us-east-1)", field=field
        )
    return region


def check_role_arn(arn: str, *, field: str = "role_arn") -> str:
    if not ROLE_ARN_RE.match(arn):
        raise InvalidArgument(
            f"{field} '{_clip(arn)}' is not an IAM role ARN "
            "(expected arn:aws:iam::ACCOUNT:role/NAME)",
            field=field,
        )
    return arn


def check_policy_arn(arn: str, *, field: str = "policy_arns") -> str:
    if not POLICY_ARN_RE.match(arn):
        raise InvalidArgument(
            f"{field}: '{_clip(arn)}' is not an IAM policy ARN "
            "(expected arn:aws:iam::ACCOUNT:policy/NAME or arn:aws:iam::aws:policy/NAME)",
            field=field,
        )
    return arn


def account_of_role(role_arn: str) -> str:
    """The account a role lives in (the ``ACCOUNT`` part of its ARN)."""
    return role_arn.split(":")[4]


# -- resource IDs -----------------------------------------------------------


def canonical_region(raw: str, region: str, connector: str) -> str:
    """aws-generic: the ID is the connector's region."""
    text = raw.strip()
    check_region(text, field="resource_id")
    _same_region(raw, text, region, connector)
    return text


def canonical_bucket(raw: str) -> str:
    """``s3://B``, ``arn:aws:s3:::B`` or ``B`` → ``s3://B``."""
    text = raw.strip()
    if text.startswith("s3://"):
        name = text[len("s3://") :]
        if name.endswith("/"):
            name = name[:-1]
    elif text.startswith("arn:"):
        match = _S3_ARN_RE.match(text)
        if not match:
            raise _bad(raw, "an S3 bucket", "arn:aws:s3:::BUCKET")
        name = match["bucket"]
    else:
        name = text
    if "/" in name:
        raise InvalidArgument(
            f"resource_id '{_clip(raw)}' names a path inside a bucket; give the bucket only "
            "(s3://BUCKET)",
            field="resource_id",
        )
    _check_bucket(raw, name)
    return f"s3://{name}"


def bucket_name(canonical: str) -> str:
    return canonical[len("s3://") :]


def canonical_cluster(raw: str, region: str, connector: str) -> str:
    """EKS cluster name or ``arn:aws:eks:REGION:ACCOUNT:cluster/NAME`` → NAME."""
    text = raw.strip()
    if text.startswith("arn:"):
        match = _ARN_RE.match(text)
        if (
            not match
            or match["service"] != "eks"
            or not match["account"]
            or not match["resource"].startswith("cluster/")
        ):
            raise _bad(raw, "an EKS cluster", "arn:aws:eks:REGION:ACCOUNT:cluster/NAME")
        _same_region(raw, match["region"], region, connector)
        text = match["resource"][len("cluster/") :]
    if not _CLUSTER_RE.match(text):
        raise InvalidArgument(
            f"resource_id '{_clip(raw)}' is not an EKS cluster name (1-100 letters, digits, "
            "'-' or '_', starting with a letter or digit) or cluster ARN",
            field="resource_id",
        )
    return text


def cluster_arn(region: str, account: str, name: str) -> str:
    return f"arn:{partition_of(region).name}:eks:{region}:{account}:cluster/{name}"


def ecr_host(account: str, region: str) -> str:
    return f"{account}.dkr.ecr.{region}.{partition_of(region).dns_suffix}"


def canonical_registry(raw: str, region: str, connector: str) -> str:
    """ECR URI (scheme and repository dropped) or repository ARN → ``ACCOUNT.dkr.ecr.R.suffix``."""
    text = raw.strip()
    if text.startswith("arn:"):
        match = _ARN_RE.match(text)
        resource = match["resource"] if match else ""
        if (
            not match
            or match["service"] != "ecr"
            or not match["account"]
            or not (resource == "repository" or resource.startswith("repository/"))
        ):
            raise _bad(raw, "an ECR repository", "arn:aws:ecr:REGION:ACCOUNT:repository[/NAME]")
        _same_region(raw, match["region"], region, connector)
        return ecr_host(match["account"], match["region"])
    host = text
    if "://" in host:
        scheme, _, host = host.partition("://")
        if scheme.lower() != "https":
            raise _bad(raw, "an ECR registry", "https://ACCOUNT.dkr.ecr.REGION.amazonaws.com")
    host = host.split("/", 1)[0].lower()
    m = _ECR_HOST_RE.match(host)
    if not m:
        raise _bad(raw, "an ECR registry", "ACCOUNT.dkr.ecr.REGION.amazonaws.com[/REPOSITORY]")
    _same_region(raw, m["region"], region, connector)
    return host


def registry_account(canonical: str) -> str:
    return canonical.split(".", 1)[0]


# -- helpers ----------------------------------------------------------------


def _check_bucket(raw: str, name: str) -> None:
    reason = None
    if not _BUCKET_RE.match(name):
        reason = (
            "3-63 lower-case letters, digits, '.' or '-', starting and ending with a "
            "letter or digit"
        )
    elif ".." in name:
        reason = "no two adjacent dots"
    elif name.startswith(_BUCKET_BAD_PREFIXES) or name.endswith(_BUCKET_BAD_SUFFIXES):
        reason = "a reserved prefix or suffix"
    else:
        try:
            ipaddress.IPv4Address(name)
            reason = "not formatted as an IP address"
        except ValueError:
            pass
    if reason:
        raise InvalidArgument(
            f"resource_id '{_clip(raw)}' is not a valid S3 bucket name ({reason})",
            field="resource_id",
        )


def _same_region(raw: str, found: str, region: str, connector: str) -> None:
    if found != region:
        raise InvalidArgument(
            f"resource_id '{_clip(raw)}' is in region '{found}' but connector '{connector}' "
            f"works in region '{region}'",
            field="resource_id",
        )


def _bad(raw: str, what: str, expected: str) -> InvalidArgument:
    return InvalidArgument(
        f"resource_id '{_clip(raw)}' is not {what} (expected {expected})", field="resource_id"
    )


def _clip(text: str) -> str:
    return text if len(text) <= _ECHO_LIMIT else text[:_ECHO_LIMIT] + "..."
