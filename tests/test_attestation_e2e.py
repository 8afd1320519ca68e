"""Workload attestation end to end: real processes in real cgroups call the real daemon.

The test (root) creates cgroups named the way docker (``system.slice/docker-ID.scope``)
and containerd in Kubernetes (``kubepods.slice/…/cri-containerd-ID.scope``) name them,
in the cgroup-v2 hierarchy when the machine has one (``/sys/fs/cgroup/unified`` on a
hybrid host) and else in the v1 ``pids`` hierarchy (``docker/ID``,
``kubepods/besteffort/podUID/ID``). A child process moves itself into one before it
becomes a test user and runs the real ``broker`` CLI (gRPC socket) or the
``broker-aws-credential`` helper (helper socket). The daemon attests it through:

- a Docker Engine API: the real ``dockerd`` with real containers from an imported
  busybox image where it runs here, else the Engine API stand-in;
- a Kubernetes API: the test API server, listing this node's pods with token checks.

The user (mallory) has no rule of its own: whatever it gets, it gets through the
attested selectors. Rules:

    k8s:ns:ml & k8s:sa:trainer   consumer of app-aws
    docker:label:team:ml         consumer of app-aws
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests import jails
from tests.daemon import BROKER, Daemon, running_daemon
from tests.jails import V1_PIDS, V2_ROOT, Jail
from tests.servers.docker_engine import Engine, docker_engine
from tests.servers.kube_api import KubeApiServer, make_pod
from tests.servers.moto import REGION, shared_moto
from tests.users import (  # noqa: F401  (pytest fixtures)
    User,
    Users,
    fixture_users,
    shared_tmp,
    wait_for_audit,
)

TOKEN = "attestor-node-token"
ENV_VALUE = "an-env-value-never-in-a-selector"
SA = "system:serviceaccount:credential-broker:credential-broker"
pytestmark = pytest.mark.skipif(jails.missing() is not None, reason=str(jails.missing()))


# -- the setup ------------------------------------------------------------------------------


@dataclass
class Setup:
    daemon: Daemon
    users: Users
    socket: Path
    helper_socket: Path
    api: KubeApiServer
    engine: Engine
    jails: dict[str, Jail]
    containers: dict[str, str]
    pods: dict[str, dict[str, Any]]

    def env(self) -> dict[str, str]:
        return {"BROKER_SOCKET": str(self.socket), "BROKER_HELPER_SOCKET": str(self.helper_socket)}

    def run(
        self, where: str | Jail | None, argv: Sequence[str], user: User | None = None
    ) -> subprocess.CompletedProcess[str]:
        """``argv`` as ``user`` (mallory), from inside the jail ``where`` (None: the host)."""
        user = user or self.users.mallory
        jail = self.jails[where] if isinstance(where, str) else where
        return subprocess.run(
            user.argv(argv),
            env=user.env(self.env()),
            cwd=str(user.home),
            capture_output=True,
            text=True,
            timeout=60,
            stdin=subprocess.DEVNULL,
            preexec_fn=jail.enter if jail else None,
        )

    def cli(self, where: str | None, *args: str) -> subprocess.CompletedProcess[str]:
        return self.run(where, ["broker", *args])

    def helper(self, where: str | Jail | None) -> subprocess.CompletedProcess[str]:
        return self.run(
            where, ["broker-aws-credential", "app-aws", "--resource-type", "aws-generic"]
        )


def rules() -> str:
    return """
[[policy.rules]]
selectors = ["k8s:ns:ml", "k8s:sa:trainer"]
role = "consumer"
connectors = ["app-aws"]

