"""structlog set-up: JSON lines when not on a TTY, readable console output on one.

A last processor redacts any field whose name suggests a secret, as a guard
against a careless log call; the code never logs secret values on purpose.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

import structlog

_SECRET_HINTS = ("password", "secret", "token", "private_key", "client_key", "session_token")
_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


def _redact(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for key in list(event):
        if any(hint in key.lower() for hint in _SECRET_HINTS):
            event[key] = "[HIDDEN]"
    return event


def configure(level: str = "info", fmt: str = "auto") -> None:
    json_output = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if json_output
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _redact,
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS.get(level, logging.INFO)),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )


@dataclass
class _Window:
    start: float
    event: str
    group: dict[str, Any]
    logged: int = 0
    suppressed: int = 0


class RateLimitedLog:
    """One line per event, at most ``burst`` lines per ``window`` seconds for each key.

    For refusals a client can cause at will (a flood of bad requests, a
    connection storm, accept failures when descriptors run out): the first
    ``burst`` in a window are logged, the rest only counted; when the window
    ends one summary line, with the same event name and ``group`` fields,
    says how many were left out (``suppressed=N``). Never a traceback:
    callers pass the error's text, not the exception.
    """

    def __init__(
        self,
        logger: Any,
        *,
        burst: int = 10,
        window: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._log = logger
        self.burst = burst
        self.window = window
        self._clock = clock
        self._windows: dict[str, _Window] = {}
        self._flushes: dict[str, asyncio.TimerHandle] = {}

    def warning(
        self,
        event: str,
        *,
        key: str | None = None,
        group: dict[str, Any] | None = None,
        **fields: Any,
    ) -> bool:
        """Log one line unless this key's window is full; whether it was logged.

        ``group``: fields naming what the key stands for (e.g. the endpoint),
        on every line and on the summary.
        """
        key = key or event
        now = self._clock()
        current = self._windows.get(key)
        if current is None or now - current.start >= self.window:
            if current is not None:
                self._summarize(key)
            current = self._windows[key] = _Window(now, event, dict(group or {}))
        if current.logged < self.burst:
            current.logged += 1
            self._log.warning(event, **current.group, **fields)
            return True
        current.suppressed += 1
        if current.suppressed == 1:
            self._schedule_flush(key, current.start, current.start + self.window - now)
        return False

    def suppressed(self, key: str) -> int:
        current = self._windows.get(key)
        return current.suppressed if current else 0

    def _schedule_flush(self, key: str, start: float, delay: float) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop: the summary comes with the next line for this key
            return
        self._flushes[key] = loop.call_later(max(delay, 0.0), self._flush, key, start)

    def _flush(self, key: str, start: float) -> None:
        """The window ended with lines left out: say how many, and start afresh."""
        self._flushes.pop(key, None)
        current = self._windows.get(key)
        if current is not None and current.start == start:
            self._summarize(key)
            del self._windows[key]

    def _summarize(self, key: str) -> None:
        current = self._windows[key]
        handle = self._flushes.pop(key, None)
        if handle is not None:
            handle.cancel()
        if current.suppressed:
            self._log.warning(
                current.event,
                **current.group,
                suppressed=current.suppressed,
                summary=(
                    f"suppressed {current.suppressed} more '{current.event}' lines "
                    f"in {self.window:g} s"
                ),
            )
            current.suppressed = 0
