"""Loopback endpoints unmodified SDKs fetch credentials from.

- AWS: the container credentials endpoint (``AWS_CONTAINER_CREDENTIALS_FULL_URI``
  + ``AWS_CONTAINER_AUTHORIZATION_TOKEN``). One listener; each grant is a
  random token bound to one (connector, resource type, resource ID), kept
  only as a hash, revocable, and gone when the daemon restarts. Every answer
  holds temporary keys, a token and an expiry: a secret-key connector's
  long-lived key is exchanged for STS sessions (the ``sdk-session`` variant,
  cached and renewed like any credential), never handed out.
- GCP: a GCE-metadata-compatible server (``GCE_METADATA_HOST``; what it
  serves is :mod:`broker.local.gce`). Metadata
  clients send no credentials, so each grant gets its own loopback port,
  and by default only sockets of the creator's uid may use it: the
  connecting peer's uid is looked up in the kernel's socket table
  (:mod:`broker.identity.tcp_owner`).

Hardened like the cloud metadata servers they imitate: a request that went
through a proxy (``X-Forwarded-For``, ``Forwarded``), came from a web page
(``Origin``) or names another host (``Host`` other than the listener's own
loopback address: DNS rebinding) is refused with 403 before anything else.
All listeners share one :class:`~broker.local.guard.HttpGuard`: header and
body timeouts, size caps, and one cap on their open connections together.

Every grant has an owner and a TTL. Each fetch re-checks the owner's
permission (a policy reload applies at once); an expired grant is refused
and dropped on use, and a background sweep drops the rest (closing their
metadata listeners). The grants themselves, and every way one ends, are
:mod:`broker.local.grant_table`.
"""

from __future__ import annotations

import asyncio
import secrets
import socket
from collections.abc import Awaitable, Callable
from dataclasses import replace
from datetime import timedelta

import structlog
from aiohttp import web

from broker.clock import Clock
from broker.errors import (
    BrokerError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unauthenticated,
)
from broker.grants import Grant
from broker.identity.principal import Principal
from broker.identity.tcp_owner import peer_uid
from broker.local import formats, gce
from broker.local import sdk_rules as rules
from broker.local.endpoint import refused
from broker.local.grant_table import GrantTable, stamp, token_hash
from broker.local.guard import HttpGuard
from broker.local.lifelines import Lifeline, Lifelines, ProcessInvisible
from broker.policy import Action, Target
from broker.service import BrokerService
from broker.variants import VARIANT_SDK_SESSION

log = structlog.get_logger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

AWS_PATH = "/v1/aws/credentials"
METADATA_FLAVOR = gce.FLAVOR


GRANT = web.AppKey("grant", Grant)
#: Headers every answer of that listener carries (GCE: ``Metadata-Flavor: Google``).
ANSWER_HEADERS = web.AppKey("answer_headers", dict[str, str])
LISTENER = web.AppKey("listener", str)


