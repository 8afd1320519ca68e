"""The local helper endpoint: small HTTP/JSON on a Unix socket for per-call helpers.

docker and kubectl start a helper process for every call; importing grpc
alone would cost ~0.1 s, so helpers speak plain HTTP/1.1 with the stdlib to
this endpoint instead. The Unix socket also tells who is calling
(SO_PEERCRED), which goes into the audit log.
"""

from __future__ import annotations

import contextlib
import json
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

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
from broker.identity.peercred import peer_principal
from broker.identity.principal import Principal
from broker.local import formats
from broker.service import BrokerService, registry_host
from broker.sockets import listen_unix

log = structlog.get_logger(__name__)

#: Helper requests are tiny; anything larger is garbage.
MAX_BODY_BYTES = 64 * 1024

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
    status, code = 500, "internal"
    for cls, cls_status, cls_code in _STATUS:
        if isinstance(exc, cls):
            status, code = cls_status, cls_code
            break
    one_line = " ".join(exc.message.split()).encode("latin-1", "replace").decode("latin-1")
    return web.json_response(
        {"error": exc.message, "code": code},
        status=status,
        headers={"X-Broker-Error": one_line, "X-Broker-Error-Code": code},
    )


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
        return await handler(request)
    except BrokerError as exc:
        return error_response(exc)
    except web.HTTPException:
        raise
    except Exception:
        log.exception("helper_endpoint_error", path=request.path)
        return web.json_response({"error": "internal error", "code": "internal"}, status=500)


async def _body(request: web.Request) -> dict[str, Any]:
    try:
        data = await request.json()
    except ValueError:
        raise InvalidArgument("request body is not JSON") from None
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
    try:
        info = json.loads(exec_info)
    except ValueError:
        raise InvalidArgument("KUBERNETES_EXEC_INFO is not valid JSON", field="exec_info") from None
    version = info.get("apiVersion") if isinstance(info, dict) else None
    return str(version or formats.DEFAULT_EXEC_API_VERSION)


class HelperEndpoint:
    """Routes for the docker helper, the kubectl plugin and credential_process."""

    def __init__(self, service: BrokerService) -> None:
        self._service = service
        self.app = web.Application(middlewares=[_errors], client_max_size=MAX_BODY_BYTES)
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
            self._runner = web.AppRunner(self.app, access_log=None, handle_signals=False)
            await self._runner.setup()
            await web.SockSite(self._runner, sock).start()
        except BaseException:
            sock.close()
            raise
        log.info("helper_endpoint_listening", socket=str(path))

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._path is not None:
            with contextlib.suppress(FileNotFoundError):
                self._path.unlink()

    async def health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "serving"})

    async def _issue(self, data: dict[str, Any], request: web.Request) -> Any:
        return await self._service.get_credentials(
            _text(data, "connector", required=True) or "",
            _text(data, "resource_type"),
            _text(data, "resource_id"),
            principal=principal_of(request),
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
        principal = principal_of(request)
        name, resource_id = await self._service.registry_connector(server_url, principal)
        issued = await self._service.get_credentials(
            name, "docker-registry", resource_id, principal=principal, via="docker helper"
        )
        return web.json_response(formats.docker_secret(issued.credential, server_url))

    async def docker_list(self, request: web.Request) -> web.Response:
        return web.json_response(await self._service.registry_usernames(principal_of(request)))

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
            name, _ = await self._service.registry_connector(server_url, principal_of(request))
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
