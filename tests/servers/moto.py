"""moto on loopback for AWS tests: STS, IAM, S3, EKS and ECR behind one endpoint.

One server per test session (:func:`shared_moto`), reset before each test by
a module's ``moto`` fixture built on :func:`moto_for_test`. It runs in the
test process (a werkzeug thread, shut down at exit) for three reasons a
subprocess cannot offer:

* every request is recorded (:attr:`MotoServer.requests`), so tests see the
  exact parameters the broker sent (e.g. the ``PolicyArns`` shape);
* EKS clusters can be pointed at a real test API server and CA
  (:meth:`MotoServer.set_cluster_endpoint`): moto invents both;
* ECR tokens get a real expiry (:attr:`MotoServer.ecr_token_expiry`, 12 h
  ahead like AWS by default): moto hard-codes one in 2015;
* STS sessions can be made short (:attr:`MotoServer.sts_lifetime`, below STS's
  900 s minimum) with a distinct token per GetSessionToken / GetFederationToken
  call (moto's are fixed), so renewals happen and can be told apart in a test.

Auth enforcement is off after a reset; :meth:`MotoServer.enable_auth` turns
moto's signature and IAM policy checks on (set up users and roles first, or
use an admin user's keys). moto's EKS signature check fails for every GET,
so EKS calls need auth off. :func:`verify_eks_token` checks an EKS bearer
token the way the EKS authenticator does and asks moto's STS who signed it
(synchronous: run it in a thread from async code).
"""

from __future__ import annotations

import atexit
import base64
import hashlib
import hmac
import io
import itertools
import json
import logging
import threading
import urllib.request
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import boto3
import pytest

from broker.clock import Clock, SystemClock
from broker.connectors import ConnectorDraft, build_connector
from broker.model import Connector, Value
from broker.providers.base import Provider

REGION = "us-east-1"
ACCOUNT = "123456789012"
#: Keys moto accepts while auth enforcement is off (any value works then).
SETUP_KEY = "AKIASETUPSETUPSETUP0"
SETUP_SECRET = "setup-secret"
#: What real ECR gives a token.
ECR_TOKEN_LIFETIME = timedelta(hours=12)

ADMIN_POLICY = json.dumps(
    {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}
)


@dataclass(frozen=True)
class Recorded:
    """One request moto received: enough to assert what the broker sent."""

    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes

    @property
    def params(self) -> dict[str, str]:
        """Query and form parameters (STS and IAM are query APIs)."""
        merged = {k: v[0] for k, v in parse_qs(self.query).items()}
        if self.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
            merged.update({k: v[0] for k, v in parse_qs(self.body.decode()).items()})
        return merged

    @property
    def target(self) -> str:
        """The JSON-protocol operation (``X-Amz-Target``), or the query ``Action``."""
        return self.headers.get("x-amz-target", "") or self.params.get("Action", "")


