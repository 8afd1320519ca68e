"""The daemon at scale: start-up time to READY and memory with 10,000 connectors,
100,000 cached credentials and 10,000 watchers.

1. A SQLite store is filled in-process with ``CONNECTORS`` ``bench-fake``
   connectors (through :meth:`BrokerService.register`, so the rows are sealed as
   the daemon writes them), with the key file the daemon then reads.
2. Start-up: the real daemon (a subprocess, ``bench-fake`` on its
   ``PYTHONPATH``) is started ``STARTS`` times on that store and on an empty
   one. Time to READY is from ``Popen`` to the ``READY=1`` datagram on
   ``$NOTIFY_SOCKET`` (sent once the connectors are loaded and every socket
   accepts); RSS is read from /proc at that moment.
3. Cache: one running daemon gets ``CREDENTIALS`` distinct GetCredentials
   calls (``CREDENTIALS / CONNECTORS`` resources of each connector), each a
   mint from the fake upstream (1 h lifetimes: nothing renews during the run),
   so the cache ends up holding them all (``cache_max_entries`` raised to fit,
   checked with the daemon's metrics). Memory per cached credential: the
   daemon's RSS after minus before, divided by the credentials.
4. Watchers: ``WATCHERS`` WatchCredentials streams on as many cached
   credentials, held open; memory per watcher likewise (gRPC stream state,
   the handler's task, the hub subscription).

RSS counts everything the process holds (allocator slack included), so the
per-item figures are what a deployment should budget, not object sizes.
"""

from __future__ import annotations

import asyncio
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from common import table
from fakeprovider import PLUGIN_DIR, free_port, plugin_env, scrape
from fakeprovider.grpcload import rss_kib, run_client
from fakeprovider.upstream import FakeUpstream

from tests.daemon import BROKER, running_daemon

sys.path.insert(0, str(PLUGIN_DIR))
from broker_bench_connector import BenchProvider

CONNECTORS = int(os.environ.get("BENCH_CONNECTORS", "10000"))
CREDENTIALS = int(os.environ.get("BENCH_CREDENTIALS", "100000"))
WATCHERS = int(os.environ.get("BENCH_WATCHERS", "10000"))
STARTS = int(os.environ.get("BENCH_STARTS", "3"))
FILL_CONCURRENCY = 32
LIFETIME = 3600.0


async def populate(data_dir: Path, upstream: FakeUpstream, n: int) -> float:
    """``n`` connectors in the store the daemon will open; seconds it took."""
    from broker.audit import AuditLog
    from broker.cache.cache import CredentialCache
    from broker.clock import SystemClock
    from broker.connectors import ConnectorDraft
    from broker.discovery import Discovery, DiscoveryLimits
    from broker.identity.principal import local_user
    from broker.policy import build_policy
    from broker.providers.base import ProviderContext
    from broker.providers.registry import ProviderRegistry
    from broker.service import BrokerService
    from broker.store.crypto import SecretBox, load_secret_key
    from broker.store.sqlite import SqliteStore

    clock = SystemClock()
    data_dir.mkdir(parents=True, mode=0o700)
    key = load_secret_key(data_dir, {})  # creates data_dir/secret.key, as the daemon would
    store = SqliteStore(data_dir / "broker.db", SecretBox(key), clock)
    await store.open()
    registry = ProviderRegistry({"bench-fake": BenchProvider(ProviderContext(clock=clock))})
    service = BrokerService(
        store,
        registry,
        CredentialCache(clock),
        Discovery(registry, clock, DiscoveryLimits()),
        clock,
        build_policy(os.getuid(), ()),
    )
    service.audit = AuditLog(open(os.devnull, "w"))  # noqa: SIM115 (one line per register)
    root = local_user(uid=os.getuid())
    began = time.perf_counter()
    try:
        for i in range(n):
            await service.register(
                ConnectorDraft(
                    name=f"c{i:05d}",
                    connector_type="bench-fake",
                    auth_method="token",
                    resource_type=None,
                    resource_id=None,
                    config={"url": upstream.url, "token": upstream.token},
                    labels={"team": f"t{i % 50}"},
                    expiration_seconds=None,
                    expires_at=None,
                ),
                root,
                verify=False,
            )
    finally:
        await registry.aclose()
        await store.close()
    return time.perf_counter() - began


