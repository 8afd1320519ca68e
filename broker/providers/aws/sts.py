"""The STS calls that mint sessions, and the names they carry.

Role session names and federated user names appear in CloudTrail, so they
are derived from the connector name (``broker-NAME``): an auditor can tell
which connector issued a session. They are cut to STS's limits (64 and 32
characters) with a short hash, so two long names sharing a prefix stay apart.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from broker.providers.aws.failures import Call, aws_call
from broker.providers.aws.policy import SessionPolicy
from broker.providers.aws.session import AwsClients, AwsCredentials, Endpoint

ROLE_SESSION_NAME_MAX = 64
FEDERATED_NAME_MAX = 32
_NAME_PREFIX = "broker-"
_UNSAFE = re.compile(r"[^\w+=,.@-]")


@dataclass(frozen=True)
class Identity:
    """What GetCallerIdentity says about a set of keys."""

    account: str
    arn: str
    user_id: str


def derived_name(connector: str, limit: int) -> str:
    """``broker-NAME`` made safe for STS and cut to ``limit`` characters."""
    name = _UNSAFE.sub("-", f"{_NAME_PREFIX}{connector}")
    if len(name) <= limit:
        return name
    digest = hashlib.sha256(connector.encode()).hexdigest()[:8]
    return f"{name[: limit - 9]}-{digest}"


async def caller_identity(clients: AwsClients, where: Endpoint, creds: AwsCredentials) -> Identity:
    call = Call(where.connector, creds.access_key_id, "sts:GetCallerIdentity")
    async with (
        aws_call(call),
        clients.client("sts", where, creds) as sts,
    ):
        reply = await sts.get_caller_identity()
    return Identity(str(reply["Account"]), str(reply["Arn"]), str(reply["UserId"]))


async def assume_role(
    clients: AwsClients,
    where: Endpoint,
    creds: AwsCredentials,
    role_arn: str,
    duration: int,
    policy: SessionPolicy,
) -> AwsCredentials:
    call = Call(where.connector, creds.access_key_id, "sts:AssumeRole", role_arn)
    requested = datetime.now(UTC)
    async with (
        aws_call(call),
        clients.client("sts", where, creds) as sts,
    ):
        reply = await sts.assume_role(
            RoleArn=role_arn,
            RoleSessionName=derived_name(where.connector, ROLE_SESSION_NAME_MAX),
            DurationSeconds=duration,
            **policy.sts_params(),
        )
    return _credentials(reply["Credentials"], duration, requested)


async def session_token(
    clients: AwsClients, where: Endpoint, creds: AwsCredentials, duration: int
) -> AwsCredentials:
    call = Call(where.connector, creds.access_key_id, "sts:GetSessionToken")
    requested = datetime.now(UTC)
    async with (
        aws_call(call),
        clients.client("sts", where, creds) as sts,
    ):
        reply = await sts.get_session_token(DurationSeconds=duration)
    return _credentials(reply["Credentials"], duration, requested)


async def federation_token(
    clients: AwsClients,
    where: Endpoint,
    creds: AwsCredentials,
    duration: int,
    policy: SessionPolicy,
) -> AwsCredentials:
    call = Call(where.connector, creds.access_key_id, "sts:GetFederationToken")
    requested = datetime.now(UTC)
    async with (
        aws_call(call),
        clients.client("sts", where, creds) as sts,
    ):
        reply = await sts.get_federation_token(
            Name=derived_name(where.connector, FEDERATED_NAME_MAX),
            DurationSeconds=duration,
            **policy.sts_params(),
        )
    return _credentials(reply["Credentials"], duration, requested)


def _credentials(raw: dict[str, object], duration: int, requested: datetime) -> AwsCredentials:
    """The session STS issued for a request sent at ``requested`` (wall clock, as
    ``Expiration`` is), with its declared lifetime.

    STS issues a fresh session per request, lasting the ``DurationSeconds`` asked
    for, or less (a root user's session is capped at an hour): it was issued at
    ``Expiration`` minus the duration, or when it was asked for if that is later.
    Both are facts about this session, the same after any restart of the broker.
    """
    expiration = raw["Expiration"]
    assert isinstance(expiration, datetime)
    expires_at = expiration.astimezone(UTC)
    return AwsCredentials(
        access_key_id=str(raw["AccessKeyId"]),
        secret_access_key=str(raw["SecretAccessKey"]),
        session_token=str(raw["SessionToken"]),
        expires_at=expires_at,
        issued_at=max(expires_at - timedelta(seconds=duration), requested),
    )
