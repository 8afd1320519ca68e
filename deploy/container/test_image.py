"""Build the real Dockerfile offline with buildah and run the sidecar pattern from it.

``make container-test`` runs this file (it takes minutes, so it is not part of
``make test``). Steps, each timed and printed at the end:

1. a stand-in for ``python:3.11-slim`` from this machine's Python (standin.py),
   committed ``FROM scratch``;
2. a wheelhouse of the runtime dependencies, built on the host with pip, so the
   image build itself needs no network;
3. ``buildah bud --isolation chroot --storage-driver vfs`` of the Dockerfile;
4. the daemon started from the image's ENTRYPOINT, ENV and USER with the
   socket and state volumes bound to host folders and a config file whose
   policy makes the job's uid a consumer of one connector (only the daemon's
   own uid is admin); the admin registers that connector from inside the
   daemon's container; a second container of the same image, running as
   another user in the broker group, gets a credential through the shared
   socket folder (gRPC and the docker credential helper on the helper
   socket), is refused registering a connector or reading secrets, and runs
   the image's HEALTHCHECK command; then SIGTERM, and the daemon must exit 0
   and remove its socket.

buildah's chroot isolation has no PID namespace, so the daemon is not PID 1
here; SIGTERM goes to the daemon process itself, as ``docker stop`` sends it
to a container's PID 1.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

sys.path.insert(0, str(Path(__file__).resolve().parent))
from standin import ENV, build_rootfs

#: The image build alone takes about a minute on 2 cores; the per-test default is 120 s.
pytestmark = pytest.mark.timeout(1200)

ROOT = Path(__file__).resolve().parents[2]
BASE = "localhost/broker-test-python:3.11"
IMAGE = "localhost/credential-broker:test"
BROKER_UID = 65532
JOB_UID = 1000
REGISTRY = "registry.example.test:5000"
#: The daemon's config: the job's uid may get the one registry's credential (the stored
#: password itself, hence long_lived_secrets) and nothing else; the daemon's uid is admin.
POLICY = f"""
[[policy.rules]]
description = "the job container: pull from its registry"
selectors = ["uid:{JOB_UID}"]
role = "consumer"
connectors = ["ci-registry"]
resource_types = ["docker-registry"]
resource_ids = ["{REGISTRY}"]
long_lived_secrets = true
"""
#: What the build context needs from the repository (the .dockerignore lets in no more).
CONTEXT = (
    "pyproject.toml",
    "constraints.txt",
    "README.md",
    "broker",
    "Dockerfile",
    ".dockerignore",
)


@dataclass
class Timings:
    steps: list[tuple[str, float]] = field(default_factory=list)

    def run(self, name: str, started: float) -> None:
        self.steps.append((name, time.monotonic() - started))

    def table(self) -> str:
        width = max(len(name) for name, _ in self.steps)
        rows = [f"  {name:<{width}}  {seconds:7.1f} s" for name, seconds in self.steps]
        total = sum(seconds for _, seconds in self.steps)
        return "\n".join([*rows, f"  {'total':<{width}}  {total:7.1f} s"])


TIMINGS = Timings()


class Buildah:
    """buildah with its own storage under a temp folder: the host's store is never touched."""

    def __init__(self, work: Path) -> None:
        self.globals = [
            "--root",
            str(work / "storage"),
            "--runroot",
            str(work / "runroot"),
            "--storage-driver",
            "vfs",
        ]

    def argv(self, *args: str) -> list[str]:
        return ["buildah", *self.globals, *args]

    def __call__(self, *args: str, timeout: float = 600, check: bool = True) -> str:
        result = subprocess.run(self.argv(*args), capture_output=True, text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(
                f"buildah {' '.join(args)} exited {result.returncode}\n"
                f"{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
            )
        return result.stdout.strip()

    def run(
        self, ctr: str, *command: str, volumes: dict[Path, str], user: str | None = None
    ) -> list[str]:
        """argv of ``buildah run`` with chroot isolation and bind-mounted volumes."""
        args = ["run", "--isolation", "chroot"]
        for host, inside in volumes.items():
            args += ["--volume", f"{host}:{inside}"]
        if user:
            args += ["--user", user]
        return self.argv(*args, ctr, "--", *command)


@dataclass
class Built:
    buildah: Buildah
    work: Path
    config: dict[str, Any]
    rootfs: Path  # the mounted runtime image, to look at its files


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Built]:
    if shutil.which("buildah") is None:
        raise RuntimeError("buildah is missing: `apt-get install buildah` (make container-test)")
    work = tmp_path_factory.mktemp("container")
    buildah = Buildah(work)

    started = time.monotonic()
    rootfs = build_rootfs(work / "base-rootfs")
    ctr = buildah("from", "scratch")
    buildah("copy", ctr, f"{rootfs}/", "/")
    env = [arg for key, value in ENV.items() for arg in ("--env", f"{key}={value}")]
    buildah("config", *env, "--cmd", "python3", ctr)
    buildah("commit", "--quiet", ctr, BASE)
    buildah("rm", ctr)
    shutil.rmtree(rootfs)
    TIMINGS.run("stand-in python base (FROM scratch)", started)

    started = time.monotonic()
    context = work / "context"
    context.mkdir()
    for name in CONTEXT:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, context / name)
        else:
            shutil.copy2(source, context / name)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--wheel-dir",
            str(context / "wheels"),
            # the versions the image installs (the Dockerfile's -c constraints.txt)
            "-c",
            str(ROOT / "constraints.txt"),
            str(ROOT),
            "hatchling>=1.27",  # the build backend, for the offline `pip install /src`
        ],
        check=True,
        capture_output=True,
        timeout=600,
    )
    TIMINGS.run("wheelhouse (pip wheel on the host)", started)

    started = time.monotonic()
    buildah(
        "bud",
        "--isolation",
        "chroot",
        "--format",
        "docker",  # HEALTHCHECK exists only in the docker image format
        "--pull-never",
        "--build-arg",
        f"PYTHON_IMAGE={BASE}",
        "--tag",
        IMAGE,
        str(context),
        timeout=900,
    )
    TIMINGS.run("buildah bud of the Dockerfile", started)

    config = json.loads(buildah("inspect", "--type", "image", IMAGE))
    ctr = buildah("from", "--pull-never", IMAGE)
    mounted = Path(buildah("mount", ctr))
    try:
        yield Built(buildah, work, config, mounted)
    finally:
        buildah("umount", ctr, check=False)
        buildah("rm", ctr, check=False)
        buildah("rm", "--all", check=False)
        buildah("rmi", "--all", "--force", check=False)
        print("\ncontainer test timings:\n" + TIMINGS.table())


