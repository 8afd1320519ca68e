"""A small AWS for in-process provider tests: STS, ECR and EKS as one aiohttp application.

It speaks each service's wire protocol (STS: query in, XML out; ECR: JSON 1.1;
EKS: REST-JSON), so the real aiobotocore clients sign, send and parse as they
would against AWS. It checks no signatures (moto does, over a socket, in the
end-to-end tests); it records who called what and can fail any action with
an AWS error code, which is what provider unit tests need.
"""

from __future__ import annotations

import base64
import itertools
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs
from xml.sax.saxutils import escape

from aiohttp import web

ACCOUNT = "123456789012"
_STS_NS = "https://sts.amazonaws.com/doc/2011-06-15/"
_ECR_PREFIX = "AmazonEC2ContainerRegistry_V20150921."


@dataclass(frozen=True)
class AwsCall:
    """One call: the action, the access key ID that signed it, and its parameters."""

    action: str
    access_key_id: str
    params: dict[str, Any]


@dataclass
class FakeAws:
    """Answers STS, ECR and EKS; ``fail(action, status, code)`` makes an action fail."""

    account: str = ACCOUNT
    calls: list[AwsCall] = field(default_factory=list)
    clusters: dict[str, dict[str, Any]] = field(default_factory=dict)
    _failures: dict[str, tuple[int, str]] = field(default_factory=dict)
    _serial: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/{path:.*}", self._handle)
        return app

    def fail(self, action: str, status: int, code: str) -> None:
        self._failures[action] = (status, code)

    def actions(self, action: str | None = None) -> list[AwsCall]:
        return [c for c in self.calls if action is None or c.action == action]

    def add_cluster(self, name: str, endpoint: str, ca_pem: str) -> None:
        self.clusters[name] = {
            "name": name,
            "arn": f"arn:aws:eks:us-east-1:{self.account}:cluster/{name}",
            "endpoint": endpoint,
            "status": "ACTIVE",
            "certificateAuthority": {"data": base64.b64encode(ca_pem.encode()).decode()},
        }

    # -- dispatch -----------------------------------------------------------------
    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        target = request.headers.get("X-Amz-Target", "")
        if target.startswith(_ECR_PREFIX):
            action, kind = target.removeprefix(_ECR_PREFIX), "ecr"
            params = json.loads(body or b"{}")
        elif request.path.startswith("/clusters/"):
            action, params, kind = "DescribeCluster", {"name": request.path.split("/")[2]}, "eks"
        else:
            form = {k: v[0] for k, v in parse_qs(body.decode()).items()}
            action, params, kind = form.pop("Action", ""), form, "sts"
        self.calls.append(AwsCall(action, _key_id(request), params))
        if action in self._failures:
            status, code = self._failures[action]
            return _error(kind, status, code)
        if kind == "ecr":
            return self._ecr(action)
        if kind == "eks":
            return self._eks(params["name"])
        return self._sts(action, params)

    # -- services -----------------------------------------------------------------
    def _sts(self, action: str, params: dict[str, str]) -> web.Response:
        if action == "GetCallerIdentity":
            result = (
                f"<Arn>arn:aws:iam::{self.account}:user/alice</Arn>"
                f"<UserId>AIDAFAKE</UserId><Account>{self.account}</Account>"
            )
        elif action in ("AssumeRole", "GetSessionToken", "GetFederationToken"):
            result = self._session(int(params.get("DurationSeconds", "3600")))
            if action == "AssumeRole":
                result += (
                    f"<AssumedRoleUser><Arn>{escape(params['RoleArn'])}/s</Arn>"
                    "<AssumedRoleId>AROAFAKE:s</AssumedRoleId></AssumedRoleUser>"
                )
        else:
            return _error("sts", 400, "InvalidAction")
        text = (
            f'<{action}Response xmlns="{_STS_NS}"><{action}Result>{result}</{action}Result>'
            f"<ResponseMetadata><RequestId>r</RequestId></ResponseMetadata></{action}Response>"
        )
        return web.Response(text=text, content_type="text/xml")

    def _session(self, duration: int) -> str:
        n = next(self._serial)
        expires = (datetime.now(UTC) + timedelta(seconds=duration)).strftime("%Y-%m-%dT%H:%M:%SZ")
        return (
            f"<Credentials><AccessKeyId>ASIAFAKE{n:012d}</AccessKeyId>"
            f"<SecretAccessKey>session-secret-{n}</SecretAccessKey>"
            f"<SessionToken>session-token-{n}</SessionToken>"
            f"<Expiration>{expires}</Expiration></Credentials>"
        )

    def _ecr(self, action: str) -> web.Response:
        if action == "GetAuthorizationToken":
            token = base64.b64encode(f"AWS:ecr-password-{next(self._serial)}".encode()).decode()
            expires = (datetime.now(UTC) + timedelta(hours=12)).timestamp()
            doc: dict[str, Any] = {
                "authorizationData": [
                    {
                        "authorizationToken": token,
                        "expiresAt": expires,
                        "proxyEndpoint": f"https://{self.account}.dkr.ecr.us-east-1.amazonaws.com",
                    }
                ]
            }
        elif action == "DescribeRegistry":
            doc = {"registryId": self.account, "replicationConfiguration": {"rules": []}}
        else:
            return _error("ecr", 400, "InvalidAction")
        return web.json_response(doc, content_type="application/x-amz-json-1.1")

    def _eks(self, name: str) -> web.Response:
        cluster = self.clusters.get(name)
        if cluster is None:
            return _error("eks", 404, "ResourceNotFoundException")
        return web.json_response({"cluster": cluster})


def _key_id(request: web.Request) -> str:
    """The access key ID of a SigV4 ``Authorization`` header (``Credential=KEY/date/...``)."""
    header = request.headers.get("Authorization", "")
    _, _, rest = header.partition("Credential=")
    return rest.split("/", 1)[0]


def _error(kind: str, status: int, code: str) -> web.Response:
    message = f"injected {code}"
    if kind == "sts":
        text = (
            f'<ErrorResponse xmlns="{_STS_NS}"><Error><Type>Sender</Type><Code>{code}</Code>'
            f"<Message>{message}</Message></Error><RequestId>r</RequestId></ErrorResponse>"
        )
        return web.Response(status=status, text=text, content_type="text/xml")
    return web.json_response(
        {"__type": code, "message": message},
        status=status,
        headers={"x-amzn-ErrorType": code},
        content_type="application/x-amz-json-1.1",
    )
