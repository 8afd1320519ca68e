"""What the daemon accepts in a gRPC request: how it is decoded, how big each field may be,
and how ``ListConnectors`` pages.

Every string field of every ``broker.v1`` request has a maximum, in UTF-8 bytes:

=====================================  =========================================
field                                  at most
=====================================  =========================================
``name``, ``connector``                64 B
``connector_type``, ``auth_method``,   64 B
``resource_type``, ``action``,
``kind``, ``id``
``resource_id``                        1 KiB
``description``                        1 KiB
``labels``                             64 entries; keys and values 256 B each
``config``                             64 entries; keys 256 B, values 64 KiB
``remove_attributes``,                 64 entries of 256 B
``remove_labels``
``page_token``                         256 B
``user``                               256 B
``cert_id``                            2 KiB
the whole request                      1 MiB (``MAX_REQUEST_BYTES``)
=====================================  =========================================

A larger value is refused with INVALID_ARGUMENT naming the field (never
echoing a value: config values are secrets). A request over 1 MiB is refused
by gRPC itself with RESOURCE_EXHAUSTED before it is read. A request that is
not valid protobuf, or whose strings are not valid UTF-8, is INVALID_ARGUMENT
too: the service is registered with handlers that take the raw bytes and
decode them here (grpc.aio answers UNKNOWN for a request its deserializer
cannot read).

``ListConnectors`` answers in pages: ``page_size`` (0: 100, at most 500) and
a byte budget per page (``PAGE_BYTES``), so no listing can outgrow a message
however many or however large the connectors are. ``page_token`` is opaque
to clients (the base64 of the last name on the previous page: names are
unique and listed in order).
"""

from __future__ import annotations

import base64
import binascii
import bisect
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import DecodeError, Message

from broker.api.v1 import broker_pb2 as pb
from broker.config import Settings
from broker.errors import InvalidArgument
from broker.rpc.status import DAEMON_ERROR

KIB = 1024
MIB = 1024 * KIB
#: gRPC's receive limit on the daemon: larger requests never reach the broker.
MAX_REQUEST_BYTES = 1 * MIB

#: ListConnectors: connectors per page when the request says 0, and the most it may ask for.
DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 500
#: ListConnectors: a page stops before it would pass this many bytes (always >= 1 connector),
#: well under the 4 MiB a gRPC client accepts by default.
PAGE_BYTES = 2 * MIB

SERVICE = pb.DESCRIPTOR.services_by_name["BrokerService"]


@dataclass(frozen=True)
class Limit:
    """The bound on one request field: a string, a map<string, string> or a repeated string."""

    #: Bytes of one value (a string; each value of a map; each item of a list).
    value_bytes: int
    #: Maps: bytes of each key.
    key_bytes: int = 0
    #: Maps and lists: entries at most.
    items: int = 0


_NAME = Limit(64)
_IDENT = Limit(64)

#: By field name, for every request message of the service (a test checks none is missing).
LIMITS: dict[str, Limit] = {
    "name": _NAME,
    "connector": _NAME,
    "connector_type": _IDENT,
    "auth_method": _IDENT,
    "resource_type": _IDENT,
    "action": _IDENT,
    "kind": _IDENT,
    "id": _IDENT,
    "resource_id": Limit(1 * KIB),
    "description": Limit(1 * KIB),
    "labels": Limit(256, key_bytes=256, items=64),
    "config": Limit(64 * KIB, key_bytes=256, items=64),
    "remove_attributes": Limit(256, items=64),
    "remove_labels": Limit(256, items=64),
    "page_token": Limit(256),
    "user": Limit(256),
    "cert_id": Limit(2 * KIB),
    "selectors": Limit(2 * KIB, items=64),
}


def _is_map(field: FieldDescriptor) -> bool:
    entry = field.message_type
    return (
        entry is not None
        and entry.GetOptions().map_entry
        and entry.fields_by_name["value"].type == FieldDescriptor.TYPE_STRING
    )


def _repeated(field: FieldDescriptor) -> bool:
    # protobuf >= 5.29 has is_repeated; older versions only label.
    flag = getattr(field, "is_repeated", None)
    if flag is not None:
        return bool(flag)
    return bool(getattr(field, "label", None) == 3)  # LABEL_REPEATED


def bounded_fields(descriptor: Any) -> list[tuple[str, str]]:
    """``(field name, shape)`` of every field that needs a limit: shape is str, map or list."""
    out = []
    for field in descriptor.fields:
        if _is_map(field):
            out.append((field.name, "map"))
        elif field.type == FieldDescriptor.TYPE_STRING:
            out.append((field.name, "list" if _repeated(field) else "str"))
    return out


