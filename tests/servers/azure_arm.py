"""Stand-ins for Azure Resource Manager and ACR's token endpoints; every call checks its token.

ARM (bearer token from :class:`~tests.servers.azure_entra.EntraAuthority`,
checked for signature, audience ``arm_audience`` and expiry on every call):

* ``GET /subscriptions`` (each with its ``state``: ``Disabled`` for those in ``disabled``);
* ``GET /subscriptions/S/providers/Microsoft.Storage/storageAccounts``;
* ``GET /subscriptions/S/providers/Microsoft.ContainerService/managedClusters``;
* ``POST /subscriptions/S/resourceGroups/RG/providers/Microsoft.ContainerService/
  managedClusters/N/listClusterUserCredential`` (a kubeconfig with server and CA);
* ``GET /subscriptions/S/providers/Microsoft.ContainerRegistry/registries``.

Listings are paginated with ``nextLink`` (``page_size``). A subscription the
token's client is not granted answers 403 AuthorizationFailed; one in ``failing``
answers every call under it with that status (after the token check).

ACR, served either by ``Host`` (``NAME.azurecr.io``, in-process tests) or
under ``/acr/NAME`` (one loopback server for every registry):

* ``POST /oauth2/exchange`` (``grant_type=access_token``): the Entra token must be
  live, for ARM, and ``service`` the registry; answers a refresh token (a JWT
  signed here, ``aud`` = the registry, ``exp`` = ``refresh_lifetime`` later);
* ``GET|POST /oauth2/token``: a refresh token (form ``refresh_token`` or basic
  auth password, as docker sends it) for a registry access token with the scope;
* ``GET /v2/``: 401 with a Bearer challenge unless a live access token; or, with
  ``registry_backend`` set, every ``/v2/...`` request is forwarded to that real
  docker-registry (token auth whose realm is this ``/oauth2/token``), and
  ``registry_tokens`` signs the access tokens that registry verifies.
"""

from __future__ import annotations

import base64
import binascii
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import jwt
import yaml
from aiohttp import web

from tests.servers.azure_entra import EntraAuthority

ACR_USER = "00000000-0000-0000-0000-000000000000"


@dataclass
class Cluster:
    subscription: str
    group: str
    name: str
    server: str
    ca_pem: str