[[policy.rules]]
selector = "docker:label:team:ml"
role = "consumer"
connectors = ["app-aws"]
"""


@pytest.fixture(scope="module")
def setup(users: Users, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    tmp = tmp_path_factory.mktemp("attest")
    run_dir = shared_tmp(tmp, name="attest-run")
    with contextlib.ExitStack() as stack:
        engine = stack.enter_context(docker_engine())
        api = stack.enter_context(KubeApiServer(tokens={TOKEN: SA}))
        kubeconfig = api.write_kubeconfig(tmp / "kubeconfig", token=TOKEN)
        containers = {
            "docker-ml": engine.create({"team": "ml"}, {"ML_TOKEN": ENV_VALUE}),
            "docker-web": engine.create({"team": "web"}, {}),
            "trainer": secrets.token_hex(32),
            "web-trainer": secrets.token_hex(32),
            "late": secrets.token_hex(32),
            "unknown": secrets.token_hex(32),
            "unknown-docker": secrets.token_hex(32),
            "recycled-ml": secrets.token_hex(32),
            "recycled-web": secrets.token_hex(32),
        }
        pods = {
            name: make_pod(
                f"{name}-7d9f",
                namespace=ns,
                service_account="trainer",
                labels={"app": name},
                containers={"main": containers[name]},
            )
            for name, ns in (
                ("trainer", "ml"),
                ("web-trainer", "web"),
                ("recycled-ml", "ml"),
                ("recycled-web", "web"),
            )
        }
        api.pods = list(pods.values())
        pods["late"] = make_pod(
            "late-1",
            namespace="ml",
            service_account="trainer",
            containers={"main": containers["late"]},
        )
        jails: dict[str, Jail] = {}
        for name, container_id in containers.items():
            pod = pods.get(name)
            pod_uid = pod["metadata"]["uid"] if pod else None
            if name == "unknown":  # in a pod's cgroup, but no pod lists it
                pod_uid = "0badc0de-0000-4000-8000-000000000000"
            jails[name] = Jail(container_id, pod_uid=pod_uid)
            stack.callback(jails[name].remove)
        config = tmp / "broker.toml"
        config.write_text(
            f"""
socket = "{run_dir / "broker.sock"}"
local_socket = "{run_dir / "helper.sock"}"
socket_group = "{users.brokerclients.name}"

[attestors]
cache_seconds = 30

[attestors.docker]
host = "{engine.host}"