def request_types() -> dict[str, type[Message]]:
    """Each method of the service -> its request message class."""
    return {m.name: getattr(pb, m.input_type.name) for m in SERVICE.methods}


def _plan(descriptor: Any) -> tuple[tuple[str, str, Limit], ...]:
    return tuple((name, shape, LIMITS[name]) for name, shape in bounded_fields(descriptor))


_PLANS: dict[type[Message], tuple[tuple[str, str, Limit], ...]] = {
    cls: _plan(cls.DESCRIPTOR) for cls in request_types().values()
}


def _floor(plan: tuple[tuple[str, str, Limit], ...]) -> int:
    """Requests of at most this many bytes cannot break any limit of ``plan``: no string in
    them is longer than the whole encoding, and each map or list entry takes 2 bytes or more."""
    floor = MAX_REQUEST_BYTES
    for _, shape, limit in plan:
        floor = min(floor, limit.value_bytes)
        if shape != "str":
            floor = min(floor, 2 * limit.items)
        if shape == "map":
            floor = min(floor, limit.key_bytes)
    return floor


#: Per request type: below this size, :func:`check` has nothing to find (the hot path's
#: requests, a name and a resource, are far below it).
_FLOORS: dict[type[Message], int] = {cls: _floor(plan) for cls, plan in _PLANS.items()}


def _size(text: str, limit: int) -> int | None:
    """``text``'s UTF-8 size if it is over ``limit``, else None (cheap for short text)."""
    if len(text) * 4 <= limit:
        return None
    size = len(text.encode("utf-8", "surrogatepass"))
    return size if size > limit else None


def _shown(key: str) -> str:
    return repr(key if len(key) <= 40 else key[:40] + "…")


def _too_big(what: str, size: int, limit: int, field: str) -> InvalidArgument:
    return InvalidArgument(f"{what} is {size} bytes; at most {limit} are allowed", field=field)


def check(request: Message) -> None:
    """Raise InvalidArgument naming the first field of ``request`` over its limit."""
    for name, shape, limit in _PLANS.get(type(request), ()):
        value: Any = getattr(request, name)
        if shape == "str":
            size = _size(value, limit.value_bytes)
            if size is not None:
                raise _too_big(f"field '{name}'", size, limit.value_bytes, name)
            continue
        if len(value) > limit.items:
            raise InvalidArgument(
                f"field '{name}' has {len(value)} entries; at most {limit.items} are allowed",
                field=name,
            )
        if shape == "list":
            for item in value:
                size = _size(item, limit.value_bytes)
                if size is not None:
                    raise _too_big(f"an entry of '{name}'", size, limit.value_bytes, name)
            continue
        for key, item in value.items():
            size = _size(key, limit.key_bytes)
            if size is not None:
                raise _too_big(f"a key of '{name}'", size, limit.key_bytes, name)
            size = _size(item, limit.value_bytes)
            if size is not None:  # never the value itself: config values are secrets
                raise _too_big(f"{name}[{_shown(key)}]", size, limit.value_bytes, name)


M = TypeVar("M", bound=Message)


def decode(cls: type[M], raw: bytes) -> M:
    """The request in ``raw``, or InvalidArgument if it is not a valid ``cls``."""
    try:
        return cls.FromString(raw)
    except DecodeError as exc:
        reason = str(exc).rsplit(": ", 1)[-1] if ": " in str(exc) else "not valid protobuf"
        raise InvalidArgument(
            f"the request is not a valid {cls.DESCRIPTOR.full_name}: {reason}"
        ) from None


# -- paging ----------------------------------------------------------------------------


def page_size(requested: int) -> int:
    if requested < 0:
        raise InvalidArgument("page_size must not be negative", field="page_size")
    return min(requested or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)


def page_token(last_name: str) -> str:
    return base64.urlsafe_b64encode(last_name.encode()).decode()


def after_token(token: str) -> str | None:
    """The name a page token says the previous page ended with (None: the first page)."""
    if not token:
        return None
    try:
        name = base64.b64decode(token.encode("ascii"), altchars=b"-_", validate=True).decode()
    except (binascii.Error, UnicodeError, ValueError):
        name = ""
    if name:
        return name
    raise InvalidArgument(
        "page_token is not one this daemon gave out: pass the previous page's "
        "next_page_token unchanged",
        field="page_token",
    )


T = TypeVar("T")