def _docker_config(built: Built) -> dict[str, Any]:
    config: dict[str, Any] = built.config["Docker"]["config"]
    return config


def test_image_runs_as_non_root_with_two_volumes_and_a_grpc_healthcheck(built: Built) -> None:
    config = _docker_config(built)
    assert config["User"] == f"{BROKER_UID}:{BROKER_UID}"
    assert set(config["Volumes"]) == {"/run/broker", "/var/lib/broker"}
    assert config["Healthcheck"]["Test"] == ["CMD", "broker", "health", "--timeout", "4"]
    assert config["Entrypoint"] == ["broker", "serve"]
    assert config.get("StopSignal") == "SIGTERM"
    env = dict(item.split("=", 1) for item in config["Env"])
    assert env["BROKER_SOCKET"] == "/run/broker/broker.sock"
    assert env["BROKER_DATA_DIR"] == "/var/lib/broker"
    image = built.rootfs
    for path, mode in (("run/broker", 0o750), ("var/lib/broker", 0o700)):
        st = (image / path).stat()
        assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (BROKER_UID, BROKER_UID, mode)
    assert "broker:x:65532:65532:" in (image / "etc/passwd").read_text()
    # Multi-stage: the sources, the wheelhouse and pip's build tools stay behind.
    assert not (image / "src").exists()
    assert not list((image / "opt/broker/lib").glob("python3*/site-packages/pip"))
    assert (image / "opt/broker/bin/docker-credential-broker").exists()
    size = sum(p.stat().st_size for p in image.rglob("*") if p.is_file() and not p.is_symlink())
    venv = sum(
        p.stat().st_size
        for p in (image / "opt/broker").rglob("*")
        if p.is_file() and not p.is_symlink()
    )
    print(f"\nimage: {size / 1e6:.0f} MB unpacked, of which the broker venv {venv / 1e6:.0f} MB")
    TIMINGS.steps.append((f"(image {size / 1e6:.0f} MB, venv {venv / 1e6:.0f} MB)", 0.0))


def _serving(sock: Path) -> bool:
    try:
        with grpc.insecure_channel(f"unix://{sock}") as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=2
            )
    except grpc.RpcError:
        return False
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


