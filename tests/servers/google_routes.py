"""Route handlers of the Google test server (:mod:`tests.servers.google`)."""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any, cast

import jwt
from aiohttp import web

from tests.servers.google import (
    CLOUD_PLATFORM,
    MAX_LIFETIME,
    PRINCIPAL,
    _google_error,
    _oauth_error,
    decode_assertion,
    rfc3339,
)

if TYPE_CHECKING:
    from tests.servers.google import GoogleServer

JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"


def add_routes(app: web.Application, server: GoogleServer) -> None:
    r = _Routes(server)
    app.router.add_post("/token", r.token)
    app.router.add_post("/sts/v1/token", r.sts)
    app.router.add_get("/tokeninfo", r.tokeninfo)
    app.router.add_post(
        "/iam/v1/projects/-/serviceAccounts/{target}:generateAccessToken", r.impersonate
    )
    app.router.add_post(
        "/iam/v1/projects/-/serviceAccounts/{target}:generateIdToken", r.generate_id_token
    )
    app.router.add_get("/crm/v3/projects/{project}", r.project)
    metadata = "/computeMetadata/v1/instance/service-accounts/default"
    app.router.add_get(f"{metadata}/token", r.metadata)
    app.router.add_get(f"{metadata}/email", r.metadata_email)
    app.router.add_get(f"{metadata}/identity", r.metadata_identity)
    app.router.add_get("/gcs/storage/v1/b", r.list_buckets)
    app.router.add_get("/gcs/storage/v1/b/{bucket}", r.get_bucket)
    app.router.add_get("/container/v1/projects/{project}/locations/{location}/clusters", r.clusters)
    app.router.add_get("/ar/v1/projects/{project}/locations", r.locations)
    app.router.add_get(
        "/ar/v1/projects/{project}/locations/{location}/repositories", r.repositories
    )
    app.router.add_get(
        "/ar/v1/projects/{project}/locations/{location}/repositories/{repo}", r.repository
    )


def _page(
    items: list[Any], request: web.Request, size: int, size_param: str
) -> tuple[list[Any], str | None]:
    start = int(request.query.get("pageToken") or 0)
    asked = int(request.query.get(size_param) or size)
    size = max(1, min(size, asked))
    chunk = items[start : start + size]
    more = start + size < len(items)
    return chunk, (str(start + size) if more else None)