[attestors.kubernetes]
node_name = "node-1"
kubeconfig = "{kubeconfig}"
miss_retries = 1
retry_interval_seconds = 0.1
{rules()}"""
        )
        moto = shared_moto()
        key, secret = moto.create_user("attest-app")
        daemon = stack.enter_context(
            running_daemon(tmp / "data", "--config", str(config), socket=run_dir / "broker.sock")
        )
        daemon.cli(
            "connector",
            "register",
            "app-aws",
            "--type",
            "aws",
            "--auth-method",
            "session-token",
            f"region={REGION}",
            f"endpoint_url={moto.url}",
            f"aws_access_key_id={key}",
            f"aws_secret_access_key={secret}",
            "--no-verify",
        )
        which = "real dockerd" if engine.real else "stand-in"
        print(f"engine: {which}; cgroups: {V2_ROOT or V1_PIDS}")
        yield Setup(
            daemon,
            users,
            run_dir / "broker.sock",
            run_dir / "helper.sock",
            api,
            engine,
            jails,
            containers,
            pods,
        )


def allowed(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr


def denied(result: subprocess.CompletedProcess[str], *words: str) -> str:
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    for word in words:
        assert word in result.stderr, result.stderr
    return result.stderr


# -- the policy table over attested selectors ----------------------------------------------


def test_the_right_pod_is_allowed_through_the_cli_and_a_helper(setup: Setup) -> None:
    result = setup.cli(
        "trainer", "credentials", "get", "app-aws", "-r", "aws-generic", "-o", "json"
    )
    allowed(result)
    assert json.loads(result.stdout)["connector"] == "app-aws"
    helper = setup.helper("trainer")
    allowed(helper)
    assert json.loads(helper.stdout)["Version"] == 1
    trainer = setup.containers["trainer"]
    lines = wait_for_audit(setup.daemon, "credential_issued", container=trainer, count=2)
    assert {line["via"] for line in lines} >= {"helper"}
    for line in lines:
        assert line["uid"] == setup.users.mallory.uid
        assert {"k8s:ns:ml", "k8s:sa:trainer", "k8s:pod-name:trainer-7d9f"} <= set(
            line["selectors"]
        )
        assert f"in container {trainer[:12]}" in line["principal"]


def test_the_same_uid_in_another_namespace_is_denied(setup: Setup) -> None:
    web = setup.containers["web-trainer"]
    for result in (
        setup.cli("web-trainer", "credentials", "get", "app-aws", "-r", "aws-generic"),
        setup.helper("web-trainer"),
    ):
        denied(
            result,
            "permission denied",
            f"uid={setup.users.mallory.uid}",
            f"in container {web[:12]}",
        )
    events = wait_for_audit(setup.daemon, "access_denied", container=web)
    assert "k8s:ns:web" in events[-1]["selectors"]


def test_the_same_uid_on_the_host_is_denied_without_attestation_words(setup: Setup) -> None:
    message = denied(
        setup.cli(None, "credentials", "get", "app-aws", "-r", "aws-generic"), "permission denied"
    )
    assert "container" not in message and "attestation" not in message


def test_docker_containers_by_label(setup: Setup) -> None:
    allowed(setup.cli("docker-ml", "credentials", "get", "app-aws", "-r", "aws-generic"))
    allowed(setup.helper("docker-ml"))
    line = wait_for_audit(
        setup.daemon, "credential_issued", container=setup.containers["docker-ml"]
    )[-1]
    assert {"docker:label:team:ml", "docker:env:ML_TOKEN"} <= set(line["selectors"])
    assert f"docker:image_id:{setup.engine.image_id()}" in line["selectors"]
    assert ENV_VALUE not in json.dumps(line)  # env names only
    assert "attestation" not in line  # no attestor had anything to say
    denied(setup.helper("docker-web"), "permission denied")


def test_an_unknown_container_is_denied_saying_why(setup: Setup) -> None:
    get = ("credentials", "get", "app-aws", "-r", "aws-generic")
    pod = setup.containers["unknown"][:12]
    message = denied(setup.cli("unknown", *get), "permission denied", f"in container {pod}")
    assert f"no pod on node-1 lists container {pod} in its status" in message
    docker = setup.containers["unknown-docker"][:12]
    message = denied(setup.cli("unknown-docker", *get), "permission denied")
    assert (
        f"docker attestor: the Engine API at {setup.engine.host} knows no container {docker}"
        in (message)
    )


def test_a_new_pod_is_recognised_on_its_first_call(setup: Setup) -> None:
    before = sum(1 for r in setup.api.requests if r.path == "/api/v1/pods")
    setup.api.pods.append(setup.pods["late"])
    allowed(setup.helper("late"))
    assert sum(1 for r in setup.api.requests if r.path == "/api/v1/pods") > before


def test_whoami_shows_the_attested_selectors(setup: Setup) -> None:
    result = setup.cli("trainer", "whoami", "-o", "json")
    allowed(result)
    me = json.loads(result.stdout)
    trainer = setup.containers["trainer"]
    assert {
        f"uid:{setup.users.mallory.uid}",
        f"container:{trainer}",
        "k8s:ns:ml",
        "k8s:sa:trainer",
        "k8s:pod-label:app:trainer",
        "k8s:container-name:main",
        "k8s:node-name:node-1",
    } <= set(me["selectors"])
    assert f"in container {trainer[:12]}" in me["principal"]


def test_policy_check_takes_selectors(setup: Setup) -> None:
    def check(*args: str) -> subprocess.CompletedProcess[str]:
        return setup.daemon.cli(
            "policy", "check", "get", "app-aws", "-r", "aws-generic", *args, check=False
        )

    ok = check(
        "--uid", str(setup.users.mallory.uid), "--selector", "k8s:ns:ml", "-s", "k8s:sa:trainer"
    )
    assert ok.returncode == 0 and ok.stdout.startswith("ALLOWED"), ok
    assert "with k8s:ns:ml, k8s:sa:trainer" in ok.stdout
    assert check("--selector", "docker:label:team:ml").returncode == 0
    no = check("--uid", str(setup.users.mallory.uid), "-s", "k8s:ns:web", "-s", "k8s:sa:trainer")
    assert no.returncode == 1 and no.stdout.startswith("DENIED"), no
    bad = check("-s", "docker:env:TOKEN=x")
    assert bad.returncode == 1 and "never its value" in bad.stderr


def test_a_pid_that_exited_before_it_was_attested_is_denied(setup: Setup) -> None:
    """The caller connects, hands the socket to a child and exits; the child's request
    carries the dead parent's pid (SO_PEERCRED is the connect()er's): refused."""
    script = f"""
import os, socket, sys, time, json
s = socket.socket(socket.AF_UNIX)
s.connect({str(setup.helper_socket)!r})
parent = os.getpid()
if os.fork():
    os._exit(0)
deadline = time.monotonic() + 10
while os.path.exists(f"/proc/{{parent}}") and time.monotonic() < deadline:
    time.sleep(0.01)
body = json.dumps({{"connector": "app-aws", "resource_type": "aws-generic"}}).encode()
head = ("POST /v1/credential-process HTTP/1.1\\r\\nHost: x\\r\\nConnection: close\\r\\n"
        "Content-Type: application/json\\r\\nContent-Length: %d\\r\\n\\r\\n" % len(body))
s.sendall(head.encode() + body)
answer = b""
while chunk := s.recv(65536):
    answer += chunk
