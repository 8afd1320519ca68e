"""Watching a connector's credential through ``broker credentials watch --output json``.

The renewal end-to-end tests of several connector types read the same event stream and
check the same thing: a renewal arrives before the first credential expires.
"""

from __future__ import annotations

import json
import subprocess
import time
from datetime import datetime
from typing import Any

from tests.daemon import BROKER, Daemon

#: One watch event and when (wall clock) the test read it.
Seen = tuple[float, dict[str, Any]]


def stamp(text: str) -> datetime:
    """An RFC 3339 time as the CLI prints it."""
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def watch_events(daemon: Daemon, name: str, count: int, timeout: float) -> list[Seen]:
    """The first ``count`` events of the watch of connector ``name`` (fewer if the watch
    ends or ``timeout`` seconds pass), each with the time it was read."""
    with subprocess.Popen(
        [*BROKER, "credentials", "watch", name, "--output", "json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**daemon.env, "BROKER_SOCKET": str(daemon.socket)},
    ) as proc:
        assert proc.stdout is not None
        events: list[Seen] = []
        deadline = time.time() + timeout
        while len(events) < count and time.time() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            events.append((time.time(), json.loads(line)))
        proc.terminate()
    return events


def renewed_token(events: list[Seen]) -> str:
    """Check the watch saw the credential issued, then renewed before it expired with a
    new token; return that token."""
    assert [e["event"] for _, e in events] == ["issued", "renewed"]
    (_, first), (seen, second) = events
    assert seen < stamp(first["credential"]["expires_at"]).timestamp()
    token: str = second["credential"]["config"]["token"]
    assert token != first["credential"]["config"]["token"]
    return token
