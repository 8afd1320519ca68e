"""Error answers of the local HTTP endpoints (helper socket and SDK listeners).

Kept apart from the guard so an endpoint can refuse a request, and a test can
check the wire format, without the connection machinery.
"""

from __future__ import annotations

import json
import socket
import struct

from broker.errors import BrokerError

#: A header value never carries more of an error message than this.
MAX_HEADER_TEXT = 512


def header_safe(text: str, limit: int = MAX_HEADER_TEXT) -> str:
    """``text`` as one line of printable ASCII, safe in an HTTP header.

    Runs of whitespace (CR and LF among them) become one space; any other
    control character, and anything outside ASCII, is escaped as ``\\xNN`` or
    ``\\uNNNN``; a backslash is doubled so escapes stay unambiguous. Longer
    than ``limit``: cut, ending in ``...``.
    """
    out: list[str] = []
    size = 0
    for ch in " ".join(text.split()):
        code = ord(ch)
        if ch == "\\":
            piece = "\\\\"
        elif 0x20 <= code < 0x7F:
            piece = ch
        elif code < 0x100:
            piece = f"\\x{code:02x}"
        elif code < 0x10000:
            piece = f"\\u{code:04x}"
        else:
            piece = f"\\U{code:08x}"
        if size + len(piece) > limit - 3:
            out.append("...")
            break
        out.append(piece)
        size += len(piece)
    return "".join(out)


class HttpRefusal(BrokerError):
    """A request refused for its shape or timing, with its own HTTP status."""

    def __init__(self, status: int, code: str, message: str, *, close: bool = True) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.close = close


def error_body(code: str, message: str) -> bytes:
    """The one-line JSON every error answer carries."""
    return json.dumps({"error": message, "code": code}, ensure_ascii=True).encode()


def canned_response(status: int, code: str, message: str) -> bytes:
    """A complete ``Connection: close`` error answer, for when no request object exists."""
    body = error_body(code, message)
    reason = _REASONS.get(status, "Error")
    head = (
        f"HTTP/1.1 {status} {reason}\r\n"
        "Content-Type: application/json; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\n"
        f"X-Broker-Error: {header_safe(message)}\r\n"
        f"X-Broker-Error-Code: {code}\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


_REASONS = {
    400: "Bad Request",
    408: "Request Timeout",
    413: "Content Too Large",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


def describe_peer(sock: socket.socket | None) -> str:
    """Who is on the other end, for the log: ``uid=U pid=P`` on a Unix socket, else HOST:PORT."""
    if sock is None:
        return "unknown"
    try:
        if sock.family == socket.AF_UNIX:
            raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
            pid, uid, _ = struct.unpack("3i", raw)
            return f"uid={uid} pid={pid}"
        host, port = sock.getpeername()[:2]
        return f"{host}:{port}"
    except OSError:
        return "unknown"