sys.stdout.write(answer.decode(errors="replace"))
"""
    user = setup.users.mallory
    with subprocess.Popen(
        user.argv(["python", "-c", script]),
        env=user.env(setup.env()),
        cwd=str(user.home),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=setup.jails["trainer"].enter,
    ) as proc:
        proc.wait(30)  # the parent: reaped here, so its pid names nothing any more
        assert proc.stdout is not None and proc.stderr is not None
        answer = proc.stdout.read()  # EOF once the child is done
        errors = proc.stderr.read()
    assert answer.startswith("HTTP/1.1 401"), answer + errors
    assert f"pid {proc.pid}" in answer and "refused rather than guessed" in answer


def _with_pid(pid: int, start: Callable[[], subprocess.Popen[str]]) -> subprocess.Popen[str]:
    Path("/proc/sys/kernel/ns_last_pid").write_text(str(pid - 1))
    return start()


def test_a_recycled_pid_does_not_reuse_a_cached_identity(setup: Setup) -> None:
    """Pid P calls from the ml pod (allowed, cached); then a process of the web pod gets the
    same pid P (root steers ns_last_pid) and calls: denied, not the cached ml identity."""
    if not os.access("/proc/sys/kernel/ns_last_pid", os.W_OK):
        pytest.skip("ns_last_pid is not writable")
    user = setup.users.mallory
    argv = user.argv(["broker-aws-credential", "app-aws", "--resource-type", "aws-generic"])

    def start(jail: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            argv,
            env=user.env(setup.env()),
            cwd=str(user.home),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            preexec_fn=setup.jails[jail].enter,
        )

    for _ in range(5):  # another process on the machine may take the pid in between
        target = 20000 + secrets.randbelow(8000)
        first = _with_pid(target, lambda: start("recycled-ml"))
        _, err = first.communicate(timeout=60)
        if first.pid != target:
            continue
        assert first.returncode == 0, err
        time.sleep(0.05)  # a later clock tick: another start time
        second = _with_pid(target, lambda: start("recycled-web"))
        out2, err2 = second.communicate(timeout=60)
        if second.pid != target:
            continue
        assert second.returncode != 0, out2
        assert "permission denied" in err2 and f"pid={target}" in err2, err2
        recycled = setup.containers["recycled-web"][:12]
        assert f"in container {recycled}" in err2
        return
    pytest.skip("could not get the same pid twice")


def test_an_unreachable_attestor_denies_saying_so_then_recovers(setup: Setup) -> None:
    container = secrets.token_hex(32)
    pod = make_pod(
        "flaky-1", namespace="ml", service_account="trainer", containers={"main": container}
    )
    jail = Jail(container, pod_uid=pod["metadata"]["uid"])
    try:
        setup.api.pods.append(pod)
        setup.api.fail_with = 503
        try:
            message = denied(setup.helper(jail), "permission denied")
        finally:
            setup.api.fail_with = None
        assert "[attestation: " in message  # v1 cgroupfs names no runtime: docker asked too
        assert "kubernetes attestor: the API server at https://127.0.0.1:" in message
        assert "answered HTTP 503 to a pod listing" in message
        time.sleep(1.1)  # a failed answer is kept a second only
        allowed(setup.helper(jail))
    finally:
        jail.remove()


# -- a daemon that cannot see its callers' pids (no hostPID) -----------------------------


def test_without_the_hosts_pid_namespace_calls_are_refused_saying_why(
    users: Users, tmp_path: Path
) -> None:
    run_dir = shared_tmp(tmp_path, name="attest-nopid")
    config = tmp_path / "broker.toml"
    config.write_text(
        f"""
socket = "{run_dir / "broker.sock"}"
local_socket = "{run_dir / "helper.sock"}"
[attestors.docker]
host = "unix://{run_dir}/no-docker.sock"
"""
    )
    unshare = ["unshare", "--pid", "--fork", "--mount-proc", "--kill-child=SIGKILL"]
    with running_daemon(
        tmp_path / "data",
        "--config",
        str(config),
        socket=run_dir / "broker.sock",
        command=[*unshare, *BROKER],
    ) as daemon:
        try:
            result = daemon.cli("status", check=False)
            assert result.returncode == 1
            assert "not visible to the daemon" in result.stderr, result
            assert "hostPID" in result.stderr and "Traceback" not in result.stderr
        finally:
            # unshare leaves SIGTERM to its child, the daemon (pid 1 in there): tell it.
            assert daemon.proc is not None
            pid = daemon.proc.pid
            child = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
            if child:
                os.kill(int(child[0]), signal.SIGTERM)
            assert daemon.proc.wait(15) == 0
