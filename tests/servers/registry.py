"""A real Docker registry (Debian ``docker-registry``) for tests, plus a token server.

:class:`RegistryServer` runs ``docker-registry serve`` on a free loopback port
with filesystem storage in a temp dir and either htpasswd (bcrypt) basic auth
or token auth, optionally behind TLS. :class:`TokenServer` is the small
authorization service token auth needs: it checks basic credentials and
issues ES256 JWTs the registry verifies against its ``rootcertbundle``, the
same flow Docker Hub and most private registries use.

Use :func:`start_registry` / :func:`start_token_server` from fixtures; both
stop their server by PID (or socket) on exit and print its log, which pytest
shows for failing tests.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import jwt
import yaml

from tests.servers.ports import free_port
from tests.servers.tls import CertificateAuthority, IssuedCert, issue_cert, make_ca

REGISTRY_BINARY = "/usr/bin/docker-registry"
HTPASSWD_BINARY = "/usr/bin/htpasswd"

#: Time the registry may take to listen (it is ready in < 0.1 s here).
START_TIMEOUT = 10.0


def _htpasswd_line(user: str, password: str) -> str:
    """One bcrypt htpasswd line; the password goes over stdin, never the command line."""
    out = subprocess.run(
        [HTPASSWD_BINARY, "-B", "-i", "-n", user],
        input=password,
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.strip()


@dataclass(frozen=True)
class TokenRequest:
    """What a client sent the token server (never the password)."""

    user: str | None
    service: str | None
    scopes: tuple[str, ...]
    account: str | None
    granted: bool


class TokenServer:
    """An authorization service for registry token auth, on a loopback thread.

    ``token_field`` picks the JSON key of the issued token (``token`` as the
    distribution spec says, or ``access_token`` as OAuth2-style servers do).
    ``sign_with`` signs tokens with a certificate outside the registry's
    ``rootcertbundle`` (a token the registry must refuse).
    """

    def __init__(
        self,
        workdir: Path,
        users: Mapping[str, str],
        *,
        service: str = "broker-test-registry",
        issuer: str = "broker-test-token-issuer",
        token_field: str = "token",
        sign_with: IssuedCert | None = None,
    ) -> None:
        self.workdir = workdir
        self.users = dict(users)
        self.service = service
        self.issuer = issuer
        self.token_field = token_field
        self.port = free_port()
        self.requests: list[TokenRequest] = []
        self._ca: CertificateAuthority = make_ca("broker test token CA")
        self._signer: IssuedCert = sign_with or issue_cert(self._ca, "token-signer")
        self.rootcertbundle = self._ca.write(workdir, "token-root")
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def realm(self) -> str:
        return f"http://127.0.0.1:{self.port}/token"

    def issue(self, user: str, scopes: tuple[str, ...]) -> str:
        """A registry JWT for ``user`` granting the requested ``scopes``."""
        now = int(time.time())
        access = []
        for scope in scopes:
            kind, _, rest = scope.partition(":")
            name, _, actions = rest.rpartition(":")
            access.append({"type": kind, "name": name, "actions": actions.split(",")})
        claims = {
            "iss": self.issuer,
            "sub": user,
            "aud": self.service,
            "exp": now + 300,
            "nbf": now - 10,
            "iat": now,
            "jti": uuid.uuid4().hex,
            "access": access,
        }
        return jwt.encode(
            claims,
            self._signer.key,
            algorithm="ES256",
            headers={"x5c": [self._signer.cert_der_base64]},
        )

    def start(self) -> None:
        server = ThreadingHTTPServer(("127.0.0.1", self.port), _token_handler(self))
        server.daemon_threads = True
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None


def _token_handler(owner: TokenServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:  # quiet: tests read .requests
            return

        def _reply(self, status: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            url = urlparse(self.path)
            if url.path != "/token":
                self._reply(404, {"error": "not found"})
                return
            params = parse_qs(url.query)
            user, password = None, None
            header = self.headers.get("Authorization", "")
            if header.startswith("Basic "):
                decoded = base64.b64decode(header[6:]).decode()
                user, _, password = decoded.partition(":")
            granted = user is not None and owner.users.get(user) == password
            scopes = tuple(params.get("scope", []))
            owner.requests.append(
                TokenRequest(
                    user=user,
                    service=params.get("service", [None])[0],
                    scopes=scopes,
                    account=params.get("account", [None])[0],
                    granted=granted,
                )
            )
            if not granted or user is None:
                self._reply(401, {"errors": [{"code": "UNAUTHORIZED"}]})
                return
            token = owner.issue(user, scopes)
            self._reply(200, {owner.token_field: token, "expires_in": 300})

    return Handler


class RegistryServer:
    """One ``docker-registry serve`` process on 127.0.0.1 with its own config.

    Auth: ``users`` (htpasswd basic auth), ``token_server`` (token auth), or
    neither (anonymous). ``tls`` serves HTTPS with that certificate.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        users: Mapping[str, str] | None = None,
        tls: IssuedCert | None = None,
        token_server: TokenServer | None = None,
    ) -> None:
        if users and token_server:
            raise ValueError("choose htpasswd users or a token server, not both")
        self.workdir = workdir
        self.users = dict(users or {})
        self.tls = tls
        self.token_server = token_server
        self.port = free_port()
        self.log_path = workdir / "registry.log"
        self.config_path = workdir / "registry.yml"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        """``127.0.0.1:PORT``, the canonical registry ID of this server."""
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.address}"

    @property
    def ca(self) -> CertificateAuthority | None:
        return self.tls.ca if self.tls else None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def _config(self) -> dict[str, Any]:
        storage = self.workdir / "storage"
        storage.mkdir(exist_ok=True)
        http: dict[str, Any] = {
            "addr": self.address,
            "secret": secrets.token_hex(16),
            "headers": {"X-Content-Type-Options": ["nosniff"]},
        }
        if self.tls:
            cert, key = self.tls.write(self.workdir, "registry-tls")
            http["tls"] = {"certificate": str(cert), "key": str(key)}
        config: dict[str, Any] = {
            "version": 0.1,
            "log": {"level": "info", "formatter": "text"},
            "storage": {
                "filesystem": {"rootdirectory": str(storage)},
                "maintenance": {"uploadpurging": {"enabled": False}},
            },
            "http": http,
            "health": {"storagedriver": {"enabled": False}},
        }
        if self.users:
            htpasswd = self.workdir / "htpasswd"
            lines = [_htpasswd_line(u, p) for u, p in self.users.items()]
            htpasswd.write_text("\n".join(lines) + "\n")
            config["auth"] = {"htpasswd": {"realm": "broker-test", "path": str(htpasswd)}}
        elif self.token_server:
            ts = self.token_server
            config["auth"] = {
                "token": {
                    "realm": ts.realm,
                    "service": ts.service,
                    "issuer": ts.issuer,
                    "rootcertbundle": str(ts.rootcertbundle),
                }
            }
        return config

    def start(self) -> None:
        self.config_path.write_text(yaml.safe_dump(self._config()))
        with self.log_path.open("wb") as log:
            self._proc = subprocess.Popen(
                [REGISTRY_BINARY, "serve", str(self.config_path)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(
                    f"docker-registry exited with {self._proc.returncode}:\n{self.log_text()}"
                )
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.01)
        self.stop()
        raise TimeoutError(f"docker-registry did not listen on {self.address}:\n{self.log_text()}")

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)

    def log_size(self) -> int:
        """Bytes logged so far: pass to :meth:`log_text` to see only what came after."""
        try:
            return self.log_path.stat().st_size
        except FileNotFoundError:
            return 0

    def log_text(self, since: int = 0) -> str:
        try:
            with self.log_path.open("rb") as log:
                log.seek(since)
                return log.read().decode(errors="replace")
        except FileNotFoundError:
            return "(no log)"