class Notified:
    """A ``$NOTIFY_SOCKET`` that notes when READY=1 arrives and the sender's RSS then."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(str(path))
        self.pid = 0
        self.ready_at: float | None = None
        self.rss_kib = 0
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            try:
                data = self._sock.recv(4096)
            except OSError:
                return
            if b"READY=1" in data.split(b"\n") and self.ready_at is None:
                self.ready_at = time.monotonic()
                if self.pid:
                    self.rss_kib = rss_kib(self.pid)

    def close(self) -> None:
        self._sock.close()


def start_once(data_dir: Path, tmp: Path, env: dict[str, str]) -> tuple[float, int]:
    """Seconds from Popen to READY=1, and the RSS (KiB) at READY."""
    notify_path = tmp / f"notify-{time.monotonic_ns()}"
    notified = Notified(notify_path)
    runtime = tmp / "runtime"
    runtime.mkdir(mode=0o700, exist_ok=True)
    full_env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("BROKER_")},
        **env,
        "NOTIFY_SOCKET": str(notify_path),
        "XDG_RUNTIME_DIR": str(runtime),
    }
    began = time.monotonic()
    proc = subprocess.Popen(
        [*BROKER, "serve", "--data-dir", str(data_dir), "--log-level", "warning"],
        env=full_env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    notified.pid = proc.pid
    try:
        deadline = began + 120
        while notified.ready_at is None:
            if proc.poll() is not None:
                raise RuntimeError(f"daemon exited with {proc.returncode} before READY")
            if time.monotonic() > deadline:
                raise TimeoutError("no READY=1 within 120 s")
            time.sleep(0.005)
        while not notified.rss_kib:
            time.sleep(0.001)
        return notified.ready_at - began, notified.rss_kib
    finally:
        proc.terminate()
        proc.wait(30)
        notified.close()


def main() -> None:
    rows: list[list[Any]] = []
    with tempfile.TemporaryDirectory() as tmp_name, FakeUpstream(lifetime=LIFETIME) as upstream:
        tmp = Path(tmp_name)
        data = tmp / "data"
        empty = tmp / "empty"
        empty.mkdir(mode=0o700)
        fill_seconds = asyncio.run(populate(data, upstream, CONNECTORS))
        env = plugin_env()

        starts: dict[str, list[tuple[float, int]]] = {"empty": [], "full": []}
        for _ in range(STARTS):  # alternating, so load on the machine hits both alike
            starts["empty"].append(start_once(empty, tmp, env))
            starts["full"].append(start_once(data, tmp, env))
        for label, runs in (
            ("empty store", starts["empty"]),
            (f"{CONNECTORS:,} connectors", starts["full"]),
        ):
            rows.append(
                [
                    f"start-up, {label}",
                    f"{statistics.median(t for t, _ in runs) * 1000:,.0f} ms to READY "
                    f"(runs: {', '.join(f'{t * 1000:.0f}' for t, _ in runs)})",
                    f"{statistics.median(r for _, r in runs) / 1024:.1f} MiB at READY",
                ]
            )

        per_connector = (
            (
                statistics.median(r for _, r in starts["full"])
                - statistics.median(r for _, r in starts["empty"])
            )
            * 1024
            / CONNECTORS
        )
        metrics_port = free_port()
        with running_daemon(
            tmp / "data",
            "--log-level",
            "warning",
            "--metrics",
            f"127.0.0.1:{metrics_port}",
            env={**env, "BROKER_CACHE_MAX_ENTRIES": str(CREDENTIALS * 2)},
        ) as daemon:
            assert daemon.proc is not None
            pid = daemon.proc.pid
            per = max(1, CREDENTIALS // CONNECTORS)
            requests = [
                [f"c{i % CONNECTORS:05d}", "bench-resource", f"r{i // CONNECTORS}"]
                for i in range(CONNECTORS * per)
            ][:CREDENTIALS]
            time.sleep(1.0)
            rss_idle = rss_kib(pid)
            (fill,) = run_client(
                {
                    "targets": [f"unix://{daemon.socket}"],
                    "phases": [
                        {
                            "mode": "many",
                            "target": f"unix://{daemon.socket}",
                            "concurrency": FILL_CONCURRENCY,
                            "requests": requests,
                        }
                    ],
                },
                timeout=3600,
            )
            time.sleep(2.0)  # let the last mints' buffers go
            rss_cached = rss_kib(pid)
            counters = scrape(metrics_port)
            cached = int(counters.get("broker_cache_entries", 0))
            (watch,) = run_client(
                {
                    "targets": [f"unix://{daemon.socket}"],
                    "phases": [
                        {
                            "mode": "watchers",
                            "target": f"unix://{daemon.socket}",
                            "server_pid": pid,
                            "requests": requests[:WATCHERS],
                            "settle": 2.0,
                        }
                    ],
                },
                timeout=3600,
            )

    mints = sum(upstream.mints.values())
    per_credential = (rss_cached - rss_idle) * 1024 / max(fill["calls"], 1)
    per_watcher = (
        (watch["rss_after_kib"] - watch["rss_before_kib"]) * 1024 / max(watch["watchers"], 1)
    )
    rows += [
        [
            f"{CONNECTORS:,} connectors loaded, idle",
            f"{rss_idle / 1024:.1f} MiB RSS",
            f"≈ {per_connector / 1024:.1f} KiB per connector (RSS at READY vs empty store)",
        ],
        [
            f"+ {fill['calls']:,} cached credentials",
            f"{rss_cached / 1024:.1f} MiB RSS (filled in {fill['elapsed']:.0f} s, "
            f"{fill['calls'] / fill['elapsed']:,.0f} mints/s)",
            f"≈ {per_credential / 1024:.2f} KiB per cached credential",
        ],
        [
            f"+ {watch['watchers']:,} watchers (gRPC streams, {watch['connections']} connections)",
            f"{watch['rss_after_kib'] / 1024:.1f} MiB RSS "
            f"(opened in {watch['open_seconds']:.1f} s)",
            f"≈ {per_watcher / 1024:.1f} KiB per watcher",
        ],
    ]
    print(table(["what", "measured", "per item"], rows))
    print(
        f"\nStore filled in-process in {fill_seconds:.0f} s. Mints by the fake upstream: "
        f"{mints:,}; errors filling: {fill['errors'] or 'none'}, watching: "
        f"{watch['errors'] or 'none'}; cache entries per the daemon's metrics after filling: "
        f"{cached:,}. "
        f"Load average at the end: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs."
    )


if __name__ == "__main__":
    main()
