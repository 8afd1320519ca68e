"""A stand-in Kubernetes API server that really authenticates every request.

No real API server is obtainable here, so tests talk to this one: aiohttp
over TLS on a loopback port, serving the few read-only endpoints clients
need (``/version``, ``/api``, ``/apis``, ``/api/v1``, ``/api/v1/namespaces``) with
complete objects, because kubernetes-asyncio and kubectl validate them.

For workload attestation it also lists pods: ``/api/v1/pods`` with a
``fieldSelector`` of ``spec.nodeName=NODE`` (what the attestor asks; any other
selector is refused with 400, as a real server refuses unknown fields), and a
kubelet-style ``/pods`` (the pods of ``kubelet_node``). Tests set ``pods``
(:func:`make_pod` builds complete ones) at any time.

Every request must authenticate, in the order the real server tries:

* a client certificate signed by ``client_ca`` (the user is its CN);
* ``Authorization: Bearer`` checked against the static ``tokens`` map, then
  against ``token_validator`` (sync or async; used to accept EKS tokens via
  moto STS or Google tokens via the test token server);
* ``Authorization: Basic`` checked against ``basic``.

* ``Authorization: Bearer`` of a service account token that the server's
  ``authority`` (:class:`tests.servers.kube_tokens.TokenAuthority`) signed and
  still accepts (unexpired by its clock, for the API server's audience);

Anything else gets a 401 ``Status`` object. With an ``authority`` the server
also answers TokenRequest (``POST /api/v1/namespaces/NS/serviceaccounts/NAME/token``):
RBAC-checked, signed, capped; see that module. The server runs its own event
loop in a background thread so synchronous tests (and daemons started as
subprocesses) can use it as easily as async ones::

    with KubeApiServer(tokens={"t0ken": "alice"}) as api:
        api.url, api.ca_pem, api.count(401), api.users
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import inspect
import ssl
import subprocess
import tempfile
import threading
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from aiohttp import web

from tests.servers.kube_tokens import TokenAuthority
from tests.servers.kube_tokens import status as _status
from tests.servers.threaded import ThreadedAiohttpServer
from tests.servers.tls import CertificateAuthority, IssuedCert, issue_cert, make_ca

#: Checks one bearer token; returns the user name, or None to refuse it.
TokenValidator = Callable[[str], "str | Awaitable[str | None] | None"]

START_TIMEOUT = 10.0

VERSION_INFO: dict[str, str] = {
    "major": "1",
    "minor": "30",
    "gitVersion": "v1.30.0-broker-test",
    "gitCommit": "0000000000000000000000000000000000000000",
    "gitTreeState": "clean",
    "buildDate": "2024-04-17T00:00:00Z",
    "goVersion": "go1.22.2",
    "compiler": "gc",
    "platform": "linux/amd64",
}


@dataclass(frozen=True)
class SeenRequest:
    """One request as the server saw it (never the credential itself)."""

    method: str
    path: str
    status: int
    #: Who it authenticated as, or None.
    user: str | None
    #: How: "certificate", "token", "validator", "basic", or None.
    via: str | None


class KubeApiServer(ThreadedAiohttpServer):
    """The test API server; start with :meth:`start` or as a context manager.

    ``tls=False`` serves plain HTTP (like ``kubectl proxy`` on loopback).
    ``fail_with`` may be set at any time to answer every authenticated
    request with that status (e.g. 500 or 503) to test error handling.
    """

    thread_name = "kube API test server"

    def __init__(
        self,
        *,
        tokens: Mapping[str, str] | None = None,
        basic: Mapping[str, str] | None = None,
        client_ca: CertificateAuthority | None = None,
        token_validator: TokenValidator | None = None,
        ca: CertificateAuthority | None = None,
        tls: bool = True,
        kubelet_node: str = "node-1",
        authority: TokenAuthority | None = None,
    ) -> None:
        self.tokens = dict(tokens or {})
        #: Mints (TokenRequest) and verifies service account tokens; None: no TokenRequest.
        self.authority = authority
        #: Pod objects the pod listings serve (see make_pod); replace or append at will.
        self.pods: list[dict[str, Any]] = []
        self.kubelet_node = kubelet_node
        self.basic = dict(basic or {})
        self.client_ca = client_ca
        self.token_validator = token_validator
        self.tls = tls
        self.ca = ca or make_ca("broker test kube-apiserver CA")
        self._server_cert: IssuedCert = issue_cert(self.ca, "kube-apiserver")
        self.fail_with: int | None = None
        self.requests: list[SeenRequest] = []
        self.port = 0
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None

    # -- what tests read ------------------------------------------------------
    @property
    def url(self) -> str:
        scheme = "https" if self.tls else "http"
        return f"{scheme}://127.0.0.1:{self.port}"

    @property
    def ca_pem(self) -> str:
        """The PEM of the CA that signed the server certificate."""
        return self.ca.cert_pem

    def count(self, status: int | None = None) -> int:
        """How many requests were answered (with ``status``, if given)."""
        with self._lock:
            return sum(1 for r in self.requests if status is None or r.status == status)

    @property
    def statuses(self) -> Counter[int]:
        with self._lock:
            return Counter(r.status for r in self.requests)

    @property
    def users(self) -> list[str]:
        """The users of authenticated requests, in order."""
        with self._lock:
            return [r.user for r in self.requests if r.user is not None]

    def write_kubeconfig(
        self,
        path: Path,
        *,
        token: str | None = None,
        exec_command: list[str] | None = None,
        exec_env: Mapping[str, str] | None = None,
        cluster: str = "test-cluster",
    ) -> Path:
        """A kubeconfig pointing at this server (token or exec plugin user), for kubectl."""
        user: dict[str, Any] = {}
        if token is not None:
            user["token"] = token
        if exec_command is not None:
            user["exec"] = {
                "apiVersion": "client.authentication.k8s.io/v1",
                "command": exec_command[0],
                "args": exec_command[1:],
                "env": [{"name": k, "value": v} for k, v in (exec_env or {}).items()],
                "interactiveMode": "Never",
            }
        cluster_entry: dict[str, Any] = {"server": self.url}
        if self.tls:
            cluster_entry["certificate-authority-data"] = self.ca.cert_pem_base64
        document = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": cluster, "cluster": cluster_entry}],
            "users": [{"name": "test-user", "user": user}],
            "contexts": [{"name": cluster, "context": {"cluster": cluster, "user": "test-user"}}],
            "current-context": cluster,
        }
        path.write_text(yaml.safe_dump(document))
        path.chmod(0o600)
        return path

    # -- lifecycle ----------------------------------------------------------------
    def app(self) -> web.Application:
        """The server's application, to serve over a socket or in process (unstarted, an
        ``InProcessTransport`` can carry requests to it; no TLS, so no client certificates)."""
        app = web.Application()
        # Clients ask with and without the trailing slash (kubernetes-asyncio: /version/).
        for path, handler in (
            ("/version", self._version),
            ("/api", self._api),
            ("/apis", self._apis),
            ("/api/v1", self._api_v1),
            ("/api/v1/namespaces", self._namespaces),
            ("/api/v1/pods", self._pods),
            ("/pods", self._kubelet_pods),
        ):
            app.router.add_get(path, handler)
            app.router.add_get(path + "/", handler)
        app.router.add_post(
            "/api/v1/namespaces/{namespace}/serviceaccounts/{name}/token", self._token_request
        )
        return app

    async def _serve(self) -> None:
        runner = web.AppRunner(self.app(), access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(
            runner, "127.0.0.1", 0, ssl_context=self._ssl_context() if self.tls else None
        )
        await site.start()
        self._runner = runner
        self.port = int(runner.addresses[0][1])

    def _ssl_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        cert = self._server_cert
        # load_cert_chain reads files only: write them to a private temp dir, then forget.
        with tempfile.TemporaryDirectory(prefix="kube-api-") as tmp:
            cert_path, key_path = cert.write(Path(tmp), "server")
            context.load_cert_chain(cert_path, key_path)
        if self.client_ca is not None:
            # Like kube-apiserver: a client certificate is optional, but one that is
            # presented must chain to the client CA or the handshake fails.
            context.verify_mode = ssl.CERT_OPTIONAL
            context.load_verify_locations(cadata=self.client_ca.cert_pem)
        return context

    # -- authentication -------------------------------------------------------------
    async def _authenticate(self, request: web.Request) -> tuple[str | None, str | None]:
        peercert = request.transport.get_extra_info("peercert") if request.transport else None
        if peercert:
            for rdn in peercert.get("subject", ()):
                for key, value in rdn:
                    if key == "commonName":
                        return str(value), "certificate"
        header = request.headers.get("Authorization", "")
        scheme, _, credential = header.partition(" ")
        credential = credential.strip()
        if scheme.lower() == "bearer" and credential:
            if credential in self.tokens:
                return self.tokens[credential], "token"
            if self.authority is not None and credential.count(".") == 2:
                user = self.authority.verify(credential)
                if user:
                    return user, "serviceaccount"
            if self.token_validator is not None:
                user = await self._validate(credential)
                if user:
                    return user, "validator"
            return None, None
        if scheme.lower() == "basic" and credential:
            try:
                decoded = base64.b64decode(credential, validate=True).decode()
            except (binascii.Error, UnicodeDecodeError):
                return None, None
            name, sep, password = decoded.partition(":")
            if sep and name in self.basic and self.basic[name] == password:
                return name, "basic"
        return None, None

    async def _validate(self, token: str) -> str | None:
        validator = self.token_validator
        assert validator is not None
        if inspect.iscoroutinefunction(validator):
            return await validator(token)  # type: ignore[no-any-return]
        # Sync validators may block (e.g. an HTTP call to moto): keep the loop free.
        loop = asyncio.get_running_loop()
        result = await loop.run_in_executor(None, validator, token)
        if inspect.isawaitable(result):
            result = await result
        return result

    async def _guard(
        self, request: web.Request, body: Callable[[], dict[str, Any] | web.Response]
    ) -> web.Response:
        user, via = await self._authenticate(request)
        if user is None:
            response = _status(401, "Unauthorized", "Unauthorized")
        elif self.fail_with is not None:
            response = _status(self.fail_with, "InternalError", "injected failure")
        else:
            answer = body()
            response = answer if isinstance(answer, web.Response) else web.json_response(answer)
        self._record(request, response, user, via)
        return response

    def _record(
        self, request: web.Request, response: web.Response, user: str | None, via: str | None
    ) -> None:
        with self._lock:
            self.requests.append(
                SeenRequest(request.method, request.path, response.status, user, via)
            )

    async def _token_request(self, request: web.Request) -> web.Response:
        user, via = await self._authenticate(request)
        if user is None:
            response = _status(401, "Unauthorized", "Unauthorized")
        elif self.fail_with is not None:
            response = _status(self.fail_with, "InternalError", "injected failure")
        elif self.authority is None:
            response = _status(404, "NotFound", "the server could not find the requested resource")
        else:
            try:
                body: Any = await request.json()
            except ValueError:
                body = None
            namespace, name = request.match_info["namespace"], request.match_info["name"]
            response = self.authority.handle(user, namespace, name, body)
        self._record(request, response, user, via)
        return response

    # -- endpoints ------------------------------------------------------------------
    async def _version(self, request: web.Request) -> web.Response:
        return await self._guard(request, lambda: dict(VERSION_INFO))

    async def _api(self, request: web.Request) -> web.Response:
        return await self._guard(
            request,
            lambda: {
                "kind": "APIVersions",
                "versions": ["v1"],
                "serverAddressByClientCIDRs": [
                    {"clientCIDR": "0.0.0.0/0", "serverAddress": f"127.0.0.1:{self.port}"}
                ],
            },
        )

    async def _apis(self, request: web.Request) -> web.Response:
        return await self._guard(
            request, lambda: {"kind": "APIGroupList", "apiVersion": "v1", "groups": []}
        )

    async def _api_v1(self, request: web.Request) -> web.Response:
        return await self._guard(
            request,
            lambda: {
                "kind": "APIResourceList",
                "groupVersion": "v1",
                "resources": [
                    {
                        "name": "namespaces",
                        "singularName": "namespace",
                        "namespaced": False,
                        "kind": "Namespace",
                        "verbs": ["get", "list"],
                        "shortNames": ["ns"],
                    }
                ],
            },
        )

    async def _namespaces(self, request: web.Request) -> web.Response:
        return await self._guard(
            request,
            lambda: {
                "kind": "NamespaceList",
                "apiVersion": "v1",
                "metadata": {"resourceVersion": "1"},
                "items": [
                    {
                        "metadata": {
                            "name": "default",
                            "uid": "00000000-0000-0000-0000-000000000001",
                            "resourceVersion": "1",
                            "creationTimestamp": "2024-01-01T00:00:00Z",
                        },
                        "spec": {"finalizers": ["kubernetes"]},
                        "status": {"phase": "Active"},
                    }
                ],
            },
        )

    async def _pods(self, request: web.Request) -> web.Response:
        def listing() -> dict[str, Any] | web.Response:
            selector = request.query.get("fieldSelector", "")
            node: str | None = None
            for term in filter(None, selector.split(",")):
                key, _, value = term.partition("=")
                if key != "spec.nodeName":
                    return _status(400, "BadRequest", f'field label not supported: "{key}"')
                node = value
            return _pod_list([p for p in self.pods if node is None or _node(p) == node])

        return await self._guard(request, listing)

    async def _kubelet_pods(self, request: web.Request) -> web.Response:
        return await self._guard(
            request, lambda: _pod_list([p for p in self.pods if _node(p) == self.kubelet_node])
        )


def kubectl_version(
    kubeconfig: Path, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``kubectl get --raw /version`` with ``kubeconfig``: the smallest request that shows
    whether the API server accepts the credential the kubeconfig holds or runs."""
    return subprocess.run(
        ["kubectl", "--kubeconfig", str(kubeconfig), "get", "--raw", "/version"],
        capture_output=True,
        text=True,
        timeout=60,
        env=None if env is None else dict(env),
    )


