"""The upstream of the ``slow`` test connector types: a loopback HTTP server that makes
discovery's concurrency observable from the test process.

``GET /discover?type=RT&page=P`` (``Authorization: Bearer``, ``X-Connector``,
``X-Connector-Type``) answers a page of IDs. The first page of each call is
the slow part: it waits ``delays[connector]`` (else ``delay``) seconds and,
if the connector is :meth:`held <SlowUpstream.hold>`, until it is released.
Meanwhile the call counts as in flight; the server keeps the maximum, per
connector type too, and records every call as done or *cancelled* (the
client hung up: aiohttp cancels the handler). Tests wait for states with
:meth:`SlowUpstream.wait_until` (a condition variable, not a sleep).

Run in its own thread and event loop, so synchronous tests and daemon
subprocesses can use it alike::

    with SlowUpstream(delay=0.2) as up:
        up.url, up.max_in_flight, up.calls
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from tests.servers.threaded import ThreadedAiohttpServer

#: Put this directory on a daemon's PYTHONPATH to install the ``slow`` plugin.
PLUGIN_DIR = Path(__file__).resolve().parent
GOOD_TOKEN = "slow-good-token"
START_TIMEOUT = 10.0


def plugin_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """Daemon environment with the plugin's dist-info importable."""
    path = os.pathsep.join(p for p in (str(PLUGIN_DIR), os.environ.get("PYTHONPATH", "")) if p)
    return {"PYTHONPATH": path, **(extra or {})}


@dataclass
class Call:
    """One discovery call as the upstream saw it."""

    connector: str
    connector_type: str
    resource_type: str
    started: float
    ended: float | None = None
    #: "running", "done", "rejected" (bad token) or "cancelled" (the client went away first).
    state: str = "running"


def default_ids(connector: str, resource_type: str) -> list[str]:
    """What a connector reaches: three IDs over two pages, unsorted, in mixed spellings and
    repeated; canonical: ``[f"{connector}-{short type}-{n}" for n in (1, 2, 3)]``."""
    base = f"{connector}-{resource_type.removeprefix('slow-')}"
    return [f"{base}-2", f"  {base.upper()}-1 ", f"{base}-1", f"{base.upper()}-3"]


def canonical_ids(connector: str, resource_type: str) -> list[str]:
    base = f"{connector}-{resource_type.removeprefix('slow-')}".lower()
    return [f"{base}-{n}" for n in (1, 2, 3)]


