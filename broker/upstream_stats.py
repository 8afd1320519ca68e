"""Per-connector-type upstream mint counts and latency, read by the metrics endpoint.

Plain numbers bumped on the mint path (not the cache-hit path); Prometheus
reads them at scrape time.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

#: Histogram bucket upper bounds in seconds: STS/OAuth2 calls take 10 ms-2 s.
LATENCY_BUCKETS: tuple[float, ...] = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@dataclass
class TypeStats:
    mints: int = 0
    failures: int = 0
    latency_sum: float = 0.0
    #: Count per bucket (not cumulative); the last slot is +Inf.
    latency_counts: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS) + 1))

    def observe(self, seconds: float, ok: bool) -> None:
        if ok:
            self.mints += 1
        else:
            self.failures += 1
        self.latency_sum += seconds
        self.latency_counts[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1

    def cumulative(self) -> list[tuple[str, int]]:
        """Prometheus-style (le, cumulative count) pairs."""
        out, running = [], 0
        for bound, count in zip(
            (*map(str, LATENCY_BUCKETS), "+Inf"), self.latency_counts, strict=True
        ):
            running += count
            out.append((bound, running))
        return out


class UpstreamStats:
    """connector type -> :class:`TypeStats`."""

    def __init__(self) -> None:
        self.by_type: dict[str, TypeStats] = {}

    def observe(self, connector_type: str, seconds: float, ok: bool) -> None:
        stats = self.by_type.get(connector_type)
        if stats is None:
            stats = self.by_type[connector_type] = TypeStats()
        stats.observe(seconds, ok)
