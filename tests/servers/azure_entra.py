"""A stand-in for Entra ID's token endpoint that checks what Entra checks.

``POST /{tenant}/oauth2/v2.0/token`` with ``grant_type=client_credentials``:

* the tenant must be the registered one (GUID or its domain);
* the client authenticates with its secret, or with a client assertion: a JWT
  signed by the registered certificate's key (PS256 with ``x5t#S256`` as
  azure-identity sends, or RS256 with ``x5t``), the thumbprint matching that
  certificate, ``iss`` = ``sub`` = the client ID, ``aud`` = this very token
  endpoint URL, and unexpired; or (workload identity federation) a token of a
  trusted external issuer, checked against the app's federated credential
  (issuer, subject, audience ``api://AzureADTokenExchange``, issuer's key);
* exactly one scope ``RESOURCE/.default``, and the resource must be one the
  authority knows (ARM, Storage, the AKS server app, ...).

Issued tokens are RS256 JWTs signed by the authority's own key with ``aud`` =
the resource, ``iss`` = ``https://sts.windows.net/TENANT/`` (what Azurite's
OAuth check expects), ``tid``, ``appid``/``oid`` = the client, and an expiry
``token_lifetime`` seconds after issue. :meth:`EntraAuthority.validate` checks
one as a resource server does (signature, audience, expiry) - the ARM, ACR
and AKS stand-ins call it on every request.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import jwt
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.servers.tls import private_key_pem, self_signed_builder

STORAGE_RESOURCE = "https://storage.azure.com"
AKS_RESOURCE = "6dae42f8-4368-4678-94ff-3960e28e3630"
ARM_RESOURCE = "https://management.azure.com"
FEDERATION_AUDIENCE = "api://AzureADTokenExchange"


@dataclass
class App:
    """A registered application (service principal)."""

    client_id: str
    secret: str | None = None
    cert_der: bytes | None = None
    key_pem: str | None = None
    cert_pem: str | None = None
    #: Resources it may get tokens for (None: any known).
    resources: set[str] | None = None
    #: Federated credential: (issuer, subject, the issuer's RSA private key for tests to sign).
    federation: tuple[str, str, rsa.RSAPrivateKey] | None = None

    def federated_token(self, lifetime: int = 600, **override: Any) -> str:
        """A token of the federated issuer for this app's subject (as a Kubernetes
        projected service account token would be)."""
        assert self.federation is not None
        issuer, subject, key = self.federation
        now = int(time.time())
        claims = {"iss": issuer, "sub": subject, "aud": FEDERATION_AUDIENCE, "iat": now}
        claims["exp"] = now + lifetime
        return jwt.encode({**claims, **override}, key, algorithm="RS256")


def make_rsa_cert(common_name: str) -> tuple[str, str, bytes]:
    """(certificate PEM, key PEM, certificate DER) of a self-signed RSA certificate."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    cert = self_signed_builder(key.public_key(), common_name).sign(key, hashes.SHA256())
    key_text = private_key_pem(key)
    cert_pem = cert.public_bytes(serialization.Encoding.PEM).decode()
    return cert_pem, key_text, cert.public_bytes(serialization.Encoding.DER)


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


