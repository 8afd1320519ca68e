"""The fake upstream of the ``bench-fake`` connector type: mints with a delay and counts.

``GET /mint?resource=ID`` (``Authorization: Bearer TOKEN``) waits ``delay(ID)``
seconds, fails with HTTP 503 with probability ``fail_rate``, and otherwise
answers ``{"token": ..., "expires_at": epoch seconds | null}`` with
``lifetime(ID)`` seconds left. Runs in its own thread and event loop, so a
benchmark can drive a daemon subprocess and read the counters alike::

    with FakeUpstream(delay=0.1) as up:
        daemon.cli("connector", "register", ..., f"url={up.url}", f"token={up.token}")
        up.mints["some-resource"]
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from aiohttp import web

TOKEN = "bench-token"


def _constant(value: float | None) -> Callable[[str], float | None]:
    return lambda _resource: value


class FakeUpstream:
    """Counts successful mints per resource (``mints``) and failed ones (``failures``)."""

    def __init__(
        self,
        *,
        delay: float | Callable[[str], float] = 0.0,
        lifetime: float | Callable[[str], float | None] | None = None,
        fail_rate: float = 0.0,
        seed: int = 1,
    ) -> None:
        self.delay: Callable[[str], float | None] = (
            delay if callable(delay) else _constant(float(delay))
        )
        self.lifetime: Callable[[str], float | None] = (
            lifetime if callable(lifetime) else _constant(lifetime)
        )
        self.fail_rate = fail_rate
        self.token = TOKEN
        self.mints: Counter[str] = Counter()
        self.failures: Counter[str] = Counter()
        #: Wall time each successful mint spent in the upstream (seconds).
        self.durations: list[float] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._rng = random.Random(seed)
        self._serial = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def reset(self) -> None:
        self.mints.clear()
        self.failures.clear()
        self.durations.clear()
        self.max_in_flight = self.in_flight

    async def _mint(self, request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            return web.json_response({"error": "bad token"}, status=401)
        resource = request.query.get("resource", "")
        started = time.perf_counter()
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            delay = self.delay(resource) or 0.0
            if delay > 0:
                await asyncio.sleep(delay)
        finally:
            self.in_flight -= 1
        if self.fail_rate and self._rng.random() < self.fail_rate:
            self.failures[resource] += 1
            return web.json_response({"error": "injected failure"}, status=503)
        self._serial += 1
        life = self.lifetime(resource)
        body: dict[str, Any] = {
            "token": f"tok-{resource}-{self._serial}",
            "expires_at": None if life is None else time.time() + life,
        }
        self.mints[resource] += 1
        self.durations.append(time.perf_counter() - started)
        return web.json_response(body)

    def _serve(self) -> None:
        loop = self._loop = asyncio.new_event_loop()
        app = web.Application()
        app.router.add_get("/mint", self._mint)
        runner = self._runner = web.AppRunner(app, access_log=None)
        loop.run_until_complete(runner.setup())
        site = web.TCPSite(runner, "127.0.0.1", 0)
        loop.run_until_complete(site.start())
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self._ready.set()
        loop.run_forever()
        loop.run_until_complete(runner.cleanup())
        loop.close()

    def __enter__(self) -> FakeUpstream:
        self._thread = threading.Thread(target=self._serve, name="fake-upstream", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise TimeoutError("fake upstream did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(10)
