"""Workload attestation's cost: a cache-hit get with attestation (cold and cached) against
the same get without it, in one run.

Two daemons side by side, each holding a long-lived docker connector (every get after
the first is a cache hit): one without ``[attestors]``, one with the Docker attestor
(the real dockerd where it runs here, else the Engine API stand-in) and the Kubernetes
attestor (the test API server, over TLS with a token). Each round starts a fresh client
process that moves itself into a fresh cgroup named like a docker container's or a
Kubernetes pod's (``tests/jails.py``), opens one keep-alive connection to the helper
socket and sends ``REQUESTS`` gets one after another (``POST /v1/credentials``), timing
each inside the process. The first get of a process in a new container is a cold
attestation (``docker inspect``; for a pod created just before, a pod listing); the
later ones are cached (one ``/proc/PID/stat`` read and a dict look-up). Rounds of the
configurations alternate, so background load hits them alike.

Also measured in this process: ``Attestation.principal()`` alone on its cached path.

Goal: a cached attestation adds ≤ 0.2 ms to a cache-hit get (p50 of the later gets).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from common import median, percentile, table

from broker.identity.attestors.attestation import Attestation
from broker.identity.attestors.base import Finding
from broker.identity.cgroups import Container
from broker.identity.principal import unix_principal
from tests import jails
from tests.daemon import Daemon, running_daemon
from tests.jails import Jail
from tests.servers.docker_engine import docker_engine
from tests.servers.kube_api import KubeApiServer, make_pod

ROUNDS = int(os.environ.get("BENCH_ROUNDS", "12"))
REQUESTS = int(os.environ.get("BENCH_REQUESTS", "200"))
GOAL_MS = 0.2
TOKEN = "bench-node-token"

CLIENT = r"""
import json, socket, sys, time
path, n = sys.argv[1], int(sys.argv[2])
body = json.dumps({"connector": "reg", "resource_type": "docker-registry"}).encode()
request = (
    b"POST /v1/credentials HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
)
s = socket.socket(socket.AF_UNIX)
s.connect(path)
buf = b""
times = []
for _ in range(n):
    t = time.perf_counter()
    s.sendall(request)
    while b"\r\n\r\n" not in buf:
        buf += s.recv(65536)
    head, _, buf = buf.partition(b"\r\n\r\n")
    status = head.split(b" ", 2)[1]
    length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
    while len(buf) < length:
        buf += s.recv(65536)
    buf = buf[length:]
    times.append(time.perf_counter() - t)
    if status != b"200":
        sys.exit(f"HTTP {status.decode()}: {head.decode(errors='replace')}")
print(json.dumps(times))
"""


@dataclass
class Config:
    label: str
    daemon: Daemon
    #: "host", "docker" or "pod": where each round's client runs.
    where: str
    first: list[float] = field(default_factory=list)
    later: list[float] = field(default_factory=list)


def register(daemon: Daemon) -> None:
    daemon.cli(
        "connector",
        "register",
        "reg",
        "--type",
        "docker",
        "username=u",
        "password=p",
        "registry=registry.bench:5000",
        "--no-verify",
    )


def run_client(daemon: Daemon, jail: Jail | None) -> list[float]:
    out = subprocess.run(
        [sys.executable, "-I", "-c", CLIENT, str(daemon.data_dir / "helper.sock"), str(REQUESTS)],
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=jail.enter if jail else None,
    )
    if out.returncode != 0:
        raise RuntimeError(f"client failed: {out.stderr}\n{daemon.log()[-3000:]}")
    times: list[float] = json.loads(out.stdout)
    return times


@contextlib.contextmanager
def made(jail: Jail) -> Iterator[Jail]:
    try:
        yield jail
    finally:
        jail.remove()


class _Known:
    name = "bench"

    async def start(self) -> None:
        pass

    async def aclose(self) -> None:
        pass

    async def attest(self, container: Container) -> Finding:
        return Finding(frozenset({"k8s:ns:bench", "k8s:sa:default"}))


def in_process_cached_us() -> float:
    """``Attestation.principal()`` on its cached path, for a process in a jail (µs)."""
    jail = Jail(secrets.token_hex(32))
    sleeper = subprocess.Popen(["sleep", "60"], preexec_fn=jail.enter)
    try:
        attestation = Attestation([_Known()], cache_seconds=600)
        base = unix_principal(0, 0, sleeper.pid, via="helper socket")

        async def measure() -> float:
            await attestation.principal(base)  # cold
            n = 20_000
            t = time.perf_counter()
            for _ in range(n):
                await attestation.principal(base)
            return (time.perf_counter() - t) / n * 1e6

        return asyncio.run(measure())
    finally:
        sleeper.kill()
        sleeper.wait()
        jail.remove()


def main() -> None:
    if jails.missing():
        sys.exit(f"bench_attestation needs cgroups it can write: {jails.missing()}")
    micro = in_process_cached_us()
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        engine = stack.enter_context(docker_engine())
        api = stack.enter_context(KubeApiServer(tokens={TOKEN: "system:serviceaccount:b:b"}))
        kubeconfig = api.write_kubeconfig(tmp / "kubeconfig", token=TOKEN)
        config = tmp / "broker.toml"
        config.write_text(
            f"""
