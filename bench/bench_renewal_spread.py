"""10,000 keys with equal lifetimes, all minted in the same second: how evenly do they renew?

In-process: the real CredentialCache (its scheduler, policy and renewal loop)
on a FakeClock that the benchmark advances from one sleeper's deadline to
the next (a renewal due, a mint done), so hours of renewals take seconds.
Every key holds a Google-style token living ``LIFETIME`` (1 h, 4 min margin);
the mint takes 0.1 s of clock time. Keys stay cached because the idle limit
is longer than the run (as if each were in use); the cache's default bound of
10,000 entries holds them all.

For each renewal wave (the k-th renewal of every key) the table gives the
peak number of renewals starting in any 1-second window (sliding) and the
mean rate over the policy's jitter window (±10 % of the servable lifetime,
i.e. 20 % of it: the span the wave is meant to cover), and their ratio.
Three random sources for the jitter, in the same run: the cache's default
(``policy.SpreadRandom``, an even golden-ratio walk over the range), plain
independent uniform draws (``random.Random``), and, as the baseline, no
jitter at all (every key renews exactly when 1/3 of its servable lifetime
remains; its only smoothing is the renewal loop's concurrency limit).

Goal: peak / mean ≤ 2.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from datetime import timedelta
from typing import Any

import anyio
from common import table

from broker.cache import policy
from broker.cache.cache import DEFAULT_RENEWAL_CONCURRENCY, CacheKey, CredentialCache
from broker.clock import FakeClock
from broker.model import ClientCredential

KEYS = int(os.environ.get("BENCH_KEYS", "10000"))
LIFETIME = timedelta(hours=1)
MINT_SECONDS = 0.1
#: Longest single clock jump (the loop jumps straight to the next deadline).
STEP = 60.0
WAVES = 2
#: Seeds for the policy-only Monte Carlo of the first wave (no cache, just renew_at).
SEEDS = 40
RATIO_GOAL = 2.0


class NoJitter(random.Random):
    """The centre of every jitter range: the policy without its jitter."""

    def uniform(self, a: float, b: float) -> float:
        return (a + b) / 2


def peak_per_second(times: list[float]) -> int:
    """Most events starting within any 1-second window [t, t + 1)."""
    times = sorted(times)
    best = lo = 0
    for hi, t in enumerate(times):
        while times[lo] <= t - 1.0:
            lo += 1
        best = max(best, hi - lo + 1)
    return best


async def simulate(
    rng: random.Random | None,
) -> tuple[dict[str, list[float]], dict[str, int], float]:
    """Mint KEYS keys at t=0, run until each renewed WAVES times; mint start times per key.

    ``rng`` None: the cache's own default random source.
    """
    clock = FakeClock()
    start = clock.now()
    cache = CredentialCache(clock, rng=rng, idle_seconds=10 * LIFETIME.total_seconds())
    mint_times: dict[str, list[float]] = {}
    started = finished = done_keys = 0

    def minter(resource: str) -> Any:
        async def mint() -> ClientCredential:
            nonlocal started, finished, done_keys
            started += 1
            times = mint_times.setdefault(resource, [])
            times.append((clock.now() - start).total_seconds())
            done_keys += len(times) == WAVES + 1
            await clock.sleep(MINT_SECONDS)
            finished += 1
            return ClientCredential(
                "gcp",
                "token",
                "gcp-access-token",
                resource,
                {"token": f"t{started}"},
                frozenset({"token"}),
                expires_at=clock.now() + LIFETIME,
            )

        return mint

    async def step() -> None:
        """Jump to the next sleeper's deadline (a renewal due, a mint done), at most STEP."""
        sleepers = clock._sleepers  # the simulation's event list: skip the idle stretches
        delta = STEP
        if sleepers:
            delta = min(delta, min(t for t, _ in sleepers) - clock.monotonic())
        await clock.advance(max(delta, 0.0) + 1e-6)
        await settle()

    async def settle() -> None:
        """Let the renewal loop and the mints run until nothing moves at this instant."""
        quiet, last = 0, (-1, -1)
        while quiet < 3:
            await anyio.lowlevel.checkpoint()
            now = (started, finished)
            quiet = quiet + 1 if now == last else 0
            last = now

    wall = time.perf_counter()
    async with cache.running():
        async with anyio.create_task_group() as tg:
            for i in range(KEYS):
                resource = f"key-{i}"
                key = CacheKey("conn", 1, "gcp-access-token", resource)
                tg.start_soon(cache.get, key, minter(resource))
            await settle()
            while finished < KEYS:
                await step()
        while done_keys < KEYS:
            await step()
    return mint_times, cache.stats(), time.perf_counter() - wall