def paged(
    items: Sequence[T],
    name: Callable[[T], str],
    build: Callable[[T], M],
    requested_size: int,
    token: str,
) -> tuple[list[M], str]:
    """One page of ``items`` after ``token``, built into messages, and the next token.

    Items are taken in ``name`` order. A page holds at most ``page_size`` of
    them and stops before its messages pass ``PAGE_BYTES``, with at least one
    on every page; only the items on the page are built.
    """
    limit = page_size(requested_size)
    after = after_token(token)
    ordered = sorted(items, key=name)
    start = 0
    if after is not None:
        start = bisect.bisect_right([name(item) for item in ordered], after)
    page: list[M] = []
    used = 0
    for item in ordered[start : start + limit]:
        message = build(item)
        cost = message.ByteSize()
        if page and used + cost > PAGE_BYTES:
            break
        page.append(message)
        used += cost
    end = start + len(page)
    return page, page_token(name(ordered[end - 1])) if page and end < len(ordered) else ""


# -- registration ----------------------------------------------------------------------

Ctx = grpc.aio.ServicerContext[Any, Any]


def _checked(
    impl: Callable[[Any, Ctx], Awaitable[Any]], cls: type[Message]
) -> Callable[[bytes, Ctx], Awaitable[Any]]:
    floor = _FLOORS[cls]

    async def handle(raw: bytes, context: Ctx) -> Any:
        try:
            request = decode(cls, raw)
            if len(raw) > floor:
                check(request)
        except InvalidArgument as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, exc.message, DAEMON_ERROR)
        return await impl(request, context)

    handle.__name__ = getattr(impl, "__name__", handle.__name__)
    return handle


def _bytes_or(serialize: Callable[[Any], bytes]) -> Callable[[Any], bytes]:
    """Streams may write a message already serialized: a watch event is encoded once
    and written as is to every stream of its key."""

    def encode(message: Any) -> bytes:
        return message if type(message) is bytes else serialize(message)

    return encode


def add_servicer(servicer: Any, server: grpc.aio.Server) -> None:
    """Register ``servicer`` for broker.v1.BrokerService, decoding and checking each request.

    What the generated ``add_BrokerServiceServicer_to_server`` does, except that
    gRPC hands over the raw bytes (no deserializer) and :func:`decode` /
    :func:`check` turn them into the request or an INVALID_ARGUMENT.
    """
    handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}
    for method in SERVICE.methods:
        request_cls = getattr(pb, method.input_type.name)
        response_cls = getattr(pb, method.output_type.name)
        handle = _checked(getattr(servicer, method.name), request_cls)
        make = (
            grpc.unary_stream_rpc_method_handler
            if method.server_streaming
            else grpc.unary_unary_rpc_method_handler
        )
        handlers[method.name] = make(
            handle,
            request_deserializer=None,
            response_serializer=(
                _bytes_or(response_cls.SerializeToString)
                if method.server_streaming
                else response_cls.SerializeToString
            ),
        )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(SERVICE.full_name, handlers),)
    )
    server.add_registered_method_handlers(SERVICE.full_name, handlers)  # type: ignore[attr-defined]


def server_options(settings: Settings) -> list[tuple[str, int]]:
    """The gRPC server's channel options for many long-lived streams per connection.

    * pending calls: gRPC core holds new calls until the handler loop takes them,
      and past ``grpc.server.max_pending_requests`` (default 1,000) it refuses them
      at random up to the hard limit (3,000), as a bare ``CANCELLED`` the daemon never
      sees. 2,000 watch streams opened at once on one channel lost 128-196 that way.
      Soft and hard limit are both ``grpc_max_pending_calls``: none refused below it.
    * keepalive: the daemon pings idle connections (``grpc_keepalive_seconds``) so a
      vanished watcher's streams end, and lets clients ping every
      ``grpc_min_ping_interval_seconds`` even with no call open, instead of ending
      the connection with GOAWAY ``too_many_pings`` (gRPC's default: 5 minutes).
    * no limit on concurrent HTTP/2 streams per connection (gRPC's default): the
      deliberate bound is ``watch_max_streams``, refused with RESOURCE_EXHAUSTED.
    """
    pending = settings.grpc_max_pending_calls
    return [
        ("grpc.max_receive_message_length", MAX_REQUEST_BYTES),
        ("grpc.so_reuseport", 0),
        ("grpc.server.max_pending_requests", pending),
        ("grpc.server.max_pending_requests_hard_limit", pending),
        ("grpc.keepalive_time_ms", int(settings.grpc_keepalive_seconds * 1000)),
        ("grpc.keepalive_timeout_ms", 20_000),
        ("grpc.keepalive_permit_without_calls", 1),
        (
            "grpc.http2.min_ping_interval_without_data_ms",
            int(settings.grpc_min_ping_interval_seconds * 1000),
        ),
        (
            "grpc.http2.min_recv_ping_interval_without_data_ms",
            int(settings.grpc_min_ping_interval_seconds * 1000),
        ),
        ("grpc.http2.max_ping_strikes", 2),
    ]
