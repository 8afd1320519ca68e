"""Live progress for streamed listings: which connectors are done, pending, failed."""

from __future__ import annotations

from collections.abc import Iterable

from rich.live import Live

from broker.api.v1 import broker_pb2 as pb
from broker.cli.render import console


def collect(stream: Iterable[pb.ResourceResult], *, live: bool) -> list[pb.ResourceResult]:
    results: list[pb.ResourceResult] = []
    if not live:
        return list(stream)
    with Live(console=console, transient=True, refresh_per_second=10) as view:
        for item in stream:
            results.append(item)
            failed = sum(1 for r in results if r.HasField("error"))
            view.update(
                f"{len(results)} results so far ({failed} failed); latest: "
                f"{item.connector}/{item.resource_type}"
            )
    return results
