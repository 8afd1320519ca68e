"""Runs the real daemon as a subprocess on a temp Unix socket, and drives it.

``Daemon.cli(...)`` runs the real `broker` command; ``Daemon.stub()`` gives a
gRPC stub on the same socket.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc

from broker.api.v1 import broker_pb2_grpc as pb_grpc

#: The installed `broker` script, as users run it. Its fast path answers the hot commands
#: in ~0.13 s; `python -m broker.cli.main` first imports the whole typer app (~0.35 s a
#: call) and then runs the same fast path, so every CLI call in the suite paid 0.2 s more.
_SCRIPT = Path(sys.executable).parent / "broker"
BROKER = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "broker.cli.main"]


def _clean_env(extra: Mapping[str, str] | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BROKER_", "AWS_", "GOOGLE_"))}
    env.update(extra or {})
    return env


class Daemon:
    def __init__(
        self,
        data_dir: Path,
        env: Mapping[str, str] | None = None,
        command: Sequence[str] = BROKER,
        socket: Path | None = None,
        preexec_fn: Callable[[], None] | None = None,
    ) -> None:
        """``preexec_fn``: run in the daemon's process before it starts (e.g. lower a limit)."""
        self.command = list(command)
        self.preexec_fn = preexec_fn
        self.data_dir = data_dir
        self.socket = socket or data_dir / "broker.sock"
        self.log_path = data_dir.parent / f"{data_dir.name}-daemon.log"
        self.env = _clean_env(env)
        # The daemon writes pointer files to its sockets (broker/pointers.py): into a
        # runtime dir of its own, never the real ~/.config, unless the test chose one.
        self._own_runtime = "XDG_RUNTIME_DIR" not in (env or {})
        if self._own_runtime:
            self.env["XDG_RUNTIME_DIR"] = str(data_dir.parent / f"{data_dir.name}-runtime")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, *extra: str, timeout: float = 20.0) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self._own_runtime:
            Path(self.env["XDG_RUNTIME_DIR"]).mkdir(mode=0o700, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [
                    *self.command,
                    "serve",
                    "--data-dir",
                    str(self.data_dir),
                    "--log-level",
                    "debug",
                    *extra,
                ],
                stdout=log,
                stderr=log,
                env=self.env,
                preexec_fn=self.preexec_fn,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"daemon exited with {self.proc.returncode}:\n{self.log()}")
            if self.socket.exists() and self._healthy():
                return
            time.sleep(0.05)
        raise TimeoutError(f"daemon not ready after {timeout}s:\n{self.log()}")

    def _healthy(self) -> bool:
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        with grpc.insecure_channel(f"unix://{self.socket}") as channel:
            try:
                reply = health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(), timeout=1
                )
            except grpc.RpcError:
                return False
        return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise
        return self.proc.returncode

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def cli(
        self,
        *args: str,
        check: bool = True,
        env: Mapping[str, str] | None = None,
        timeout: float = 60,
    ) -> subprocess.CompletedProcess[str]:
        # The venv's bin on PATH, as after `. .venv/bin/activate`: `broker login docker`
        # refuses to write a credHelpers entry docker could not resolve.
        path = f"{Path(sys.executable).parent}{os.pathsep}{self.env.get('PATH', '')}"
        full_env = {**self.env, "PATH": path, "BROKER_SOCKET": str(self.socket), **(env or {})}
        result = subprocess.run(
            [*BROKER, *args], capture_output=True, text=True, env=full_env, timeout=timeout
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"broker {' '.join(args)} exited {result.returncode}\n"
                f"stdout: {result.stdout}\nstderr: {result.stderr}"
            )
        return result

    def register_gcp(
        self, name: str, key: Path | str, *args: str, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """``broker connector register NAME`` of a gcp connector from a service-account key
        file (``service_account_json=@FILE``: the secret never on the command line)."""
        return self.cli(
            "connector", "register", name, "--type", "gcp", "--auth-method",
            "service-account", f"service_account_json=@{key}", *args, check=check,
        )  # fmt: skip

    def cli_json(self, *args: str, env: Mapping[str, str] | None = None) -> Any:
        return json.loads(self.cli(*args, "--output", "json", env=env).stdout)

    def docker_helper_get(self, server_url: str) -> subprocess.CompletedProcess[str]:
        """``docker-credential-broker get`` for ``server_url``, as docker runs it against
        this daemon's helper socket."""
        return subprocess.run(
            [str(Path(sys.executable).parent / "docker-credential-broker"), "get"],
            input=server_url,
            capture_output=True,
            text=True,
            timeout=30,
            env={**self.env, "BROKER_HELPER_SOCKET": str(self.data_dir / "helper.sock")},
        )

    @contextmanager
    def stub(self) -> Iterator[pb_grpc.BrokerServiceStub]:
        with grpc.insecure_channel(f"unix://{self.socket}") as channel:
            yield pb_grpc.BrokerServiceStub(channel)


@contextmanager
def running_daemon(
    data_dir: Path,
    *extra: str,
    env: Mapping[str, str] | None = None,
    command: Sequence[str] = BROKER,
    socket: Path | None = None,
    preexec_fn: Callable[[], None] | None = None,
) -> Iterator[Daemon]:
    """``socket``: where the daemon's config puts its gRPC socket, if not DATA_DIR;
    ``preexec_fn``: run in the daemon's process before it starts."""
    daemon = Daemon(data_dir, env, command, socket, preexec_fn)
    daemon.start(*extra)
    try:
        yield daemon
    finally:
        if daemon.proc and daemon.proc.poll() is None:
            daemon.stop()
        if daemon.proc and daemon.proc.returncode not in (0, None, -signal.SIGTERM):
            print(daemon.log())