@dataclass
class AzureCloud:
    """ARM and ACR state plus their routes (mount with :meth:`routes`)."""

    entra: EntraAuthority
    arm_audience: str = "https://management.azure.com"
    acr_suffix: str = "azurecr.io"
    page_size: int = 2
    refresh_lifetime: int = 3 * 3600
    subscriptions: list[str] = field(default_factory=list)
    #: Subscriptions listed with state Disabled (their resources still answer reads).
    disabled: set[str] = field(default_factory=set)
    #: subscription -> HTTP status every call under it answers (an outage, throttling).
    failing: dict[str, int] = field(default_factory=dict)
    #: client ID -> subscriptions it may read (absent: all).
    grants: dict[str, set[str]] = field(default_factory=dict)
    storage_accounts: dict[str, list[str]] = field(default_factory=dict)
    clusters: list[Cluster] = field(default_factory=list)
    registries: dict[str, list[str]] = field(default_factory=dict)
    #: A real registry the ACR host fronts for /v2/ (e.g. http://127.0.0.1:5000), and what
    #: signs its access tokens (user, scopes) -> JWT; None: the built-in /v2/ check.
    registry_backend: str | None = None
    registry_tokens: Callable[[str, tuple[str, ...]], str] | None = None
    #: (method, path, status) of every ARM/ACR call.
    calls: list[tuple[str, str, int]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._acr_key = secrets.token_bytes(32)

    def routes(self, app: web.Application) -> None:
        app.router.add_get("/subscriptions", self._subscriptions)
        app.router.add_get("/subscriptions/{sub}/providers/{ns}/{kind}", self._listing)
        app.router.add_post(
            "/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.ContainerService/"
            "managedClusters/{name}/listClusterUserCredential",
            self._cluster_credential,
        )
        for prefix in ("", "/acr/{registry}"):
            app.router.add_post(prefix + "/oauth2/exchange", self._exchange)
            app.router.add_route("*", prefix + "/oauth2/token", self._acr_token)
            app.router.add_get(prefix + "/v2/", self._v2)
        app.router.add_route("*", "/v2/{tail:.+}", self._v2)

    # -- ARM --------------------------------------------------------------------------
    def _record(self, request: web.Request, status: int) -> None:
        with self._lock:
            self.calls.append((request.method, request.path, status))

    def _caller(self, request: web.Request) -> str | web.Response:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        claims = (
            self.entra.validate(token.strip(), self.arm_audience) if scheme == "Bearer" else None
        )
        if claims is None:
            self._record(request, 401)
            return _arm_error(401, "InvalidAuthenticationToken", "The access token is invalid.")
        return str(claims["appid"])

    def _allowed(self, request: web.Request, client: str, sub: str) -> web.Response | None:
        if sub not in self.subscriptions:
            self._record(request, 404)
            return _arm_error(
                404, "SubscriptionNotFound", f"The subscription '{sub}' could not be found."
            )
        if client in self.grants and sub not in self.grants[client]:
            self._record(request, 403)
            return _arm_error(
                403,
                "AuthorizationFailed",
                f"The client '{client}' does not have authorization to perform action "
                f"over scope '/subscriptions/{sub}'",
            )
        status = self.failing.get(sub)
        if status is not None:
            self._record(request, status)
            code = {403: "AuthorizationFailed", 429: "TooManyRequests"}.get(status, "InternalError")
            return _arm_error(status, code, f"stand-in failure for subscription '{sub}'")
        return None

    def _page(self, request: web.Request, items: list[dict[str, Any]]) -> web.Response:
        start = int(request.query.get("$skiptoken", "0"))
        page = items[start : start + self.page_size]
        doc: dict[str, Any] = {"value": page}
        if start + self.page_size < len(items):
            base = f"{request.scheme}://{request.host}{request.path}"
            doc["nextLink"] = (
                f"{base}?api-version={request.query.get('api-version', '')}"
                f"&$skiptoken={start + self.page_size}"
            )
        self._record(request, 200)
        return web.json_response(doc)

    async def _subscriptions(self, request: web.Request) -> web.Response:
        client = self._caller(request)
        if isinstance(client, web.Response):
            return client
        subs = [
            s for s in self.subscriptions if client not in self.grants or s in self.grants[client]
        ]
        return self._page(
            request,
            [
                {
                    "id": f"/subscriptions/{s}",
                    "subscriptionId": s,
                    "state": "Disabled" if s in self.disabled else "Enabled",
                }
                for s in subs
            ],
        )

    async def _listing(self, request: web.Request) -> web.Response:
        client = self._caller(request)
        if isinstance(client, web.Response):
            return client
        sub = request.match_info["sub"]
        refused = self._allowed(request, client, sub)
        if refused is not None:
            return refused
        kind = f"{request.match_info['ns']}/{request.match_info['kind']}".lower()
        base = f"/subscriptions/{sub}/resourceGroups/rg-test/providers"
        if kind == "microsoft.storage/storageaccounts":
            items = [
                {"id": f"{base}/Microsoft.Storage/storageAccounts/{a}", "name": a}
                for a in self.storage_accounts.get(sub, [])
            ]
        elif kind == "microsoft.containerservice/managedclusters":
            items = [
                {
                    "id": f"/subscriptions/{sub}/resourcegroups/{c.group}/providers/"
                    f"Microsoft.ContainerService/managedClusters/{c.name}",
                    "name": c.name,
                    "properties": {"fqdn": c.server.removeprefix("https://")},
                }
                for c in self.clusters
                if c.subscription == sub
            ]
        elif kind == "microsoft.containerregistry/registries":
            items = [
                {
                    "id": f"{base}/Microsoft.ContainerRegistry/registries/{r}",
                    "name": r,
                    "properties": {"loginServer": f"{r}.{self.acr_suffix}"},
                }
                for r in self.registries.get(sub, [])
            ]
        else:
            self._record(request, 404)
            return _arm_error(404, "InvalidResourceType", f"no resource type {kind}")
        return self._page(request, items)

    async def _cluster_credential(self, request: web.Request) -> web.Response:
        client = self._caller(request)
        if isinstance(client, web.Response):
            return client
        sub, group, name = (request.match_info[k] for k in ("sub", "rg", "name"))
        refused = self._allowed(request, client, sub)
        if refused is not None:
            return refused
        for c in self.clusters:
            if c.subscription == sub and c.group == group.lower() and c.name == name:
                config = {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": [
                        {
                            "name": name,
                            "cluster": {
                                "server": c.server,
                                "certificate-authority-data": base64.b64encode(
                                    c.ca_pem.encode()
                                ).decode(),
                            },
                        }
                    ],
                }
                self._record(request, 200)
                encoded = base64.b64encode(yaml.safe_dump(config).encode()).decode()
                return web.json_response(
                    {"kubeconfigs": [{"name": "clusterUser", "value": encoded}]}
                )
        self._record(request, 404)
        return _arm_error(404, "ResourceNotFound", f"managed cluster '{group}/{name}' not found")

    # -- ACR ----------------------------------------------------------------------------
    def _registry(self, request: web.Request) -> str:
        name = request.match_info.get("registry")
        if name:
            return f"{name}.{self.acr_suffix}"
        return request.host.split(":")[0].lower()

    def _known_registry(self, login_server: str) -> bool:
        return any(
            f"{r}.{self.acr_suffix}" == login_server for rs in self.registries.values() for r in rs
        )

    def _acr_jwt(self, audience: str, kind: str, lifetime: int, **extra: Any) -> str:
        now = int(time.time())
        claims = {
            "aud": audience,
            "iss": "acr-stand-in",
            "kind": kind,
            "iat": now,
            "exp": now + lifetime,
        }
        return jwt.encode({**claims, **extra}, self._acr_key, algorithm="HS256")

    def _acr_claims(self, token: str, audience: str, kind: str) -> dict[str, Any] | None:
        try:
            claims = jwt.decode(token, self._acr_key, algorithms=["HS256"], audience=audience)
        except jwt.PyJWTError:
            return None
        return dict(claims) if claims.get("kind") == kind else None

    async def _exchange(self, request: web.Request) -> web.Response:
        registry = self._registry(request)
        form = await request.post()
        if form.get("grant_type") != "access_token" or form.get("service") != registry:
            self._record(request, 400)
            return _acr_error(400, "UNSUPPORTED", "grant_type access_token and service = registry")
        if not self._known_registry(registry):
            self._record(request, 404)
            return _acr_error(404, "NAME_UNKNOWN", f"registry {registry} not found")
        claims = self.entra.validate(str(form.get("access_token", "")), self.arm_audience)
        if claims is None:
            self._record(request, 401)
            return _acr_error(401, "UNAUTHORIZED", "invalid Entra access token")
        token = self._acr_jwt(registry, "refresh", self.refresh_lifetime, sub=claims["appid"])
        self._record(request, 200)
        return web.json_response({"refresh_token": token})

    async def _acr_token(self, request: web.Request) -> web.Response:
        registry = self._registry(request)
        form = await request.post() if request.method == "POST" else request.query
        refresh = str(form.get("refresh_token", ""))
        scheme, _, basic = request.headers.get("Authorization", "").partition(" ")
        if not refresh and scheme == "Basic":
            try:
                user, _, refresh = base64.b64decode(basic).decode().partition(":")
            except (binascii.Error, UnicodeDecodeError):
                user = ""
            if user != ACR_USER:
                refresh = ""
        service = form.get("service") or request.query.get("service")
        claims = self._acr_claims(refresh, registry, "refresh") if service == registry else None
        if claims is None:
            self._record(request, 401)
            return _acr_error(401, "UNAUTHORIZED", "invalid refresh token")
        scope = str(form.get("scope") or request.query.get("scope") or "")
        if self.registry_tokens is not None:
            scopes = tuple(request.query.getall("scope", [])) or ((scope,) if scope else ())
            access = self.registry_tokens(str(claims["sub"]), scopes)
        else:
            access = self._acr_jwt(registry, "access", 300, scope=scope, sub=claims["sub"])
        self._record(request, 200)
        return web.json_response({"access_token": access, "token": access})

    async def _v2(self, request: web.Request) -> web.StreamResponse:
        if self.registry_backend is not None:
            return await self._forward(request)
        registry = self._registry(request)
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme == "Bearer" and self._acr_claims(token.strip(), registry, "access"):
            self._record(request, 200)
            return web.json_response({})
        realm = f"{request.scheme}://{request.host}{request.path.removesuffix('/v2/')}/oauth2/token"
        self._record(request, 401)
        return web.json_response(
            {"errors": [{"code": "UNAUTHORIZED", "message": "authentication required"}]},
            status=401,
            headers={"WWW-Authenticate": f'Bearer realm="{realm}",service="{registry}"'},
        )

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        """The real registry answers: headers that matter both ways, the body in full."""
        keep = ("Authorization", "Accept", "Content-Type", "Content-Range")
        # A list, not a dict: clients repeat Accept, one media type each.
        headers = [(k, v) for k, v in request.headers.items() if k in keep]
        headers += [("Host", request.host), ("X-Forwarded-Proto", "https")]
        body = await request.read()
        async with (
            aiohttp.ClientSession() as session,
            session.request(
                request.method,
                f"{self.registry_backend}{request.path_qs}",
                headers=headers,
                data=body,
                allow_redirects=False,
            ) as reply,
        ):
            data = await reply.read()
            out = {
                k: v
                for k, v in reply.headers.items()
                if k.lower() in ("content-type", "www-authenticate", "location", "range")
                or k.lower().startswith("docker-")
            }
            self._record(request, reply.status)
            if request.method == "HEAD":  # the size of what a GET would send
                head = web.StreamResponse(status=reply.status, headers=out)
                head.content_length = int(reply.headers.get("Content-Length", "0"))
                await head.prepare(request)
                return head
            return web.Response(status=reply.status, body=data, headers=out)


def _arm_error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status)


def _acr_error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"errors": [{"code": code, "message": message}]}, status=status)
