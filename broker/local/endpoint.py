"""The local helper endpoint: small HTTP/JSON on a Unix socket for per-call helpers.

docker and kubectl start a helper process for every call; importing grpc
alone would cost ~0.1 s, so helpers speak plain HTTP/1.1 with the stdlib to
this endpoint instead. The Unix socket also tells who is calling
(SO_PEERCRED), which goes into the audit log.

Its limits (timeouts, sizes, a connection cap) come from
:mod:`broker.local.guard`. Every error is a one-line JSON body plus the same
text in ``X-Broker-Error``, escaped to printable ASCII (a connector name may
hold anything, NUL and newlines included).
"""

from __future__ import annotations

import contextlib
import json
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog
from aiohttp import web

from broker.errors import (
    AlreadyExists,
    BrokerError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unauthenticated,
    Unavailable,
)
from broker.identity.cgroups import boot_ticks
from broker.identity.peercred import peer_principal
from broker.identity.principal import Principal
from broker.local import formats
from broker.local.answers import HttpRefusal, describe_peer, header_safe
from broker.local.guard import GUARD, HttpGuard
from broker.service import BrokerService, registry_host
from broker.sockets import listen_unix

if TYPE_CHECKING:
    from broker.identity.attestors.attestation import Attestation

log = structlog.get_logger(__name__)

#: JSON nested deeper than this is refused (helper requests are flat objects).
MAX_JSON_DEPTH = 32

_STATUS: tuple[tuple[type[BrokerError], int, str], ...] = (
    (InvalidArgument, 400, "invalid_argument"),
    (Unauthenticated, 401, "unauthenticated"),
    (PermissionDenied, 403, "permission_denied"),
    (NotFound, 404, "not_found"),
    (AlreadyExists, 409, "already_exists"),
    (FailedPrecondition, 412, "failed_precondition"),
    (Unavailable, 503, "unavailable"),
)


def error_response(exc: BrokerError) -> web.Response:
    """JSON for SDKs, and the same in headers for helpers that must not import json."""
    status, code = error_status(exc)
    response = web.json_response(
        {"error": exc.message, "code": code},
        status=status,
        headers={"X-Broker-Error": header_safe(exc.message), "X-Broker-Error-Code": code},
    )
    if isinstance(exc, HttpRefusal) and exc.close:
        response.force_close()
    return response


def error_status(exc: BrokerError) -> tuple[int, str]:
    """The HTTP status and the short code of an error."""
    if isinstance(exc, HttpRefusal):
        return exc.status, exc.code
    for cls, cls_status, cls_code in _STATUS:
        if isinstance(exc, cls):
            return cls_status, cls_code
    return 500, "internal"


def refused(request: web.Request, exc: BrokerError) -> web.Response:
    """The answer for a refused request, and its one (rate-limited) log line."""
    response = error_response(exc)
    guard = request.app.get(GUARD)
    if guard is not None:
        transport = request.transport
        peer = describe_peer(transport.get_extra_info("socket") if transport else None)
        guard.refused(response.status, error_status(exc)[1], exc.message, peer)
    return response


def principal_of(request: web.Request) -> Principal:
    """The process on the other end of the Unix socket, from the kernel (SO_PEERCRED)."""
    transport = request.transport
    sock = transport.get_extra_info("socket") if transport else None
    if sock is None or sock.family != socket.AF_UNIX:
        raise Unauthenticated("the helper endpoint serves only its Unix socket")
    try:
        return peer_principal(sock, via="helper socket")
    except OSError:
        raise Unauthenticated("the caller's peer credentials could not be read") from None


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        request.app[GUARD].check_request(request)
        return await handler(request)
    except BrokerError as exc:
        return refused(request, exc)
    except web.HTTPRequestEntityTooLarge:
        return refused(request, request.app[GUARD].too_large())
    except web.HTTPException as exc:  # the router's 404 / 405: the same one-line JSON
        if exc.status < 400:
            raise
        code = "not_found" if exc.status == 404 else "invalid_argument"
        return refused(request, HttpRefusal(exc.status, code, f"{exc.reason}: {request.path}"))
    except ConnectionError:
        raise  # the client went away: nothing to answer, nothing to log
    except Exception:
        log.exception("helper_endpoint_error", path=request.path)
        return web.json_response({"error": "internal error", "code": "internal"}, status=500)


