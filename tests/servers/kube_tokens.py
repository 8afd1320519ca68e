"""The TokenRequest half of the test Kubernetes API server: RBAC, signing, verification.

A :class:`TokenAuthority` plugged into :class:`tests.servers.kube_api.KubeApiServer`
does what kube-apiserver does for ``POST .../serviceaccounts/NAME/token``:

* authorizes the caller against an RBAC-like table: which authenticated user may
  ``create`` ``serviceaccounts/token`` on which ``NAMESPACE/NAME`` (``NAMESPACE/*``
  for every account of a namespace); otherwise 403 with the real server's wording;
* answers 404 for an account that does not exist, 422 for an expirationSeconds
  under 600 (the real minimum) or malformed audiences;
* mints an RS256 JWT signed with its own key (``iss``, ``sub`` =
  ``system:serviceaccount:NS:NAME``, ``aud``, ``iat``, ``nbf``, ``exp`` and the
  ``kubernetes.io`` claim), capping the lifetime at ``max_seconds`` like
  ``--service-account-max-token-expiration``; no audiences means the API
  server's own (``api_audiences``);

and later authenticates API requests: only tokens it signed, not expired by its
``clock`` (injectable, epoch seconds, so tests move time instead of sleeping),
bound to one of the API server's audiences, for an account that still exists.
Why a token was refused is kept in ``rejections`` for assertions.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

import jwt
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

#: What kube-apiserver's --service-account-issuer and --api-audiences default to.
ISSUER = "https://kubernetes.default.svc.cluster.local"
API_AUDIENCE = "https://kubernetes.default.svc.cluster.local"
MIN_SECONDS = 600
DEFAULT_SECONDS = 3600


def status(
    code: int, reason: str, message: str, details: dict[str, Any] | None = None
) -> web.Response:
    """A complete ``Status`` object, as kube-apiserver answers failures."""
    doc: dict[str, Any] = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }
    if details:
        doc["details"] = details
    return web.json_response(doc, status=code)


def _rfc3339(epoch: float) -> str:
    return datetime.fromtimestamp(int(epoch), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class TokenAuthority:
    """Mints and verifies the server's service account tokens (see the module doc)."""

    def __init__(
        self,
        *,
        service_accounts: Iterable[str] = (),
        creators: Mapping[str, Iterable[str]] | None = None,
        api_audiences: Iterable[str] = (API_AUDIENCE,),
        max_seconds: int | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        #: "NAMESPACE/NAME" -> uid of each existing service account.
        self.service_accounts = {sa: str(uuid.uuid4()) for sa in service_accounts}
        #: user -> the "NAMESPACE/NAME" (or "NAMESPACE/*") it may create tokens for.
        self.creators = {user: set(accounts) for user, accounts in (creators or {}).items()}
        self.api_audiences = tuple(api_audiences)
        self.max_seconds = max_seconds
        self.clock = clock
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self._public = self._key.public_key()
        self._lock = threading.Lock()
        #: Claims of every token minted, in order.
        self.minted: list[dict[str, Any]] = []
        #: Why presented tokens were refused ("expired", "audience", "signature", ...).
        self.rejections: list[str] = []

    # -- RBAC -------------------------------------------------------------------------
    def may_create(self, user: str, namespace: str, name: str) -> bool:
        allowed = self.creators.get(user, set())
        return f"{namespace}/{name}" in allowed or f"{namespace}/*" in allowed

    # -- minting ----------------------------------------------------------------------
    def sign(self, claims: Mapping[str, Any]) -> str:
        pem = self._key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        return jwt.encode(dict(claims), pem, algorithm="RS256", headers={"kid": "test-sa-key"})

    def handle(self, user: str, namespace: str, name: str, body: Any) -> web.Response:
        """Answer one TokenRequest by ``user`` for ``namespace/name``."""
        account = f"{namespace}/{name}"
        if not self.may_create(user, namespace, name):
            return status(
                403,
                "Forbidden",
                f'serviceaccounts "{name}" is forbidden: User "{user}" cannot create resource '
                f'"serviceaccounts/token" in API group "" in the namespace "{namespace}"',
                {"name": name, "kind": "serviceaccounts"},
            )
        if account not in self.service_accounts:
            return status(
                404,
                "NotFound",
                f'serviceaccounts "{name}" not found',
                {"name": name, "kind": "serviceaccounts"},
            )
        spec = body.get("spec") if isinstance(body, dict) else None
        if (
            not isinstance(body, dict)
            or body.get("kind") != "TokenRequest"
            or body.get("apiVersion") != "authentication.k8s.io/v1"
            or not isinstance(spec, dict)
        ):
            return status(
                400, "BadRequest", "the body is not an authentication.k8s.io/v1 TokenRequest"
            )
        seconds = spec.get("expirationSeconds", DEFAULT_SECONDS)
        if not isinstance(seconds, int) or isinstance(seconds, bool) or seconds < MIN_SECONDS:
            return status(
                422,
                "Invalid",
                f'TokenRequest.authentication.k8s.io "{name}" is invalid: spec.expirationSeconds: '
                f"Invalid value: {seconds}: may not specify a duration less than 10 minutes",
            )
        audiences = spec.get("audiences") or list(self.api_audiences)
        if not isinstance(audiences, list) or not all(isinstance(a, str) and a for a in audiences):
            return status(
                422, "Invalid", "spec.audiences: Invalid value: must be non-empty strings"
            )
        if self.max_seconds is not None:
            seconds = min(seconds, self.max_seconds)
        now = self.clock()
        claims = {
            "iss": ISSUER,
            "sub": f"system:serviceaccount:{namespace}:{name}",
            "aud": audiences,
            "iat": int(now),
            "nbf": int(now),
            "exp": int(now) + seconds,
            "kubernetes.io": {
                "namespace": namespace,
                "serviceaccount": {"name": name, "uid": self.service_accounts[account]},
            },
        }
        token = self.sign(claims)
        with self._lock:
            self.minted.append(claims)
        return web.json_response(
            {
                "kind": "TokenRequest",
                "apiVersion": "authentication.k8s.io/v1",
                "metadata": {
                    "name": name,
                    "namespace": namespace,
                    "creationTimestamp": _rfc3339(now),
                },
                "spec": {
                    "audiences": audiences,
                    "expirationSeconds": seconds,
                    "boundObjectRef": None,
                },
                "status": {"token": token, "expirationTimestamp": _rfc3339(now + seconds)},
            },
            status=201,
        )

    # -- authentication ---------------------------------------------------------------
    def verify(self, token: str) -> str | None:
        """The user a token this authority signed authenticates as, or None (reason kept)."""
        reason, user = self._check(token)
        if reason is not None:
            with self._lock:
                self.rejections.append(reason)
        return user

    def _check(self, token: str) -> tuple[str | None, str | None]:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError:
            return "not a JWT", None
        if header.get("alg") != "RS256":
            return "algorithm", None
        try:
            claims = jwt.decode(
                token,
                self._public,
                algorithms=["RS256"],
                issuer=ISSUER,
                # Time and audience are checked below, against the injectable clock.
                options={
                    "verify_exp": False,
                    "verify_nbf": False,
                    "verify_iat": False,
                    "verify_aud": False,
                    "require": ["exp", "sub", "aud", "iss"],
                },
            )
        except jwt.InvalidSignatureError:
            return "signature", None
        except jwt.InvalidTokenError as exc:
            return f"invalid: {exc}", None
        now = self.clock()
        if not isinstance(claims["exp"], int) or now >= claims["exp"]:
            return "expired", None
        if isinstance(claims.get("nbf"), int) and now < claims["nbf"]:
            return "not yet valid", None
        aud = claims["aud"] if isinstance(claims["aud"], list) else [claims["aud"]]
        if not set(aud) & set(self.api_audiences):
            return "audience", None
        info = claims.get("kubernetes.io") or {}
        account = f"{info.get('namespace')}/{(info.get('serviceaccount') or {}).get('name')}"
        uid = (info.get("serviceaccount") or {}).get("uid")
        if self.service_accounts.get(account) != uid:
            return "service account gone", None
        return None, str(claims["sub"])
