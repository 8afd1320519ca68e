"""`broker exec --env-only --restart-on-change`: the credential watched for the supervisor.

A thread reads WatchCredentials (grpcio: the stream is not the fast path's). The
daemon sends a renewal at its renew point, which lies before the old credential's
margin, so a restart on that event gives the child fresh variables while the old
ones are still served. Each credential that differs from the child's current one is
handed over with a thread-directed signal the supervisor waits for (it sleeps in
``sigwaitinfo``, so nothing else could wake it). The newest one wins.
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


class Watcher:
    def __init__(self, opts: Options, current: pb.Credential) -> None:
        self._opts = opts
        self._current = current
        self._pending: pb.Credential | None = None
        self._lock = threading.Lock()
        self._stack = ExitStack()
        self._stream: Any = None
        self._thread: threading.Thread | None = None
        self._closed = False

    def start(self, main_thread: int) -> None:
        """Open the stream here (the caller has blocked the signals it waits for, so
        grpcio's threads inherit that mask), then read it in a thread."""
        from broker.api.v1 import broker_pb2 as pb
        from broker.cli.client import connect

        stub = self._stack.enter_context(connect(self._opts.socket))
        self._stream = stub.WatchCredentials(
            pb.WatchCredentialsRequest(
                connector=self._opts.name,
                resource_type=self._current.resource_type,
                resource_id=self._current.resource_id,
            )
        )
        self._thread = threading.Thread(
            target=self._read, args=(main_thread,), name="broker-exec-watch", daemon=True
        )
        self._thread.start()

    def _read(self, main_thread: int) -> None:
        from broker.api.v1 import broker_pb2 as pb
        from broker.cli.exec_run import WAKE

        kinds = pb.CredentialEvent.Kind
        try:
            for event in self._stream:
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
                    return
                elif event.kind == kinds.ERROR:
                    self._say(f"renewal failed: {event.error} (the daemon keeps trying)")
        except Exception as exc:
            if not self._closed:
                self._say(f"the watch ended ({type(exc).__name__}); no more restarts")

    def take(self) -> pb.Credential | None:
        with self._lock:
            fresh, self._pending = self._pending, None
        return fresh

    @staticmethod
    def _say(text: str) -> None:
        print(f"broker exec: {text}", file=sys.stderr, flush=True)

    def close(self) -> None:
        self._closed = True
        if self._stream is not None:
            self._stream.cancel()
        self._stack.close()
