"""Unary gRPC calls to the daemon over its Unix socket, with the standard library only.

Why not grpcio here: importing it (its core library, asyncio, ssl, logging) takes
more CPU on this kind of machine than the whole budget of ``broker connector list``
(150 ms, 10× a bare interpreter). The fast path (:mod:`broker.cli.fast`) makes a few
unary calls to our own daemon's gRPC server on a local socket, and that needs only
a small part of HTTP/2:

- the client preface and SETTINGS (no push; windows opened wide, so flow control
  never stops an answer of up to 2 GiB: the daemon's answers stay under 4 MiB);
- one stream per call: HEADERS (HPACK literals, not indexed, no Huffman) and one
  DATA frame holding the length-prefixed protobuf message;
- the answer: HEADERS, DATA and trailers (or trailers alone), decoded with HPACK's
  static and dynamic tables (:mod:`broker.cli.hpack`); SETTINGS and PING acknowledged.

Whatever falls outside that raises :class:`Unsupported`, and the command is run
again over grpcio (:mod:`broker.cli.client`), which does what it always did: a
Huffman-coded header string (gRPC's core sends its strings raw), a compressed
message, a stream reset or refused (RST_STREAM, GOAWAY), a request larger than
one frame, an HTTP status other than 200. All the calls made this way are reads.

Connecting says what grpcio's path says (:mod:`broker.cli.locate`): the socket is
found and its owner checked first; a failed connect() is told apart by errno; a
peer that does not send its SETTINGS within the connect timeout "did not answer";
one that closes or sends something else "does not speak the broker's gRPC".
"""

from __future__ import annotations

import _socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from broker.cli import locate
from broker.cli.hpack import HeaderDecoder, encode_headers
from broker.cli.hpack import ProtocolError as ProtocolError
from broker.cli.hpack import Unsupported as Unsupported

if TYPE_CHECKING:
    from pathlib import Path

    from google.protobuf.message import Message

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
#: Frame types (RFC 9113, 6).
DATA, HEADERS, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY = 0, 1, 3, 4, 5, 6, 7
WINDOW_UPDATE, CONTINUATION = 8, 9
END_STREAM = ACK = 0x1
END_HEADERS, PADDED, PRIORITY = 0x4, 0x8, 0x20
#: The largest frame a peer must accept (SETTINGS_MAX_FRAME_SIZE's initial value).
MAX_FRAME = 16384
#: Flow-control windows opened to their maximum (2^31 - 1) for the daemon's answers.
MAX_WINDOW = 2**31 - 1
DEFAULT_WINDOW = 65535
#: SETTINGS_ENABLE_PUSH = 0, SETTINGS_INITIAL_WINDOW_SIZE = MAX_WINDOW.
CLIENT_SETTINGS = (2).to_bytes(2, "big") + (0).to_bytes(4, "big")
CLIENT_SETTINGS += (4).to_bytes(2, "big") + MAX_WINDOW.to_bytes(4, "big")

#: What grpcio says when the daemon's end of the connection goes away mid-call.
SOCKET_CLOSED = "Socket closed"


class CallFailed(Exception):
    """A call ended with a non-OK gRPC status."""

    def __init__(self, code: int, details: str, from_daemon: bool) -> None:
        super().__init__(details)
        self.code = code
        self.details = details
        self.from_daemon = from_daemon


class Lost(Exception):
    """The connection closed or broke during a call."""


def frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    return (
        len(payload).to_bytes(3, "big") + bytes((kind, flags)) + stream.to_bytes(4, "big") + payload
    )


def percent_decoded(text: str) -> str:
    """grpc-message is percent-encoded UTF-8 (the gRPC HTTP/2 protocol)."""
    if "%" not in text:
        return text
    raw = bytearray()
    data = text.encode("latin-1")
    i = 0
    while i < len(data):
        if data[i] == 0x25 and _is_hex(data[i + 1 : i + 3]):
            raw.append(int(data[i + 1 : i + 3], 16))
            i += 3
        else:
            raw.append(data[i])
            i += 1
    return raw.decode("utf-8", "replace")