@dataclass
class MotoServer:
    """A running moto; ``url`` is the endpoint_url for every service."""

    url: str
    requests: list[Recorded] = field(default_factory=list)
    ecr_token_expiry: Callable[[], datetime] | None = None
    #: When set, every STS session lasts this long, whatever DurationSeconds says.
    sts_lifetime: timedelta | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _clients: dict[Any, Any] = field(default_factory=dict)

    # -- state ------------------------------------------------------------
    def reset(self) -> None:
        """Empty every backend, auth off, default ECR expiry, no recorded requests."""
        self.disable_auth()
        self._post("/moto-api/reset", b"")
        self.ecr_token_expiry = lambda: datetime.now(UTC) + ECR_TOKEN_LIFETIME
        self.sts_lifetime = None
        self.clear_requests()

    def enable_auth(self) -> None:
        """Check signatures and IAM policies from the next request on."""
        self._post("/moto-api/reset-auth", b"0", "text/plain")

    def disable_auth(self) -> None:
        self._post("/moto-api/reset-auth", b"inf", "text/plain")

    def clear_requests(self) -> None:
        with self._lock:
            self.requests.clear()

    def recorded(self, target: str) -> list[Recorded]:
        """Requests for one operation, e.g. ``AssumeRole`` or ``...GetAuthorizationToken``."""
        with self._lock:
            return [r for r in self.requests if r.target.endswith(target)]

    def _record(self, request: Recorded) -> None:
        with self._lock:
            self.requests.append(request)

    def _post(self, path: str, body: bytes, content_type: str = "application/json") -> None:
        req = urllib.request.Request(
            self.url + path, data=body, method="POST", headers={"Content-Type": content_type}
        )
        with urllib.request.urlopen(req, timeout=10) as reply:
            reply.read()

    # -- setup helpers (boto3, synchronous) -------------------------------
    def client(
        self, service: str, key: str = SETUP_KEY, secret: str = SETUP_SECRET, **kw: Any
    ) -> Any:
        """A boto3 client for setting up state (cached: creating one takes ~0.1 s)."""
        cache_key = (service, key, secret, tuple(sorted(kw.items())))
        cached = self._clients.get(cache_key)
        if cached is None:
            cached = self._clients[cache_key] = self._new_client(service, key, secret, **kw)
        return cached

    def _new_client(self, service: str, key: str, secret: str, **kw: Any) -> Any:
        return boto3.client(
            service,
            endpoint_url=self.url,
            region_name=kw.pop("region", REGION),
            aws_access_key_id=key,
            aws_secret_access_key=secret,
            **kw,
        )

    def create_user(self, name: str, policy: str | None = ADMIN_POLICY) -> tuple[str, str]:
        """An IAM user with an inline policy (admin by default); returns its access key."""
        iam = self.client("iam")
        iam.create_user(UserName=name)
        if policy is not None:
            iam.put_user_policy(UserName=name, PolicyName="p", PolicyDocument=policy)
        key = iam.create_access_key(UserName=name)["AccessKey"]
        return key["AccessKeyId"], key["SecretAccessKey"]

    def create_role(self, name: str, policy: str | None = ADMIN_POLICY) -> str:
        """A role anyone in the account may assume, with an inline policy; returns its ARN."""
        trust = {
            "Version": "2012-10-17",
            "Statement": [
                {"Effect": "Allow", "Principal": {"AWS": "*"}, "Action": "sts:AssumeRole"}
            ],
        }
        iam = self.client("iam")
        arn = iam.create_role(
            RoleName=name, AssumeRolePolicyDocument=json.dumps(trust), MaxSessionDuration=43200
        )["Role"]["Arn"]
        if policy is not None:
            iam.put_role_policy(RoleName=name, PolicyName="p", PolicyDocument=policy)
        return str(arn)

    def create_clusters(self, names: Iterable[str], region: str = REGION) -> None:
        role = self.create_role("eks-service-role", policy=None)
        eks = self.client("eks", region=region)
        for name in names:
            eks.create_cluster(name=name, roleArn=role, resourcesVpcConfig={})

    def set_cluster_endpoint(
        self, name: str, endpoint: str, ca_pem: str, region: str = REGION
    ) -> None:
        """Point a moto EKS cluster at a real API server and CA (moto invents both)."""
        from moto.eks.models import eks_backends

        cluster = eks_backends[ACCOUNT][region].clusters[name]
        cluster.endpoint = endpoint
        cluster.certificate_authority = {"data": base64.b64encode(ca_pem.encode()).decode()}


# -- the server ---------------------------------------------------------------


class _Recorder:
    """WSGI middleware: record each request, then let moto answer it."""

    def __init__(self, app: Any, server: Callable[[], MotoServer | None]) -> None:
        self._app = app
        self._server = server

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length) if length else b""
        environ["wsgi.input"] = io.BytesIO(body)
        headers = {
            key[5:].replace("_", "-").lower(): str(value)
            for key, value in environ.items()
            if key.startswith("HTTP_")
        }
        if environ.get("CONTENT_TYPE"):
            headers["content-type"] = environ["CONTENT_TYPE"]
        server = self._server()
        if server is not None and not environ.get("PATH_INFO", "").startswith("/moto-api"):
            server._record(
                Recorded(
                    environ["REQUEST_METHOD"],
                    environ.get("PATH_INFO", ""),
                    environ.get("QUERY_STRING", ""),
                    headers,
                    body,
                )
            )
        return self._app(environ, start_response)


