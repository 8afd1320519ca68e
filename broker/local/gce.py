"""The GCE metadata server a gcp grant's listener imitates, for everything it serves.

:mod:`broker.local.sdk` owns the listener (one loopback port per grant) and
checks each request first: hardening, ``Metadata-Flavor: Google``, the grant
still live, the peer's uid. This module answers it. Under
``/computeMetadata/v1/``:

- ``instance/service-accounts/`` lists ``default/`` and the account's email.
  ``default``, the email and the connector's alias (below) answer alike:
  ``email``, ``aliases``, ``scopes``; ``token`` (``?scopes=A,B``: a token for
  those scopes); ``identity?audience=A[&format=full]`` (an OpenID Connect ID
  token for A, with the email claims for ``full``); ``?recursive=true`` on the
  directory. Tokens for other scopes and ID tokens are credential variants
  (:mod:`broker.providers.gcp.variants`): each its own cache entry, renewed
  on its own.
- ``project/project-id``, ``project/numeric-project-id`` (the connector's
  ``project_number`` attribute, else the Resource Manager API, asked once),
  ``project/attributes/`` (empty).
- ``instance/``: ``id``, ``name``, ``hostname``, ``zone``, ``attributes/``.
  There is no VM: these are stable, synthetic values, there because clients
  probe ``instance`` to detect a metadata server.
- ``universe/universe-domain``: ``googleapis.com``.

Directories answer with or without their trailing slash: a listing (one entry
a line, subdirectories ending in ``/``), or JSON with ``?recursive=true`` or
``?alt=json`` (keys camelCased as GCE does). Unknown paths are 404s; every
answer, 404s included, carries ``Metadata-Flavor: Google``.

The service account email is the connector's: its credential's ``account``
(a key's ``client_email``, the impersonated ``target_principal``, the user's
email from the OAuth answer, the metadata server's account). Where the
upstream names nobody (stored tokens, federation without impersonation,
logins without the openid scope) it is the connector's alias
``NAME@credential-broker.invalid``, which the endpoint also always answers to.
google-auth stores the email from its first call and asks for that account's
paths from then on.

Tokens always come through the broker's cache, which never serves one inside
its margin (4 min for Google tokens: longer than google-auth's 3 min 45 s
refresh threshold), and ``expires_in`` is the token's real remaining lifetime.
A client refreshing because its token is about to expire therefore asks when
the cached one is inside its margin, and gets a fresh one: never the same
expiring token twice.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from aiohttp import web

from broker import variants
from broker.clock import Clock
from broker.errors import FailedPrecondition, InvalidArgument, NotFound
from broker.identity.principal import Principal
from broker.model import ClientCredential, Connector
from broker.service import BrokerService, Issued

FLAVOR = {"Metadata-Flavor": "Google"}
ROOT = "/computeMetadata/v1"
#: Where alias emails and synthetic host names live (RFC 2606: never a real domain).
ALIAS_DOMAIN = "credential-broker.invalid"
UNIVERSE_DOMAIN = "googleapis.com"
#: The synthetic zone ``instance/zone`` names (there is no VM).
ZONE = "local"
TEXT = "application/text"  # what GCE sends for plain values
#: The top-level directories under ``/computeMetadata/v1/``.
_TOP = ("instance", "project", "universe")
#: Leaves of a service account directory that are not metadata but minted on request.
_MINTED = ("identity", "token")
#: GCE's recursive JSON spells these keys in camelCase (emails and attribute keys stay).
_CAMEL = {
    "machine-type": "machineType",
    "numeric-project-id": "numericProjectId",
    "project-id": "projectId",
    "service-accounts": "serviceAccounts",
    "universe-domain": "universeDomain",
}

Lazy = Callable[[], Awaitable[object]]


@dataclass(frozen=True)
class Source:
    """What one metadata listener serves: a connector's resource, as the grant's owner."""

    connector: str
    resource_type: str | None
    resource_id: str | None
    owner: Principal
    #: How issues are audited (``gce-metadata-endpoint grant=ID``).
    via: str


@runtime_checkable
class ProjectNumbers(Protocol):
    """A provider that knows its connectors' project numbers (the gcp one)."""

    async def project_number(self, connector: Connector, token: str) -> str: ...


def environment(address: str) -> dict[str, str]:
    """The variables that point clients at the listener at ``address`` (``host:port``).

    ``GCE_METADATA_HOST``: google-auth (Python), Go, Java, Node; ``GCE_METADATA_ROOT``:
    gcloud and older google-auth; ``GCE_METADATA_IP``: google-auth's detection ping
    and Node's gcp-metadata, which prefers it.
    """
    return {
        "GCE_METADATA_HOST": address,
        "GCE_METADATA_IP": address,
        "GCE_METADATA_ROOT": address,
    }


def alias(connector: str) -> str:
    """The stable email the endpoint reports when the upstream names no account."""
    return f"{connector}@{ALIAS_DOMAIN}"


def check_credential(connector: str, credential: ClientCredential) -> None:
    """Refuse a grant whose credential is no access token (a key file, a cluster login)."""
    if credential.connector_type != "gcp" or not credential.config.get("token"):
        raise FailedPrecondition(
            f"connector '{connector}' hands out {credential.connector_type} "
            f"{credential.auth_method} credentials for {credential.resource_type}, not "
            "access tokens: the metadata endpoint serves tokens (use resource type "
            "gcp-generic or gcs-bucket, and generate_temporary_tokens=true)"
        )


def install(app: web.Application, service: BrokerService, clock: Clock, source: Source) -> None:
    """Answer every GET (and HEAD) of ``app`` as the metadata server of ``source``."""
    server = _Metadata(service, clock, source)
    app.router.add_get("/{path:.*}", server.handle)


