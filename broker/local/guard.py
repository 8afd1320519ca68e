"""Limits for the helper and SDK HTTP endpoints: time, size and connection caps.

aiohttp bounds line sizes and the number of headers, but has no clock on a
request's headers or body beyond its idle keep-alive timer, and accepts
every connection. An :class:`HttpGuard` (one per endpoint: the helper
socket, or all SDK listeners together) adds:

- a header timeout: from connect (or the first byte after a keep-alive
  pause) until the headers are complete; then 408 and close;
- a body timeout: from the end of the headers until the body is complete;
  the handler's read fails with 408 and the connection closes;
- a cap on the headers' total size (431) and on the body's (413);
- a cap on open connections: beyond it a connection gets 503 at once and
  is closed, costing its descriptor only briefly;
- one log line per refused request, rate-limited, never a traceback: a
  client's mistake is not the daemon's error.

It works by running aiohttp's request handler (a subclass, below) behind our
own accept loop (:class:`broker.descriptors.AcceptLoop`, which backs off on
EMFILE) instead of ``loop.create_server``.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import structlog
from aiohttp import web
from aiohttp.http_exceptions import BadHttpMessage, HttpProcessingError, LineTooLong
from aiohttp.web_protocol import RequestHandler

from broker.descriptors import (
    REFUSE_SLOTS,
    AcceptLoop,
    Connections,
    nofile_limit,
    open_fds,
    plan_caps,
)
from broker.local.answers import (
    HttpRefusal,
    canned_response,
    describe_peer,
    error_body,
    header_safe,
)
from broker.logs import RateLimitedLog

if TYPE_CHECKING:
    from aiohttp.streams import StreamReader

    from broker.config import Settings

log = structlog.get_logger(__name__)

#: An idle keep-alive connection is closed this long after the header timeout.
KEEPALIVE_SLACK_SECONDS = 1.0
#: How long a connection over the cap may stay to read its 503 before it is closed.
REFUSE_LINGER_SECONDS = 1.0


def _peer_of(transport: asyncio.BaseTransport | None) -> str:
    return describe_peer(transport.get_extra_info("socket") if transport else None)


@dataclass(frozen=True)
class HttpLimits:
    header_timeout: float = 10.0
    body_timeout: float = 10.0
    max_header_bytes: int = 16 * 1024
    max_body_bytes: int = 64 * 1024
    max_connections: int = 1024

    @classmethod
    def from_settings(cls, settings: Settings, max_connections: int) -> HttpLimits:
        return cls(
            header_timeout=settings.http_header_timeout_seconds,
            body_timeout=settings.http_body_timeout_seconds,
            max_header_bytes=settings.http_max_header_bytes,
            max_body_bytes=settings.http_max_body_bytes,
            max_connections=max_connections,
        )


class HttpGuard:
    """The limits of one endpoint, shared by all its listeners (so one cap covers them)."""

    def __init__(self, name: str, limits: HttpLimits | None = None) -> None:
        self.name = name
        self.limits = limits or HttpLimits()
        self.active = 0
        self.refusing = 0
        self.refused_total = 0
        self._connections = Connections()
        self._log = RateLimitedLog(log, burst=10, window=10.0)

    # -- aiohttp plumbing -----------------------------------------------------
    def application(self, middlewares: list[Any]) -> web.Application:
        app = web.Application(middlewares=middlewares, client_max_size=self.limits.max_body_bytes)
        app[GUARD] = self
        return app

    def runner(self, app: web.Application) -> web.AppRunner:
        line = min(8190, self.limits.max_header_bytes)
        return web.AppRunner(
            app,
            access_log=None,
            handle_signals=False,
            # aiohttp's idle timer: a second after ours, which answers 408 first
            keepalive_timeout=self.limits.header_timeout + KEEPALIVE_SLACK_SECONDS,
            lingering_time=self.limits.body_timeout,
            max_line_size=line,
            max_field_size=line,
            max_headers=128,
        )

    async def serve(self, runner: web.AppRunner, sock: socket.socket) -> GuardedSite:
        site = GuardedSite(runner, sock, self)
        await site.start()
        return site

    def accept(self, conn: socket.socket, server: web.Server) -> None:
        """A new connection: served, or refused at once when the endpoint is full."""
        if self.active >= self.limits.max_connections:
            self._refuse_connection(conn)
            return
        self.active += 1  # from accept until the handler's connection_lost
        kwargs: dict[str, Any] = dict(server._kwargs)  # what aiohttp's Server.__call__ passes
        made: list[GuardedHandler] = []

        def factory() -> GuardedHandler:
            made.append(GuardedHandler(server, self, loop=asyncio.get_running_loop(), **kwargs))
            return made[0]

        def failed(exc: BaseException) -> None:
            if not made or made[0].phase is _NEW:  # never connected: no connection_lost
                self.active -= 1
            self._log.warning(
                "http_connection_failed",
                key="setup",
                group={"endpoint": self.name},
                error=str(exc),
            )

        self._connections.start(conn, factory, failed)

    def _refuse_connection(self, conn: socket.socket) -> None:
        message = (
            f"the {self.name} endpoint is at its cap of {self.limits.max_connections} open "
            "connections; try again shortly"
        )
        self.refused(503, "unavailable", message, describe_peer(conn))
        answer = canned_response(503, "unavailable", message)
        if self.refusing >= REFUSE_SLOTS:
            with contextlib.suppress(OSError):  # best effort: no descriptor is held for it
                conn.send(answer)
            conn.close()
            return
        self.refusing += 1
        _Refuser(self, conn, answer)  # it keeps itself alive through its reader and timer

    # -- requests ---------------------------------------------------------------
    def refused(self, status: int, code: str, reason: str, peer: str | None = None) -> None:
        """One log line per refused request (rate-limited per endpoint)."""
        self.refused_total += 1
        self._log.warning(
            "http_request_refused",
            key="refused",
            group={"endpoint": self.name},
            status=status,
            code=code,
            reason=header_safe(reason, 200),
            peer=peer,
        )

    def check_request(self, request: web.Request) -> None:
        """Refuse headers over the limit (when they came in one piece, so the protocol
        could not count them as they arrived) and a declared body over the limit, before
        anything reads it."""
        head = (
            len(request.method)
            + len(request.raw_path)
            + 12
            + sum(len(name) + len(value) + 4 for name, value in request.raw_headers)
        )
        if head > self.limits.max_header_bytes:
            raise HttpRefusal(
                431,
                "too_large",
                f"request headers are over the limit of {self.limits.max_header_bytes} bytes",
            )
        length = request.content_length
        if length is not None and length > self.limits.max_body_bytes:
            raise HttpRefusal(
                413,
                "too_large",
                f"request body of {length} bytes is over the limit of "
                f"{self.limits.max_body_bytes} bytes",
            )

    def too_large(self) -> HttpRefusal:
        return HttpRefusal(
            413,
            "too_large",
            f"request body is over the limit of {self.limits.max_body_bytes} bytes",
        )


def endpoint_guards(settings: Settings) -> tuple[HttpGuard, HttpGuard]:
    """The helper and SDK guards, their connection caps fitted to the open-file limit."""
    budget = plan_caps(
        nofile_limit(),
        open_fds(),
        settings.fd_reserve,
        settings.helper_max_connections,
        settings.sdk_max_connections,
    )
    fields = {
        "nofile_limit": budget.limit,
        "open_files": budget.in_use,
        "reserve": budget.reserve,
        "helper_max_connections": budget.helper,
        "sdk_max_connections": budget.sdk,
    }
    if budget.lowered:
        log.warning("connection_caps_lowered", reason="to fit the open-file limit", **fields)
    else:
        log.info("connection_caps", **fields)
    return (
        HttpGuard("helper", HttpLimits.from_settings(settings, budget.helper)),
        HttpGuard("sdk", HttpLimits.from_settings(settings, budget.sdk)),
    )


#: The guard of the endpoint an application belongs to (its middlewares read it).
GUARD = web.AppKey("http_guard", HttpGuard)


class GuardedSite(web.BaseSite):
    """An aiohttp site on an already listening socket, accepted by :class:`AcceptLoop`."""

    __slots__ = ("_guard", "_name", "_sock")

    def __init__(self, runner: web.AppRunner, sock: socket.socket, guard: HttpGuard) -> None:
        super().__init__(runner)
        self._sock = sock
        self._guard = guard
        if sock.family == socket.AF_UNIX:
            self._name = f"http://unix:{sock.getsockname()}:"
        else:
            host, port = sock.getsockname()[:2]
            self._name = f"http://{host}:{port}"

    @property
    def name(self) -> str:
        return self._name

    async def start(self) -> None:
        await super().start()
        server = self._runner.server
        assert server is not None
        guard = self._guard
        loop = AcceptLoop(self._sock, lambda conn: guard.accept(conn, server), name=guard.name)
        self._server = loop
        await loop.start_serving()


# Phases of a connection, for the timers.
_NEW, _HEADERS, _BODY, _IDLE, _CLOSED = "new", "headers", "body", "idle", "closed"


class GuardedHandler(RequestHandler):
    """aiohttp's request handler with header/body timers, a header-size cap and error
    answers as one-line JSON logged in one rate-limited line.

    It reads a few of aiohttp's internals (``_request_count``, ``_messages``,
    ``_current_request``, ``_request_in_progress``), all of which
    ``RequestHandler`` itself manages; tests/test_http_limits.py covers each
    path so an aiohttp upgrade that moves them fails there.
    """

    __slots__ = ("_body", "_guard", "_head_bytes", "_phase", "_timer")

    def __init__(self, manager: web.Server, guard: HttpGuard, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._guard = guard
        self._phase = _NEW
        self._timer: asyncio.TimerHandle | None = None
        self._head_bytes = 0
        self._body: StreamReader | None = None

    @property
    def phase(self) -> str:
        return self._phase

    # -- connection -------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._start_headers()

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._phase is not _CLOSED:
            self._phase = _CLOSED
            self._guard.active -= 1  # counted since accept
            self._cancel_timer()
            self._body = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._phase is _CLOSED:
            return
        if self._phase is _IDLE:
            self._start_headers()
        if self._phase is _HEADERS:
            self._head_bytes += len(data)
        before = self._request_count
        super().data_received(data)
        if self._phase is _CLOSED:
            return
        if self._request_count != before and self._messages:
            self._cancel_timer()
            payload = self._messages[-1][1]
            if payload.is_eof():
                self._phase, self._body = _IDLE, None
            else:
                self._phase, self._body = _BODY, payload
                self._timer = self._loop.call_later(
                    self._guard.limits.body_timeout, self._body_timed_out
                )
        elif self._phase is _HEADERS and self._head_bytes > self._guard.limits.max_header_bytes:
            limit = self._guard.limits.max_header_bytes
            self._refuse(431, "too_large", f"request headers are over the limit of {limit} bytes")
        elif self._phase is _BODY and self._body is not None and self._body.is_eof():
            self._cancel_timer()
            self._phase, self._body = _IDLE, None

    def _start_headers(self) -> None:
        self._cancel_timer()
        self._phase = _HEADERS
        self._head_bytes = 0
        self._timer = self._loop.call_later(
            self._guard.limits.header_timeout, self._headers_timed_out
        )

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _headers_timed_out(self) -> None:
        self._timer = None
        timeout = self._guard.limits.header_timeout
        self._refuse(408, "timeout", f"request headers not received within {timeout:g} s")

    def _body_timed_out(self) -> None:
        self._timer = None
        timeout = self._guard.limits.body_timeout
        message = f"request body not received within {timeout:g} s"
        body = self._body
        if self._current_request is not None and body is not None and not body.is_eof():
            # The handler is running: its read fails with this, and it answers 408.
            body.set_exception(HttpRefusal(408, "timeout", message))
            return
        # Answered already (the rest of the body was being drained), or not yet started:
        # nothing more to say to this client.
        self.force_close()

    def _refuse(self, status: int, code: str, message: str) -> None:
        """Answer ``status`` straight on the transport (when no response is under way) and close."""
        transport = self.transport
        self._guard.refused(status, code, message, _peer_of(transport))
        if transport is not None and not self._request_in_progress and not self._messages:
            transport.write(canned_response(status, code, message))
        self.force_close()

    # -- errors -----------------------------------------------------------------
    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """Parse errors and failures outside the app: one-line JSON, one log line."""
        limits = self._guard.limits
        if isinstance(exc, LineTooLong):
            status, code = 431, "too_large"
            text = f"a request line or header is over the limit of {self.max_field_size} bytes"
        elif isinstance(exc, BadHttpMessage) and "Too many headers" in exc.message:
            status, code = 431, "too_large"
            text = f"more than {self.max_headers} request headers"
        elif isinstance(exc, HttpProcessingError):
            status, code = 400, "invalid_argument"
            first = (exc.message or "").strip().splitlines()
            text = f"malformed HTTP request: {first[0] if first else 'unreadable'}"
        elif isinstance(exc, ConnectionError):
            status, code, text = 400, "disconnected", "the client went away"
        elif status == 504:
            code, text = "timeout", f"request not answered within {limits.body_timeout:g} s"
        else:
            status, code = 500, "internal"
            text = "internal error"
            log.error(
                "http_internal_error",
                endpoint=self._guard.name,
                error=f"{type(exc).__name__}: {exc}" if exc else message,
            )
        if code != "disconnected":
            self._guard.refused(status, code, text, _peer_of(self.transport))
        if request.writer.output_size > 0:
            raise ConnectionError("the response had started; the connection is closed")
        resp = web.Response(
            status=status,
            body=error_body(code, text),
            content_type="application/json",
            headers={"X-Broker-Error": header_safe(text), "X-Broker-Error-Code": code},
        )
        resp.force_close()
        return resp

    def log_exception(self, *args: Any, **kw: Any) -> None:
        """aiohttp's own error reports: one line, no traceback (our middlewares catch what
        the app raises, so what lands here is a client's doing: a disconnect, a timeout)."""
        exc = kw.get("exc_info")
        if isinstance(exc, HttpRefusal | ConnectionError):
            return
        self._guard._log.warning(
            "http_connection_error",
            key="error",
            group={"endpoint": self._guard.name},
            message=str(args[0]) if args else "",
            error=f"{type(exc).__name__}: {exc}" if isinstance(exc, BaseException) else None,
        )


