"""gRPC server lifecycle: listeners, health, reflection, ordered shutdown.

The public Unix socket is accepted by :class:`PeerAcceptor` (peer credentials
for every call); gRPC itself listens only on a private socket and on TCP.
"""

from __future__ import annotations

import contextlib
import json
import os
from typing import TYPE_CHECKING

import grpc
import structlog
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from broker.api.v1 import broker_pb2
from broker.config import Settings, describe
from broker.errors import FailedPrecondition, InvalidArgument
from broker.grants import SdkGrants
from broker.rpc import limits
from broker.rpc.acceptor import PeerAcceptor
from broker.rpc.callers import Callers
from broker.rpc.reflection import enable_server_reflection
from broker.rpc.servicer import BrokerServicer
from broker.rpc.watch_flow import WatchLimits, WatchStreams
from broker.service import BrokerService
from broker.sockets import listen_unix

if TYPE_CHECKING:
    from broker.identity.attestors.attestation import Attestation

log = structlog.get_logger(__name__)

SERVICE_NAME = broker_pb2.DESCRIPTOR.services_by_name["BrokerService"].full_name
#: Requests beyond this are refused by gRPC before they reach the broker (see broker.rpc.limits).
MAX_REQUEST_BYTES = limits.MAX_REQUEST_BYTES
#: Answers: a ListConnectors page stays under limits.PAGE_BYTES, far below this.
MAX_MESSAGE_BYTES = 4 * 1024 * 1024
#: New calls gRPC core may hold until the server's handler loop takes them (the default of
#: the ``grpc_max_pending_calls`` setting; limits.server_options).
MAX_PENDING_CALLS = Settings().grpc_max_pending_calls


def daemon_config(settings: Settings) -> broker_pb2.DaemonConfig:
    """What GetConfig answers: every setting as `broker config show` prints it."""
    return broker_pb2.DaemonConfig(
        settings={k: json.dumps(v) for k, v in describe(settings).items()},
        config_file=str(settings.config_file or ""),
    )


class GrpcServer:
    """Owns the grpc.aio server and its health status."""

    def __init__(
        self,
        settings: Settings,
        service: BrokerService,
        sdk: SdkGrants | None = None,
        attestation: Attestation | None = None,
    ) -> None:
        self._settings = settings
        # Pending calls, keepalive, stream limits: see limits.server_options (settings).
        self._server = grpc.aio.server(
            options=[
                *limits.server_options(settings),
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ]
        )
        self.acceptor = PeerAcceptor(attestation)
        #: The open watch streams and their limits (counts for the metrics endpoint).
        self.watches = WatchStreams(
            WatchLimits(settings.watch_max_streams, settings.watch_stall_timeout_seconds)
        )
        # Raw request bytes in, decoded and size-checked there: bad input is INVALID_ARGUMENT.
        limits.add_servicer(
            BrokerServicer(
                service,
                Callers(self.acceptor),
                sdk,
                str(settings.local_socket_path.resolve()),
                self.watches,
                daemon_config(settings),
            ),
            self._server,
        )
        self.health = health.aio.HealthServicer()  # type: ignore[attr-defined]
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._server)
        # grpc.reflection.v1 and v1alpha (grpcio-reflection itself serves only v1alpha).
        enable_server_reflection(
            self._server,
            (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name),
        )
        self.tcp_port: int | None = None
        self._published = False

    async def start(self) -> None:
        settings = self._settings
        sock = settings.socket_path
        old = os.umask(0o177)
        try:
            self._server.add_insecure_port(self.acceptor.grpc_target)
        finally:
            os.umask(old)
        if settings.tcp:
            self.tcp_port = self._add_tcp(settings)
        await self._server.start()
        listener = listen_unix(sock, settings.socket_group)
        self._published = True  # from here on the path is ours to remove
        await self.acceptor.start(listener)
        for name in ("", SERVICE_NAME):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        log.info("grpc_listening", socket=str(sock), tcp=settings.tcp, tcp_port=self.tcp_port)

    def _add_tcp(self, settings: Settings) -> int:
        assert settings.tcp is not None
        if settings.tls_cert and settings.tls_key:
            try:
                key = settings.tls_key.read_bytes()
                cert = settings.tls_cert.read_bytes()
                client_ca = settings.tls_client_ca.read_bytes() if settings.tls_client_ca else None
            except OSError as exc:
                raise InvalidArgument(
                    f"cannot read TLS file: {exc.filename}: {exc.strerror}", field="tls_cert"
                ) from None
            creds = grpc.ssl_server_credentials(
                [(key, cert)],
                root_certificates=client_ca,
                require_client_auth=client_ca is not None,
            )
            port = self._server.add_secure_port(settings.tcp, creds)
        else:
            port = self._server.add_insecure_port(settings.tcp)
        if port == 0:
            raise FailedPrecondition(f"cannot listen on {settings.tcp}")
        return port

    async def stop(self, grace: float) -> None:
        """NOT_SERVING first, so load balancers and clients move away; then drain."""
        with contextlib.suppress(Exception):
            await self.health.enter_graceful_shutdown()
        await self.acceptor.stop_accepting()
        if self._published:  # never another daemon's socket after a failed start
            with contextlib.suppress(FileNotFoundError):
                self._settings.socket_path.unlink()
        await self._server.stop(grace)
        await self.acceptor.close()

    async def wait(self) -> None:
        await self._server.wait_for_termination()