def _instance_id(connector: str) -> int:
    """A stable 19-digit instance ID for the connector (GCE IDs are unsigned 64-bit)."""
    digest = hashlib.sha256(f"credential-broker:{connector}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % 10**19


def _text(value: object) -> str:
    if isinstance(value, list):
        return "".join(f"{item}\n" for item in value)
    return str(value)


class _Metadata:
    def __init__(self, service: BrokerService, clock: Clock, source: Source) -> None:
        self._service = service
        self._clock = clock
        self._source = source

    # -- credentials --------------------------------------------------------------
    async def _issued(self, variant: str = "") -> Issued:
        source = self._source
        return await self._service.get_credentials(
            source.connector,
            source.resource_type,
            source.resource_id,
            principal=source.owner,
            via=source.via,
            variant=variant,
        )

    async def _token_credential(self, variant: str = "") -> ClientCredential:
        credential = (await self._issued(variant)).credential
        check_credential(self._source.connector, credential)
        return credential

    def _account(self, credential: ClientCredential) -> str:
        account = credential.config.get("account")
        return str(account) if account else alias(self._source.connector)

    async def _project_number(self) -> object:
        issued = await self._issued()
        check_credential(self._source.connector, issued.credential)
        provider = self._service.provider(issued.connector)
        if not isinstance(provider, ProjectNumbers):
            raise NotFound(f"connector '{self._source.connector}' has no project number")
        token = str(issued.credential.config["token"])
        return int(await provider.project_number(issued.connector, token))

    # -- the tree -------------------------------------------------------------------
    def _tree(self, credential: ClientCredential) -> dict[str, object]:
        connector = self._source.connector
        account = self._account(credential)
        project = str(credential.config.get("project_id", ""))
        account_dir = {
            "aliases": ["default"],
            "email": account,
            "scopes": list(variants.DEFAULT_SCOPES),
        }
        lazy_number: Lazy = self._project_number
        return {
            "instance": {
                "attributes": {},
                "hostname": f"{connector}.{ALIAS_DOMAIN}",
                "id": _instance_id(connector),
                "name": connector,
                "service-accounts": {"default": account_dir, account: account_dir},
                "zone": f"projects/{project}/zones/{ZONE}",
            },
            "project": {
                "attributes": {},
                "numeric-project-id": lazy_number,
                "project-id": project,
            },
            "universe": {"universe-domain": UNIVERSE_DOMAIN},
        }

    async def _resolve(self, node: object, deep: bool) -> object:
        """Lazy leaves computed; a directory's subtree too when ``deep`` (camelCased)."""
        if callable(node):
            return await node()
        if isinstance(node, Mapping) and deep:
            return {_CAMEL.get(k, k): await self._resolve(v, True) for k, v in node.items()}
        return node

    # -- requests -------------------------------------------------------------------
    async def handle(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        if path == "/":
            return web.Response(text="computeMetadata/\n", content_type=TEXT)
        if path.rstrip("/") == "/computeMetadata":
            return web.Response(text="v1/\n", content_type=TEXT)
        if path != ROOT and not path.startswith(ROOT + "/"):
            return _not_found()
        parts = [p for p in path[len(ROOT) :].split("/") if p]
        if parts and parts[0] not in _TOP:
            return _not_found()
        credential = await self._token_credential()
        accounts = parts[:2] == ["instance", "service-accounts"] and len(parts) >= 3
        if accounts:
            account = self._account(credential)
            if parts[2] not in ("default", account, alias(self._source.connector)):
                return _not_found()
            parts[2] = "default"
            if len(parts) == 4 and parts[3] == "token":
                return await self._access_token(request)
            if len(parts) == 4 and parts[3] == "identity":
                return await self._id_token(request)
        node: object = self._tree(credential)
        for part in parts:
            if not isinstance(node, Mapping) or part not in node:
                return _not_found()
            node = node[part]
        query = request.query
        deep = query.get("recursive", "").lower() == "true"
        if isinstance(node, Mapping) and not (deep or query.get("alt") == "json"):
            entries = [f"{k}/" if isinstance(v, Mapping) else k for k, v in node.items()]
            if accounts and len(parts) == 3:
                entries += _MINTED
            return web.Response(text="".join(f"{e}\n" for e in sorted(entries)), content_type=TEXT)
        value = await self._resolve(node, deep=True)
        if isinstance(node, Mapping) or query.get("alt") == "json":
            return web.json_response(value)
        return web.Response(text=_text(value), content_type=TEXT)

    async def _access_token(self, request: web.Request) -> web.Response:
        asked = request.query.get("scopes")
        variant = ""
        if asked is not None:
            variant = variants.scopes_variant(asked.replace(",", " ").split())
        credential = await self._token_credential(variant)
        expires_in = 3600
        if credential.expires_at is not None:
            # Whole seconds, rounded down: the client's refresh point never moves later.
            expires_in = int((credential.expires_at - self._clock.now()).total_seconds())
        return web.json_response(
            {
                "access_token": str(credential.config["token"]),
                "expires_in": max(expires_in, 0),
                "token_type": "Bearer",
            }
        )

    async def _id_token(self, request: web.Request) -> web.Response:
        audience = request.query.get("audience", "")
        form = request.query.get("format", "standard")
        if form not in ("standard", "full"):
            raise InvalidArgument("format must be 'standard' or 'full'", field="format")
        variant = variants.id_token_variant(audience, include_email=form == "full")
        credential = (await self._issued(variant)).credential
        token = credential.config.get("id_token")
        if not token:
            raise FailedPrecondition(f"connector '{self._source.connector}' issued no ID token")
        return web.Response(text=str(token), content_type=TEXT)


def _not_found() -> web.Response:
    return web.Response(status=404, text="not found on this metadata server\n", content_type=TEXT)