class SdkEndpoints:
    """Owns the AWS listener and one metadata listener per gcp grant."""

    def __init__(
        self,
        service: BrokerService,
        clock: Clock,
        host: str = "127.0.0.1",
        guard: HttpGuard | None = None,
    ) -> None:
        self._service = service
        self._clock = clock
        self._host = host
        self.guard = guard or HttpGuard("sdk")
        self._aws_runner: web.AppRunner | None = None
        self._aws_port = 0
        #: Grants that end when their caller's process exits (``broker exec``).
        self.lifelines = Lifelines()
        self.grants = GrantTable(service.audit, clock, self.lifelines)

    async def _listen(self, app: web.Application) -> tuple[web.AppRunner, int]:
        runner = self.guard.runner(app)
        await runner.setup()
        try:
            sock = socket.create_server((self._host, 0), backlog=128)
        except BaseException:
            await runner.cleanup()
            raise
        port = int(sock.getsockname()[1])
        try:
            await self.guard.serve(runner, sock)
        except BaseException:
            sock.close()
            await runner.cleanup()
            raise
        return runner, port

    async def _aws_listener(self) -> int:
        if self._aws_runner is None:
            app = self.guard.application(middlewares=[self._guard])
            app[LISTENER] = "aws"
            app.router.add_get(AWS_PATH, self._aws_credentials)
            self._aws_runner, self._aws_port = await self._listen(app)
            log.info("aws_container_endpoint_listening", port=self._aws_port)
        return self._aws_port

    def _is_admin(self, principal: Principal) -> bool:
        return self._service.gate.allowed(principal, Action.ADMIN, Target())

    def list(self, principal: Principal) -> list[Grant]:
        """The caller's live grants; every live grant for an admin."""
        live = self.grants.live()
        admin = self._is_admin(principal)
        return [g for g in live if admin or g.owner.key == principal.key]

    def _binding(self, kind: str, principal: Principal, bind_uid: int | None) -> int | None:
        """The uid a grant is bound to. Anyone may bind to their own uid (the default
        for gcp); binding to another uid, or to any uid (-1), needs admin."""
        if kind == "aws":
            if bind_uid is not None:
                raise InvalidArgument(
                    "bind_uid applies to gcp grants only: an aws grant is bound by its token",
                    field="bind_uid",
                )
            return None
        if bind_uid is None and principal.uid is None:
            # A certificate or anonymous TCP caller has no local uid to bind to, and an
            # unbound metadata endpoint serves every local process: make it explicit.
            raise InvalidArgument(
                f"{principal.describe()} has no local uid: a gcp grant made over TCP must "
                f"name bind_uid (a uid, or {rules.ANY_UID} for any uid, which needs admin)",
                field="bind_uid",
            )
        if bind_uid is None or bind_uid == principal.uid:
            return principal.uid
        if bind_uid != rules.ANY_UID and not 0 <= bind_uid <= rules.MAX_UID:
            raise InvalidArgument(
                f"bind_uid must be a uid (0-{rules.MAX_UID}) or {rules.ANY_UID} for any uid, "
                f"got {bind_uid}",
                field="bind_uid",
            )
        if not self._is_admin(principal):
            wanted = "any uid" if bind_uid == rules.ANY_UID else f"uid {bind_uid}"
            own = "its own uid" if principal.uid is not None else "no uid (it has none)"
            self._service.gate.deny(
                principal,
                Action.ADMIN,
                Target(),
                f"permission denied: {principal.describe()} may bind an SDK endpoint only to "
                f"{own}, not {wanted} (needs 'admin')",
            )
        return None if bind_uid == rules.ANY_UID else bind_uid

    async def create(
        self,
        kind: str,
        connector: str,
        resource_type: str | None,
        resource_id: str | None,
        *,
        principal: Principal,
        ttl_seconds: int | None = None,
        bind_uid: int | None = None,
        bound_to_caller: bool = False,
    ) -> tuple[Grant, dict[str, str]]:
        """Check the request resolves now (clear errors early), then grant it;
        ``bound_to_caller``: revoked the moment the caller's process exits."""
        if kind not in ("aws", "gcp"):
            raise InvalidArgument(f"kind must be 'aws' or 'gcp', not '{kind}'", field="kind")
        ttl = rules.validate_ttl(ttl_seconds)
        bound_uid = self._binding(kind, principal, bind_uid)
        lifeline = self._lifeline(principal) if bound_to_caller else None
        try:
            grant, env = await self._create(
                kind, connector, resource_type, resource_id, principal, ttl, bound_uid, lifeline
            )
        except BaseException:
            if lifeline is not None:
                lifeline.close()  # refused or failed: nothing to watch
            raise
        if lifeline is not None:
            self.lifelines.watch(grant.id, lifeline, self.grants.caller_exited)
        return grant, env

    def _lifeline(self, principal: Principal) -> Lifeline | None:
        """The caller's process to end the grant with; None when the daemon cannot see it
        (the grant then lives out its TTL, as before, and bound_pid 0 tells the caller)."""
        try:
            return self.lifelines.open(principal)
        except ProcessInvisible as exc:
            log.warning("sdk_endpoint_unbound", caller=principal.describe(), reason=exc.message)
            return None

    async def _create(
        self,
        kind: str,
        connector: str,
        resource_type: str | None,
        resource_id: str | None,
        principal: Principal,
        ttl: int,
        bound_uid: int | None,
        lifeline: Lifeline | None,
    ) -> tuple[Grant, dict[str, str]]:
        bound_pid = lifeline.pid if lifeline is not None else None
        if kind == "gcp":
            resource_type = resource_type or "gcp-generic"
        # AWS: what the endpoint will serve (temporary keys, minted now), so a connector
        # that cannot back it is refused here, not when the SDK first calls.
        issued = await self._service.get_credentials(
            connector,
            resource_type,
            resource_id,
            principal=principal,
            via="sdk-endpoint check",
            variant=VARIANT_SDK_SESSION if kind == "aws" else "",
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
        now = self._clock.now()
        base = Grant(
            grant_id,
            "aws" if kind == "aws" else "gcp",
            connector,
            resource_type,
            resource_id,
            owner=principal,
            created_at=now,
            expires_at=now + timedelta(seconds=ttl),
            bound_uid=bound_uid,
            bound_pid=bound_pid,
        )
        if kind == "aws":
            try:
                formats.container_credentials(issued.credential)
            except FailedPrecondition as exc:
                raise FailedPrecondition(
                    f"connector '{connector}' cannot back the AWS container endpoint: {exc.message}"
                ) from None
            token = secrets.token_urlsafe(32)
            port = await self._aws_listener()
            grant = replace(base, token_hash=token_hash(token))
            self.grants.add(grant)
            env = {
                "AWS_CONTAINER_CREDENTIALS_FULL_URI": f"http://{self._host}:{port}{AWS_PATH}",
                "AWS_CONTAINER_AUTHORIZATION_TOKEN": token,
                **rules.aws_location(issued.credential.config),
            }
        else:
            gce.check_credential(connector, issued.credential)  # a token, not a key file
            grant = base
            app = self.guard.application(middlewares=[self._guard, self._metadata_rules])
            app[GRANT] = grant
            app[ANSWER_HEADERS] = METADATA_FLAVOR
            app[LISTENER] = f"gce grant={grant_id}"
            source = gce.Source(
                connector,
                resource_type,
                resource_id,
                principal,
                via=f"gce-metadata-endpoint grant={grant_id}",
            )
            gce.install(app, self._service, self._clock, source)
            runner, port = await self._listen(app)
            self.grants.add(grant, runner)
            env = gce.environment(f"{self._host}:{port}")
        self._service.audit.record(
            "sdk_endpoint_granted",
            id=grant_id,
            kind=kind,
            connector=connector,
            resource_type=resource_type,
            resource_id=resource_id,
            expires_at=stamp(grant.expires_at),
            bound_uid=bound_uid,
            bound_pid=bound_pid,
            **principal.audit_fields(),
        )
        return grant, env

    async def revoke(self, grant_id: str, principal: Principal) -> None:
        grant = self.grants.get(grant_id)
        if grant is None or not (grant.owner.key == principal.key or self._is_admin(principal)):
            # Someone else's grant looks exactly like a missing one.
            raise NotFound(f"no SDK endpoint '{grant_id}' of yours", field="id")
        await self.grants.revoke(grant, principal)

    async def sweep(self) -> int:
        """Drop every expired grant and close its listener; returns how many."""
        return await self.grants.sweep()

    async def stop(self) -> None:
        await self.grants.stop()
        if self._aws_runner is not None:
            await self._aws_runner.cleanup()
        self._aws_runner = None

    # -- checks on every request ----------------------------------------------
    @web.middleware
    async def _guard(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Shared by the AWS endpoint and every metadata listener: hardening, then one-line
        errors (never a traceback, one rate-limited log line each), and the listener's
        answer headers on every response."""
        extra = request.app.get(ANSWER_HEADERS, {})
        reason = rules.refusal(request)
        try:
            self.guard.check_request(request)
            if reason is not None:
                self._service.audit.record(
                    "sdk_endpoint_refused",
                    listener=request.app.get(LISTENER, ""),
                    reason=reason,
                    peer=request.remote,
                )
                raise PermissionDenied(f"permission denied: {reason}")
            response = await handler(request)
        except BrokerError as exc:
            response = refused(request, exc)
        except web.HTTPRequestEntityTooLarge:
            response = refused(request, self.guard.too_large())
        except ConnectionError:
            raise  # the client went away: nothing to answer, nothing to log
        except web.HTTPException as exc:  # 404 / 405 from the router
            exc.headers.update(extra)
            raise
        except Exception:
            log.exception("sdk_endpoint_error", listener=request.app.get(LISTENER, ""))
            response = web.json_response(
                {"error": "internal error", "code": "internal"}, status=500
            )
        response.headers.update(extra)
        return response

    async def _check_peer(self, request: web.Request, grant: Grant) -> None:
        """A uid-bound grant serves only sockets that uid owns (kernel socket table)."""
        if grant.bound_uid is None:
            return
        transport = request.transport
        peer = transport.get_extra_info("peername") if transport else None
        own = transport.get_extra_info("sockname") if transport else None
        uid = None
        if peer and own:
            uid = await asyncio.to_thread(
                peer_uid, (str(peer[0]), int(peer[1])), (str(own[0]), int(own[1]))
            )
        if uid == grant.bound_uid:
            return
        who = f"uid {uid}" if uid is not None else "a socket whose owner could not be found"
        self._service.audit.record(
            "sdk_endpoint_refused",
            id=grant.id,
            kind=grant.kind,
            connector=grant.connector,
            peer_uid=uid,
            peer=request.remote,
        )
        raise PermissionDenied(
            f"permission denied: this endpoint is bound to another uid; the connection "
            f"comes from {who}"
        )

    # -- AWS ----------------------------------------------------------------
    def _aws_grant(self, request: web.Request) -> Grant:
        token = request.headers.get("Authorization", "")
        if not token:
            raise Unauthenticated(
                "missing Authorization header (AWS_CONTAINER_AUTHORIZATION_TOKEN)"
            )
        return self.grants.by_token(token)

    async def _aws_credentials(self, request: web.Request) -> web.Response:
        grant = self._aws_grant(request)
        await self._check_peer(request, grant)
        issued = await self._service.get_credentials(
            grant.connector,
            grant.resource_type,
            grant.resource_id,
            principal=grant.owner,
            via=f"aws-container-endpoint grant={grant.id}",
            variant=VARIANT_SDK_SESSION,
        )
        return web.json_response(formats.container_credentials(issued.credential))

    # -- GCE metadata ---------------------------------------------------------
    @web.middleware
    async def _metadata_rules(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """As on GCE: every path but ``/`` needs ``Metadata-Flavor: Google``. Then the
        grant must be live and the peer its bound uid."""
        if request.path != "/" and request.headers.get("Metadata-Flavor") != "Google":
            return web.Response(status=403, text="Missing Metadata-Flavor: Google header")
        grant = request.app[GRANT]
        if grant.id not in self.grants:
            raise PermissionDenied("this metadata endpoint was revoked")
        if self._clock.now() >= grant.expires_at:
            self.grants.expire_due()
            raise PermissionDenied(
                f"this metadata endpoint expired at {stamp(grant.expires_at)}: "
                "create a new one with `broker env gcp`"
            )
        await self._check_peer(request, grant)
        return await handler(request)