def _node(pod: dict[str, Any]) -> str | None:
    return pod.get("spec", {}).get("nodeName")


def _pod_list(pods: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "kind": "PodList",
        "apiVersion": "v1",
        "metadata": {"resourceVersion": "100"},
        "items": pods,
    }


def make_pod(
    name: str,
    *,
    namespace: str = "default",
    service_account: str = "default",
    labels: Mapping[str, str] | None = None,
    node: str = "node-1",
    containers: Mapping[str, str | None],
    uid: str | None = None,
    runtime: str = "containerd",
) -> dict[str, Any]:
    """A complete running Pod object; ``containers``: name -> container id (None: not
    started yet, so its status has no ``containerID``)."""
    uid = uid or str(uuid.uuid4())
    statuses = []
    for cname, container_id in containers.items():
        status: dict[str, Any] = {
            "name": cname,
            "image": "registry.example/app:1",
            "imageID": "registry.example/app@sha256:" + "0" * 64,
            "ready": container_id is not None,
            "restartCount": 0,
            "started": container_id is not None,
            "state": (
                {"running": {"startedAt": "2026-01-01T00:00:00Z"}}
                if container_id
                else {"waiting": {"reason": "ContainerCreating"}}
            ),
        }
        if container_id:
            status["containerID"] = f"{runtime}://{container_id}"
        statuses.append(status)
    return {
        "kind": "Pod",
        "apiVersion": "v1",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "uid": uid,
            "resourceVersion": "1",
            "creationTimestamp": "2026-01-01T00:00:00Z",
            "labels": dict(labels or {}),
        },
        "spec": {
            "nodeName": node,
            "serviceAccountName": service_account,
            "containers": [{"name": c, "image": "registry.example/app:1"} for c in containers],
        },
        "status": {
            "phase": "Running",
            "podIP": "10.0.0.1",
            "containerStatuses": statuses,
        },
    }
