"""A fleet on PostgreSQL: how fast a change made through one daemon reaches the others.

Propagation: three real daemons (A, B, C) on one real PostgreSQL (tests/pg.py,
loopback); ``BENCH_FLEET_UPDATES`` (1,000) updates of one docker connector
through A, one at a time. For each: the time from sending it to A until A
acknowledged it, until B and C applied it (the ``connector_changed_elsewhere``
line each logs when its catalog took the change, with its timestamp), and until
a watcher on C received the ``updated`` event carrying the new revision.
Baseline, measured in the same run, blocks interleaved (SQLite, PostgreSQL,
SQLite, PostgreSQL): the same update through one daemon on SQLite and a watcher
on that same daemon.

Throughput: ``BENCH_FLEET_REGISTERS`` (500) registers with 8 in flight, through
one daemon on SQLite and one on PostgreSQL (pairwise, A,B,A,B), then through
all three PostgreSQL daemons at once.

Goal: p99 ≤ 100 ms from the write to the watcher on C.
"""

from __future__ import annotations

import base64
import json
import os
import queue
import shutil
import tempfile
import threading
import time
from concurrent import futures
from datetime import datetime
from pathlib import Path

from common import percentile, table

from broker.api.v1 import broker_pb2 as pb
from broker.api.v1 import broker_pb2_grpc as pb_grpc
from broker.store.crypto import generate_key
from tests.daemon import Daemon
from tests.pg import PostgresServer

UPDATES = int(os.environ.get("BENCH_FLEET_UPDATES", "1000"))
REGISTERS = int(os.environ.get("BENCH_FLEET_REGISTERS", "500"))
IN_FLIGHT = 8
BLOCKS = 2  # per backend, interleaved
NAME = "propagated"


def register(name: str) -> pb.RegisterConnectorRequest:
    return pb.RegisterConnectorRequest(
        name=name,
        connector_type="docker",
        auth_method="password",
        config={"username": "u", "password": "p0", "registry": "registry.example:5000"},
        no_verify=True,
    )


class Watcher(threading.Thread):
    """Watches NAME on one daemon; the time each revision's credential arrived."""

    def __init__(self, daemon: Daemon) -> None:
        super().__init__(daemon=True)
        self.seen: queue.Queue[tuple[int, float]] = queue.Queue()
        self._daemon = daemon

    def run(self) -> None:
        import grpc

        with grpc.insecure_channel(f"unix://{self._daemon.socket}") as channel:
            stub = pb_grpc.BrokerServiceStub(channel)
            try:
                for event in stub.WatchCredentials(pb.WatchCredentialsRequest(connector=NAME)):
                    self.seen.put((event.credential.connector_revision, time.time()))
            except grpc.RpcError:
                return

    def wait_for(self, revision: int, timeout: float = 10.0) -> float:
        deadline = time.monotonic() + timeout
        while True:
            got, at = self.seen.get(timeout=max(0.001, deadline - time.monotonic()))
            if got >= revision:
                return at


def applied_at(daemon: Daemon) -> dict[int, float]:
    """Revision -> when the daemon's catalog applied it (from its JSON log)."""
    out: dict[int, float] = {}
    for line in daemon.log().splitlines():
        if '"connector_changed_elsewhere"' not in line:
            continue
        entry = json.loads(line)
        if entry.get("connector") == NAME:
            out[int(entry["revision"])] = datetime.fromisoformat(entry["timestamp"]).timestamp()
    return out


def propagate(
    writer: Daemon, watched: Daemon, count: int, revision: int
) -> tuple[list[float], list[float], dict[int, float], int]:
    """``count`` updates through ``writer``; ack and watcher times (ms), send times."""
    watcher = Watcher(watched)
    watcher.start()
    watcher.wait_for(revision)  # the current credential first
    acks, seen, sent = [], [], {}
    with writer.stub() as stub:
        for _ in range(count):
            revision += 1
            started = time.time()
            stub.UpdateConnector(
                pb.UpdateConnectorRequest(
                    name=NAME, config={"password": f"p{revision}"}, no_verify=True
                ),
                timeout=10,
            )
            acks.append((time.time() - started) * 1000)
            seen.append((watcher.wait_for(revision) - started) * 1000)
            sent[revision] = started
    return acks, seen, sent, revision


def registers_per_second(daemons: list[Daemon], prefix: str) -> float:
    """REGISTERS registers through each daemon at once, IN_FLIGHT at a time per daemon."""

    def through(daemon: Daemon, tag: str) -> None:
        with daemon.stub() as stub, futures.ThreadPoolExecutor(IN_FLIGHT) as pool:
            calls = [
                pool.submit(stub.RegisterConnector, register(f"{prefix}-{tag}-{i}"), timeout=30)
                for i in range(REGISTERS)
            ]
            for call in calls:
                call.result()

    started = time.monotonic()
    with futures.ThreadPoolExecutor(len(daemons)) as pool:
        for done in [pool.submit(through, d, str(i)) for i, d in enumerate(daemons)]:
            done.result()
    return REGISTERS * len(daemons) / (time.monotonic() - started)


