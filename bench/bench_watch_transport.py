"""10,000 watch streams of one key through the real transport: how long a renewal takes to
reach every stream, and what a stream costs the daemon.

The daemon runs as it ships (its public Unix socket, the acceptor and relay in front of
gRPC), with the ``bench-fake`` connector minting from the fake upstream in this process.
Watchers run in client processes (``--client``), ``grpc.aio`` with the README's
many-streams channel options, in two layouts:

* ``1 connection``: every stream on ONE channel (a sidecar multiplexing its jobs);
* ``100 connections``: 100 streams per channel, the channels spread over client processes.

The first credential lives ``FIRST_LIFETIME`` s, long enough for every stream to open
before its renewal (~1/6 of it later); the following ones ``LIFETIME`` s, so the daemon
renews on its own every few seconds: ``RENEWALS`` renewals are measured. Per renewal and
stream: the time from the upstream's answer (the renewal's mint, wall clock) to the
stream holding the new token; per renewal the p50 and p99 over streams and the last
stream (every stream holding it); a stream that holds a newer credential by then holds
"the new one" (a renewal superseded before the stream read it is counted as skipped:
latest value only). Lost: a stream that ended, or never held the last renewal.
RSS per stream: the daemon's RSS once all streams hold their first credential, minus
before any opened, divided by the streams. CPU per event: the daemon's user+system CPU
from the first renewal's mint to the last stream holding the last renewal, divided by
the events delivered in that window.

Goal: p99 ≤ 500 ms for 10,000 streams, 0 lost. The clients share the machine's cores
with the daemon (and here with other people's work): the load average is printed.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from common import percentile, table
from fakeprovider import plugin_env
from fakeprovider.grpcload import cpu_seconds, rss_kib
from fakeprovider.upstream import FakeUpstream

STREAMS = int(os.environ.get("BENCH_STREAMS", "10000"))
RENEWALS = int(os.environ.get("BENCH_RENEWALS", "3"))
FIRST_LIFETIME = float(os.environ.get("BENCH_FIRST_LIFETIME", "240"))
LIFETIME = float(os.environ.get("BENCH_LIFETIME", "60"))
CLIENT_PROCESSES = int(os.environ.get("BENCH_CLIENT_PROCESSES", "2"))
P99_GOAL_MS = 500.0
#: The floor's relay: "loop" (the daemon's) or "none" (gRPC on the socket itself).
FLOOR_RELAY = os.environ.get("BENCH_FLOOR_RELAY", "loop")
#: After the last renewal, time for every stream to get it before the clients report.
SETTLE = float(os.environ.get("BENCH_SETTLE", "15"))
#: Channel options for many streams on one connection (README "Many watch streams").
MANY_STREAMS = [("grpc.http2.max_pings_without_data", 0), ("grpc.keepalive_time_ms", 30_000)]

ROOT = Path(__file__).resolve().parent.parent


# -- client process --------------------------------------------------------------------------


async def _client(target: str, channels: int, per_channel: int) -> None:
    """Open the streams at once; print a line per milestone; on stdin EOF dump what each
    stream received (token, wall time) as JSON."""
    import grpc

    from broker.api.v1 import broker_pb2 as pb
    from broker.api.v1 import broker_pb2_grpc as pb_grpc

    opened = [
        grpc.aio.insecure_channel(
            target, options=[*MANY_STREAMS, ("grpc.use_local_subchannel_pool", 1)]
        )
        for _ in range(channels)
    ]
    stubs = [pb_grpc.BrokerServiceStub(c) for c in opened]
    n = channels * per_channel
    got: list[list[tuple[str, float]]] = [[] for _ in range(n)]
    ended: list[str] = []
    first = 0

    async def watch(i: int) -> None:
        nonlocal first
        call = stubs[i // per_channel].WatchCredentials(
            pb.WatchCredentialsRequest(connector="fake")
        )
        try:
            async for event in call:
                got[i].append((event.credential.config["token"], time.time()))
                if len(got[i]) == 1:
                    first += 1
                    if first == n:
                        print("all-issued", flush=True)
            ended.append("EOF")
        except grpc.aio.AioRpcError as exc:
            ended.append(exc.code().name)

    tasks = [asyncio.create_task(watch(i)) for i in range(n)]
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.read)  # until the parent closes stdin
    lost_before_cancel = list(ended)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for c in opened:
        await c.close()
    print(json.dumps({"got": got, "ended": lost_before_cancel}), flush=True)


# -- driver ----------------------------------------------------------------------------------


class Lifetimes:
    """First mint ``FIRST_LIFETIME`` s, then ``LIFETIME`` s; records each mint's wall time."""

    def __init__(self) -> None:
        self.minted: list[float] = []

    def __call__(self, _resource: str) -> float:
        self.minted.append(time.time())
        return FIRST_LIFETIME if len(self.minted) == 1 else LIFETIME