_SHARED: MotoServer | None = None
_SHARED_LOCK = threading.Lock()


def shared_moto() -> MotoServer:
    """The session's moto server, started on first use (daemon thread, ends with the process)."""
    global _SHARED
    with _SHARED_LOCK:
        if _SHARED is None:
            _SHARED = _start()
        return _SHARED


def _start() -> MotoServer:
    from moto.moto_server.werkzeug_app import (
        DomainDispatcherApplication,
        MotoRequestHandler,
        create_backend_app,
    )
    from werkzeug.serving import make_server

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise
    holder: list[MotoServer] = []
    app = _Recorder(
        DomainDispatcherApplication(create_backend_app), lambda: holder[0] if holder else None
    )
    wsgi = make_server("127.0.0.1", 0, app, threaded=True, request_handler=MotoRequestHandler)
    thread = threading.Thread(target=wsgi.serve_forever, name="moto", daemon=True)
    thread.start()
    atexit.register(wsgi.shutdown)
    server = MotoServer(url=f"http://127.0.0.1:{wsgi.server_port}")
    holder.append(server)
    _patch_ecr_expiry(server)
    _patch_sts_lifetime(server)
    server.reset()
    return server


def _patch_ecr_expiry(server: MotoServer) -> None:
    """Give ECR tokens the expiry the test asks for instead of moto's fixed 2015 date."""
    from moto.ecr.responses import ECRResponse

    original = ECRResponse.get_authorization_token

    def get_authorization_token(self: Any) -> Any:
        result = original(self)
        if server.ecr_token_expiry is not None:
            for item in result.result["authorizationData"]:
                item["expiresAt"] = server.ecr_token_expiry()
        return result

    ECRResponse.get_authorization_token = get_authorization_token


def _patch_sts_lifetime(server: MotoServer) -> None:
    """With :attr:`MotoServer.sts_lifetime` set: sessions that short, and distinct
    GetSessionToken / GetFederationToken tokens (moto returns the same one every time)."""
    from moto.sts.models import STSBackend
    from moto.sts.responses import TokenResponse

    def shortened(name: str) -> None:
        original = getattr(STSBackend, name)

        def call(self: Any, *args: Any, **kwargs: Any) -> Any:
            if server.sts_lifetime is not None:
                kwargs["duration"] = max(1, int(server.sts_lifetime.total_seconds()))
            return original(self, *args, **kwargs)

        setattr(STSBackend, name, call)

    for name in ("get_session_token", "get_federation_token", "assume_role"):
        shortened(name)
    counter = itertools.count(1)

    def distinct(name: str) -> None:
        original = getattr(TokenResponse, name)

        def call(self: Any) -> Any:
            result = original(self)
            if server.sts_lifetime is not None:
                creds = result.result["Credentials"]
                creds["SessionToken"] = f"{creds['SessionToken']}-{next(counter)}"
            return result

        setattr(TokenResponse, name, call)

    for name in ("get_session_token", "get_federation_token"):
        distinct(name)


#: Environment that keeps boto3/botocore in the test process away from real AWS and ~/.aws.
SAFE_ENV = {
    "AWS_ACCESS_KEY_ID": "AKIANOTAREALKEY00000",
    "AWS_SECRET_ACCESS_KEY": "not-a-real-secret",
    "AWS_CONFIG_FILE": "/nonexistent/aws-config",
    "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/aws-credentials",
    "AWS_EC2_METADATA_DISABLED": "true",
    "AWS_DEFAULT_REGION": REGION,
}
_UNSAFE = (
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_SESSION_TOKEN",
    "AWS_ENDPOINT_URL",
    "AWS_REGION",
)