def parse_json(raw: bytes | str, what: str, field: str | None = None) -> Any:
    """JSON from a client: 400 (InvalidArgument) for bad UTF-8, bad JSON or deep nesting."""
    if isinstance(raw, bytes):
        try:
            raw = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidArgument(f"{what} is not UTF-8 (byte {exc.start})", field=field) from None
    depth = _nesting(raw)
    if depth > MAX_JSON_DEPTH:
        raise InvalidArgument(
            f"{what} is nested {depth} levels deep; at most {MAX_JSON_DEPTH} are allowed",
            field=field,
        )
    try:
        return json.loads(raw)
    except RecursionError:  # pragma: no cover - _nesting refuses such input first
        raise InvalidArgument(f"{what} is nested too deeply", field=field) from None
    except ValueError as exc:
        raise InvalidArgument(f"{what} is not JSON: {exc}", field=field) from None


def _nesting(text: str) -> int:
    """How deep brackets nest in ``text``, outside strings."""
    depth = deepest = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth -= 1
    return deepest


async def _body(request: web.Request) -> dict[str, Any]:
    data = parse_json(await request.read(), "request body")
    if not isinstance(data, dict):
        raise InvalidArgument("request body must be a JSON object")
    return data


def _text(data: dict[str, Any], key: str, *, required: bool = False) -> str | None:
    value = data.get(key)
    if value is None or value == "":
        if required:
            raise InvalidArgument(f"'{key}' is required", field=key)
        return None
    if not isinstance(value, str):
        raise InvalidArgument(f"'{key}' must be a string", field=key)
    return value


def _exec_info_version(exec_info: str | None) -> str:
    """The apiVersion kubectl asked for in KUBERNETES_EXEC_INFO (v1beta1 when absent,
    as the reference plugins answer)."""
    if not exec_info:
        return formats.DEFAULT_EXEC_API_VERSION
    info = parse_json(exec_info, "KUBERNETES_EXEC_INFO", field="exec_info")
    version = info.get("apiVersion") if isinstance(info, dict) else None
    return str(version or formats.DEFAULT_EXEC_API_VERSION)