def start(daemons: list[Daemon]) -> None:
    with futures.ThreadPoolExecutor(len(daemons)) as pool:
        for done in [pool.submit(d.start, timeout=60) for d in daemons]:
            done.result()


def ms(values: list[float]) -> str:
    return f"{percentile(values, 50):.1f} / {percentile(values, 99):.1f}"


def main() -> None:
    root = Path(tempfile.mkdtemp(prefix="bench-fleet-"))
    server = PostgresServer()
    server.start()
    key = base64.b64encode(generate_key()).decode()
    database = server.create_database()
    fleet_env = {"BROKER_DATABASE": server.url(database), "BROKER_SECRET_KEY": key}
    fleet = [Daemon(root / name, fleet_env) for name in ("a", "b", "c")]
    solo = Daemon(root / "sqlite", {"BROKER_SECRET_KEY": key})
    a, b, c = fleet
    try:
        start([*fleet, solo])
        for d in (a, solo):
            with d.stub() as stub:
                stub.RegisterConnector(register(NAME), timeout=10)
        time.sleep(0.5)  # B and C learn of it

        per_block = UPDATES // BLOCKS
        pg_rev = sqlite_rev = 1
        sqlite_ack: list[float] = []
        sqlite_seen: list[float] = []
        pg_ack: list[float] = []
        pg_seen: list[float] = []
        sent: dict[int, float] = {}
        for _ in range(BLOCKS):
            acks, seen, _, sqlite_rev = propagate(solo, solo, per_block, sqlite_rev)
            sqlite_ack += acks
            sqlite_seen += seen
            acks, seen, block_sent, pg_rev = propagate(a, c, per_block, pg_rev)
            pg_ack += acks
            pg_seen += seen
            sent.update(block_sent)
        time.sleep(0.5)
        applied = {}
        for name, daemon in (("B", b), ("C", c)):
            at = applied_at(daemon)
            # A daemon reads the connector when it applies a change: if the next update
            # was already committed, it installs that one and skips the one in between.
            # A revision counts as applied when it or a newer one was.
            first_at = {}
            for revision in sorted(sent, reverse=True):
                newer = [at[r] for r in at if r >= revision]
                assert newer, f"{name} never applied revision {revision}"
                first_at[revision] = min(newer)
            applied[name] = [(first_at[r] - t) * 1000 for r, t in sent.items()]

        sqlite_rates, pg_rates = [], []
        for round_ in range(2):  # pairwise: A, B, A, B
            sqlite_rates.append(registers_per_second([solo], f"s{round_}"))
            pg_rates.append(registers_per_second([a], f"p{round_}"))
        fleet_rate = registers_per_second(fleet, "f")
    finally:
        for d in [*fleet, solo]:
            if d.proc is not None and d.proc.poll() is None:
                d.stop()
        server.destroy()
        shutil.rmtree(root, ignore_errors=True)

    sqlite_rate = sum(sqlite_rates) / len(sqlite_rates)
    pg_rate = sum(pg_rates) / len(pg_rates)
    print(f"\n{UPDATES} updates per backend in {BLOCKS} interleaved blocks (p50 / p99, ms)")
    print(
        table(
            ["measured from sending the update", "SQLite, 1 daemon", "PostgreSQL, 3 daemons"],
            [
                ["acknowledged by the writer (A)", ms(sqlite_ack), ms(pg_ack)],
                ["applied by B", "—", ms(applied["B"])],
                ["applied by C", "—", ms(applied["C"])],
                ["a watcher sees `updated` (on C)", ms(sqlite_seen), ms(pg_seen)],
            ],
        )
    )
    print(f"\nregisters per second ({REGISTERS} per daemon, {IN_FLIGHT} in flight per daemon)")
    print(
        table(
            ["through", "SQLite", "PostgreSQL", "ratio"],
            [
                [
                    "1 daemon",
                    f"{sqlite_rate:.0f}",
                    f"{pg_rate:.0f}",
                    f"{pg_rate / sqlite_rate:.2f}",
                ],
                ["3 daemons at once (sum)", "—", f"{fleet_rate:.0f}", "—"],
            ],
        )
    )
    p99 = percentile(pg_seen, 99)
    verdict = "met" if p99 <= 100 else "MISSED"
    print(f"\ngoal p99 <= 100 ms to the watcher on C: {verdict} ({p99:.1f} ms)")


if __name__ == "__main__":
    main()
