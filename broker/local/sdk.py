"""Loopback endpoints unmodified SDKs fetch credentials from.

- AWS: the container credentials endpoint (``AWS_CONTAINER_CREDENTIALS_FULL_URI``
  + ``AWS_CONTAINER_AUTHORIZATION_TOKEN``). One listener; each grant is a
  random token bound to one (connector, resource type, resource ID), kept
  only as a hash, revocable, and gone when the daemon restarts.
- GCP: a GCE-metadata-compatible server (``GCE_METADATA_HOST``). Metadata
  clients send no credentials, so each grant gets its own loopback port:
  anything on this host that can reach that port gets that connector's
  tokens — revoke the grant when the job is done.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal

import structlog
from aiohttp import web

from broker.clock import Clock
from broker.errors import BrokerError, InvalidArgument, NotFound, Unauthenticated
from broker.local import formats
from broker.local.endpoint import error_response
from broker.model import ClientCredential
from broker.service import BrokerService

log = structlog.get_logger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

AWS_PATH = "/v1/aws/credentials"
METADATA_FLAVOR = {"Metadata-Flavor": "Google"}
TOKEN_PATH = "/computeMetadata/v1/instance/service-accounts/default/token"


@dataclass(frozen=True)
class Grant:
    id: str
    kind: Literal["aws", "gcp"]
    connector: str
    resource_type: str | None
    resource_id: str | None
    token_hash: bytes = b""


def _hash(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


class SdkEndpoints:
    """Owns the AWS listener and one metadata listener per gcp grant."""

    def __init__(self, service: BrokerService, clock: Clock, host: str = "127.0.0.1") -> None:
        self._service = service
        self._clock = clock
        self._host = host
        self._grants: dict[str, Grant] = {}
        self._aws_runner: web.AppRunner | None = None
        self._aws_port = 0
        self._gcp_runners: dict[str, web.AppRunner] = {}

    async def _listen(self, app: web.Application) -> tuple[web.AppRunner, int]:
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, self._host, 0)
        await site.start()
        port = int(runner.addresses[0][1])
        return runner, port

    async def _aws_listener(self) -> int:
        if self._aws_runner is None:
            app = web.Application()
            app.router.add_get(AWS_PATH, self._aws_credentials)
            self._aws_runner, self._aws_port = await self._listen(app)
            log.info("aws_container_endpoint_listening", port=self._aws_port)
        return self._aws_port

    async def create(
        self, kind: str, connector: str, resource_type: str | None, resource_id: str | None
    ) -> tuple[str, dict[str, str]]:
        """Check the request resolves now (clear errors early), then grant it."""
        if kind not in ("aws", "gcp"):
            raise InvalidArgument(f"kind must be 'aws' or 'gcp', not '{kind}'", field="kind")
        if kind == "gcp":
            resource_type = resource_type or "gcp-generic"
        issued = await self._service.get_credentials(
            connector, resource_type, resource_id, caller="sdk-endpoint check"
        )
        if issued.connector.connector_type != kind:
            raise InvalidArgument(
                f"connector '{connector}' is of type '{issued.connector.connector_type}', "
                f"not '{kind}'",
                field="connector",
            )
        grant_id = secrets.token_hex(8)
        resource_type = issued.credential.resource_type
        resource_id = issued.credential.resource_id
        if kind == "aws":
            formats.container_credentials(issued.credential)  # refuses non-AWS-key types
            token = secrets.token_urlsafe(32)
            port = await self._aws_listener()
            self._grants[grant_id] = Grant(
                grant_id, "aws", connector, resource_type, resource_id, _hash(token)
            )
            env = {
                "AWS_CONTAINER_CREDENTIALS_FULL_URI": f"http://{self._host}:{port}{AWS_PATH}",
                "AWS_CONTAINER_AUTHORIZATION_TOKEN": token,
            }
        else:
            grant = Grant(grant_id, "gcp", connector, resource_type, resource_id)
            app = web.Application(middlewares=[self._metadata_rules])
            app["grant"] = grant
            app.router.add_get("/", self._gce_ping)
            app.router.add_get(TOKEN_PATH, self._gce_token)
            app.router.add_get("/computeMetadata/v1/project/project-id", self._gce_project)
            app.router.add_get(
                "/computeMetadata/v1/instance/service-accounts/default/email", self._gce_email
            )
            app.router.add_get(
                "/computeMetadata/v1/instance/service-accounts/default/", self._gce_account
            )
            runner, port = await self._listen(app)
            self._gcp_runners[grant_id] = runner
            self._grants[grant_id] = grant
            env = {
                "GCE_METADATA_HOST": f"{self._host}:{port}",
                "GCE_METADATA_IP": f"{self._host}:{port}",
            }
        log.info("sdk_endpoint_granted", id=grant_id, kind=kind, connector=connector)
        return grant_id, env

    async def revoke(self, grant_id: str) -> None:
        grant = self._grants.pop(grant_id, None)
        if grant is None:
            raise NotFound(f"no SDK endpoint '{grant_id}'", field="id")
        runner = self._gcp_runners.pop(grant_id, None)
        if runner is not None:
            await runner.cleanup()
        log.info("sdk_endpoint_revoked", id=grant_id, connector=grant.connector)

    async def stop(self) -> None:
        for runner in [self._aws_runner, *self._gcp_runners.values()]:
            if runner is not None:
                await runner.cleanup()
        self._aws_runner = None
        self._gcp_runners.clear()
        self._grants.clear()

    # -- AWS ----------------------------------------------------------------
    def _aws_grant(self, request: web.Request) -> Grant:
        token = request.headers.get("Authorization", "")
        if not token:
            raise Unauthenticated(
                "missing Authorization header (AWS_CONTAINER_AUTHORIZATION_TOKEN)"
            )
        digest = _hash(token)
        for grant in self._grants.values():
            if grant.kind == "aws" and hmac.compare_digest(grant.token_hash, digest):
                return grant
        raise Unauthenticated("unknown or revoked authorization token")

    async def _aws_credentials(self, request: web.Request) -> web.Response:
        try:
            grant = self._aws_grant(request)
            issued = await self._service.get_credentials(
                grant.connector,
                grant.resource_type,
                grant.resource_id,
                caller=f"aws-container-endpoint grant={grant.id}",
            )
            return web.json_response(formats.container_credentials(issued.credential))
        except BrokerError as exc:
            return error_response(exc)

    # -- GCE metadata ---------------------------------------------------------
    @staticmethod
    @web.middleware
    async def _metadata_rules(request: web.Request, handler: Handler) -> web.StreamResponse:
        """As on GCE: every path but ``/`` needs ``Metadata-Flavor: Google``; answers carry it."""
        if request.path != "/" and request.headers.get("Metadata-Flavor") != "Google":
            return web.Response(
                status=403, text="Missing Metadata-Flavor: Google header", headers=METADATA_FLAVOR
            )
        try:
            response = await handler(request)
        except BrokerError as exc:
            return error_response(exc)
        response.headers.update(METADATA_FLAVOR)
        return response

    async def _gce_credential(self, request: web.Request) -> ClientCredential:
        grant: Grant = request.app["grant"]
        if grant.id not in self._grants:
            raise Unauthenticated("this metadata endpoint was revoked")
        issued = await self._service.get_credentials(
            grant.connector,
            grant.resource_type,
            grant.resource_id,
            caller=f"gce-metadata-endpoint grant={grant.id}",
        )
        return issued.credential

    async def _gce_ping(self, request: web.Request) -> web.Response:
        return web.Response(text="")

    async def _gce_token(self, request: web.Request) -> web.Response:
        cred = await self._gce_credential(request)
        expires_in = (
            int((cred.expires_at - self._clock.now()).total_seconds()) if cred.expires_at else 3600
        )
        return web.json_response(
            {"access_token": cred.config["token"], "expires_in": expires_in, "token_type": "Bearer"}
        )

    async def _gce_project(self, request: web.Request) -> web.Response:
        cred = await self._gce_credential(request)
        return web.Response(text=str(cred.config.get("project_id", "")))

    async def _gce_email(self, request: web.Request) -> web.Response:
        grant: Grant = request.app["grant"]
        return web.Response(text=f"{grant.connector}@credential-broker")

    async def _gce_account(self, request: web.Request) -> web.Response:
        grant: Grant = request.app["grant"]
        return web.json_response(
            {
                "aliases": ["default"],
                "email": f"{grant.connector}@credential-broker",
                "scopes": ["https://www.googleapis.com/auth/cloud-platform"],
            }
        )
