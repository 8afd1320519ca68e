"""1,000 concurrent cold requests for one key: upstream mints and latency beyond the upstream's.

Each round sends ``BENCH_COLD_CALLS`` (1,000) GetCredentials at once, from a
grpc.aio client in a separate process, for a resource nobody asked for yet,
to the real daemon with the ``bench-fake`` connector type, whose fake
upstream takes ``UPSTREAM_DELAY`` (100 ms) per mint and counts mints.

Baselines measured in the same run: the same burst against an empty grpc.aio
echo server whose handler sleeps 100 ms (what the transport alone adds to a
100 ms wait under a 1,000-call burst), and the same burst straight into an
in-process CredentialCache whose mint sleeps 100 ms (the cache alone, no gRPC).

Goals: exactly 1 upstream mint per round; report p99 − upstream latency.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from common import median, percentile, table
from fakeprovider import free_port, plugin_env, scrape
from fakeprovider.grpcload import EchoServer, run_client
from fakeprovider.upstream import FakeUpstream

from broker.api.v1 import broker_pb2 as pb
from broker.cache.cache import CacheKey, CredentialCache
from broker.clock import SystemClock
from broker.model import ClientCredential
from tests.daemon import running_daemon

CALLS = int(os.environ.get("BENCH_COLD_CALLS", "1000"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "5"))
UPSTREAM_DELAY = 0.100
RESOURCE_TYPE = "bench-resource"


async def in_process_round(cache: CredentialCache, resource: str) -> tuple[list[float], int]:
    """CALLS tasks asking one cold key at once; latencies (ms) and upstream mints."""
    mints = 0

    async def mint() -> ClientCredential:
        nonlocal mints
        mints += 1
        await asyncio.sleep(UPSTREAM_DELAY)
        return ClientCredential(
            "bench-fake",
            "token",
            RESOURCE_TYPE,
            resource,
            {"token": "t"},
            frozenset({"token"}),
            expires_at=datetime.now(UTC) + timedelta(hours=1),
        )

    key = CacheKey("conn", 1, RESOURCE_TYPE, resource)
    samples: list[float] = []

    async def one() -> None:
        start = time.perf_counter()
        await cache.get(key, mint)
        samples.append((time.perf_counter() - start) * 1000)

    await asyncio.gather(*(one() for _ in range(CALLS)))
    return samples, mints


async def in_process_rounds() -> tuple[list[list[float]], list[int]]:
    """The cache alone (no gRPC): ROUNDS cold keys, the mint sleeping UPSTREAM_DELAY."""
    cache = CredentialCache(SystemClock())
    latencies: list[list[float]] = []
    mints: list[int] = []
    async with cache.running():
        for r in range(ROUNDS):
            samples, count = await in_process_round(cache, f"cold-{r}")
            latencies.append(samples)
            mints.append(count)
    return latencies, mints


def row(label: str, rounds: list[dict[str, Any]], mints: list[int] | None, goal: str) -> list[Any]:
    samples = [x for r in rounds for x in r["latencies_ms"]]
    errors = sum(len(r.get("errors", ())) for r in rounds)
    delay_ms = UPSTREAM_DELAY * 1000
    p99 = percentile(samples, 99)
    mint_text = "-" if mints is None else f"{sum(mints)} ({'/'.join(map(str, mints))})"
    return [
        label,
        f"{len(rounds)} × {CALLS}",
        mint_text,
        errors,
        f"{median(samples):.0f}",
        f"{p99:.0f}",
        f"{max(samples):.0f}",
        f"{p99 - delay_ms:.0f}",
        goal,
    ]


def main() -> None:
    with (
        tempfile.TemporaryDirectory() as tmp,
        FakeUpstream(delay=UPSTREAM_DELAY, lifetime=3600) as upstream,
    ):
        metrics_port = free_port()
        with running_daemon(
            Path(tmp) / "data",
            "--log-level",
            "info",
            "--metrics",
            f"127.0.0.1:{metrics_port}",
            env=plugin_env(),
        ) as daemon:
            daemon.cli(
                "connector",
                "register",
                "cold",
                "--type",
                "bench-fake",
                "--auth-method",
                "token",
                f"url={upstream.url}",
                f"token={upstream.token}",
                "--no-verify",
            )
            with daemon.stub() as stub:
                answer = stub.GetCredentials(
                    pb.GetCredentialsRequest(
                        connector="cold", resource_type=RESOURCE_TYPE, resource_id="warm-up"
                    )
                )
            upstream.reset()
            broker_target = f"unix://{daemon.socket}"
            echo = EchoServer(Path(tmp) / "echo.sock", answer.SerializeToString(), UPSTREAM_DELAY)
            with echo as (echo_target, _):
                phases: list[dict[str, Any]] = []
                for r in range(ROUNDS):
                    phases.append(
                        {
                            "mode": "burst",
                            "target": echo_target,
                            "n": CALLS,
                            "request": {"connector": "cold"},
                        }
                    )
                    phases.append(
                        {
                            "mode": "burst",
                            "target": broker_target,
                            "n": CALLS,
                            "request": {
                                "connector": "cold",
                                "resource_type": RESOURCE_TYPE,
                                "resource_id": f"cold-{r}",
                            },
                        }
                    )
                results = run_client({"targets": [broker_target, echo_target], "phases": phases})
            counters = scrape(metrics_port)
        broker_mints = [upstream.mints[f"cold-{r}"] for r in range(ROUNDS)]
        upstream_ms = [d * 1000 for d in upstream.durations]
    local_latencies, local_mints = asyncio.run(in_process_rounds())

    rows = [
        row(
            "broker daemon over the Unix socket",
            results[1::2],
            broker_mints,
            "exactly 1 per round " + ("✓" if all(m == 1 for m in broker_mints) else "✗"),
        ),
        row("echo server sleeping 100 ms (baseline)", results[0::2], None, "-"),
        row(
            "CredentialCache in-process (no gRPC)",
            [{"latencies_ms": s} for s in local_latencies],
            local_mints,
            "exactly 1 per round " + ("✓" if all(m == 1 for m in local_mints) else "✗"),
        ),
    ]
    print(
        table(
            [
                "path",
                "calls",
                "upstream mints (per round)",
                "errors",
                "p50 ms",
                "p99 ms",
                "max ms",
                "p99 − 100 ms upstream",
                "goal",
            ],
            rows,
        )
    )
    walls = [r["wall_ms"] for r in results[1::2]]
    echo_walls = [r["wall_ms"] for r in results[0::2]]
    print(
        f"\nUpstream time per mint as the fake upstream saw it: "
        f"{median(upstream_ms):.0f} ms median. Whole burst, first call sent to last answer: "
        f"broker {median(walls):.0f} ms, echo {median(echo_walls):.0f} ms (medians). "
        f"Daemon counters: {counters.get('broker_cache_misses_total', 0):.0f} misses, "
        f"{counters.get('broker_credential_mints_total', 0):.0f} mints (incl. the warm-up)."
    )


if __name__ == "__main__":
    main()