def _is_hex(pair: bytes) -> bool:
    return len(pair) == 2 and all(c in b"0123456789abcdefABCDEF" for c in pair)


class Connection:
    """One HTTP/2 connection to the daemon, for unary calls one after another."""

    def __init__(self, choice: locate.SocketChoice, path: Path) -> None:
        self.choice = choice
        self.path = path
        self.sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
        self.buffer = bytearray()
        self.headers = HeaderDecoder()
        self.next_stream = 1

    def close(self) -> None:
        self.sock.close()

    # -- frames -------------------------------------------------------------

    def _read(self) -> tuple[int, int, int, bytes]:
        """The next frame: (type, flags, stream id, payload)."""
        buffer = self.buffer
        while True:
            if len(buffer) >= 9:
                length = int.from_bytes(buffer[:3], "big")
                if len(buffer) >= 9 + length:
                    kind, flags = buffer[3], buffer[4]
                    stream = int.from_bytes(buffer[5:9], "big") & 0x7FFFFFFF
                    payload = bytes(buffer[9 : 9 + length])
                    del buffer[: 9 + length]
                    return kind, flags, stream, payload
            chunk = self.sock.recv(262144)
            if not chunk:
                raise Lost(SOCKET_CLOSED)
            buffer += chunk

    def _control(self, kind: int, flags: int, payload: bytes) -> None:
        """Connection-level frames: acknowledge SETTINGS and PING, refuse pushes."""
        if kind == SETTINGS and not flags & ACK:
            self.sock.sendall(frame(SETTINGS, ACK, 0))
        elif kind == PING and not flags & ACK:
            self.sock.sendall(frame(PING, ACK, 0, payload))
        elif kind == PUSH_PROMISE:
            raise Unsupported("a pushed stream")

    # -- connecting ---------------------------------------------------------

    def open(self, timeout: float, longer: str) -> None:
        """Connect and exchange SETTINGS within ``timeout``, or the error that says why not."""
        deadline = time.monotonic() + timeout
        self.sock.settimeout(timeout)
        try:
            self.sock.connect(str(self.path.resolve()))
        except TimeoutError:
            raise self.choice.not_answering(timeout, longer) from None
        except OSError as exc:
            raise locate.connect_failure(self.choice, self.path, exc) from None
        try:
            self.sock.sendall(
                PREFACE
                + frame(SETTINGS, 0, 0, CLIENT_SETTINGS)
                + frame(WINDOW_UPDATE, 0, 0, (MAX_WINDOW - DEFAULT_WINDOW).to_bytes(4, "big"))
            )
            self.sock.settimeout(max(0.001, deadline - time.monotonic()))
            kind, flags, stream, payload = self._read()
            if kind != SETTINGS or flags & ACK or stream:
                raise ProtocolError("the first frame is not SETTINGS")
            self._control(kind, flags, payload)
        except TimeoutError:
            raise self.choice.not_answering(timeout, longer) from None
        except (OSError, Lost, ProtocolError):
            raise locate.not_grpc(self.choice, self.path) from None

    # -- calls --------------------------------------------------------------

    def call(self, path: str, request: bytes, timeout: float | None = None) -> bytes:
        """One unary call: the answer's message bytes, or CallFailed / Lost / Unsupported."""
        stream = self.next_stream
        self.next_stream += 2
        body = b"\x00" + len(request).to_bytes(4, "big") + request
        if len(body) > MAX_FRAME:
            raise Unsupported("a request larger than one frame")
        fields = [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", path),
            (":authority", "localhost"),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
        ]
        if timeout is not None:
            fields.append(("grpc-timeout", f"{max(1, int(timeout * 1000))}m"))
        self.sock.settimeout(timeout)
        try:
            self.sock.sendall(
                frame(HEADERS, END_HEADERS, stream, encode_headers(fields))
                + frame(DATA, END_STREAM, stream, body)
            )
            return self._answer(stream)
        except TimeoutError:
            raise CallFailed(4, "Deadline Exceeded", False) from None
        except ConnectionError as exc:
            raise Lost(exc.strerror or str(exc)) from None
        except ProtocolError as exc:  # grpcio, running the command again, says what it says
            raise Unsupported(str(exc)) from None

    def _header_block(self, stream: int, flags: int, payload: bytes) -> bytes:
        """A HEADERS frame's header block, with any CONTINUATION frames that follow."""
        if flags & PADDED:
            pad = payload[0]
            payload = payload[1 : len(payload) - pad]
        if flags & PRIORITY:
            payload = payload[5:]
        block = payload
        while not flags & END_HEADERS:
            kind, flags, on, payload = self._read()
            if kind != CONTINUATION or on != stream:
                raise ProtocolError("a header block interrupted")
            block += payload
        return block

    def _answer(self, stream: int) -> bytes:
        started = False
        message = bytearray()
        while True:
            kind, flags, on, payload = self._read()
            if on == 0:
                if kind == GOAWAY:
                    last = int.from_bytes(payload[:4], "big") & 0x7FFFFFFF
                    if last < stream:
                        raise Unsupported("the daemon refused the stream (GOAWAY)")
                    continue
                self._control(kind, flags, payload)
                continue
            if on != stream:
                continue
            if kind == RST_STREAM:
                raise Unsupported("the daemon reset the stream")
            if kind == DATA:
                if flags & PADDED:
                    payload = payload[1 : len(payload) - payload[0]]
                message += payload
                if flags & END_STREAM:
                    raise Unsupported("an answer without trailers")
                continue
            if kind != HEADERS:
                continue
            ends = bool(flags & END_STREAM)
            fields = dict(self.headers.decode(self._header_block(stream, flags, payload)))
            if not started and ":status" in fields:
                started = True
                if fields[":status"] != "200":
                    raise Unsupported(f"HTTP status {fields[':status']}")
            if ends:
                return self._result(fields, bytes(message))

    @staticmethod
    def _result(trailers: dict[str, str], message: bytes) -> bytes:
        status = trailers.get("grpc-status")
        if status is None or not status.isdigit():
            raise Unsupported("an answer without grpc-status")
        if int(status) != 0:
            raise CallFailed(
                int(status),
                percent_decoded(trailers.get("grpc-message", "")),
                "broker-error" in trailers,
            )
        if len(message) < 5:
            raise Unsupported("an answer without a message")
        if message[0] != 0:
            raise Unsupported("a compressed message")
        length = int.from_bytes(message[1:5], "big")
        if len(message) != 5 + length:
            raise Unsupported("an answer of more or less than one message")
        return message[5:]