def make_aws_env_safe(monkeypatch: pytest.MonkeyPatch) -> None:
    """Point the test process's AWS environment at nothing real."""
    for key, value in SAFE_ENV.items():
        monkeypatch.setenv(key, value)
    for key in _UNSAFE:
        monkeypatch.delenv(key, raising=False)


def moto_for_test(monkeypatch: pytest.MonkeyPatch) -> Iterator[MotoServer]:
    """Body of a test module's ``moto`` fixture: the shared server, reset, AWS env made safe.

    Modules define ``@pytest.fixture def moto(monkeypatch): yield from moto_for_test(...)``
    (fixtures imported across modules would shadow test parameters).
    """
    make_aws_env_safe(monkeypatch)
    server = shared_moto()
    server.reset()
    yield server
    server.disable_auth()


def aws_connector(
    provider: Provider,
    method: str,
    *,
    name: str = "conn",
    clock: Clock | None = None,
    expiration_seconds: int | None = None,
    expires_at: datetime | None = None,
    resource_type: str | None = None,
    resource_id: str | None = None,
    **config: Value,
) -> Connector:
    """An aws connector built the way the daemon builds one (schema, bounds, validate)."""
    draft = ConnectorDraft(
        name=name,
        connector_type="aws",
        auth_method=method,
        resource_type=resource_type,
        resource_id=resource_id,
        config=config,
        labels={},
        expiration_seconds=expiration_seconds,
        expires_at=expires_at,
    )
    built = build_connector(provider, draft, clock or SystemClock())
    return replace(built, id=f"id-{name}", revision=1)


# -- EKS tokens ---------------------------------------------------------------

EKS_PREFIX = "k8s-aws-v1."
#: How long STS accepts a presigned GetCallerIdentity URL after its date.
PRESIGN_VALIDITY = timedelta(minutes=15)


class TokenRejected(Exception):
    """The token is not one EKS would accept; the message says why."""


@dataclass(frozen=True)
class EksTokenParts:
    """A decoded EKS token."""

    url: str
    host: str
    query: dict[str, str]
    signed_at: datetime
    access_key_id: str


