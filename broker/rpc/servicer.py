"""The gRPC servicer: turns requests into service calls and answers into messages.

Every method runs inside :func:`_guard`, which maps typed errors to status
codes with their message, and anything unexpected to INTERNAL with a
reference (details only in the daemon log, never a secret to the caller).
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from typing import Any, TypeVar

import grpc
import structlog

from broker.access import connector_target
from broker.api.v1 import broker_pb2 as pb
from broker.api.v1 import broker_pb2_grpc as pb_grpc
from broker.connectors import ConnectorDraft, scope_of, served_types
from broker.errors import BrokerError, FailedPrecondition, InvalidArgument, NotFound
from broker.grants import SdkGrants
from broker.model import Connector, ConnectorFilter
from broker.policy import Action, Target
from broker.rpc import convert, limits
from broker.rpc.callers import Callers
from broker.rpc.status import DAEMON_ERROR, status_for
from broker.rpc.watch_events import EncodedEvents
from broker.rpc.watch_flow import StreamRefused, WatchStreams
from broker.service import BrokerService, ConnectorUpdate, Issued, IssuedEvent

log = structlog.get_logger(__name__)

T = TypeVar("T")
Ctx = grpc.aio.ServicerContext[Any, Any]
Handler = Callable[[Any, Any, Ctx], Awaitable[T]]


def _guard(method: Handler[T]) -> Handler[T]:
    @functools.wraps(method)
    async def wrapper(self: Any, request: Any, context: Ctx) -> T:
        try:
            return await method(self, request, context)
        except BrokerError as exc:
            await context.abort(status_for(exc), exc.message, DAEMON_ERROR)
        except grpc.aio.AbortError:
            raise
        except Exception:
            ref = uuid.uuid4().hex[:12]
            log.exception("rpc_internal_error", method=method.__name__, ref=ref)
            await context.abort(
                grpc.StatusCode.INTERNAL, f"internal error (reference {ref})", DAEMON_ERROR
            )
        raise AssertionError("unreachable")

    return wrapper


def _text(value: str) -> str | None:
    return value or None


class BrokerServicer(pb_grpc.BrokerServiceServicer):
    def __init__(
        self,
        service: BrokerService,
        callers: Callers,
        sdk: SdkGrants | None = None,
        helper_socket: str = "",
        watches: WatchStreams | None = None,
        config: pb.DaemonConfig | None = None,
    ) -> None:
        self._service = service
        #: The effective settings as `broker config show` prints them (GetConfig).
        self._config = config or pb.DaemonConfig()
        self._callers = callers
        self._sdk = sdk
        self._helper_socket = helper_socket
        #: Open watch streams at most, and how long one may leave an event unread.
        self.watches = watches or WatchStreams()
        self._encoded = EncodedEvents()

    def _connector(self, c: Connector, *, show_secrets: bool = False) -> pb.Connector:
        try:
            provider = self._service.provider(c)
        except NotFound:  # its plugin is not installed: show it, secrets hidden
            return convert.connector(
                c, resource_types=(), scope="unknown", secret_names=frozenset(c.config)
            )
        return convert.connector(
            c,
            resource_types=served_types(provider, c),
            scope=scope_of(provider, c),
            secret_names=self._service.secret_names(c),
            show_secrets=show_secrets,
        )

    @_guard
    async def ListConnectorTypes(
        self, request: pb.ListConnectorTypesRequest, context: Ctx
    ) -> pb.ListConnectorTypesResponse:
        specs = self._service.list_types(
            self._callers.principal(context),
            _text(request.connector_type),
            _text(request.resource_type),
            _text(request.auth_method),
        )
        return pb.ListConnectorTypesResponse(
            connector_types=[convert.connector_type(s) for s in specs]
        )

    @_guard
    async def DescribeConnectorType(
        self, request: pb.DescribeConnectorTypeRequest, context: Ctx
    ) -> pb.ConnectorType:
        spec = self._service.describe_type(
            self._callers.principal(context),
            request.connector_type,
            _text(request.resource_type),
            _text(request.auth_method),
        )
        return convert.connector_type(spec)

    @_guard
    async def RegisterConnector(
        self, request: pb.RegisterConnectorRequest, context: Ctx
    ) -> pb.RegisterConnectorResponse:
        if not request.connector_type:
            raise InvalidArgument("connector_type is required", field="connector_type")
        draft = ConnectorDraft(
            name=request.name,
            connector_type=request.connector_type,
            auth_method=_text(request.auth_method),
            resource_type=_text(request.resource_type),
            resource_id=request.resource_id if request.HasField("resource_id") else None,
            config=dict(request.config),
            labels=dict(request.labels),
            expiration_seconds=request.expiration_seconds
            if request.HasField("expiration_seconds")
            else None,
            expires_at=convert.from_ts(request, "expires_at"),
            description=request.description,
        )
        connector, results = await self._service.register(
            draft, self._callers.principal(context), verify=not request.no_verify
        )
        return pb.RegisterConnectorResponse(
            connector=self._connector(connector),
            resources=[
                convert.resource_result(connector.name, connector.connector_type, r)
                for r in results
            ],
        )

    @_guard
    async def UpdateConnector(
        self, request: pb.UpdateConnectorRequest, context: Ctx
    ) -> pb.UpdateConnectorResponse:
        def opt(name: str) -> Any:
            return getattr(request, name) if request.HasField(name) else None

        change = ConnectorUpdate(
            auth_method=opt("auth_method"),
            resource_type=opt("resource_type"),
            resource_id=opt("resource_id"),
            config=dict(request.config),
            remove_attributes=list(request.remove_attributes),
            labels=dict(request.labels),
            remove_labels=list(request.remove_labels),
            expiration_seconds=opt("expiration_seconds"),
            expires_at=convert.from_ts(request, "expires_at"),
            description=opt("description"),
            clear_resource_type=request.clear_resource_type,
            clear_resource_id=request.clear_resource_id,
            clear_expiration_seconds=request.clear_expiration_seconds,
            clear_expires_at=request.clear_expires_at,
        )
        connector, results = await self._service.update(
            request.name,
            change,
            self._callers.principal(context),
            verify=not request.no_verify,
            expected_revision=opt("expected_revision"),
        )
        return pb.UpdateConnectorResponse(
            connector=self._connector(connector),
            resources=[
                convert.resource_result(connector.name, connector.connector_type, r)
                for r in results
            ],
        )

    @_guard
    async def DeleteConnector(
        self, request: pb.DeleteConnectorRequest, context: Ctx
    ) -> pb.Connector:
        return self._connector(
            await self._service.delete(request.name, self._callers.principal(context))
        )

    @_guard
    async def GetConnector(self, request: pb.GetConnectorRequest, context: Ctx) -> pb.Connector:
        connector = await self._service.describe(
            request.name, self._callers.principal(context), show_secrets=request.show_secrets
        )
        return self._connector(connector, show_secrets=request.show_secrets)

    @_guard
    async def ListConnectors(
        self, request: pb.ListConnectorsRequest, context: Ctx
    ) -> pb.ListConnectorsResponse:
        connectors = await self._service.list_visible(
            self._callers.principal(context), _filter(request)
        )
        page, next_token = limits.paged(
            connectors,
            lambda c: c.name,
            self._connector,
            request.page_size,
            request.page_token,
        )
        return pb.ListConnectorsResponse(connectors=page, next_page_token=next_token)

    @_guard
    async def VerifyConnector(
        self, request: pb.VerifyConnectorRequest, context: Ctx
    ) -> pb.VerifyConnectorResponse:
        principal = self._callers.principal(context)
        connector = await self._service.authorized(request.name, principal, Action.VERIFY)
        results = await self._service.verify(
            request.name, principal, _text(request.resource_type), _text(request.resource_id)
        )
        return pb.VerifyConnectorResponse(
            resources=[
                convert.resource_result(connector.name, connector.connector_type, r)
                for r in results
            ],
            ok=all(r.error is None for r in results),
        )

    @_guard
    async def ListResources(self, request: pb.ListResourcesRequest, context: Ctx) -> None:
        async with self._service.list_resources(
            _filter(request),
            self._callers.principal(context),
            exclude_errors=request.exclude_errors,
            unit_timeout=request.timeout_seconds or None,
            refresh=request.refresh,
        ) as results:
            async for item in results:
                await context.write(
                    convert.resource_result(
                        item.connector.name, item.connector.connector_type, item.result
                    )
                )

    @_guard
    async def GetCredentials(
        self, request: pb.GetCredentialsRequest, context: Ctx
    ) -> pb.Credential:
        issued = await self._service.get_credentials(
            request.connector,
            _text(request.resource_type),
            _text(request.resource_id),
            principal=self._callers.principal(context),
        )
        return _answer(issued, request.hide_secrets)

    @_guard
    async def RotateCredentials(
        self, request: pb.RotateCredentialsRequest, context: Ctx
    ) -> pb.Credential:
        issued = await self._service.rotate_credentials(
            request.connector,
            _text(request.resource_type),
            _text(request.resource_id),
            principal=self._callers.principal(context),
        )
        return _answer(issued, request.hide_secrets)

    @_guard
    async def WatchCredentials(self, request: pb.WatchCredentialsRequest, context: Ctx) -> None:
        watches = self.watches

        def peer() -> str:  # for a log line only
            return str(context.peer())

        try:
            watches.admit(peer)
        except StreamRefused as exc:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, exc.message, DAEMON_ERROR)
        try:
            await self._watch(request, context, watches, peer)
        except StreamRefused as exc:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, exc.message, DAEMON_ERROR)
        finally:
            watches.release()

    async def _watch(
        self,
        request: pb.WatchCredentialsRequest,
        context: Ctx,
        watches: WatchStreams,
        peer: Callable[[], str],
    ) -> None:
        events = self._service.watch_credentials(
            request.connector,
            _text(request.resource_type),
            _text(request.resource_id),
            principal=self._callers.principal(context),
        )
        try:
            await self._relay(events, context, watches, peer)
        finally:  # unsubscribed at once, however the stream ends (a dropped one too)
            close = getattr(events, "aclose", None)
            if close is not None:
                await close()

    async def _relay(
        self,
        events: AsyncIterator[IssuedEvent],
        context: Ctx,
        watches: WatchStreams,
        peer: Callable[[], str],
    ) -> None:
        while True:
            try:
                event = await anext(events)
                message = self._encoded.get(event)
            except StopAsyncIteration:
                return
            except BrokerError:
                raise  # its own message and status, as in a unary call
            except Exception:
                # As unary calls do: the details go to the log, the watcher gets a reference.
                ref = uuid.uuid4().hex[:12]
                log.exception("rpc_internal_error", method="WatchCredentials", ref=ref)
                await context.write(
                    pb.CredentialEvent(
                        kind=pb.CredentialEvent.ERROR, error=f"internal error (reference {ref})"
                    )
                )
                return
            # At most this one message in flight: while the client does not read, newer
            # events replace the one waiting in the subscription's slot (latest value only).
            await watches.send(context.write, message, peer)

    @_guard
    async def GetStatus(self, request: pb.GetStatusRequest, context: Ctx) -> pb.Status:
        st = await self._service.status(self._callers.principal(context))
        return pb.Status(
            version=st.version,
            health="DEGRADED" if st.degraded else "SERVING",
            uptime_seconds=st.uptime_seconds,
            connectors=st.connectors,
            cached_credentials=st.cached_credentials,
            subscribers=st.subscribers,
            connector_types=st.connector_types,
            helper_socket=self._helper_socket,
            degraded=st.degraded,
            store=st.store,
        )

    @_guard
    async def ListOutputs(
        self, request: pb.ListOutputsRequest, context: Ctx
    ) -> pb.ListOutputsResponse:
        states = self._service.list_outputs(self._callers.principal(context))
        return pb.ListOutputsResponse(outputs=[convert.output(s) for s in states])

    @_guard
    async def SetPreferredConnector(
        self, request: pb.SetPreferredConnectorRequest, context: Ctx
    ) -> pb.SetPreferredConnectorResponse:
        if request.resource_type != "docker-registry":
            raise InvalidArgument(
                "preferred connectors exist only for resource type 'docker-registry'",
                field="resource_type",
            )
        if not request.resource_id:
            raise InvalidArgument(
                "resource_id (the registry host) is required", field="resource_id"
            )
        await self._service.set_preferred_registry_connector(
            request.resource_id, request.connector or None, self._callers.principal(context)
        )
        return pb.SetPreferredConnectorResponse()

    def _endpoints(self) -> SdkGrants:
        if self._sdk is None:
            raise FailedPrecondition("SDK endpoints are not enabled on this daemon")
        return self._sdk

    @_guard
    async def CreateSdkEndpoint(
        self, request: pb.CreateSdkEndpointRequest, context: Ctx
    ) -> pb.SdkEndpoint:
        grant, env = await self._endpoints().create(
            request.kind,
            request.connector,
            _text(request.resource_type),
            _text(request.resource_id),
            principal=self._callers.principal(context),
            ttl_seconds=request.ttl_seconds or None,
            bind_uid=request.bind_uid if request.HasField("bind_uid") else None,
            bound_to_caller=request.bound_to_caller_process,
        )
        return convert.sdk_grant(grant, env)

    @_guard
    async def RevokeSdkEndpoint(
        self, request: pb.RevokeSdkEndpointRequest, context: Ctx
    ) -> pb.RevokeSdkEndpointResponse:
        await self._endpoints().revoke(request.id, self._callers.principal(context))
        return pb.RevokeSdkEndpointResponse()

    @_guard
    async def ListSdkEndpoints(
        self, request: pb.ListSdkEndpointsRequest, context: Ctx
    ) -> pb.ListSdkEndpointsResponse:
        grants = self._endpoints().list(self._callers.principal(context))
        return pb.ListSdkEndpointsResponse(endpoints=[convert.sdk_grant(g) for g in grants])

    @_guard
    async def WhoAmI(self, request: pb.WhoAmIRequest, context: Ctx) -> pb.Identity:
        principal = self._callers.principal(context)
        return pb.Identity(
            principal=principal.describe(),
            selectors=sorted(principal.selectors),
            roles=self._service.gate.roles(principal),
        )

    @_guard
    async def GetConfig(self, request: pb.GetConfigRequest, context: Ctx) -> pb.DaemonConfig:
        self._service.gate.require(self._callers.principal(context), Action.ADMIN, Target())
        return self._config

    @_guard
    async def GetPolicy(self, request: pb.GetPolicyRequest, context: Ctx) -> pb.Policy:
        self._service.gate.require(self._callers.principal(context), Action.ADMIN, Target())
        return convert.policy(self._service.gate.policy)

    @_guard
    async def CheckPolicy(self, request: pb.CheckPolicyRequest, context: Ctx) -> pb.PolicyDecision:
        self._service.gate.require(self._callers.principal(context), Action.ADMIN, Target())
        subject = convert.policy_subject(request)
        try:
            action = Action(request.action)
        except ValueError:
            raise InvalidArgument(
                f"unknown action '{request.action}' (one of: {', '.join(a.value for a in Action)})",
                field="action",
            ) from None
        target = Target()
        if request.connector:
            try:
                connector = await self._service.get(request.connector)
            except NotFound:
                target = Target(request.connector)
            else:
                target = connector_target(connector)
            target = replace(
                target,
                resource_type=_text(request.resource_type),
                resource_id=_text(request.resource_id),
            )
        decision = self._service.gate.decide(subject, action, target)
        return pb.PolicyDecision(
            allowed=decision.allowed,
            reason=decision.reason,
            principal=subject.describe(),
            rule=decision.rule,
        )


def _answer(issued: Issued, hide_secrets: bool) -> pb.Credential:
    """A credential get or rotation's reply: the credential, under its connector's name."""
    return convert.credential(
        issued.connector.name,
        issued.connector.revision,
        issued.credential,
        hide_secrets=hide_secrets,
    )


def _filter(request: pb.ListConnectorsRequest | pb.ListResourcesRequest) -> ConnectorFilter:
    return ConnectorFilter(
        name=_text(request.name),
        connector_type=_text(request.connector_type),
        resource_type=_text(request.resource_type),
        resource_id=_text(request.resource_id),
        auth_method=_text(getattr(request, "auth_method", "")),
        labels=dict(request.labels),
    )