def test_sidecar_serves_a_job_container_through_the_shared_socket_volume(built: Built) -> None:
    buildah, work = built.buildah, built.work
    run_dir, state_dir = work / "run-broker", work / "state"
    for folder, mode in ((run_dir, 0o750), (state_dir, 0o700)):
        folder.mkdir()
        shutil.chown(folder, BROKER_UID, BROKER_UID)
        folder.chmod(mode)
    # The config, read-only to the daemon (a ConfigMap in Kubernetes, sidecar-job.yaml).
    config_dir = work / "broker-config"
    config_dir.mkdir(mode=0o755)
    (config_dir / "broker.toml").write_text(POLICY)
    (config_dir / "broker.toml").chmod(0o644)
    config = _docker_config(built)
    daemon_ctr = buildah("from", "--pull-never", IMAGE)
    job_ctr = buildah("from", "--pull-never", IMAGE)
    for ctr in (daemon_ctr, job_ctr):
        # buildah run would mount its own anonymous volume over a bind at a VOLUME
        # path; a container engine binds the named volume there instead.
        buildah("config", "--volume", "/run/broker-", "--volume", "/var/lib/broker-", ctr)
    # The job is another program; only the image is shared. /var/lib/broker is 0700.
    buildah("config", "--workingdir", "/", job_ctr)
    log_path = work / "daemon.log"
    log = log_path.open("wb")
    started = time.monotonic()
    daemon = subprocess.Popen(
        # The image's own ENTRYPOINT, ENV and USER (buildah run applies the last two).
        buildah.run(
            daemon_ctr,
            *config["Entrypoint"],
            "--config",
            "/etc/credential-broker/broker.toml",
            volumes={
                run_dir: "/run/broker",
                state_dir: "/var/lib/broker",
                config_dir: "/etc/credential-broker",
            },
        ),
        stdout=log,
        stderr=log,
    )
    try:
        sock = run_dir / "broker.sock"
        deadline = time.monotonic() + 60
        while not (sock.exists() and _serving(sock)):
            assert daemon.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.1)
        TIMINGS.run("daemon start in the container", started)
        assert (sock.stat().st_mode & 0o777, sock.stat().st_gid) == (0o660, BROKER_UID)
        assert (state_dir / "secret.key").stat().st_uid == BROKER_UID

        started = time.monotonic()
        # The admin (the daemon's own uid, in its container) registers the connector;
        # the password comes on stdin, never in argv.
        registered = subprocess.run(
            buildah.run(
                daemon_ctr,
                "broker",
                "connector",
                "register",
                "ci-registry",
                "--type",
                "docker",
                "--auth-method",
                "password",
                "username=ci",
                "password=-",
                f"registry={REGISTRY}",
                "--no-verify",
                "--output",
                "json",
                volumes={run_dir: "/run/broker"},
            ),
            input="s3cret-value",
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert registered.returncode == 0, registered.stdout + registered.stderr
        assert "s3cret-value" not in registered.stdout + registered.stderr
        TIMINGS.run("admin in the daemon container: register", started)

        started = time.monotonic()

        def job(*command: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
            """A command in the job container: another uid, in the broker group, socket only."""
            return subprocess.run(
                buildah.run(
                    job_ctr,
                    *command,
                    volumes={run_dir: "/run/broker"},
                    user=f"{JOB_UID}:{BROKER_UID}",
                ),
                input=stdin,
                capture_output=True,
                text=True,
                timeout=120,
            )

        result = job("sh", "-c", "id -u; broker credentials get ci-registry --output json")
        assert result.returncode == 0, result.stdout + result.stderr
        uid, _, issued = result.stdout.partition("\n")
        assert uid == str(JOB_UID)
        credential = json.loads(issued)
        assert "s3cret-value" in json.dumps(credential)

        helper = job("docker-credential-broker", "get", stdin=REGISTRY)
        assert helper.returncode == 0, helper.stdout + helper.stderr
        assert json.loads(helper.stdout)["Secret"] == "s3cret-value"

        check = job(*config["Healthcheck"]["Test"][1:])
        assert (check.returncode, check.stdout.strip()) == (0, "SERVING"), check.stderr
        TIMINGS.run("job container: get, helper, healthcheck", started)

        # The job is a consumer: it may not add connectors nor read their secrets.
        started = time.monotonic()
        refused = job(
            "broker",
            "connector",
            "register",
            "job-registry",
            "--type",
            "docker",
            "--auth-method",
            "password",
            "username=job",
            "password=-",
            "registry=evil.example.test",
            "--no-verify",
            stdin="other-value",
        )
        assert refused.returncode != 0, refused.stdout
        assert "permission denied" in refused.stderr, refused.stderr
        assert "other-value" not in refused.stdout + refused.stderr
        shown = job("broker", "connector", "describe", "ci-registry", "--show-secrets")
        assert shown.returncode != 0, shown.stdout
        assert "permission denied" in shown.stderr, shown.stderr
        assert "s3cret-value" not in shown.stdout + shown.stderr
        TIMINGS.run("job container: register and --show-secrets refused", started)

        started = time.monotonic()
        daemon_pid = _child_running(daemon.pid, "serve")
        os.kill(daemon_pid, signal.SIGTERM)
        assert daemon.wait(30) == 0, log_path.read_text()
        TIMINGS.run("SIGTERM to exit", started)
        assert not sock.exists()
        events = [json.loads(line)["event"] for line in log_path.read_text().splitlines()]
        assert "daemon_stopping" in events
        assert events[-1] == "daemon_stopped"
        # The job container, with the daemon gone, is told so (exit 1, one line).
        gone = job("broker", "health", "--timeout", "2")
        assert gone.returncode == 1
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()
        log.close()
        buildah("rm", daemon_ctr, job_ctr, check=False)


def _child_running(parent: int, word: str) -> int:
    """The PID of the descendant of ``parent`` whose command line has ``word`` (the daemon)."""
    children = {parent}
    found: list[int] = []
    for _ in range(6):  # buildah -> its chroot helper -> the daemon
        nxt: set[int] = set()
        for pid in children:
            for task in Path(f"/proc/{pid}/task").glob("*"):
                path = task / "children"
                if path.exists():
                    nxt |= {int(c) for c in path.read_text().split()}
        for pid in nxt:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            if any(arg.endswith(b"broker") for arg in cmdline) and word.encode() in cmdline:
                found.append(pid)
        children = nxt
    assert found, "daemon process not found under buildah"
    return found[-1]