class SlowUpstream(ThreadedAiohttpServer):
    """The test server; start with :meth:`start` or as a context manager."""

    thread_name = "slow upstream"

    def __init__(self, *, delay: float = 0.0, page_size: int = 2) -> None:
        self.delay = delay
        self.page_size = page_size
        self.delays: dict[str, float] = {}
        #: Connector name -> HTTP status to answer instead of IDs.
        self.failures: dict[str, int] = {}
        #: Connectors answered with a body the plugin cannot read (a provider bug).
        self.garbage: set[str] = set()
        self.tokens = {GOOD_TOKEN}
        self.calls: list[Call] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.in_flight_by_type: Counter[str] = Counter()
        self.max_in_flight_by_type: Counter[str] = Counter()
        self.port = 0
        self._cond = threading.Condition()
        self._gates: dict[str, asyncio.Event] = {}
        self._hold_all: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # -- what tests read and wait for --------------------------------------------
    def count(self, state: str | None = None, connector: str | None = None) -> int:
        with self._cond:
            return sum(
                1
                for c in self.calls
                if (state is None or c.state == state)
                and (connector is None or c.connector == connector)
            )

    def wait_until(self, predicate: Callable[[], bool], timeout: float = 10.0) -> None:
        """Block until ``predicate()`` holds (re-checked on every change), or fail."""
        with self._cond:
            if not self._cond.wait_for(predicate, timeout):
                raise AssertionError(f"upstream state not reached in {timeout}s: {self.calls}")

    def reset(self) -> None:
        """Forget calls, maxima and injected behaviour (between tests sharing the server)."""
        self.release()
        with self._cond:
            self.delay = 0.0
            self.delays.clear()
            self.failures.clear()
            self.garbage.clear()
            self.calls.clear()
            self.max_in_flight = self.in_flight
            self.max_in_flight_by_type = Counter(self.in_flight_by_type)

    # -- holding calls -------------------------------------------------------------
    def _in_loop(self, fn: Callable[[], Any]) -> Any:
        assert self._loop is not None

        async def run() -> Any:
            return fn()

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(START_TIMEOUT)

    def hold(self, *connectors: str) -> None:
        """Keep calls of these connectors (all, if none named) in flight until released."""

        def make() -> None:
            if not connectors:
                self._hold_all = asyncio.Event()
            for name in connectors:
                self._gates[name] = asyncio.Event()

        self._in_loop(make)

    def release(self, *connectors: str) -> None:
        """Let held calls answer (all of them, if none named)."""

        def open_gates() -> None:
            names = connectors or tuple(self._gates)
            for name in names:
                gate = self._gates.pop(name, None)
                if gate is not None:
                    gate.set()
            if not connectors and self._hold_all is not None:
                self._hold_all.set()
                self._hold_all = None

        self._in_loop(open_gates)

    # -- lifecycle -----------------------------------------------------------------
    def _before_stop(self) -> None:
        self.release()

    async def _serve(self) -> None:
        app = web.Application()
        app.router.add_get("/discover", self._discover)
        # handler_cancellation: a client that hangs up cancels the handler, which we record.
        runner = web.AppRunner(
            app, access_log=None, handle_signals=False, handler_cancellation=True
        )
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, backlog=1024)
        await site.start()
        self._runner = runner
        self.port = int(runner.addresses[0][1])

    # -- the endpoint --------------------------------------------------------------
    def _begin(self, call: Call) -> None:
        with self._cond:
            self.calls.append(call)
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            self.in_flight_by_type[call.connector_type] += 1
            self.max_in_flight_by_type[call.connector_type] = max(
                self.max_in_flight_by_type[call.connector_type],
                self.in_flight_by_type[call.connector_type],
            )
            self._cond.notify_all()

    def _end(self, call: Call, state: str) -> None:
        with self._cond:
            call.state, call.ended = state, time.monotonic()
            self.in_flight -= 1
            self.in_flight_by_type[call.connector_type] -= 1
            self._cond.notify_all()

    async def _wait(self, name: str) -> None:
        delay = self.delays.get(name, self.delay)
        if delay > 0:
            await asyncio.sleep(delay)
        for gate in (self._gates.get(name), self._hold_all):
            if gate is not None:
                await gate.wait()

    async def _discover(self, request: web.Request) -> web.Response:
        name = request.headers.get("X-Connector", "")
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        allowed = scheme == "Bearer" and token in self.tokens
        resource_type = request.query.get("type", "")
        page = request.query.get("page", "")
        if not page:
            call = Call(
                name, request.headers.get("X-Connector-Type", ""), resource_type, time.monotonic()
            )
            self._begin(call)
            if not allowed:
                self._end(call, "rejected")
                return web.json_response({"error": "unauthorized"}, status=401)
            try:
                await self._wait(name)
            except asyncio.CancelledError:
                self._end(call, "cancelled")
                raise
            self._end(call, "done")
        elif not allowed:
            return web.json_response({"error": "unauthorized"}, status=401)
        if name in self.failures:
            return web.json_response({"error": "injected"}, status=self.failures[name])
        if name in self.garbage:
            return web.json_response({"unexpected": True})
        ids = default_ids(name, resource_type)
        start = int(page or 0)
        end = start + self.page_size
        return web.json_response(
            {"ids": ids[start:end], "next": str(end) if end < len(ids) else ""}
        )
