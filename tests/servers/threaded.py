"""An aiohttp app on its own event loop in a daemon thread.

Test servers run this way so synchronous tests, async tests and daemons
started as subprocesses can all reach them.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Self

from aiohttp import web

START_TIMEOUT = 10.0


class ThreadedAiohttpServer:
    """Subclasses implement :meth:`_serve` (set up the app and assign ``self._runner``)."""

    thread_name = "test-server"
    _loop: asyncio.AbstractEventLoop | None = None
    _runner: web.AppRunner | None = None
    _thread: threading.Thread | None = None

    async def _serve(self) -> None:
        raise NotImplementedError

    def _before_stop(self) -> None:
        """Hook run on the caller's thread before the server shuts down."""

    def start(self) -> Self:
        ready = threading.Event()
        failure: list[BaseException] = []
        self._thread = threading.Thread(
            target=self._run, args=(ready, failure), name=self.thread_name, daemon=True
        )
        self._thread.start()
        if not ready.wait(START_TIMEOUT):
            raise TimeoutError(f"{self.thread_name} not ready after {START_TIMEOUT}s")
        if failure:
            raise RuntimeError(f"{self.thread_name} failed to start") from failure[0]
        return self

    def stop(self) -> None:
        loop, runner, thread = self._loop, self._runner, self._thread
        if loop is not None and runner is not None and loop.is_running():
            self._before_stop()
            asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(START_TIMEOUT)
            loop.call_soon_threadsafe(loop.stop)
        if thread is not None:
            thread.join(START_TIMEOUT)
        self._loop = self._runner = self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self, ready: threading.Event, failure: list[BaseException]) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._serve())
        except BaseException as exc:
            failure.append(exc)
            ready.set()
            loop.close()
            return
        ready.set()
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()
