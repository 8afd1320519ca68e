"""The peer-credential relay's designs side by side, in the daemon, on cache-hit calls.

Servers, all in the same run:

* ``echo``: an empty grpc.aio server answering the daemon's own bytes (the floor);
* ``noid``: the daemon with caller identity and policy taken out, gRPC on the
  public socket itself (``fakeprovider/identity_off.py``);
* the daemon (``fakeprovider/relay_design.py``) with each relay design behind
  its :class:`broker.rpc.acceptor.PeerAcceptor` (``SO_PEERCRED`` per connection,
  abstract-name peers), see ``fakeprovider/relays.py``:

  - ``asyncio``: two asyncio protocols per connection in the event loop grpc.aio
    runs in (the design before);
  - ``thread``: one relay thread, ``epoll`` + ``recv_into`` / ``send``
    (:class:`broker.rpc.relay.RelayThread`, what the daemon ships);
  - ``splice``: the same thread copying with ``os.splice`` through a pipe per
    direction;
  - ``heldgil``: the same thread calling recv/send through ctypes without
    releasing the GIL around them.

Clients: grpc.aio in a separate process, one channel per server, ``c`` workers
calling back to back. Many short rounds, the servers in a new random order in
each, so background load hits all alike; each figure is the median over the
rounds, and "vs noid" is the median of per-round differences (CPU) or ratios
(throughput) to ``noid`` in the same round: what identity (relay + lookup +
policy) costs. Server CPU per call (all threads, from /proc) is the figure
least sensitive to other load on the machine. ``BENCH_DESIGNS`` picks designs.
"""

from __future__ import annotations

import os
import random
import statistics
import sys
import tempfile
from collections import defaultdict
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from bench_cache_hit import IDENTITY_OFF, register
from common import median, percentile, table
from fakeprovider.grpcload import EchoServer, run_client

from broker.api.v1 import broker_pb2 as pb
from tests.daemon import running_daemon

SECONDS = float(os.environ.get("BENCH_SECONDS", "1.5"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "8"))
CONCURRENCY = (1, 32)
DESIGNS = tuple(os.environ.get("BENCH_DESIGNS", "asyncio,thread,splice,heldgil").split(","))
RELAY_DESIGN = [
    sys.executable,
    str(Path(__file__).resolve().parent / "fakeprovider/relay_design.py"),
]
LABELS = {
    "echo": "echo server (floor)",
    "noid": "daemon, identity + policy off",
    "loop": "daemon, reader callbacks in the loop (ships)",
    "asyncio": "daemon, asyncio protocols in the loop (before)",
    "thread": "daemon, relay thread recv/send",
    "splice": "daemon, relay thread os.splice",
    "heldgil": "daemon, relay thread, GIL held in recv/send",
    "blocking": "daemon, two blocking threads per connection",
}


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        targets: dict[str, str] = {}
        pids: dict[str, int] = {}
        for design in DESIGNS:
            daemon = stack.enter_context(
                running_daemon(
                    Path(tmp) / design,
                    "--log-level",
                    "info",
                    env={"BENCH_RELAY": design},
                    command=RELAY_DESIGN,
                )
            )
            register(daemon)
            assert daemon.proc is not None
            targets[design], pids[design] = f"unix://{daemon.socket}", daemon.proc.pid
        noid_dir = Path(tmp) / "noid"
        noid = stack.enter_context(
            running_daemon(
                noid_dir,
                "--log-level",
                "info",
                env={"BENCH_PUBLIC_SOCKET": str(noid_dir / "broker.sock")},
                command=IDENTITY_OFF,
            )
        )
        register(noid)
        assert noid.proc is not None
        targets["noid"], pids["noid"] = f"unix://{noid.socket}", noid.proc.pid
        with noid.stub() as stub:
            answer = stub.GetCredentials(pb.GetCredentialsRequest(connector="reg"))
        targets["echo"], pids["echo"] = stack.enter_context(
            EchoServer(Path(tmp) / "echo.sock", answer.SerializeToString())
        )
        names = list(targets)
        phases: list[dict[str, Any]] = []
        for c in CONCURRENCY:
            for r in range(ROUNDS):
                for name in random.Random(r).sample(names, len(names)):
                    phases.append(
                        {
                            "name": name,
                            "round": r,
                            "concurrency": c,
                            "mode": "closed",
                            "target": targets[name],
                            "seconds": SECONDS,
                            "warmup": 0.3,
                            "server_pid": pids[name],
                            "request": {"connector": "reg"},
                        }
                    )
        results = run_client({"targets": list(targets.values()), "phases": phases})

    rate: dict[tuple[str, int, int], float] = {}
    cpu: dict[tuple[str, int, int], float] = {}
    lat: dict[tuple[str, int], list[float]] = defaultdict(list)
    for phase, result in zip(phases, results, strict=True):
        key = (phase["name"], phase["concurrency"], phase["round"])
        rate[key] = result["calls"] / result["elapsed"]
        cpu[key] = result["server_cpu"] / result["calls"] * 1e6
        lat[phase["name"], phase["concurrency"]].extend(result["latencies_ms"])

    def med(values: list[float], fmt: str) -> str:
        return f"{statistics.median(values):{fmt}} ({min(values):{fmt}}…{max(values):{fmt}})"

    rows = []
    for c in CONCURRENCY:
        for name in ("echo", "noid", *DESIGNS):
            rounds = range(ROUNDS)
            rows.append(
                [
                    LABELS[name],
                    c,
                    f"{statistics.median(rate[name, c, r] for r in rounds):,.0f}",
                    med([rate[name, c, r] / rate["echo", c, r] for r in rounds], ".2f"),
                    "-"
                    if name in ("echo", "noid")
                    else med([rate[name, c, r] / rate["noid", c, r] for r in rounds], ".2f"),
                    f"{statistics.median(cpu[name, c, r] for r in rounds):.0f}",
                    "-"
                    if name in ("echo", "noid")
                    else med([cpu[name, c, r] - cpu["noid", c, r] for r in rounds], "+.0f"),
                    f"{median(lat[name, c]):.2f}",
                    f"{percentile(lat[name, c], 99):.2f}",
                ]
            )
    print(
        table(
            [
                "server",
                "c",
                "calls/s",
                "vs echo (rounds)",
                "vs noid (rounds)",
                "CPU µs/call",
                "CPU vs noid µs/call (rounds)",
                "p50 ms",
                "p99 ms",
            ],
            rows,
        )
    )
    print(
        f"\n{ROUNDS} rounds of {SECONDS:g} s per server and concurrency, medians over rounds "
        f"(min…max in brackets); load average at the end: {os.getloadavg()[0]:.2f} on "
        f"{os.cpu_count()} CPUs."
    )


if __name__ == "__main__":
    main()