class _Routes:
    def __init__(self, server: GoogleServer) -> None:
        self.s = server

    # -- tokens ------------------------------------------------------------------
    def _grant(self, principal: str, scope: str, via: str, request: web.Request) -> web.Response:
        request[PRINCIPAL] = principal
        value, _ = self.s.issue(principal, scope, self.s.token_lifetime, via)
        return web.json_response(
            {"access_token": value, "expires_in": self.s.token_lifetime, "token_type": "Bearer"}
        )

    async def token(self, request: web.Request) -> web.Response:
        form = await request.post()
        grant = form.get("grant_type")
        if grant == JWT_BEARER:
            return self._jwt_grant(str(form.get("assertion", "")), request)
        if grant == "refresh_token":
            user = self.s.user_of(str(form.get("refresh_token", "")))
            if user is None:
                return _oauth_error(400, "invalid_grant", "Token has been expired or revoked.")
            if (
                form.get("client_id") != user.client_id
                or form.get("client_secret") != user.client_secret
            ):
                return _oauth_error(401, "invalid_client", "The OAuth client was not found.")
            scope = str(form.get("scope") or CLOUD_PLATFORM)
            response = self._grant(user.email, scope, "refresh", request)
            if user.openid:  # gcloud logins ask for openid + email: Google adds an id_token
                doc = json.loads(cast(bytes, response.body))
                doc["id_token"] = self.s.issue_id_token(
                    user.email, user.client_id, user.email, "refresh", azp=user.client_id
                )
                response = web.json_response(doc)
            return response
        return _oauth_error(400, "unsupported_grant_type", "Invalid grant_type.")

    def _jwt_grant(self, assertion: str, request: web.Request) -> web.Response:
        try:
            unverified = jwt.decode(assertion, options={"verify_signature": False})
        except jwt.InvalidTokenError:
            return _oauth_error(400, "invalid_grant", "Invalid JWT.")
        key = self.s.key_of(str(unverified.get("iss", "")))
        if key is None:
            return _oauth_error(400, "invalid_grant", "Invalid grant: account not found")
        try:
            claims = decode_assertion(assertion, key, self.s.token_uri)
        except jwt.InvalidSignatureError:
            return _oauth_error(400, "invalid_grant", "Invalid JWT Signature.")
        except jwt.InvalidTokenError as exc:
            return _oauth_error(400, "invalid_grant", f"Invalid JWT: {type(exc).__name__}")
        if int(claims["exp"]) - int(claims["iat"]) > MAX_LIFETIME:
            return _oauth_error(
                400, "invalid_grant", "Invalid JWT: Token must be a short-lived token"
            )
        audience = claims.get("target_audience")
        if audience:  # Google's ID token flow for service account keys
            request[PRINCIPAL] = key.email
            token = self.s.issue_id_token(key.email, str(audience), key.email, "jwt")
            return web.json_response({"id_token": token})
        scope = str(claims.get("scope", ""))
        if not scope:
            return _oauth_error(400, "invalid_scope", "Empty or missing scope not allowed.")
        return self._grant(key.email, scope, "jwt", request)

    async def sts(self, request: web.Request) -> web.Response:
        form = await request.post()
        if form.get("grant_type") != TOKEN_EXCHANGE:
            return _oauth_error(400, "unsupported_grant_type", "Invalid grant_type.")
        account = self.s.external_of(str(form.get("subject_token", "")))
        if account is None or form.get("audience") != account.audience:
            return _oauth_error(400, "invalid_grant", "The subject token is invalid.")
        if not form.get("subject_token_type"):
            return _oauth_error(400, "invalid_request", "subject_token_type is required.")
        request[PRINCIPAL] = account.principal
        value, _ = self.s.issue(
            account.principal, str(form.get("scope", "")), self.s.token_lifetime, "sts"
        )
        return web.json_response(
            {
                "access_token": value,
                "issued_token_type": "urn:ietf:params:oauth:token-type:access_token",
                "token_type": "Bearer",
                "expires_in": self.s.token_lifetime,
            }
        )

    async def tokeninfo(self, request: web.Request) -> web.Response:
        token = request.query.get("access_token", "")
        principal = self.s.validate_token(token)
        if principal is None:
            return _oauth_error(400, "invalid_token", "Invalid Value")
        return web.json_response({"email": principal, "scope": CLOUD_PLATFORM})

    def _metadata_principal(self, request: web.Request) -> str | web.Response:
        if request.headers.get("Metadata-Flavor") != "Google":
            return web.Response(status=403, text="Missing Metadata-Flavor header")
        principal = self.s.metadata_principal
        if principal is None:
            return web.Response(status=404, text="not on GCE")
        request[PRINCIPAL] = principal
        return principal

    async def metadata(self, request: web.Request) -> web.Response:
        principal = self._metadata_principal(request)
        if isinstance(principal, web.Response):
            return principal
        scopes = request.query.get("scopes", "").replace(",", " ").split()
        return self._grant(principal, " ".join(scopes) or CLOUD_PLATFORM, "metadata", request)

    async def metadata_email(self, request: web.Request) -> web.Response:
        principal = self._metadata_principal(request)
        if isinstance(principal, web.Response):
            return principal
        return web.Response(text=principal)

    async def metadata_identity(self, request: web.Request) -> web.Response:
        principal = self._metadata_principal(request)
        if isinstance(principal, web.Response):
            return principal
        audience = request.query.get("audience", "")
        if not audience:
            return web.Response(status=400, text="non-empty audience parameter required")
        email = principal if request.query.get("format") == "full" else None
        return web.Response(text=self.s.issue_id_token(principal, audience, email, "metadata"))

    def _impersonation(self, request: web.Request, permission: str) -> str | web.Response:
        """The target the bearer may act as, or the error Google would answer."""
        source = self._bearer(request)
        if source is None:
            return _unauthenticated()
        target = request.match_info["target"]
        allowed = self.s.may_impersonate(source, target)
        if allowed is None:
            return _google_error(
                404, f"Not found; Gaia id not found for email {target}", "NOT_FOUND"
            )
        if not allowed:
            return _google_error(
                403,
                f"Permission '{permission}' denied on resource (or it may not exist).",
                "PERMISSION_DENIED",
                permission,
            )
        return target

    async def generate_id_token(self, request: web.Request) -> web.Response:
        target = self._impersonation(request, "iam.serviceAccounts.getOpenIdToken")
        if isinstance(target, web.Response):
            return target
        body = await request.json()
        audience = str(body.get("audience") or "")
        if not audience:
            return _google_error(400, "audience must not be empty", "INVALID_ARGUMENT")
        email = target if body.get("includeEmail") else None
        token = self.s.issue_id_token(target, audience, email, "generateIdToken")
        return web.json_response({"token": token})

    async def project(self, request: web.Request) -> web.Response:
        project = request.match_info["project"]
        denial = "{principal} does not have {permission} access to the project."
        refused = self._check(request, "resourcemanager.projects.get", denial)
        if refused:
            return refused
        number = self.s.project_number(project)
        if number is None:  # Google answers 403 for projects that do not exist, too
            perm = "resourcemanager.projects.get"
            return _google_error(
                403,
                f"Permission '{perm}' denied on resource '//cloudresourcemanager.googleapis.com/"
                f"projects/{project}' (or it may not exist).",
                "PERMISSION_DENIED",
                perm,
            )
        return web.json_response(
            {
                "name": f"projects/{number}",
                "projectId": project,
                "state": "ACTIVE",
                "displayName": project,
            }
        )

    async def impersonate(self, request: web.Request) -> web.Response:
        target = self._impersonation(request, "iam.serviceAccounts.getAccessToken")
        if isinstance(target, web.Response):
            return target
        body = await request.json()
        lifetime_text = str(body.get("lifetime") or f"{MAX_LIFETIME}s")
        lifetime = int(lifetime_text.rstrip("s"))
        if not 1 <= lifetime <= MAX_LIFETIME:
            return _google_error(
                400, f"lifetime must be between 1s and {MAX_LIFETIME}s", "INVALID_ARGUMENT"
            )
        scopes = body.get("scope") or []
        if not scopes:
            return _google_error(400, "scope must not be empty", "INVALID_ARGUMENT")
        value, issued = self.s.issue(target, " ".join(scopes), lifetime, "impersonation")
        return web.json_response({"accessToken": value, "expireTime": rfc3339(issued.expires_at)})

    # -- APIs --------------------------------------------------------------------
    def _bearer(self, request: web.Request) -> str | None:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        principal = self.s.validate_token(token.strip()) if scheme.lower() == "bearer" else None
        if principal is not None:
            request[PRINCIPAL] = principal
        return principal

    def _check(self, request: web.Request, permission: str, denial: str) -> web.Response | None:
        principal = self._bearer(request)
        if principal is None:
            return _unauthenticated()
        if self.s.denied(principal, permission):
            return _google_error(
                403, denial.format(principal=principal, permission=permission), "PERMISSION_DENIED"
            )
        return None

    async def list_buckets(self, request: web.Request) -> web.Response:
        denial = (
            "{principal} does not have {permission} access to the Google Cloud project. "
            "Permission '{permission}' denied on resource (or it may not exist)."
        )
        refused = self._check(request, "storage.buckets.list", denial)
        if refused:
            return refused
        names = self.s.buckets(request.query.get("project", ""))
        chunk, token = _page(names, request, self.s.page_size, "maxResults")
        doc: dict[str, Any] = {
            "kind": "storage#buckets",
            "items": [{"kind": "storage#bucket", "name": n} for n in chunk],
        }
        if token:
            doc["nextPageToken"] = token
        return web.json_response(doc)

    async def get_bucket(self, request: web.Request) -> web.Response:
        denial = "{principal} does not have {permission} access to the Google Cloud Storage bucket."
        refused = self._check(request, "storage.buckets.get", denial)
        if refused:
            return refused
        name = request.match_info["bucket"]
        if name not in self.s.all_buckets():
            return _google_error(404, "The specified bucket does not exist.", "NOT_FOUND")
        return web.json_response(
            {"kind": "storage#bucket", "name": name, "timeCreated": rfc3339(time.time())}
        )

    async def clusters(self, request: web.Request) -> web.Response:
        project = request.match_info["project"]
        denial = 'Required "{permission}" permission(s) for "projects/' + project + '".'
        refused = self._check(request, "container.clusters.list", denial)
        if refused:
            return refused
        location = request.match_info["location"]
        found = [c for c in self.s.clusters(project) if location in ("-", c["location"])]
        return web.json_response({"clusters": found} if found else {})

    async def locations(self, request: web.Request) -> web.Response:
        project = request.match_info["project"]
        refused = self._ar_check(request, "artifactregistry.locations.list", f"projects/{project}")
        if refused:
            return refused
        names = sorted(self.s.repositories(project))
        chunk, token = _page(names, request, self.s.page_size, "pageSize")
        doc: dict[str, Any] = {
            "locations": [
                {"name": f"projects/{project}/locations/{n}", "locationId": n} for n in chunk
            ]
        }
        if token:
            doc["nextPageToken"] = token
        return web.json_response(doc)

    async def repositories(self, request: web.Request) -> web.Response:
        project, location = request.match_info["project"], request.match_info["location"]
        refused = self._ar_check(
            request,
            "artifactregistry.repositories.list",
            f"projects/{project}/locations/{location}",
        )
        if refused:
            return refused
        repos = self.s.repositories(project).get(location, [])
        chunk, token = _page(repos, request, self.s.page_size, "pageSize")
        doc: dict[str, Any] = {"repositories": chunk}
        if token:
            doc["nextPageToken"] = token
        return web.json_response(doc)

    async def repository(self, request: web.Request) -> web.Response:
        project, location = request.match_info["project"], request.match_info["location"]
        name = f"projects/{project}/locations/{location}/repositories/{request.match_info['repo']}"
        refused = self._ar_check(request, "artifactregistry.repositories.get", name)
        if refused:
            return refused
        for repo in self.s.repositories(project).get(location, []):
            if repo["name"] == name:
                return web.json_response(repo)
        return _google_error(404, f"Requested entity was not found: {name}", "NOT_FOUND")

    def _ar_check(
        self, request: web.Request, permission: str, resource: str
    ) -> web.Response | None:
        principal = self._bearer(request)
        if principal is None:
            return _unauthenticated()
        if self.s.denied(principal, permission):
            message = (
                f"Permission '{permission}' denied on resource "
                f"'//artifactregistry.googleapis.com/{resource}' (or it may not exist)."
            )
            return _google_error(403, message, "PERMISSION_DENIED", permission)
        return None


def _unauthenticated() -> web.Response:
    return _google_error(
        401,
        "Request had invalid authentication credentials. Expected OAuth 2 access token.",
        "UNAUTHENTICATED",
    )