@dataclass
class EntraAuthority:
    """One tenant's token endpoint; mount :meth:`routes` into an aiohttp app."""

    tenant: str = field(default_factory=lambda: str(uuid.uuid4()))
    domain: str = "contoso.onmicrosoft.com"
    token_lifetime: int = 3600
    #: Resources tokens may be issued for, besides those added by servers.
    resources: set[str] = field(
        default_factory=lambda: {ARM_RESOURCE, STORAGE_RESOURCE, AKS_RESOURCE}
    )
    apps: dict[str, App] = field(default_factory=dict)
    #: Every token request seen: (client_id, scope, "secret" | "assertion", granted).
    requests: list[tuple[str, str, str, bool]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self._lock = threading.Lock()

    # -- registration ---------------------------------------------------------------
    def add_secret_app(self, resources: set[str] | None = None) -> App:
        app = App(str(uuid.uuid4()), secret=secrets.token_urlsafe(24), resources=resources)
        self.apps[app.client_id] = app
        return app

    def add_certificate_app(self, resources: set[str] | None = None) -> App:
        cert_pem, key_pem, der = make_rsa_cert("broker test app")
        app = App(
            str(uuid.uuid4()),
            cert_der=der,
            key_pem=key_pem,
            cert_pem=cert_pem,
            resources=resources,
        )
        self.apps[app.client_id] = app
        return app

    def add_federated_app(self, issuer: str, subject: str) -> App:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        app = App(str(uuid.uuid4()), federation=(issuer, subject, key))
        self.apps[app.client_id] = app
        return app

    # -- tokens -------------------------------------------------------------------
    def issue(self, client_id: str, resource: str, lifetime: int | None = None) -> str:
        now = int(time.time())
        claims = {
            "aud": resource,
            "iss": f"https://sts.windows.net/{self.tenant}/",
            "tid": self.tenant,
            "appid": client_id,
            "oid": client_id,
            "sub": client_id,
            "iat": now,
            "nbf": now,
            "exp": now + (self.token_lifetime if lifetime is None else lifetime),
            "ver": "1.0",
        }
        return jwt.encode(claims, self._key, algorithm="RS256", headers={"kid": "test"})

    def validate(self, token: str, audience: str) -> dict[str, Any] | None:
        """The claims of a live token this authority issued for ``audience``, else None."""
        try:
            return dict(
                jwt.decode(
                    token,
                    self._key.public_key(),
                    algorithms=["RS256"],
                    audience=audience,
                    issuer=f"https://sts.windows.net/{self.tenant}/",
                    options={"require": ["exp", "aud", "iss"]},
                )
            )
        except jwt.PyJWTError:
            return None

    # -- endpoint --------------------------------------------------------------
    def routes(self, app: web.Application) -> None:
        app.router.add_post("/{tenant}/oauth2/v2.0/token", self._token)

    async def _token(self, request: web.Request) -> web.Response:
        form = await request.post()
        tenant = request.match_info["tenant"].lower()
        client_id = str(form.get("client_id", ""))
        scope = str(form.get("scope", ""))
        if tenant not in (self.tenant, self.domain):
            return _error(400, "invalid_request", f"AADSTS90002: Tenant '{tenant}' not found.")
        if form.get("grant_type") != "client_credentials":
            return _error(400, "unsupported_grant_type", "AADSTS70003: grant type not supported")
        app = self.apps.get(client_id)
        if app is None:
            return _error(
                400, "unauthorized_client", f"AADSTS700016: Application '{client_id}' not found"
            )
        # Entra is only ever reached over https: that is the URL an assertion must name.
        token_url = f"https://{request.host}{request.path}"
        how, problem = self._authenticate(app, form, token_url)
        resource = scope.removesuffix("/.default") if scope.endswith("/.default") else None
        if problem is None and (resource is None or " " in scope):
            problem = ("invalid_scope", "AADSTS1002012: scope must be one RESOURCE/.default")
        if problem is None and resource not in self.resources:
            problem = ("invalid_resource", f"AADSTS500011: resource '{resource}' not found")
        if problem is None and app.resources is not None and resource not in app.resources:
            problem = ("invalid_grant", f"AADSTS65001: no consent for '{resource}'")
        with self._lock:
            self.requests.append((client_id, scope, how, problem is None))
        if problem is not None:
            status = 401 if problem[0] == "invalid_client" else 400
            return _error(status, *problem)
        assert resource is not None
        return web.json_response(
            {
                "token_type": "Bearer",
                "expires_in": self.token_lifetime,
                "ext_expires_in": self.token_lifetime,
                "access_token": self.issue(client_id, resource),
            }
        )

    def _authenticate(
        self, app: App, form: Any, token_url: str
    ) -> tuple[str, tuple[str, str] | None]:
        if "client_secret" in form:
            if app.secret is None or not secrets.compare_digest(
                str(form["client_secret"]), app.secret
            ):
                return "secret", ("invalid_client", "AADSTS7000215: Invalid client secret")
            return "secret", None
        assertion = str(form.get("client_assertion", ""))
        if (
            form.get("client_assertion_type")
            != "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
            or not assertion
        ):
            return "none", ("invalid_client", "AADSTS7000216: client credentials required")
        if app.federation is not None:
            return "federated", _check_federated(app.federation, assertion)
        if app.cert_der is None:
            return "assertion", ("invalid_client", "AADSTS700027: no certificate registered")
        try:
            header = jwt.get_unverified_header(assertion)
        except jwt.PyJWTError:
            return "assertion", ("invalid_client", "AADSTS700027: malformed assertion")
        alg = header.get("alg")
        expected = {
            "PS256": ("x5t#S256", _b64url(hashlib.sha256(app.cert_der).digest())),
            "RS256": ("x5t", _b64url(hashlib.sha1(app.cert_der).digest())),
        }.get(str(alg))
        if expected is None or str(header.get(expected[0], "")).rstrip("=") != expected[1]:
            return "assertion", ("invalid_client", "AADSTS700027: unknown key thumbprint")
        public = x509.load_der_x509_certificate(app.cert_der).public_key()
        try:
            claims = jwt.decode(
                assertion,
                public,  # type: ignore[arg-type]
                algorithms=[str(alg)],
                audience=token_url,
                issuer=app.client_id,
                options={"require": ["exp", "aud", "iss", "sub"]},
            )
        except jwt.PyJWTError as exc:
            return "assertion", ("invalid_client", f"AADSTS700027: assertion invalid: {exc}")
        if claims.get("sub") != app.client_id:
            return "assertion", ("invalid_client", "AADSTS700027: sub is not the client")
        return "assertion", None


def _check_federated(
    federation: tuple[str, str, rsa.RSAPrivateKey], assertion: str
) -> tuple[str, str] | None:
    issuer, subject, key = federation
    try:
        claims = jwt.decode(
            assertion,
            key.public_key(),
            algorithms=["RS256"],
            audience=FEDERATION_AUDIENCE,
            issuer=issuer,
            options={"require": ["exp", "aud", "iss", "sub"]},
        )
    except jwt.PyJWTError as exc:
        return ("invalid_client", f"AADSTS700211: federated token invalid: {exc}")
    if claims["sub"] != subject:
        return ("invalid_client", "AADSTS700213: no matching federated identity record")
    return None


def _error(status: int, error: str, description: str) -> web.Response:
    return web.json_response(
        {"error": error, "error_description": description, "error_codes": [0]}, status=status
    )
