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
  static and dynamic tables; SETTINGS and PING acknowledged.

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

#: HPACK's static table (RFC 7541, Appendix A): index 1 is element 0.
STATIC_TABLE = (
    (":authority", ""),
    (":method", "GET"),
    (":method", "POST"),
    (":path", "/"),
    (":path", "/index.html"),
    (":scheme", "http"),
    (":scheme", "https"),
    (":status", "200"),
    (":status", "204"),
    (":status", "206"),
    (":status", "304"),
    (":status", "400"),
    (":status", "404"),
    (":status", "500"),
    ("accept-charset", ""),
    ("accept-encoding", "gzip, deflate"),
    ("accept-language", ""),
    ("accept-ranges", ""),
    ("accept", ""),
    ("access-control-allow-origin", ""),
    ("age", ""),
    ("allow", ""),
    ("authorization", ""),
    ("cache-control", ""),
    ("content-disposition", ""),
    ("content-encoding", ""),
    ("content-language", ""),
    ("content-length", ""),
    ("content-location", ""),
    ("content-range", ""),
    ("content-type", ""),
    ("cookie", ""),
    ("date", ""),
    ("etag", ""),
    ("expect", ""),
    ("expires", ""),
    ("from", ""),
    ("host", ""),
    ("if-match", ""),
    ("if-modified-since", ""),
    ("if-none-match", ""),
    ("if-range", ""),
    ("if-unmodified-since", ""),
    ("last-modified", ""),
    ("link", ""),
    ("location", ""),
    ("max-forwards", ""),
    ("proxy-authenticate", ""),
    ("proxy-authorization", ""),
    ("range", ""),
    ("referer", ""),
    ("refresh", ""),
    ("retry-after", ""),
    ("server", ""),
    ("set-cookie", ""),
    ("strict-transport-security", ""),
    ("transfer-encoding", ""),
    ("user-agent", ""),
    ("vary", ""),
    ("via", ""),
    ("www-authenticate", ""),
)
#: SETTINGS_HEADER_TABLE_SIZE's initial value: the daemon's encoder may index this much.
TABLE_SIZE = 4096
#: What grpcio says when the daemon's end of the connection goes away mid-call.
SOCKET_CLOSED = "Socket closed"


class Unsupported(Exception):
    """Something this client does not speak; the command is run over grpcio instead."""


class ProtocolError(Exception):
    """The peer broke HTTP/2 or gRPC framing."""


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


def _hpack_int(value: int, prefix_bits: int, first: int = 0) -> bytes:
    """An HPACK integer (RFC 7541, 5.1) in a first byte whose high bits are ``first``."""
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes((first | value,))
    out = [first | limit]
    value -= limit
    while value >= 128:
        out.append(value % 128 + 128)
        value //= 128
    out.append(value)
    return bytes(out)


def encode_headers(headers: list[tuple[str, str]]) -> bytes:
    """Literal header fields without indexing, new names, raw strings (RFC 7541, 6.2.2)."""
    out = bytearray()
    for name, value in headers:
        raw_name, raw_value = name.encode("ascii"), value.encode("ascii")
        out += b"\x00" + _hpack_int(len(raw_name), 7) + raw_name
        out += _hpack_int(len(raw_value), 7) + raw_value
    return bytes(out)


class HeaderDecoder:
    """HPACK decoding (RFC 7541) with the connection's dynamic table; no Huffman."""

    def __init__(self) -> None:
        self.table: list[tuple[str, str]] = []
        self.size = 0
        self.max_size = TABLE_SIZE

    def _entry(self, index: int) -> tuple[str, str]:
        if 1 <= index <= len(STATIC_TABLE):
            return STATIC_TABLE[index - 1]
        dynamic = index - len(STATIC_TABLE) - 1
        if 0 <= dynamic < len(self.table):
            return self.table[dynamic]
        raise ProtocolError(f"header table index {index} out of range")

    def _evict(self) -> None:
        while self.size > self.max_size:
            name, value = self.table.pop()
            self.size -= 32 + len(name) + len(value)

    def _add(self, name: str, value: str) -> None:
        self.table.insert(0, (name, value))
        self.size += 32 + len(name) + len(value)
        self._evict()

    @staticmethod
    def _int(block: bytes, pos: int, prefix_bits: int) -> tuple[int, int]:
        limit = (1 << prefix_bits) - 1
        if pos >= len(block):
            raise ProtocolError("header block ends inside an integer")
        value = block[pos] & limit
        pos += 1
        if value < limit:
            return value, pos
        shift = 0
        while True:
            if pos >= len(block) or shift > 28:
                raise ProtocolError("bad integer in a header block")
            byte = block[pos]
            pos += 1
            value += (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                return value, pos

    def _string(self, block: bytes, pos: int) -> tuple[str, int]:
        if pos >= len(block):
            raise ProtocolError("header block ends before a string")
        huffman = block[pos] & 0x80
        length, pos = self._int(block, pos, 7)
        if huffman:
            raise Unsupported("a Huffman-coded header string")
        if pos + length > len(block):
            raise ProtocolError("header block ends inside a string")
        return block[pos : pos + length].decode("latin-1"), pos + length

    def decode(self, block: bytes) -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = []
        pos = 0
        while pos < len(block):
            first = block[pos]
            if first & 0x80:  # indexed field
                index, pos = self._int(block, pos, 7)
                out.append(self._entry(index))
                continue
            if first & 0xE0 == 0x20:  # dynamic table size update
                self.max_size, pos = self._int(block, pos, 5)
                if self.max_size > TABLE_SIZE:
                    raise ProtocolError("header table size above the one we allowed")
                self._evict()
                continue
            indexing = bool(first & 0x40)  # else without indexing / never indexed
            index, pos = self._int(block, pos, 6 if indexing else 4)
            if index:
                name = self._entry(index)[0]
            else:
                name, pos = self._string(block, pos)
            value, pos = self._string(block, pos)
            if indexing:
                self._add(name, value)
            out.append((name, value))
        return out


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
