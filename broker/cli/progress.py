"""Live progress for streamed listings: which connectors are done, pending or failed.

Drawn on stderr, and only when stderr is a terminal, so the final table or
JSON on stdout stays clean when piped. The CLI lists the matching connectors
first, so connectors nobody has answered for yet show as pending.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from broker.api.v1 import broker_pb2 as pb

#: Progress goes to stderr: stdout carries the result.
stderr = Console(stderr=True)

_STYLE = {"pending": "yellow", "done": "green", "partial": "yellow", "failed": "red"}
_ORDER = {"pending": 0, "failed": 1, "partial": 2, "done": 3}


@dataclass
class _Entry:
    connector_type: str
    expected: int
    ok: int = 0
    errors: list[str] = field(default_factory=list)

    @property
    def status(self) -> str:
        if self.ok + len(self.errors) < self.expected:
            return "pending"
        if not self.errors:
            return "done"
        return "failed" if not self.ok else "partial"


class Progress:
    """Per-connector state of a listing; ``expected`` is connector -> (type, unit count)."""

    def __init__(self, expected: Mapping[str, tuple[str, int]]) -> None:
        self._entries = {name: _Entry(ct, n) for name, (ct, n) in expected.items()}

    def add(self, result: pb.ResourceResult) -> None:
        entry = self._entries.setdefault(result.connector, _Entry(result.connector_type, 1))
        if result.HasField("error"):
            entry.errors.append(f"{result.resource_type}: {result.error}")
        else:
            entry.ok += 1

    def counts(self) -> dict[str, int]:
        out = dict.fromkeys(_ORDER, 0)
        for entry in self._entries.values():
            out[entry.status] += 1
        return out

    def render(self, max_rows: int, width: int = 120) -> Group:
        c = self.counts()
        answered = len(self._entries) - c["pending"]
        summary = Text.assemble(
            (f"{answered}/{len(self._entries)} connectors answered", "bold"),
            f" — done {c['done']}, partial {c['partial']}, failed {c['failed']}, "
            f"pending {c['pending']}",
        )
        rows = sorted(self._entries.items(), key=lambda kv: (_ORDER[kv[1].status], kv[0]))[
            :max_rows
        ]
        # Names, types and states always show in full; the detail gets what is left.
        name_w = max([len("CONNECTOR"), *(len(n) for n, _ in rows)])
        type_w = max([len("TYPE"), *(len(e.connector_type) for _, e in rows)])
        detail_w = max(10, width - name_w - type_w - len("partial") - 6)
        table = Table(show_header=True, box=None, pad_edge=False)
        table.add_column("CONNECTOR", no_wrap=True, min_width=name_w)
        table.add_column("TYPE", no_wrap=True, min_width=type_w)
        table.add_column("STATUS", no_wrap=True, min_width=len("partial"))
        table.add_column("DETAIL", no_wrap=True, overflow="ellipsis", max_width=detail_w)
        for name, entry in rows:
            status = entry.status
            detail = (
                "; ".join(entry.errors) if entry.errors else f"{entry.ok}/{entry.expected} types"
            )
            table.add_row(name, entry.connector_type, Text(status, _STYLE[status]), detail)
        parts: list[Text | Table] = [summary, table]
        if len(self._entries) > max_rows:
            parts.append(Text(f"… and {len(self._entries) - max_rows} more"))
        return Group(*parts)


def live_enabled() -> bool:
    return stderr.is_terminal


def collect(
    stream: Iterable[pb.ResourceResult], expected: Mapping[str, tuple[str, int]] | None = None
) -> list[pb.ResourceResult]:
    """Every result of the stream; with ``expected``, drawn live as they arrive."""
    if expected is None:
        return list(stream)
    progress = Progress(expected)
    rows = max(3, stderr.size.height - 4)
    results: list[pb.ResourceResult] = []
    with Live(progress.render(rows), console=stderr, transient=True, refresh_per_second=8) as view:
        for item in stream:
            results.append(item)
            progress.add(item)
            view.update(progress.render(rows))
    return results