[attestors]
cache_seconds = 600
[attestors.docker]
host = "{engine.host}"
[attestors.kubernetes]
node_name = "node-1"
kubeconfig = "{kubeconfig}"
miss_retries = 0

[[policy.rules]]
selector = "docker:label:bench:yes"
role = "consumer"
long_lived_secrets = true

[[policy.rules]]
selector = "k8s:ns:bench"
role = "consumer"
long_lived_secrets = true
"""
        )
        off = stack.enter_context(running_daemon(tmp / "off"))
        on = stack.enter_context(running_daemon(tmp / "on", "--config", str(config)))
        for daemon in (off, on):
            register(daemon)
        configs = [
            Config("no attestors (baseline), host process", off, "host"),
            Config("attestors on, host process", on, "host"),
            Config(
                f"attestors on, docker container ({'real dockerd' if engine.real else 'stand-in'})",
                on,
                "docker",
            ),
            Config("attestors on, Kubernetes pod (created just before)", on, "pod"),
        ]
        containers = [engine.create({"bench": "yes"}, {"X": "1"}) for _ in range(ROUNDS)]
        for i in range(ROUNDS):
            for c in configs:
                if c.where == "host":
                    times = run_client(c.daemon, None)
                elif c.where == "docker":
                    with made(Jail(containers[i])) as jail:
                        times = run_client(c.daemon, jail)
                else:
                    cid = secrets.token_hex(32)
                    pod = make_pod(f"p{i}", namespace="bench", containers={"main": cid})
                    api.pods.append(pod)
                    with made(Jail(cid, pod_uid=pod["metadata"]["uid"])) as jail:
                        times = run_client(c.daemon, jail)
                c.first.append(times[0])
                c.later.extend(times[1:])
    base_first = median(configs[0].first) * 1e3
    base_later = median(configs[0].later) * 1e3
    rows = []
    for c in configs:
        first, later = median(c.first) * 1e3, median(c.later) * 1e3
        added = later - base_later
        rows.append(
            [
                c.label,
                f"{first:.2f}",
                f"{first - base_first:+.2f}",
                f"{later:.3f}",
                f"{percentile(c.later, 99) * 1e3:.3f}",
                f"{added:+.3f}" + ("" if c is configs[0] else (" ✓" if added <= GOAL_MS else " ✗")),
            ]
        )
    print(
        f"{ROUNDS} rounds × {REQUESTS} gets on one keep-alive helper connection per process; "
        f"in-process cached Attestation.principal(): {micro:.1f} µs"
    )
    print(
        table(
            [
                "caller",
                "first get p50 ms (cold)",
                "vs baseline",
                "later gets p50 ms (cached)",
                "p99 ms",
                f"added (goal ≤ {GOAL_MS} ms)",
            ],
            rows,
        )
    )


if __name__ == "__main__":
    main()
