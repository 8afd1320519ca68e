"""A daemon restart with 1,000 persisted credentials: time to READY, time until every
credential is served again, and the upstream mints avoided, against the same
restart with ``persist_cache = false`` in the same run.

1. A SQLite store is filled in-process with ``CONNECTORS`` ``bench-fake``
   connectors (as bench_scale.py does), each serving ``PER_CONNECTOR``
   resources: ``CONNECTORS * PER_CONNECTOR`` credentials (1,000 by default).
2. A first daemon mints them all (the fake upstream answers after
   ``MINT_DELAY`` seconds, a fast real token endpoint; 1 h lifetimes, so
   nothing renews during the run) and writes them to the store behind the cache;
   it is stopped once the store holds them all.
3. The daemon is then restarted ``STARTS`` times each way, alternating:
   persist_cache on (it reads the rows back before READY) and off. Each start
   is timed from ``Popen`` to the ``READY=1`` datagram on ``$NOTIFY_SOCKET``,
   then a client (in this process, gRPC over the Unix socket, ``CONCURRENCY``
   calls in flight) asks for every credential once: "all served" is READY plus
   that. The fake upstream counts the mints each restart caused.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc
from bench_scale import Notified, populate
from common import table
from fakeprovider import plugin_env
from fakeprovider.upstream import FakeUpstream

from broker.api.v1 import broker_pb2 as pb
from broker.api.v1 import broker_pb2_grpc as pb_grpc
from tests.daemon import BROKER

CONNECTORS = int(os.environ.get("BENCH_CONNECTORS", "100"))
PER_CONNECTOR = int(os.environ.get("BENCH_PER_CONNECTOR", "10"))
STARTS = int(os.environ.get("BENCH_STARTS", "5"))
MINT_DELAY = float(os.environ.get("BENCH_MINT_DELAY", "0.05"))
CONCURRENCY = 32
LIFETIME = 3600.0


def requests() -> list[tuple[str, str]]:
    return [(f"c{c:05d}", f"r{r}") for c in range(CONNECTORS) for r in range(PER_CONNECTOR)]


async def fetch_all(sock: Path) -> tuple[float, int]:
    """Seconds to get every credential once (CONCURRENCY at a time), and the errors."""
    todo = requests()
    errors = 0
    async with grpc.aio.insecure_channel(f"unix://{sock}") as channel:
        stub = pb_grpc.BrokerServiceStub(channel)
        slots = asyncio.Semaphore(CONCURRENCY)

        async def one(name: str, rid: str) -> None:
            nonlocal errors
            async with slots:
                try:
                    await stub.GetCredentials(
                        pb.GetCredentialsRequest(
                            connector=name, resource_type="bench-resource", resource_id=rid
                        ),
                        timeout=60,
                    )
                except grpc.aio.AioRpcError:
                    errors += 1

        began = time.monotonic()
        await asyncio.gather(*(one(n, r) for n, r in todo))
        return time.monotonic() - began, errors


def persisted_rows(data: Path) -> int:
    try:
        with sqlite3.connect(data / "broker.db") as db:
            return int(db.execute("SELECT COUNT(*) FROM persisted_credentials").fetchone()[0])
    except sqlite3.Error:
        return 0


def run(
    data: Path, tmp: Path, env: dict[str, str], *, wait_persisted: bool = False
) -> dict[str, Any]:
    """Start the daemon, time READY, fetch every credential, stop it."""
    notify_path = tmp / f"notify-{time.monotonic_ns()}"
    notified = Notified(notify_path)
    runtime = tmp / "runtime"
    runtime.mkdir(mode=0o700, exist_ok=True)
    full_env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("BROKER_")},
        **env,
        "NOTIFY_SOCKET": str(notify_path),
        "XDG_RUNTIME_DIR": str(runtime),
        "BROKER_LOG_FORMAT": "json",
    }
    log_path = tmp / f"daemon-{time.monotonic_ns()}.log"
    began = time.monotonic()
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [*BROKER, "serve", "--data-dir", str(data), "--log-level", "info"],
            env=full_env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    notified.pid = proc.pid
    try:
        while notified.ready_at is None:
            if proc.poll() is not None:
                raise RuntimeError(f"daemon exited with {proc.returncode} before READY")
            if time.monotonic() > began + 120:
                raise TimeoutError("no READY=1 within 120 s")
            time.sleep(0.002)
        ready = notified.ready_at - began
        fetch, errors = asyncio.run(fetch_all(data / "broker.sock"))
        if wait_persisted:
            deadline = time.monotonic() + 60
            while persisted_rows(data) < len(requests()) and time.monotonic() < deadline:
                time.sleep(0.05)
        restore = restore_seconds(log_path)  # logged before READY
        return {"ready": ready, "served": ready + fetch, "errors": errors, "restore": restore}
    finally:
        proc.terminate()
        proc.wait(30)
        notified.close()


def restore_seconds(log_path: Path) -> float | None:
    """What the daemon logged for reading its persisted credentials back (None: off)."""
    for line in log_path.read_text(errors="replace").splitlines():
        if '"persisted_credentials_restored"' in line:
            return float(json.loads(line)["seconds"])
    return None


def main() -> None:
    total = CONNECTORS * PER_CONNECTOR
    with (
        tempfile.TemporaryDirectory() as tmp_name,
        FakeUpstream(lifetime=LIFETIME, delay=MINT_DELAY) as upstream,
    ):
        tmp = Path(tmp_name)
        data = tmp / "data"
        asyncio.run(populate(data, upstream, CONNECTORS))
        env = plugin_env()
        first = run(data, tmp, env, wait_persisted=True)
        rows_written = persisted_rows(data)
        runs: dict[str, list[dict[str, Any]]] = {"on": [], "off": []}
        for _ in range(STARTS):  # alternating: machine load hits both alike
            for mode in ("on", "off"):
                before = sum(upstream.mints.values())
                flag = {"BROKER_PERSIST_CACHE": "true" if mode == "on" else "false"}
                result = run(data, tmp, {**env, **flag})
                result["mints"] = sum(upstream.mints.values()) - before
                runs[mode].append(result)

    def median(mode: str, what: str) -> float:
        return statistics.median(r[what] for r in runs[mode])

    out = []
    for mode, label in (("on", "persist_cache = true"), ("off", "persist_cache = false")):
        mints = [r["mints"] for r in runs[mode]]
        restores = [r["restore"] for r in runs[mode] if r["restore"] is not None]
        out.append(
            [
                f"restart, {label}",
                f"{median(mode, 'ready') * 1000:,.0f} ms",
                f"{statistics.median(restores) * 1000:,.0f} ms" if restores else "—",
                f"{median(mode, 'served') * 1000:,.0f} ms",
                f"{statistics.median(mints):,.0f} (runs: {', '.join(map(str, mints))})",
                f"{total - statistics.median(mints):,.0f}",
            ]
        )
    print(
        table(
            [
                "",
                "to READY",
                "of which reading back",
                f"to all {total:,} served",
                "upstream mints",
                "mints avoided",
            ],
            out,
        )
    )
    ratio = median("off", "served") / max(median("on", "served"), 1e-9)
    errors = sum(r["errors"] for rs in runs.values() for r in rs) + first["errors"]
    print(
        f"\n{total:,} credentials ({CONNECTORS} connectors x {PER_CONNECTOR} resources), "
        f"fake upstream {MINT_DELAY * 1000:.0f} ms per mint, {CONCURRENCY} calls in flight; "
        f"medians of {STARTS} starts each. Rows persisted by the first run: {rows_written:,}. "
        f"All served {ratio:.1f}x sooner with the persistent cache. Errors: {errors or 'none'}. "
        f"Load average at the end: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs.",
        file=sys.stdout,
    )


if __name__ == "__main__":
    main()
