"""The audit trail: one JSON line per credential issued (who, what, until when).

Written straight to stderr as JSON whatever the log format, because it sits
on the cache-hit path: the structlog pipeline costs ~150 µs a line, this a few
µs. Never holds a secret: callers pass names, IDs and the expiry only.

A line that repeats except for its time (the same caller served the same
cached credential) is encoded once: :meth:`AuditLog.encode` gives a
:class:`Line`, and :meth:`AuditLog.write` stamps and writes it.
"""

from __future__ import annotations

import json
import sys
import time
from typing import TextIO


class Line:
    """An audit event's JSON, encoded once, waiting for its timestamp."""

    __slots__ = ("head", "tail")

    def __init__(self, event: str, fields: dict[str, object]) -> None:
        self.head = json.dumps({"event": event, "logger": "broker.audit", "level": "info"})[:-1]
        body = json.dumps(fields)
        self.tail = (", " + body[1:] if fields else "}") + "\n"


class _Stamp:
    """RFC 3339 UTC with microseconds; the date and time of day are formatted once a second."""

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def now(self) -> str:
        t = time.time()
        second = int(t)
        if second != self._second:
            self._second = second
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self._prefix}.{int((t - second) * 1_000_000):06d}Z"


class AuditLog:
    def __init__(self, stream: TextIO | None = None) -> None:
        self._stream = stream
        self._stamp = _Stamp()

    @staticmethod
    def encode(event: str, **fields: object) -> Line:
        return Line(event, fields)

    def write(self, line: Line) -> None:
        stream = self._stream or sys.stderr
        stream.write(f'{line.head}, "timestamp": "{self._stamp.now()}"{line.tail}')

    def record(self, event: str, **fields: object) -> None:
        self.write(Line(event, fields))
