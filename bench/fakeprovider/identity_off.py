"""``broker serve`` with caller identity and policy taken out: only to measure their cost.

gRPC listens on the public socket itself (no peer-credential relay), every
caller is taken for the daemon's own user, and the policy allows everything.
Never shipped as a setting: a daemon like this would hand anyone everything.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

from broker import access
from broker.identity.principal import Principal, local_user
from broker.rpc import server
from broker.rpc.acceptor import PeerAcceptor

_SOCKET = os.environ["BENCH_PUBLIC_SOCKET"]


class PassThrough(PeerAcceptor):
    @property
    def grpc_target(self) -> str:
        return f"unix://{_SOCKET}"

    def principal(self, peer: str) -> Principal | None:
        return OWNER

    async def start(self, listener: socket.socket) -> None:
        return None


def _no_listener(path: Path, group: str | None) -> socket.socket:
    return socket.socket(socket.AF_UNIX)


def _allow(*args: object, **kwargs: object) -> None:
    return None


OWNER = local_user(uid=os.getuid())
server.PeerAcceptor = PassThrough  # type: ignore[misc]
server.listen_unix = _no_listener  # type: ignore[assignment]
access.Gatekeeper.require = _allow  # type: ignore[method-assign]
access.Gatekeeper.require_connector = _allow  # type: ignore[method-assign]

if __name__ == "__main__":
    from broker.cli.main import main

    main()
