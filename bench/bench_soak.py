"""Soak: minutes of short-lived credentials, a slow and flaky upstream, gets and watches.

The real daemon serves the ``bench-fake`` connector type; its fake upstream
issues tokens living 6–30 s (by resource), takes 20–300 ms per mint and fails
``BENCH_SOAK_FAIL_RATE`` (10 %) of them with a retryable HTTP 503. A grpc.aio
client process runs getters round-robin over the resources at a fixed rate
plus watch streams on every resource, for ``BENCH_SOAK_SECONDS`` (150 s).

Every credential a client receives is judged at the moment it arrives:
*expired* (received at or after ``expires_at``) or *inside its margin*
(received at or after ``expires_at`` − margin, the margin recomputed from the
credential's own ``issued_at`` / ``expires_at`` with the policy's rule). A
watcher also notes, when its next event arrives, whether the credential it
held had already entered its margin. The daemon's own
``served_inside_margin`` counter is read from its metrics endpoint.
UNAVAILABLE is allowed (nothing valid was left after failed retries).

Goal: 0 credentials served expired or inside their margin.
"""

from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path
from typing import Any

from common import table
from fakeprovider import free_port, plugin_env, scrape
from fakeprovider.grpcload import run_client
from fakeprovider.upstream import FakeUpstream

from tests.daemon import running_daemon

SECONDS = float(os.environ.get("BENCH_SOAK_SECONDS", "150"))
FAIL_RATE = float(os.environ.get("BENCH_SOAK_FAIL_RATE", "0.10"))
LIFETIMES = (6, 8, 10, 15, 20, 30)
RESOURCES = [f"soak-{life}s-{i}" for life in LIFETIMES for i in range(2)]
GETTERS = 8
RATE = 20.0  # per getter: 160 GetCredentials/s in all
WATCHERS = 2 * len(RESOURCES)
RESOURCE_TYPE = "bench-resource"


def lifetime(resource: str) -> float:
    return float(resource.split("-")[1].rstrip("s"))


def main() -> None:
    rng = random.Random(3)

    def delay(_resource: str) -> float:
        return rng.uniform(0.020, 0.300)

    with (
        tempfile.TemporaryDirectory() as tmp,
        FakeUpstream(delay=delay, lifetime=lifetime, fail_rate=FAIL_RATE) as upstream,
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
                "soak",
                "--type",
                "bench-fake",
                "--auth-method",
                "token",
                f"url={upstream.url}",
                f"token={upstream.token}",
                "--no-verify",
            )
            target = f"unix://{daemon.socket}"
            [result] = run_client(
                {
                    "targets": [target],
                    "phases": [
                        {
                            "mode": "soak",
                            "target": target,
                            "seconds": SECONDS,
                            "connector": "soak",
                            "resource_type": RESOURCE_TYPE,
                            "resources": RESOURCES,
                            "getters": GETTERS,
                            "rate": RATE,
                            "watchers": WATCHERS,
                        }
                    ],
                },
                timeout=SECONDS + 120,
            )
            counters = scrape(metrics_port)
        mints = sum(upstream.mints.values())
        failures = sum(upstream.failures.values())

    gets: dict[str, Any] = result["gets"]
    watch: dict[str, Any] = result["watch"]
    served_inside = counters.get("broker_credentials_served_inside_margin_total", float("nan"))

    def goal(value: float) -> str:
        return "0 ✓" if value == 0 else "0 ✗"

    def headroom(c: dict[str, Any]) -> str:
        return "-" if c["min_headroom_ms"] is None else f"{c['min_headroom_ms']:,.0f} ms"

    late = watch["late_renewals"]
    late_errors = watch["late_errors"]
    at_end = watch["held_past_margin_at_end"]
    rows = [
        ["GetCredentials answers received", f"{gets['received']:,}", "-"],
        ["… served expired", gets["expired"], goal(gets["expired"])],
        ["… served inside their margin", gets["inside_margin"], goal(gets["inside_margin"])],
        ["… closest to the margin start on arrival", headroom(gets), "> 0"],
        ["… UNAVAILABLE (nothing valid left, allowed)", gets["unavailable"], "-"],
        ["… other errors", sum(gets["other_errors"].values()), "0"],
        ["watch events with a credential", f"{watch['received']:,}", "-"],
        ["… served expired", watch["expired"], goal(watch["expired"])],
        ["… served inside their margin", watch["inside_margin"], goal(watch["inside_margin"])],
        ["… closest to the margin start on arrival", headroom(watch), "> 0"],
        [
            "… held one entered its margin before the renewal arrived (stricter check)",
            f"{len(late)}" + (f", at most {max(late):.0f} ms before" if late else ""),
            "0 (not the issue's goal)" if late else "0 ✓",
        ],
        [
            "… smallest lead of a renewal before the held one's margin",
            "-"
            if watch["min_renewal_lead_s"] is None
            else f"{watch['min_renewal_lead_s'] * 1000:,.0f} ms",
            "> 0",
        ],
        [
            "… error events (renewals kept failing; sent at the margin start)",
            f"{watch['kinds'].get('ERROR', 0)}"
            + (
                f", {len(late_errors)} arrived ≤ {max(late_errors):.0f} ms after it"
                if late_errors
                else ""
            ),
            "-",
        ],
        ["… held past its margin when the soak ended", len(at_end), goal(len(at_end))],
        ["daemon counter served_inside_margin", f"{served_inside:.0f}", goal(served_inside)],
    ]
    print(table(["soak check", "value", "goal"], rows))
    renewals = counters.get("broker_credential_renewals_total", 0)
    lead_sum = counters.get("broker_credential_renewal_lead_milliseconds_total")
    lead_min = counters.get("broker_credential_renewal_lead_min_milliseconds")
    lead = (
        f"; renewal lead before the old credential's expiry: mean "
        f"{lead_sum / renewals / 1000:.1f} s, shortest {lead_min / 1000:.1f} s"
        if renewals and lead_sum is not None and lead_min is not None
        else ""
    )
    print(
        f"\n{SECONDS:.0f} s; {len(RESOURCES)} keys living {min(LIFETIMES)}–{max(LIFETIMES)} s "
        f"(margin = a quarter of the lifetime); {GETTERS} getters × {RATE:.0f}/s and "
        f"{WATCHERS} watch streams. Upstream: 20–300 ms per mint, {FAIL_RATE:.0%} injected "
        f"failures; {mints:,} mints and {failures:,} failures. Daemon: "
        f"{counters.get('broker_credential_renewals_total', 0):,.0f} renewals, "
        f"{counters.get('broker_cache_hits_total', 0):,.0f} hits, "
        f"{counters.get('broker_cache_misses_total', 0):,.0f} misses{lead}."
    )
    if gets["other_errors"]:
        print(f"Other errors: {gets['other_errors']}")


if __name__ == "__main__":
    main()