@contextmanager
def log_on_exit(server: RegistryServer) -> Iterator[RegistryServer]:
    """Print what ``server`` logged during the block (pytest shows it for failing tests).

    Lets one long-lived registry serve many tests while each failing test
    still shows just its own part of the log::

        @pytest.fixture
        def registry(_module_registry):
            with log_on_exit(_module_registry) as reg:
                yield reg
    """
    start = server.log_size()
    try:
        yield server
    finally:
        print(f"--- docker-registry log ({server.address}), this test ---")
        print(server.log_text(start))


@contextmanager
def start_token_server(
    workdir: Path,
    users: Mapping[str, str],
    *,
    token_field: str = "token",
    sign_with: IssuedCert | None = None,
) -> Iterator[TokenServer]:
    """Run a :class:`TokenServer` for the duration of the block."""
    server = TokenServer(workdir, users, token_field=token_field, sign_with=sign_with)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@contextmanager
def start_registry(
    workdir: Path,
    *,
    users: Mapping[str, str] | None = None,
    tls: IssuedCert | bool | None = None,
    token_server: TokenServer | None = None,
) -> Iterator[RegistryServer]:
    """Run a :class:`RegistryServer` for the block; ``tls=True`` makes a fresh CA and cert.

    The log is printed on exit: pytest shows it in the report of a failing test.
    Typical fixture::

        @pytest.fixture(scope="module")
        def registry(tmp_path_factory):
            with start_registry(tmp_path_factory.mktemp("registry"), users={"u": "p"}) as r:
                yield r
    """
    cert = issue_cert(make_ca()) if tls is True else (tls or None)
    server = RegistryServer(workdir, users=users, tls=cert, token_server=token_server)
    server.start()
    try:
        yield server
    finally:
        server.stop()
        print(f"--- docker-registry log ({server.address}) ---\n{server.log_text()}")