def _register(daemon: Any, upstream: FakeUpstream) -> None:
    daemon.cli(
        "connector", "register", "fake", "--type", "bench-fake",
        f"url={upstream.url}", f"token={upstream.token}",
        "--resource-type", "bench-resource", "--resource-id", "r1", "--no-verify",
    )  # fmt: skip


def _start_clients(target: str, connections: int) -> list[subprocess.Popen[str]]:
    """Client processes holding STREAMS streams over ``connections`` channels; returns once
    every stream holds its first credential."""
    per_channel = STREAMS // connections
    processes = 1 if connections == 1 else min(CLIENT_PROCESSES, connections)
    share = [connections // processes + (i < connections % processes) for i in range(processes)]
    clients = []
    for channels in share:
        clients.append(
            subprocess.Popen(
                [sys.executable, __file__, "--client", target, str(channels), str(per_channel)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
                cwd=str(ROOT / "bench"),
            )
        )
    for client in clients:
        assert client.stdout is not None
        line = client.stdout.readline()
        if line.strip() != "all-issued":
            raise SystemExit(f"client failed before all streams were issued: {line!r}")
    return clients


def _collect(clients: list[subprocess.Popen[str]]) -> list[dict[str, Any]]:
    results = []
    for client in clients:
        out, _ = client.communicate("", timeout=300)
        results.append(json.loads(out.strip().splitlines()[-1]))
    return results


def run_echo(connections: int) -> dict[str, Any]:
    """The floor: the same clients, transport and relay (the daemon's LoopRelay in front
    of gRPC's socket), against a bare grpc.aio server that sends a credential-sized
    message to every stream on SIGUSR1."""
    import signal

    from fakeprovider.grpcload import EchoServer

    from broker.api.v1 import broker_pb2 as pb

    answer = pb.Credential(
        connector="fake", connector_type="bench-fake", auth_method="token",
        resource_type="bench-resource", resource_id="r1", config={"token": "tok-r1-1"},
        secret_attributes=["token"], connector_revision=1,
    )  # fmt: skip
    answer.expires_at.GetCurrentTime()
    answer.issued_at.GetCurrentTime()
    with tempfile.TemporaryDirectory() as tmp:
        sock = Path(tmp) / "echo.sock"
        with EchoServer(sock, answer.SerializeToString(), relay=FLOOR_RELAY) as (target, pid):
            rss_before = rss_kib(pid)
            started = time.time()
            clients = _start_clients(target, connections)
            open_seconds = time.time() - started
            rss_after = rss_kib(pid)
            time.sleep(1.0)
            mints = [started]
            cpu0 = cpu_seconds(pid)
            for _ in range(RENEWALS):
                mints.append(time.time())
                os.kill(pid, signal.SIGUSR1)
                time.sleep(LIFETIME / 6)
            time.sleep(SETTLE)
            cpu = cpu_seconds(pid) - cpu0
            results = _collect(clients)
    return _summarize(
        connections,
        results,
        mints,
        len(mints),
        open_seconds,
        (rss_after - rss_before) * 1024 / STREAMS,
        cpu,
    )


def run_layout(connections: int) -> dict[str, Any]:
    sys.path.insert(0, str(ROOT))
    from tests.daemon import running_daemon

    lifetimes = Lifetimes()
    env = {**plugin_env(), "BROKER_WATCH_MAX_STREAMS": str(STREAMS * 2)}
    profile = os.environ.get("BENCH_PROFILE")  # a path: the daemon runs under cProfile
    profiled: dict[str, Any] = {}
    if profile:
        out = f"{profile}.{connections}"
        profiled["command"] = [sys.executable, "-m", "cProfile", "-o", out, "-m", "broker.cli.main"]
    with (
        FakeUpstream(lifetime=lifetimes) as upstream,
        tempfile.TemporaryDirectory() as tmp,
        running_daemon(Path(tmp) / "data", "--log-level", "warning", env=env, **profiled) as daemon,
    ):
        _register(daemon, upstream)
        assert daemon.proc is not None
        pid = daemon.proc.pid
        rss_before = rss_kib(pid)
        target = f"unix://{daemon.socket}"
        started = time.time()
        clients = _start_clients(target, connections)
        open_seconds = time.time() - started
        rss_after = rss_kib(pid)
        # The daemon's CPU from the first renewal's mint to SETTLE s after the last one's.
        deadline = time.time() + FIRST_LIFETIME + RENEWALS * LIFETIME
        while len(lifetimes.minted) < 2 and time.time() < deadline:
            time.sleep(0.01)
        cpu0 = cpu_seconds(pid)
        while len(lifetimes.minted) < 1 + RENEWALS and time.time() < deadline:
            time.sleep(0.2)
        time.sleep(SETTLE)
        cpu = cpu_seconds(pid) - cpu0
        results = _collect(clients)
        mints = list(lifetimes.minted)
        mint_count = upstream.mints["r1"]
    return _summarize(
        connections,
        results,
        mints,
        mint_count,
        open_seconds,
        (rss_after - rss_before) * 1024 / STREAMS,
        cpu,
    )


def _summarize(
    connections: int,
    results: list[dict[str, Any]],
    mints: list[float],
    mint_count: int,
    open_seconds: float,
    rss_per_stream: float,
    cpu: float,
) -> dict[str, Any]:
    streams = [s for r in results for s in r["got"]]
    ended = [e for r in results for e in r["ended"]]
    last = min(len(mints), 1 + RENEWALS) - 1
    per_renewal = []
    lost = set()
    skipped = 0  # renewals superseded before a stream read them (latest value only)
    for k in range(1, last + 1):
        latencies = []
        for i, got in enumerate(streams):
            # holding renewal k's credential, or a newer one
            at = next((t for tok, t in got if int(tok.rsplit("-", 1)[1]) >= k + 1), None)
            if at is None:
                lost.add(i)
            else:
                latencies.append((at - mints[k]) * 1000)
                skipped += all(int(tok.rsplit("-", 1)[1]) != k + 1 for tok, _ in got)
        per_renewal.append(latencies)
    lost |= {i for i, got in enumerate(streams) if not got or got[0][0] != "tok-r1-1"}
    all_lat = [x for lat in per_renewal for x in lat]
    return {
        "connections": connections,
        "streams": len(streams),
        "renewals": len(per_renewal),
        "mints": mint_count,
        "open_s": open_seconds,
        "p50": percentile(all_lat, 50) if all_lat else float("nan"),
        "p99": percentile(all_lat, 99) if all_lat else float("nan"),
        "last": max((max(lat) for lat in per_renewal if lat), default=float("nan")),
        "per_renewal_p99": [percentile(lat, 99) if lat else float("nan") for lat in per_renewal],
        "lost": len(lost) + len(ended),
        "skipped": skipped,
        "ended": ended[:5],
        "rss_per_stream": rss_per_stream,
        "cpu_us_per_event": cpu / len(all_lat) * 1e6 if all_lat else float("nan"),
        "delivered": len(all_lat),
    }


def main() -> None:
    load = os.getloadavg()
    rows = []
    layouts = [int(x) for x in os.environ.get("BENCH_LAYOUTS", "1,100").split(",")]
    floor = os.environ.get("BENCH_FLOOR", "1")  # 0: the daemon only; "only": the floor only
    runs = [(c, False) for c in layouts] if floor != "only" else []
    if floor != "0":
        runs += [(c, True) for c in layouts]
    for connections, floor in runs:
        r = run_echo(connections) if floor else run_layout(connections)
        cpu_us = r.get("cpu_us_per_event", float("nan"))
        rows.append(
            [
                (f"floor: bare grpc.aio (relay {FLOOR_RELAY}), " if floor else "daemon, ")
                + f"{connections} connection{'s' if connections > 1 else ''}",
                f"{r['open_s']:.1f} s",
                f"{r['p50']:.0f} ms",
                f"{r['p99']:.0f} ms",
                f"{r['last']:.0f} ms",
                str(r["lost"]),
                f"{r['rss_per_stream'] / 1024:.1f} KiB",
                f"{cpu_us:.0f} µs",
                "≤ 500 ms, 0 lost",
            ]
        )
        print(json.dumps(r), file=sys.stderr)
    print(
        f"\n{STREAMS:,} watch streams of one key, {RENEWALS} renewals each, load average "
        f"before {load[0]:.1f} / after {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs\n"
    )
    header = ["layout", "all open in", "p50", "p99", "last stream", "lost", "RSS / stream",
              "daemon CPU / event", "goal"]  # fmt: skip
    print(table(header, rows))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--client":
        sys.path.insert(0, str(ROOT))
        asyncio.run(_client(sys.argv[2], int(sys.argv[3]), int(sys.argv[4])))
    else:
        main()