def first_wave_ratios(window: float, source: type[random.Random]) -> list[float]:
    """Peak / mean of the first wave straight from policy.renew_at, over many seeds."""
    issued = _epoch()
    probe = ClientCredential(
        "gcp", "token", "t", "r", {}, expires_at=issued + LIFETIME, issued_at=issued
    )
    ratios = []
    for seed in range(SEEDS):
        rng = source(seed)
        times = []
        for _ in range(KEYS):
            point = policy.renew_at(probe, rng)
            assert point is not None
            times.append((point - issued).total_seconds())
        ratios.append(peak_per_second(times) / (KEYS / window))
    return sorted(ratios)


def main() -> None:
    seed = int(os.environ.get("BENCH_SEED", "7"))
    runs = {}
    walls = {}
    sources: tuple[tuple[str, random.Random | None], ...] = (
        ("the cache's default (policy.SpreadRandom)", None),
        ("random.Random (independent draws)", random.Random(seed)),
        ("no jitter (baseline)", NoJitter()),
    )
    for label, rng in sources:
        runs[label], stats, walls[label] = asyncio.run(simulate(rng))
        assert stats["evictions"] == 0, stats
    probe = ClientCredential(
        "gcp", "token", "t", "r", {}, expires_at=LIFETIME + _epoch(), issued_at=_epoch()
    )
    invalid_at = policy.invalid_at(probe)
    assert invalid_at is not None
    servable = (invalid_at - _epoch()).total_seconds()
    window = 2 * policy.RENEW_JITTER_FRACTION * servable
    rows = []
    for label, run in runs.items():
        for wave in range(1, WAVES + 1):
            times = [t[wave] for t in run.values()]
            peak = peak_per_second(times)
            mean = len(times) / window
            ok = peak / mean <= RATIO_GOAL
            rows.append(
                [
                    label,
                    wave,
                    len(times),
                    f"{min(times):,.0f}–{max(times):,.0f}",
                    f"{max(times) - min(times):,.0f}",
                    peak,
                    f"{mean:.1f}",
                    f"{peak / mean:.2f}",
                    (f"≤ {RATIO_GOAL:g} {'✓' if ok else '✗'}" if "default" in label else "-"),
                ]
            )
    print(
        table(
            [
                "renew point",
                "wave",
                "renewals",
                "started at (s after first mint)",
                "span s",
                "peak in any 1 s",
                "mean /s over jitter window",
                "peak / mean",
                "goal",
            ],
            rows,
        )
    )
    print(
        f"\n{KEYS:,} keys, lifetime {LIFETIME.total_seconds():.0f} s, margin "
        f"{policy.GOOGLE_MARGIN.total_seconds():.0f} s, servable {servable:.0f} s; jitter "
        f"window {window:.0f} s; mint {MINT_SECONDS * 1000:.0f} ms of clock time; renewal "
        f"concurrency {DEFAULT_RENEWAL_CONCURRENCY}; no evictions, nothing served inside its "
        f"margin. Wall time per simulation: "
        + ", ".join(f"{w:.0f} s" for w in walls.values())
        + "."
    )
    for name, source in (("SpreadRandom", policy.SpreadRandom), ("random.Random", random.Random)):
        ratios = first_wave_ratios(window, source)
        print(
            f"First wave from policy.renew_at alone, {name}, {SEEDS} seeds: peak / mean median "
            f"{ratios[len(ratios) // 2]:.2f}, range {ratios[0]:.2f}–{ratios[-1]:.2f}, "
            f"{sum(r <= RATIO_GOAL for r in ratios)}/{SEEDS} seeds ≤ {RATIO_GOAL:g}."
        )


def _epoch() -> Any:
    return FakeClock().now()


if __name__ == "__main__":
    main()