class _Refuser:
    """A connection over the cap: answer 503, then close once the client is done (or after
    a second). Plain socket calls on the loop's selector, no transport: a refusal must not
    cost more than the descriptor it already has, whatever the event loop."""

    def __init__(self, guard: HttpGuard, conn: socket.socket, answer: bytes) -> None:
        self._guard = guard
        self._conn = conn
        self._loop = asyncio.get_running_loop()
        self._timer: asyncio.TimerHandle | None = None
        self._closed = False
        try:  # a few hundred bytes into an empty socket buffer: sent whole at once
            conn.setblocking(False)
            conn.send(answer)
            conn.shutdown(socket.SHUT_WR)
            self._loop.add_reader(conn.fileno(), self._drain)
        except OSError:
            self.close()
            return
        self._timer = self._loop.call_later(REFUSE_LINGER_SECONDS, self.close)

    def _drain(self) -> None:
        """Read and drop what the client sends, so closing does not reset the answer;
        its end of stream (or an error) closes."""
        try:
            if self._conn.recv(4096):
                return
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            pass
        self.close()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._guard.refusing -= 1
        if self._timer is not None:
            self._timer.cancel()
        with contextlib.suppress(OSError, ValueError):
            self._loop.remove_reader(self._conn.fileno())
        self._conn.close()
