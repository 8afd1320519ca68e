"""list-resources over 100 connectors whose upstream answers in 200 ms.

Starts its own daemon (default discovery limits; ``BROKER_DISCOVERY_*`` variables in
this environment are passed on, to try other limits) with the ``slow`` test plugin,
and the plugin's HTTP upstream. Measures, in the same run:

* one-by-one (the baseline): list-resources of one connector at a time over a
  subset, extrapolated to 100 — what a tool that walks connectors in turn takes;
* every connector at once (cold, ``refresh``): goal ≤ 0.6 s;
* a repeated listing answered from the result cache: goal ≤ 50 ms (next to an empty
  listing, the round trip's own floor);
* the same through the CLI (process start included) next to `broker version`.

Goals: cold ≤ 0.6 s (one-by-one ≥ 20 s), cached ≤ 50 ms.

Then ``--failing`` (or ``BENCH_FAILING=1``; run by default after the above): 40
connectors, 2 of them failing (a token the upstream refuses after its delay), listed
through the CLI from the cache, next to `broker version`, once with failures cached
for ``discovery_failure_ttl_seconds`` (default 10 s) and once with 0 (every listing
asks the failing ones again: the behaviour before). Goal: cached ≤ 50 ms over the
CLI's own start-up.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from common import median, percentile, table

from broker.api.v1 import broker_pb2 as pb
from tests.daemon import BROKER, running_daemon
from tests.plugins.slow_upstream import GOOD_TOKEN, SlowUpstream, plugin_env

CONNECTORS = int(os.environ.get("BENCH_CONNECTORS", "100"))
DELAY = 0.2
#: Connectors asked one at a time for the baseline (then extrapolated).
SEQUENTIAL_SUBSET = 10
COLD_RUNS = 5
CACHED_RUNS = 30
CLI_RUNS = 3


def timed(fn: Callable[[], object], runs: int) -> list[float]:
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return samples


def main() -> None:
    passed = {k: v for k, v in os.environ.items() if k.startswith("BROKER_DISCOVERY_")}
    with (
        SlowUpstream(delay=DELAY, page_size=100) as upstream,
        tempfile.TemporaryDirectory() as tmp,
        running_daemon(Path(tmp) / "data", env=plugin_env(passed)) as daemon,
        daemon.stub() as stub,
    ):
        for i in range(CONNECTORS):
            stub.RegisterConnector(
                pb.RegisterConnectorRequest(
                    name=f"bench-{i:03d}",
                    connector_type="slow",
                    auth_method="token",
                    resource_type="slow-resource",
                    config={"url": upstream.url, "token": GOOD_TOKEN},
                    no_verify=True,
                )
            )

        def listing(name: str = "", refresh: bool = False) -> list[pb.ResourceResult]:
            request = pb.ListResourcesRequest(name=name, refresh=refresh)
            results = list(stub.ListResources(request, timeout=60))
            failed = [r for r in results if r.HasField("error")]
            if failed:
                raise SystemExit(f"listing failed: {failed[0]}")
            return results

        assert len(listing(refresh=True)) == CONNECTORS  # warm-up: connections, imports

        names = [f"bench-{i:03d}" for i in range(SEQUENTIAL_SUBSET)]
        start = time.perf_counter()
        for name in names:
            listing(name=name, refresh=True)
        one_by_one = (time.perf_counter() - start) / SEQUENTIAL_SUBSET * CONNECTORS

        upstream.reset()
        upstream.delay = DELAY
        cold = timed(lambda: listing(refresh=True), COLD_RUNS)
        peak = upstream.max_in_flight
        cached = timed(listing, CACHED_RUNS)
        empty = timed(lambda: listing(name="no-such-connector"), CACHED_RUNS)

        env = {**daemon.env, "BROKER_SOCKET": str(daemon.socket)}

        def cli(*args: str) -> None:
            subprocess.run([*BROKER, *args], env=env, check=True, capture_output=True)

        cli_start = timed(lambda: cli("version"), CLI_RUNS)
        cli_cold = timed(
            lambda: cli("connector", "list-resources", "--refresh", "-o", "json"), CLI_RUNS
        )
        cli_cached = timed(lambda: cli("connector", "list-resources", "-o", "json"), CLI_RUNS)
        limits = {
            "concurrency": passed.get("BROKER_DISCOVERY_CONCURRENCY", "default"),
            "per provider": passed.get("BROKER_DISCOVERY_PER_PROVIDER", "default"),
        }

    def ms(samples: list[float]) -> str:
        return f"{median(samples) * 1000:.0f} ms (p95 {percentile(samples, 95) * 1000:.0f})"

    def speedup(samples: list[float]) -> str:
        return f"{one_by_one / median(samples):.0f}×"

    rows = [
        [
            f"one-by-one, {SEQUENTIAL_SUBSET} measured ×{CONNECTORS // SEQUENTIAL_SUBSET} "
            "(baseline)",
            f"{one_by_one:.1f} s",
            "(≥ 20 s)",
            "1×",
        ],
        [f"all at once, cold (RPC, {COLD_RUNS} runs)", ms(cold), "≤ 600 ms", speedup(cold)],
        [f"repeated, from cache (RPC, {CACHED_RUNS} runs)", ms(cached), "≤ 50 ms", speedup(cached)],
        [f"empty listing: the RPC's own floor ({CACHED_RUNS} runs)", ms(empty), "-", "-"],
        [f"`broker version` (CLI start, {CLI_RUNS} runs)", ms(cli_start), "-", "-"],
        [f"CLI list-resources --refresh ({CLI_RUNS} runs)", ms(cli_cold), "-", speedup(cli_cold)],
        [f"CLI list-resources, cached ({CLI_RUNS} runs)", ms(cli_cached), "-", speedup(cli_cached)],
    ]
    print(
        f"{CONNECTORS} connectors, upstream {DELAY * 1000:.0f} ms per call; discovery limits "
        f"{limits}; peak upstream calls in flight: {peak}\n"
    )
    print(table(["measurement", "wall time (median)", "goal", "vs one-by-one"], rows))
    sys.stdout.flush()


MIX_CONNECTORS = 40
MIX_FAILING = 2
MIX_RUNS = 11


def failing_mix(failure_ttl: str) -> tuple[list[float], list[float], int]:
    """CLI `version` and cached CLI list-resources times, and the upstream calls the
    cached listings made, on a daemon with ``failure_ttl`` seconds of negative cache."""
    env = {"BROKER_DISCOVERY_FAILURE_TTL_SECONDS": failure_ttl}
    with (
        SlowUpstream(delay=DELAY, page_size=100) as upstream,
        tempfile.TemporaryDirectory() as tmp,
        running_daemon(Path(tmp) / "data", "--log-level", "warning", env=plugin_env(env)) as d,
        d.stub() as stub,
    ):
        for i in range(MIX_CONNECTORS):
            stub.RegisterConnector(
                pb.RegisterConnectorRequest(
                    name=f"mix-{i:02d}",
                    connector_type="slow",
                    auth_method="token",
                    resource_type="slow-resource",
                    config={"url": upstream.url, "token": GOOD_TOKEN},
                    no_verify=True,
                )
            )
            if i < MIX_FAILING:  # answers 503 after the upstream's delay
                upstream.failures[f"mix-{i:02d}"] = 503
        cli_env = {**d.env, "BROKER_SOCKET": str(d.socket)}

        def cli(*args: str) -> None:
            subprocess.run([*BROKER, *args], env=cli_env, check=True, capture_output=True)

        def listing(*args: str) -> None:
            # exit 1 when connectors failed, as two do
            subprocess.run([*BROKER, "connector", "list-resources", "-o", "json", *args],
                           env=cli_env, capture_output=True)  # fmt: skip

        cli("version")  # warm the page cache
        start: list[float] = []
        cached: list[float] = []
        calls = 0
        for _ in range(MIX_RUNS):  # interleaved: the machine's load hits both alike
            # fills the cache (what it lacks), successes and failures alike, untimed; the
            # failing ones asked afresh, so the timed listing falls within their TTL
            list(stub.ListResources(pb.ListResourcesRequest(), timeout=60))
            for i in range(MIX_FAILING):
                request = pb.ListResourcesRequest(name=f"mix-{i:02d}", refresh=True)
                list(stub.ListResources(request, timeout=60))
            # the CLI's own start-up: the same command and RPC, no connector matching
            start += timed(lambda: listing("--name", "no-such-connector"), 1)
            before = len(upstream.calls)
            cached += timed(listing, 1)
            calls += len(upstream.calls) - before
        return start, cached, calls


def main_failing() -> None:
    rows = []
    for ttl in ("10", "0"):
        start, cached, calls = failing_mix(ttl)
        over = median([c - s for c, s in zip(cached, start, strict=True)]) * 1000
        rows.append(
            [
                f"failure TTL {ttl} s" + (" (default)" if ttl == "10" else " (before)"),
                f"{median(start) * 1000:.0f} ms",
                f"{median(cached) * 1000:.0f} ms",
                f"{over:.0f} ms",
                str(calls),
                "≤ 50 ms" if ttl == "10" else "-",
            ]
        )
    print(
        f"\n{MIX_CONNECTORS} connectors, {MIX_FAILING} failing (upstream {DELAY * 1000:.0f} ms "
        f"per call), CLI list-resources from the cache, {MIX_RUNS} runs each (median)\n"
    )
    header = ["negative cache", "CLI start-up (empty listing)", "cached listing", "over (paired)",
              "upstream calls", "goal"]  # fmt: skip
    print(table(header, rows))


if __name__ == "__main__":
    if "--failing" not in sys.argv and os.environ.get("BENCH_FAILING") != "1":
        main()
    main_failing()