class HelperEndpoint:
    """Routes for the docker helper, the kubectl plugin and credential_process."""

    def __init__(
        self,
        service: BrokerService,
        guard: HttpGuard | None = None,
        attestation: Attestation | None = None,
    ) -> None:
        self._service = service
        self._attestation = attestation
        self.guard = guard or HttpGuard("helper")
        self.app = self.guard.application(middlewares=[_errors])
        self.app.add_routes(
            [
                web.get("/v1/health", self.health),
                web.post("/v1/credentials", self.credentials),
                web.post("/v1/exec-credential", self.exec_credential),
                web.post("/v1/credential-process", self.credential_process),
                web.post("/v1/docker/get", self.docker_get),
                web.get("/v1/docker/list", self.docker_list),
                web.post("/v1/docker/managed", self.docker_managed),
            ]
        )
        self._runner: web.AppRunner | None = None
        self._path: Path | None = None

    async def start(self, path: Path, group: str | None) -> None:
        # Bound elsewhere and moved into place with its group and 0660: never reachable wider.
        sock = listen_unix(path, group)
        self._path = path
        try:
            self._runner = self.guard.runner(self.app)
            await self._runner.setup()
            await self.guard.serve(self._runner, sock)
        except BaseException:
            sock.close()
            raise
        limits = self.guard.limits
        log.info(
            "helper_endpoint_listening",
            socket=str(path),
            max_connections=limits.max_connections,
            header_timeout_seconds=limits.header_timeout,
            body_timeout_seconds=limits.body_timeout,
        )

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._path is not None:
            with contextlib.suppress(FileNotFoundError):
                self._path.unlink()

    async def _principal(self, request: web.Request) -> Principal:
        """The caller, attested per request when attestation is on (cached per process)."""
        principal = principal_of(request)
        if self._attestation is None:
            return principal
        return await self._attestation.principal(
            principal, connection=request.transport, started_by=boot_ticks()
        )

    async def health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "serving"})

    async def _issue(self, data: dict[str, Any], request: web.Request) -> Any:
        return await self._service.get_credentials(
            _text(data, "connector", required=True) or "",
            _text(data, "resource_type"),
            _text(data, "resource_id"),
            principal=await self._principal(request),
            via="helper",
        )

    async def credentials(self, request: web.Request) -> web.Response:
        issued = await self._issue(await _body(request), request)
        cred = issued.credential
        return web.json_response(
            {
                "connector": issued.connector.name,
                "connector_type": cred.connector_type,
                "auth_method": cred.auth_method,
                "resource_type": cred.resource_type,
                "resource_id": cred.resource_id,
                "expires_at": formats.rfc3339(cred.expires_at) if cred.expires_at else None,
                "config": {k: v for k, v in cred.config.items()},
            }
        )

    async def exec_credential(self, request: web.Request) -> web.Response:
        data = await _body(request)
        data.setdefault("resource_type", "kubernetes-cluster")
        api_version = _text(data, "api_version") or _exec_info_version(_text(data, "exec_info"))
        issued = await self._issue(data, request)
        return web.json_response(formats.exec_credential(issued.credential, api_version))

    async def credential_process(self, request: web.Request) -> web.Response:
        issued = await self._issue(await _body(request), request)
        return web.json_response(formats.credential_process(issued.credential))

    async def docker_get(self, request: web.Request) -> web.Response:
        data = await _body(request)
        server_url = _text(data, "server_url", required=True) or ""
        principal = await self._principal(request)
        name, resource_id = await self._service.registry_connector(server_url, principal)
        issued = await self._service.get_credentials(
            name, "docker-registry", resource_id, principal=principal, via="docker helper"
        )
        return web.json_response(formats.docker_secret(issued.credential, server_url))

    async def docker_list(self, request: web.Request) -> web.Response:
        return web.json_response(
            await self._service.registry_usernames(await self._principal(request))
        )

    async def docker_managed(self, request: web.Request) -> web.Response:
        """The one line ``store`` / ``erase`` print: the broker keeps these credentials
        itself, so nothing is stored or erased; it says how to change them instead."""
        data = await _body(request)
        server_url = _text(data, "server_url", required=True) or ""
        action = _text(data, "action") or "store"
        if action not in ("store", "erase"):
            raise InvalidArgument("'action' must be 'store' or 'erase'", field="action")
        host = registry_host(server_url)
        try:
            name, _ = await self._service.registry_connector(
                server_url, await self._principal(request)
            )
        except NotFound:
            return web.Response(
                text=f"credential-broker stores no credentials and no connector serves {host}: "
                f"register one with `broker connector register NAME --type docker "
                f"registry={host} username=USER password=SECRET`"
            )
        except FailedPrecondition:  # several connectors serve the host
            name = ""
        attrs = "ATTRIBUTE=VALUE ..."
        if name and (await self._service.get(name)).connector_type == "docker":
            attrs = "username=USER password=SECRET"
        which = f" (connector '{name}')" if name else ""
        name = name or "NAME"
        line = (
            f"credentials for {host} are managed by credential-broker{which}, not by docker: "
            f"change them with `broker connector update {name} {attrs}`"
        )
        if action == "erase":
            line += f", or stop docker using the broker for it with `broker logout docker {name}`"
        return web.Response(text=line)
