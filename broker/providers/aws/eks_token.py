"""EKS bearer tokens: a presigned STS GetCallerIdentity URL, as ``aws eks get-token`` makes.

The API server's authenticator replays the URL against STS to learn who the
caller is; the signed ``x-k8s-aws-id`` header binds the token to one cluster.
STS honours a presigned URL for 15 minutes after its date whatever
``X-Amz-Expires`` says, so the reported expiry is at most 14 minutes after
signing: kubectl applies no margin of its own. Signing happens offline with
botocore's SigV4 query signer, at the injected clock's time.
"""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta

from botocore.auth import SIGV4_TIMESTAMP, SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from broker.providers.aws.ids import partition_of
from broker.providers.aws.session import AwsCredentials

TOKEN_PREFIX = "k8s-aws-v1."
CLUSTER_HEADER = "x-k8s-aws-id"
PRESIGN_SECONDS = 60
#: How long a token is reported valid after signing (STS accepts it for 15 min).
TOKEN_LIFETIME = timedelta(minutes=14)


class _ClockedQueryAuth(SigV4QueryAuth):  # type: ignore[misc]
    """SigV4 query signing at a given time instead of botocore's wall clock."""

    def __init__(self, credentials: Credentials, region: str, signed_at: datetime) -> None:
        super().__init__(credentials, "sts", region, expires=PRESIGN_SECONDS)
        self._signed_at = signed_at

    def add_auth(self, request: AWSRequest) -> None:
        request.context["timestamp"] = self._signed_at.astimezone(UTC).strftime(SIGV4_TIMESTAMP)
        self._modify_request_before_signing(request)
        canonical = self.canonical_request(request)
        string_to_sign = self.string_to_sign(request, canonical)
        self._inject_signature_to_request(request, self.signature(string_to_sign, request))


def sts_endpoint(region: str, endpoint_url: str | None) -> str:
    """The STS endpoint a token is signed for: the connector's endpoint_url, else regional."""
    if endpoint_url:
        return endpoint_url.rstrip("/")
    return f"https://sts.{region}.{partition_of(region).dns_suffix}"


def eks_token(
    creds: AwsCredentials,
    cluster: str,
    region: str,
    endpoint_url: str | None,
    signed_at: datetime,
) -> tuple[str, datetime]:
    """The bearer token for ``cluster`` and when to stop using it."""
    request = AWSRequest(
        method="GET",
        url=f"{sts_endpoint(region, endpoint_url)}/?Action=GetCallerIdentity&Version=2011-06-15",
        headers={CLUSTER_HEADER: cluster},
    )
    signer = _ClockedQueryAuth(
        Credentials(creds.access_key_id, creds.secret_access_key, creds.session_token),
        region,
        signed_at,
    )
    signer.add_auth(request)
    url = request.url
    assert url is not None
    encoded = base64.urlsafe_b64encode(url.encode()).decode().rstrip("=")
    expires = signed_at + TOKEN_LIFETIME
    if creds.expires_at is not None:
        expires = min(expires, creds.expires_at)
    return TOKEN_PREFIX + encoded, expires