class Stub:
    """Calls a service's unary methods as grpcio's generated stubs do:
    ``stub.Method(request, timeout=None)`` returns the answer message."""

    def __init__(self, conn: Connection, service: Any, module: Any) -> None:
        """``service``: its descriptor; ``module``: the ``_pb2`` module of its messages."""
        self._conn = conn
        self._service = service
        self._module = module

    def __getattr__(self, name: str) -> Any:
        method = self._service.methods_by_name.get(name)
        if method is None:
            raise AttributeError(name)
        if method.client_streaming or method.server_streaming:
            raise Unsupported(f"{name} streams")
        answer = getattr(self._module, method.output_type.name)
        route = f"/{self._service.full_name}/{name}"

        def call(request: Message, timeout: float | None = None) -> Any:
            return answer.FromString(self._conn.call(route, request.SerializeToString(), timeout))

        return call


@contextmanager
def connection(socket: Path | None) -> Iterator[Connection]:
    """A connection to the daemon's socket (as :func:`broker.cli.client.connection` finds
    and checks it); failed calls inside become the BrokerErrors grpcio's path raises.
    Unsupported passes through: the caller runs the command again over grpcio."""
    choice = locate.find_socket(socket)
    conn = Connection(choice, locate.checked(choice))
    try:
        conn.open(locate.connect_timeout(), f"{locate.CONNECT_TIMEOUT_ENV}=SECONDS")
        try:
            yield conn
        except CallFailed as exc:
            raise locate.call_failure(
                choice, conn.path, exc.code, exc.details, exc.from_daemon
            ) from None
        except Lost as exc:
            raise locate.call_failure(choice, conn.path, 14, str(exc), False) from None
    finally:
        conn.close()
