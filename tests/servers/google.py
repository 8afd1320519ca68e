"""A local stand-in for the Google endpoints the gcp connector type calls; checks every credential.

One aiohttp server on a loopback port (own event loop, background thread, so
sync tests and daemon subprocesses can use it) serves:

* ``POST /token`` - OAuth2 token endpoint: the JWT-bearer grant (RS256
  assertion verified against the registered key's public half: issuer,
  audience = this ``token_uri``, scope, expiry at most an hour after
  issue; an assertion with ``target_audience`` instead of a scope gets an
  ``id_token``, as Google does) and the ``refresh_token`` grant of
  authorized_user logins (an optional ``scope`` narrows the token; the answer
  carries an ``id_token`` naming the user, as for gcloud's openid logins).
* ``POST /sts/v1/token`` - STS token exchange for external accounts.
* ``POST /iam/v1/projects/-/serviceAccounts/T:generateAccessToken`` - IAM
  Credentials: the bearer must be a token issued here for a principal
  allowed to impersonate T; honours the requested lifetime (<= 3600 s).
  ``...:generateIdToken`` likewise, for an ID token of T (``includeEmail``).
* ``GET /crm/v3/projects/P`` - Resource Manager: the project's number (set
  with :meth:`add_project`), for a live bearer token.
* ``/gcs/storage/v1/b`` (paginated) and ``/gcs/storage/v1/b/B``;
  ``/container/v1/projects/P/locations/-/clusters``;
  ``/ar/v1/projects/P/locations`` and ``.../locations/L/repositories``
  (both paginated) and single repositories - each checks the bearer token.
* ``/computeMetadata/v1/instance/service-accounts/default/token`` (with
  ``scopes=``), ``.../email`` and ``.../identity?audience=`` - GCE metadata
  (needs ``Metadata-Flavor: Google``) when ``metadata_principal`` is set.

ID tokens are RS256 JWTs signed by the server's own key (issuer
``https://accounts.google.com``); :meth:`GoogleServer.verify_id_token` checks
one as a relying party would. Every token lives ``token_lifetime`` seconds,
which tests may shorten at any time.
* ``GET /tokeninfo?access_token=`` - token validation for other processes;
  in-process servers (the Kubernetes test API server) can call
  :meth:`GoogleServer.validate_token` instead.

Faults: :meth:`deny` a permission to a principal (Google-shaped 403s),
:meth:`fail` the next requests under a path prefix, ``latency`` per request.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import secrets
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import jwt
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.servers.google_accounts import (
    ExternalAccount,
    ServiceAccountKey,
    UserAccount,
    new_rsa_key,
    shared_rsa_key,
)
from tests.servers.threaded import ThreadedAiohttpServer

CLOUD_PLATFORM = "https://www.googleapis.com/auth/cloud-platform"
ID_TOKEN_ISSUER = "https://accounts.google.com"
MAX_LIFETIME = 3600
START_TIMEOUT = 10.0

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
#: Who a request authenticated as (for the request log).
PRINCIPAL = web.RequestKey("principal", str)


@dataclass(frozen=True)
class IssuedToken:
    """An access token this server issued (the value is the dict key, not kept here)."""

    principal: str
    scope: str
    expires_at: float
    via: str


@dataclass(frozen=True)
class IssuedIdToken:
    """An ID token this server issued: for whom, for which audience, how it was asked."""

    principal: str
    audience: str
    email: str | None
    expires_at: float
    via: str


@dataclass(frozen=True)
class SeenRequest:
    method: str
    path: str
    status: int
    principal: str | None


def _oauth_error(status: int, error: str, description: str) -> web.Response:
    return web.json_response({"error": error, "error_description": description}, status=status)


def _google_error(
    status: int, message: str, state: str, permission: str | None = None
) -> web.Response:
    error: dict[str, Any] = {"code": status, "message": message, "status": state}
    if permission:
        error["details"] = [
            {
                "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                "reason": "IAM_PERMISSION_DENIED",
                "domain": "googleapis.com",
                "metadata": {"permission": permission},
            }
        ]
    return web.json_response({"error": error}, status=status)


def rfc3339(epoch: float) -> str:
    return datetime.fromtimestamp(int(epoch), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class GoogleServer(ThreadedAiohttpServer):
    """The test server; use as a context manager or :meth:`start` / :meth:`stop`."""

    thread_name = "google test server"

    def __init__(self, *, token_lifetime: int = 3600, page_size: int = 2) -> None:
        self.token_lifetime = token_lifetime
        self.page_size = page_size
        self.latency = 0.0
        self.metadata_principal: str | None = None
        self.port = 0
        self.issued: list[IssuedToken] = []
        self.id_tokens: list[IssuedIdToken] = []
        self._signing_key: rsa.RSAPrivateKey | None = None
        self._project_numbers: dict[str, str] = {}
        self.requests: list[SeenRequest] = []
        self._tokens: dict[str, IssuedToken] = {}
        self._keys: dict[str, ServiceAccountKey] = {}
        self._principals: set[str] = set()
        self._users: dict[str, UserAccount] = {}
        self._external: dict[str, ExternalAccount] = {}
        self._impersonators: dict[str, set[str]] = {}
        self._denied: set[tuple[str, str]] = set()
        self._failures: list[list[Any]] = []
        self._buckets: dict[str, list[str]] = {}
        self._clusters: dict[str, list[dict[str, Any]]] = {}
        self._repos: dict[str, dict[str, list[dict[str, str]]]] = {}
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None

    # -- addresses ------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def token_uri(self) -> str:
        return f"{self.url}/token"

    @property
    def sts_url(self) -> str:
        return f"{self.url}/sts/v1/token"

    def env(self) -> dict[str, str]:
        """Daemon environment pointing every gcp endpoint here."""
        return {
            "BROKER_GCP_IAMCREDENTIALS_URL": f"{self.url}/iam",
            "BROKER_GCP_STORAGE_URL": f"{self.url}/gcs",
            "BROKER_GCP_CONTAINER_URL": f"{self.url}/container",
            "BROKER_GCP_ARTIFACTREGISTRY_URL": f"{self.url}/ar",
            "BROKER_GCP_RESOURCEMANAGER_URL": f"{self.url}/crm",
            "BROKER_GCP_METADATA_HOST": f"127.0.0.1:{self.port}",
        }

    def impersonation_url(self, target: str) -> str:
        return f"{self.url}/iam/v1/projects/-/serviceAccounts/{target}:generateAccessToken"

    # -- identities -------------------------------------------------------------
    def service_account(
        self, name: str = "broker", project: str = "broker-test", *, fresh_key: bool = False
    ) -> ServiceAccountKey:
        """A registered service account with a key (shared test key unless ``fresh_key``)."""
        rsa_key = new_rsa_key() if fresh_key else shared_rsa_key()
        key = ServiceAccountKey(
            f"{name}@{project}.iam.gserviceaccount.com", project, self.token_uri, rsa_key
        )
        with self._lock:
            self._keys[key.email] = key
            self._principals.add(key.email)
        return key

    def add_principal(self, email: str) -> str:
        """A service account without keys (an impersonation target)."""
        with self._lock:
            self._principals.add(email)
        return email

    def user_account(
        self, email: str = "alice@example.com", quota_project: str | None = None
    ) -> UserAccount:
        user = UserAccount(email, self.token_uri, quota_project_id=quota_project)
        with self._lock:
            self._users[user.refresh_token] = user
        return user

    def external_account(self, principal: str, impersonate: str | None = None) -> ExternalAccount:
        audience = (
            "//iam.googleapis.com/projects/1/locations/global/workloadIdentityPools/p/providers/x"
        )
        account = ExternalAccount(
            principal,
            audience,
            self.sts_url,
            impersonation_url=self.impersonation_url(impersonate) if impersonate else None,
        )
        with self._lock:
            self._external[account.subject_token] = account
        return account

    def allow_impersonation(self, source: str, target: str) -> None:
        with self._lock:
            self._impersonators.setdefault(target, set()).add(source)

    def revoke_key(self, email: str) -> None:
        with self._lock:
            self._keys.pop(email, None)

    # -- resources and faults ---------------------------------------------------
    def add_bucket(self, project: str, name: str) -> None:
        with self._lock:
            self._buckets.setdefault(project, []).append(name)

    def add_cluster(
        self,
        project: str,
        location: str,
        name: str,
        endpoint: str,
        ca_pem: str,
        status: str = "RUNNING",
    ) -> None:
        cluster = {
            "name": name,
            "location": location,
            "zone": location,
            "endpoint": endpoint,
            "status": status,
            "selfLink": f"{self.url}/container/v1/projects/{project}/locations/{location}"
            f"/clusters/{name}",
            "masterAuth": {"clusterCaCertificate": base64.b64encode(ca_pem.encode()).decode()},
        }
        with self._lock:
            self._clusters.setdefault(project, []).append(cluster)

    def add_repository(self, project: str, location: str, repo: str, fmt: str = "DOCKER") -> None:
        entry = {
            "name": f"projects/{project}/locations/{location}/repositories/{repo}",
            "format": fmt,
        }
        with self._lock:
            self._repos.setdefault(project, {}).setdefault(location, []).append(entry)

    def add_project(self, project: str, number: str) -> None:
        """Resource Manager knows ``project`` by ``number``."""
        with self._lock:
            self._project_numbers[project] = number

    def project_number(self, project: str) -> str | None:
        with self._lock:
            return self._project_numbers.get(project)

    def add_location(self, project: str, location: str) -> None:
        with self._lock:
            self._repos.setdefault(project, {}).setdefault(location, [])

    def deny(self, principal: str, permission: str) -> None:
        with self._lock:
            self._denied.add((principal, permission))

    def fail(self, path_prefix: str, status: int, times: int = 1) -> None:
        """Answer the next ``times`` requests under ``path_prefix`` with ``status``."""
        with self._lock:
            self._failures.append([path_prefix, status, times])

    def heal(self) -> None:
        """Forget every injected failure: the upstream is back."""
        with self._lock:
            self._failures.clear()

    # -- inspection ---------------------------------------------------------------
    def validate_token(self, token: str) -> str | None:
        """The principal of a live cloud-platform token issued here, else None."""
        with self._lock:
            issued = self._tokens.get(token)
        if (
            issued is None
            or issued.expires_at <= time.time()
            or CLOUD_PLATFORM not in issued.scope.split()
        ):
            return None
        return issued.principal

    def issued_to(self, token: str) -> str | None:
        """Whose a token issued here is, live or expired (None: not one of ours)."""
        with self._lock:
            issued = self._tokens.get(token)
        return issued.principal if issued is not None else None

    def token_scope(self, token: str) -> str | None:
        """The scope string a token issued here carries (None: not one of ours)."""
        with self._lock:
            issued = self._tokens.get(token)
        return issued.scope if issued is not None else None

    def verify_id_token(
        self, token: str, audience: str, *, check_expiry: bool = True
    ) -> dict[str, Any]:
        """The claims of a live ID token issued here for ``audience``; raises
        jwt.InvalidTokenError otherwise (bad signature, audience, issuer or expiry;
        ``check_expiry=False`` for tokens a test looks at after they died)."""
        claims: dict[str, Any] = jwt.decode(
            token,
            self._id_key().public_key(),
            algorithms=["RS256"],
            audience=audience,
            issuer=ID_TOKEN_ISSUER,
            options={"require": ["exp", "iat", "iss", "aud", "sub"], "verify_exp": check_expiry},
        )
        return claims

    def count(self, path_prefix: str, status: int | None = None) -> int:
        with self._lock:
            return sum(
                1
                for r in self.requests
                if r.path.startswith(path_prefix) and status in (None, r.status)
            )

    # -- lifecycle --------------------------------------------------------------------
    def app(self) -> web.Application:
        """The server's application, to serve over a socket or in process (unstarted, an
        ``InProcessTransport`` carries requests for :attr:`url` to it)."""
        from tests.servers import google_routes

        app = web.Application(middlewares=[self._middleware])
        google_routes.add_routes(app, self)
        return app

    async def _serve(self) -> None:
        runner = web.AppRunner(self.app(), access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        self._runner = runner
        self.port = int(runner.addresses[0][1])

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if self.latency:
            await asyncio.sleep(self.latency)
        response: web.StreamResponse | None = None
        with self._lock:
            for failure in self._failures:
                if request.path.startswith(failure[0]) and failure[2] > 0:
                    failure[2] -= 1
                    response = _google_error(failure[1], "injected failure", "INTERNAL")
                    break
        if response is None:
            response = await handler(request)
        with self._lock:
            self.requests.append(
                SeenRequest(request.method, request.path, response.status, request.get(PRINCIPAL))
            )
        return response

    # -- used by the route handlers ----------------------------------------------------
    def issue(self, principal: str, scope: str, lifetime: int, via: str) -> tuple[str, IssuedToken]:
        value = "ya29.test-" + secrets.token_urlsafe(32)
        issued = IssuedToken(principal, scope, time.time() + lifetime, via)
        with self._lock:
            self._tokens[value] = issued
            self.issued.append(issued)
        return value, issued

    def _id_key(self) -> rsa.RSAPrivateKey:
        with self._lock:
            if self._signing_key is None:
                self._signing_key = new_rsa_key()
            return self._signing_key

    def issue_id_token(
        self, principal: str, audience: str, email: str | None, via: str, azp: str | None = None
    ) -> str:
        """An RS256 ID token as Google's: ``sub`` a stable number, email claims if asked."""
        now = int(time.time())
        sub = str(int.from_bytes(hashlib.sha256(principal.encode()).digest()[:8], "big"))
        claims: dict[str, Any] = {
            "iss": ID_TOKEN_ISSUER,
            "aud": audience,
            "azp": azp or sub,
            "sub": sub,
            "iat": now,
            "exp": now + self.token_lifetime,
        }
        if email:
            claims.update(email=email, email_verified=True)
        token = jwt.encode(claims, self._id_key(), algorithm="RS256", headers={"kid": "test"})
        issued = IssuedIdToken(principal, audience, email, now + self.token_lifetime, via)
        with self._lock:
            self.id_tokens.append(issued)
        return token

    def key_of(self, email: str) -> ServiceAccountKey | None:
        with self._lock:
            return self._keys.get(email)

    def user_of(self, refresh_token: str) -> UserAccount | None:
        with self._lock:
            return self._users.get(refresh_token)

    def external_of(self, subject_token: str) -> ExternalAccount | None:
        with self._lock:
            return self._external.get(subject_token)

    def may_impersonate(self, source: str, target: str) -> bool | None:
        """None: the target does not exist."""
        with self._lock:
            if target not in self._principals:
                return None
            return source in self._impersonators.get(target, set())

    def denied(self, principal: str, permission: str) -> bool:
        with self._lock:
            return (principal, permission) in self._denied

    def buckets(self, project: str) -> list[str]:
        with self._lock:
            return sorted(self._buckets.get(project, []))

    def all_buckets(self) -> set[str]:
        with self._lock:
            return {b for names in self._buckets.values() for b in names}

    def clusters(self, project: str) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._clusters.get(project, []))

    def repositories(self, project: str) -> dict[str, list[dict[str, str]]]:
        with self._lock:
            return {loc: list(repos) for loc, repos in self._repos.get(project, {}).items()}


def decode_assertion(assertion: str, key: ServiceAccountKey, audience: str) -> dict[str, Any]:
    """Verify a JWT-bearer assertion as Google does; raises jwt.InvalidTokenError."""
    claims: dict[str, Any] = jwt.decode(
        assertion,
        key.key.public_key(),
        algorithms=["RS256"],
        audience=audience,
        issuer=key.email,
        options={"require": ["exp", "iat", "iss", "aud"]},
    )
    return claims
