"""Who is calling a gRPC method: from the acceptor's peer credentials or the TLS session."""

from __future__ import annotations

from typing import Any

import grpc

from broker.errors import Unauthenticated
from broker.identity.certs import cert_identity
from broker.identity.principal import Principal, anonymous_tcp, cert_principal
from broker.rpc.acceptor import PeerAcceptor

Ctx = grpc.aio.ServicerContext[Any, Any]


class Callers:
    """Turns a call's transport facts into a principal, never trusting call metadata."""

    def __init__(self, acceptor: PeerAcceptor | None) -> None:
        self._acceptor = acceptor

    def principal(self, context: Ctx) -> Principal:
        peer = context.peer() or ""
        if self._acceptor is not None:
            found = self._acceptor.principal(peer)
            if found is not None:
                return found
        if peer.startswith(("ipv4:", "ipv6:")):
            auth = context.auth_context()
            pems = list(auth.get("x509_pem_cert") or ())
            if pems:
                identity = cert_identity(pems[0])
                if identity is None:
                    raise Unauthenticated("the client certificate names no identity (SAN or CN)")
                return cert_principal(identity)
            return anonymous_tcp(peer)
        raise Unauthenticated("the caller could not be identified")