def decode_eks_token(token: str, *, sts_host: str, now: datetime) -> EksTokenParts:
    """Every check the EKS authenticator makes before replaying the URL (signature aside)."""
    if not token.startswith(EKS_PREFIX):
        raise TokenRejected("missing k8s-aws-v1. prefix")
    raw = token[len(EKS_PREFIX) :]
    if "=" in raw:
        raise TokenRejected("token is padded base64")
    try:
        url = base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)).decode()
    except (ValueError, UnicodeDecodeError) as exc:
        raise TokenRejected(f"not base64url: {exc}") from None
    parts = urlsplit(url)
    if parts.netloc != sts_host:
        raise TokenRejected(f"URL host {parts.netloc!r} is not the STS endpoint {sts_host!r}")
    if parts.path not in ("", "/"):
        raise TokenRejected(f"unexpected path {parts.path!r}")
    multi = parse_qs(parts.query, keep_blank_values=True)
    if any(len(v) != 1 for v in multi.values()):
        raise TokenRejected("repeated query parameter")
    query = {k: v[0] for k, v in multi.items()}
    expected = {
        "Action": "GetCallerIdentity",
        "Version": "2011-06-15",
        "X-Amz-Algorithm": "AWS4-HMAC-SHA256",
        "X-Amz-Expires": "60",
    }
    for key, value in expected.items():
        if query.get(key) != value:
            raise TokenRejected(f"{key} is {query.get(key)!r}, expected {value!r}")
    signed = query.get("X-Amz-SignedHeaders", "").split(";")
    if "x-k8s-aws-id" not in signed or "host" not in signed:
        raise TokenRejected(f"signed headers {signed} lack host / x-k8s-aws-id")
    try:
        signed_at = datetime.strptime(query["X-Amz-Date"], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    except (KeyError, ValueError):
        raise TokenRejected("missing or malformed X-Amz-Date") from None
    if now - signed_at > PRESIGN_VALIDITY or signed_at - now > timedelta(minutes=1):
        raise TokenRejected(f"X-Amz-Date {signed_at.isoformat()} is not recent")
    scope = query.get("X-Amz-Credential", "").split("/")
    if len(scope) != 5 or scope[3] != "sts" or scope[4] != "aws4_request":
        raise TokenRejected(f"credential scope {scope} is not an STS scope")
    if "X-Amz-Signature" not in query:
        raise TokenRejected("unsigned")
    return EksTokenParts(url, parts.netloc, query, signed_at, scope[0])


def expected_signature(parts: EksTokenParts, cluster: str, secret_key: str) -> str:
    """SigV4 of the presigned GET, computed independently of botocore (for known keys)."""
    query = {k: v for k, v in parts.query.items() if k != "X-Amz-Signature"}
    canonical_query = urlencode(sorted(query.items()), quote_via=_quote)
    signed = parts.query["X-Amz-SignedHeaders"]
    values = {"host": parts.host, "x-k8s-aws-id": cluster}
    canonical_headers = "".join(f"{h}:{values[h]}\n" for h in signed.split(";"))
    canonical = "\n".join(
        ["GET", "/", canonical_query, canonical_headers, signed, hashlib.sha256(b"").hexdigest()]
    )
    scope = parts.query["X-Amz-Credential"].split("/", 1)[1]
    to_sign = "\n".join(
        [
            "AWS4-HMAC-SHA256",
            parts.query["X-Amz-Date"],
            scope,
            hashlib.sha256(canonical.encode()).hexdigest(),
        ]
    )
    date, region, service, _ = scope.split("/")
    key = ("AWS4" + secret_key).encode()
    for piece in (date, region, service, "aws4_request"):
        key = hmac.new(key, piece.encode(), hashlib.sha256).digest()
    return hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()


def verify_eks_token(
    server: MotoServer, token: str, *, cluster: str, sts_host: str, now: datetime
) -> dict[str, str]:
    """Check the token, then have moto's STS say whose keys signed it (Arn, Account, UserId).

    moto routes a presigned GET without an Authorization header to S3, so the
    URL's credential and signature travel as a signed-looking form POST;
    moto (auth off) answers for the access key in it.
    """
    parts = decode_eks_token(token, sts_host=sts_host, now=now)
    q = parts.query
    headers = {
        "Content-Type": "application/x-www-form-urlencoded",
        "X-Amz-Date": q["X-Amz-Date"],
        "x-k8s-aws-id": cluster,
        "Authorization": (
            f"AWS4-HMAC-SHA256 Credential={q['X-Amz-Credential']}, "
            f"SignedHeaders={q['X-Amz-SignedHeaders']}, Signature={q['X-Amz-Signature']}"
        ),
    }
    if "X-Amz-Security-Token" in q:
        headers["X-Amz-Security-Token"] = q["X-Amz-Security-Token"]
    body = urlencode({"Action": "GetCallerIdentity", "Version": "2011-06-15"}).encode()
    req = urllib.request.Request(server.url + "/", data=body, method="POST", headers=headers)
    with urllib.request.urlopen(req, timeout=10) as reply:
        tree = ET.fromstring(reply.read())
    found = {el.tag.split("}")[-1]: (el.text or "") for el in tree.iter()}
    return {k: found[k] for k in ("Arn", "Account", "UserId")}


def _quote(text: str, safe: str = "", encoding: Any = None, errors: Any = None) -> str:
    from urllib.parse import quote

    return quote(text, safe="-_.~")


def no_ambient_aws(home: Path) -> dict[str, str]:
    """Environment for a daemon (or client) that must see no AWS configuration of the
    machine's: its own empty HOME, no config or credentials file, no instance metadata."""
    return {
        "HOME": str(home),
        "AWS_CONFIG_FILE": str(home / "none-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(home / "none-credentials"),
        "AWS_EC2_METADATA_DISABLED": "true",
    }
