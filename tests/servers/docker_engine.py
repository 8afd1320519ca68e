"""A Docker Engine API for the attestation tests: the real ``dockerd`` where one runs here,
else a stand-in speaking the same API over a Unix socket.

:class:`RealDockerd` starts Debian's ``dockerd`` (as ../shared/TESTING.md says: vfs,
no iptables, no bridge, its own data/exec roots and socket), imports a one-file image
made from the static busybox of Debian's ``busybox-static`` (``docker import``: no
registry, no pull) and runs real containers (``--network none``) from it.

:class:`FakeEngine` answers ``/_ping``, ``/version`` and ``GET /containers/ID/json``
(any API version prefix) with complete inspect documents for the containers a test
creates, 404 for others, and ``fail_with`` to answer everything with an error.

:func:`docker_engine` gives the real one when it starts, else the stand-in; tests
read ``engine.real`` to say which ran.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Protocol

from aiohttp import web

from tests.servers.threaded import ThreadedAiohttpServer

IMAGE = "cbt-busybox:attest"
BUSYBOX = ("/usr/bin/busybox", "/bin/busybox")
START_TIMEOUT = 30.0


class Engine(Protocol):
    real: bool
    #: ``unix:///…/docker.sock``: what ``[attestors.docker] host`` takes.
    host: str

    def create(self, labels: Mapping[str, str], env: Mapping[str, str]) -> str:
        """A running container with these labels and environment; its 64-hex id."""
        ...

    def remove(self, container_id: str) -> None: ...

    def image_id(self) -> str: ...


# -- the real one --------------------------------------------------------------------------


def _busybox() -> str | None:
    for path in BUSYBOX:
        if os.path.exists(path):
            out = subprocess.run(["file", "-L", path], capture_output=True, text=True)
            if out.returncode != 0 or "statically linked" in out.stdout:
                return path
    return None


def real_dockerd_missing() -> str | None:
    """Why the real dockerd cannot run here, or None."""
    if os.geteuid() != 0:
        return "not root"
    if shutil.which("dockerd") is None or shutil.which("docker") is None:
        return "no dockerd (Debian docker.io)"
    if _busybox() is None:
        return "no static busybox (Debian busybox-static)"
    return None


class RealDockerd:
    real = True

    def __init__(self) -> None:
        # Short paths: containerd's sockets live under the exec root (≤ 107 bytes).
        self.root = Path(tempfile.mkdtemp(prefix="cbt-dockerd-", dir="/tmp"))
        self.socket = self.root / "d.sock"
        self.host = f"unix://{self.socket}"
        self.log_path = self.root / "dockerd.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.containers: list[str] = []
        self._image_id = ""

    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "DOCKER_HOST": self.host,
            "DOCKER_CONFIG": str(self.root / "cli"),
            "DOCKER_BUILDKIT": "0",
        }

    def docker(self, *args: str, input: bytes | None = None) -> str:
        out = subprocess.run(
            ["docker", *args], capture_output=True, env=self.env(), input=input, timeout=60
        )
        if out.returncode != 0:
            raise RuntimeError(f"docker {' '.join(args)}: {out.stderr.decode(errors='replace')}")
        return out.stdout.decode().strip()

    def start(self) -> RealDockerd:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [
                    "dockerd",
                    "--storage-driver=vfs",
                    "--iptables=false",
                    "--ip6tables=false",
                    "--bridge=none",
                    "--ip-masq=false",
                    "--data-root",
                    str(self.root / "data"),
                    "--exec-root",
                    str(self.root / "exec"),
                    "--pidfile",
                    str(self.root / "dockerd.pid"),
                    "-H",
                    self.host,
                ],
                stdout=log,
                stderr=log,
                stdin=subprocess.DEVNULL,
            )
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"dockerd exited {self.proc.returncode}:\n{self.log()}")
            if self.socket.exists():
                with contextlib.suppress(RuntimeError):
                    self.docker("version", "--format", "{{.Server.APIVersion}}")
                    break
            if time.monotonic() > deadline:
                raise TimeoutError(f"dockerd not ready after {START_TIMEOUT}s:\n{self.log()}")
            time.sleep(0.1)
        rootfs = self.root / "rootfs"
        (rootfs / "bin").mkdir(parents=True)
        shutil.copy(_busybox() or BUSYBOX[0], rootfs / "bin" / "busybox")
        for name in ("sh", "sleep"):
            (rootfs / "bin" / name).symlink_to("busybox")
        tar = subprocess.run(["tar", "-C", str(rootfs), "-c", "."], capture_output=True, check=True)
        self._image_id = self.docker("import", "-", IMAGE, input=tar.stdout)
        return self

    def create(self, labels: Mapping[str, str], env: Mapping[str, str]) -> str:
        args = ["run", "-d", "--network", "none"]
        for key, value in labels.items():
            args += ["--label", f"{key}={value}"]
        for key, value in env.items():
            args += ["-e", f"{key}={value}"]
        container_id = self.docker(*args, IMAGE, "sleep", "3600")
        self.containers.append(container_id)
        return container_id

    def remove(self, container_id: str) -> None:
        self.docker("rm", "-f", container_id)
        with contextlib.suppress(ValueError):
            self.containers.remove(container_id)

    def image_id(self) -> str:
        return self._image_id

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        if self.containers:
            with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
                self.docker("rm", "-f", *self.containers)
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        # vfs layers: plain directories; exec root: sockets (gone with dockerd).
        subprocess.run(["rm", "-rf", "--one-file-system", str(self.root)], check=False)


# -- the stand-in ----------------------------------------------------------------------------


class FakeEngine(ThreadedAiohttpServer):
    """The Engine API's read side for containers, over a Unix socket."""

    real = False
    thread_name = "docker engine test server"

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="cbt-engine-"))
        self.socket = self.root / "docker.sock"
        self.host = f"unix://{self.socket}"
        self.fail_with: int | None = None
        self.inspected: dict[str, dict[str, Any]] = {}
        self.requests: list[str] = []
        self._image_id = "sha256:" + secrets.token_hex(32)

    def image_id(self) -> str:
        return self._image_id

    def create(self, labels: Mapping[str, str], env: Mapping[str, str]) -> str:
        container_id = secrets.token_hex(32)
        self.inspected[container_id] = {
            "Id": container_id,
            "Created": "2026-01-01T00:00:00Z",
            "Path": "sleep",
            "Args": ["3600"],
            "State": {"Status": "running", "Running": True, "Pid": 4242},
            "Image": self._image_id,
            "Name": f"/cbt-{container_id[:8]}",
            "Config": {
                "Hostname": container_id[:12],
                "Env": [f"{k}={v}" for k, v in env.items()] + ["PATH=/bin"],
                "Cmd": ["sleep", "3600"],
                "Image": IMAGE,
                "Labels": dict(labels),
            },
            "HostConfig": {"NetworkMode": "none"},
        }
        return container_id

    def remove(self, container_id: str) -> None:
        self.inspected.pop(container_id, None)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/_ping", self._ping)
        app.router.add_get("/version", self._version)
        app.router.add_get("/{version}/version", self._version)
        app.router.add_get("/containers/{id}/json", self._inspect)
        app.router.add_get("/{version}/containers/{id}/json", self._inspect)
        return app

    async def _serve(self) -> None:
        runner = web.AppRunner(self.app(), access_log=None, handle_signals=False)
        await runner.setup()
        await web.UnixSite(runner, str(self.socket)).start()
        self._runner = runner

    def _failure(self) -> web.Response | None:
        if self.fail_with is None:
            return None
        return web.json_response({"message": "injected failure"}, status=self.fail_with)

    async def _ping(self, request: web.Request) -> web.StreamResponse:
        self.requests.append(request.path)
        return self._failure() or web.Response(text="OK")

    async def _version(self, request: web.Request) -> web.StreamResponse:
        self.requests.append(request.path)
        return self._failure() or web.json_response(
            {"Version": "20.10.24", "ApiVersion": "1.41", "MinAPIVersion": "1.12", "Os": "linux"}
        )

    async def _inspect(self, request: web.Request) -> web.StreamResponse:
        self.requests.append(request.path)
        failure = self._failure()
        if failure is not None:
            return failure
        found = self.inspected.get(request.match_info["id"])
        if found is None:
            return web.json_response(
                {"message": f"No such container: {request.match_info['id']}"}, status=404
            )
        return web.Response(text=json.dumps(found), content_type="application/json")

    def stop(self) -> None:
        super().stop()
        shutil.rmtree(self.root, ignore_errors=True)


@contextlib.contextmanager
def docker_engine(*, real: bool = True) -> Iterator[Engine]:
    """The real dockerd when it can run here (and ``real``), else the stand-in."""
    if real and real_dockerd_missing() is None:
        dockerd = RealDockerd()
        try:
            dockerd.start()
        except (RuntimeError, TimeoutError, OSError) as exc:
            print(f"real dockerd did not start, using the stand-in: {exc}")
            dockerd.stop()
        else:
            try:
                yield dockerd
            finally:
                dockerd.stop()
            return
    fake = FakeEngine()
    fake.start()
    try:
        yield fake
    finally:
        fake.stop()
