"""`broker exec --env-only --restart-on-change`: the credential watched for the supervisor.

A thread reads WatchCredentials (grpcio: the stream is not the fast path's). The
daemon sends a renewal at its renew point, which lies before the old credential's
margin, so a restart on that event gives the child fresh variables while the old
ones are still served. Each credential that differs from the child's current one is
handed over with a thread-directed signal the supervisor waits for (it sleeps in
``sigwaitinfo``, so nothing else could wake it). The newest one wins. A stream that
breaks (the daemon restarted) is opened again, with backoff; its first event is the
credential then current, so a change missed meanwhile still restarts the child.
"""

from __future__ import annotations

import signal
import sys
import threading
from contextlib import ExitStack
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from broker.api.v1 import broker_pb2 as pb
    from broker.cli.exec_run import Options


def _same(a: pb.Credential, b: pb.Credential) -> bool:
    return dict(a.config) == dict(b.config) and a.expires_at == b.expires_at


def _describe(exc: Exception) -> str:
    """A BrokerError's message, or a gRPC status as its code and details."""
    message = getattr(exc, "message", None)
    if isinstance(message, str):
        return message
    code, details = getattr(exc, "code", None), getattr(exc, "details", None)
    if callable(code) and callable(details):
        return f"{getattr(code(), 'name', code())}: {details()}"
    return type(exc).__name__


#: Seconds between attempts to open the watch again after it broke (daemon restart).
RETRY_FIRST, RETRY_MAX = 0.5, 30.0


class Watcher:
    def __init__(self, opts: Options, current: pb.Credential) -> None:
        self._opts = opts
        self._current = current
        self._pending: pb.Credential | None = None
        self._lock = threading.Lock()
        self._stack = ExitStack()
        self._stream: Any = None
        self._thread: threading.Thread | None = None
        self._closed = threading.Event()
        self._events = 0

    def _open(self) -> None:
        from broker.api.v1 import broker_pb2 as pb
        from broker.cli.client import connect

        stack = ExitStack()
        try:
            stub = stack.enter_context(connect(self._opts.socket))
            stream = stub.WatchCredentials(
                pb.WatchCredentialsRequest(
                    connector=self._opts.name,
                    resource_type=self._current.resource_type,
                    resource_id=self._current.resource_id,
                )
            )
        except BaseException:
            stack.close()
            raise
        with self._lock:
            old, self._stack, self._stream = self._stack, stack, stream
        old.close()

    def start(self, main_thread: int) -> None:
        """Open the stream here, so a refusal is an error before the child starts (the
        caller has blocked the signals it waits for: grpcio's threads inherit that
        mask), then read it in a thread, opening it again when it breaks."""
        self._open()
        self._thread = threading.Thread(
            target=self._run, args=(main_thread,), name="broker-exec-watch", daemon=True
        )
        self._thread.start()

    def _run(self, main_thread: int) -> None:
        delay, opened = RETRY_FIRST, True
        while not self._closed.is_set():
            if not opened:
                try:
                    self._open()
                    opened = True
                except Exception as exc:
                    problem = f"cannot watch: {_describe(exc)}"
            if opened:
                self._events = 0
                try:
                    if self._read(main_thread):
                        return
                    problem = "the watch ended"
                except Exception as exc:  # grpc.RpcError: the daemon went away mid-stream
                    problem = f"the watch broke: {_describe(exc)}"
                opened = False
                if self._events:
                    delay = RETRY_FIRST  # it had worked: a fresh start
            if self._closed.is_set():
                return
            self._say(f"{problem}; watching again in {delay:g} s")
            if self._closed.wait(delay):
                return
            delay = min(delay * 2, RETRY_MAX)

    def _read(self, main_thread: int) -> bool:
        """Read events until the stream ends; True: stop watching (connector deleted)."""
        from broker.api.v1 import broker_pb2 as pb
        from broker.cli.exec_run import WAKE

        kinds = pb.CredentialEvent.Kind
        for event in self._stream:
            self._events += 1
            if event.kind in (kinds.ISSUED, kinds.RENEWED, kinds.UPDATED):
                if not event.HasField("credential"):
                    continue
                with self._lock:
                    if _same(event.credential, self._current):
                        continue
                    self._current = self._pending = event.credential
                signal.pthread_kill(main_thread, WAKE)
            elif event.kind == kinds.DELETED:
                self._say("the connector was deleted; the child keeps running")
                return True
            elif event.kind == kinds.ERROR:
                self._say(f"renewal failed: {event.error} (the daemon keeps trying)")
        return False

    def take(self) -> pb.Credential | None:
        with self._lock:
            fresh, self._pending = self._pending, None
        return fresh

    @staticmethod
    def _say(text: str) -> None:
        print(f"broker exec: {text}", file=sys.stderr, flush=True)

    def close(self) -> None:
        self._closed.set()
        with self._lock:
            stream, stack = self._stream, self._stack
        if stream is not None:
            stream.cancel()
        stack.close()
