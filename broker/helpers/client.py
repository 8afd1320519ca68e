"""A minimal client for the daemon's helper socket, for helpers started per call.

Start-up time is the product here (docker and kubectl start a helper for
every call), so this avoids every import that costs milliseconds: no
``json`` (it pulls in ``re``), no ``socket`` (``enum``), no ``typing``,
``pathlib`` or ``http.client``. The daemon answers successful calls with
exactly the bytes the helper prints, and errors with ``X-Broker-Error`` /
``X-Broker-Error-Code`` headers, so nothing needs parsing here.
"""

from __future__ import annotations

import _socket
import os
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import NoReturn

#: Where `broker login` records the helper socket for helpers docker starts with no arguments.
POINTER_FILE = "~/.config/credential-broker/helper-socket"
SYSTEM_SOCKET = "/run/broker/helper.sock"
LOCAL_SOCKET = ".broker/helper.sock"
TIMEOUT_SECONDS = 30.0


class HelperError(Exception):
    """A failure to report: ``code`` is the daemon's error code or ``unavailable``."""

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


def socket_path(explicit: str | None = None) -> str:
    """Explicit flag > BROKER_HELPER_SOCKET > the login pointer file > system > ./.broker."""
    if explicit:
        return explicit
    env = os.environ.get("BROKER_HELPER_SOCKET")
    if env:
        return env
    try:
        with open(os.path.expanduser(POINTER_FILE)) as pointer:
            recorded = pointer.read().strip()
    except OSError:
        recorded = ""
    if recorded:
        return recorded
    if os.path.exists(SYSTEM_SOCKET):
        return SYSTEM_SOCKET
    return LOCAL_SOCKET


def json_string(value: str) -> str:
    """A JSON string literal (the json module costs ~12 ms to import)."""
    out = ['"']
    for ch in value:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ch < " ":
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def json_object(fields: dict[str, str | None]) -> bytes:
    items = [f"{json_string(k)}:{json_string(v)}" for k, v in fields.items() if v is not None]
    return ("{" + ",".join(items) + "}").encode()


def _exchange(path: str, data: bytes) -> bytes:
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        sock.settimeout(TIMEOUT_SECONDS)
        sock.connect(path)
        sock.sendall(data)
        chunks = []
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        sock.close()
    return b"".join(chunks)


def call(path: str, method: str, route: str, body: bytes | None = None) -> bytes:
    """One HTTP/1.1 exchange; the response body, or HelperError with the daemon's message."""
    head = [f"{method} {route} HTTP/1.1", "Host: localhost", "Connection: close"]
    if body is not None:
        head += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
    request = ("\r\n".join(head) + "\r\n\r\n").encode() + (body or b"")
    try:
        raw = _exchange(path, request)
    except (FileNotFoundError, ConnectionRefusedError):
        raise HelperError(
            f"credential-broker daemon not running at {path}", "unavailable"
        ) from None
    except OSError as exc:
        raise HelperError(
            f"cannot reach credential-broker at {path}: {exc}", "unavailable"
        ) from None
    header, _, payload = raw.partition(b"\r\n\r\n")
    lines = header.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[1].isdigit():
        raise HelperError(f"unexpected answer from {path}", "internal")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if "chunked" in headers.get("transfer-encoding", ""):
        payload = _unchunk(payload)
    if parts[1] != "200":
        message = headers.get("x-broker-error") or f"HTTP {parts[1]}"
        raise HelperError(message, headers.get("x-broker-error-code") or "internal")
    return payload


def _unchunk(body: bytes) -> bytes:
    out = bytearray()
    while body:
        size_line, _, rest = body.partition(b"\r\n")
        size = int(size_line.split(b";")[0] or b"0", 16)
        if size == 0:
            break
        out += rest[:size]
        body = rest[size + 2 :]
    return bytes(out)


def emit(payload: bytes) -> None:
    sys.stdout.buffer.write(payload.rstrip(b"\n") + b"\n")
    sys.stdout.flush()


def fail(message: str, code: int = 1) -> NoReturn:
    sys.stderr.write(f"error: {message}\n")
    sys.exit(code)


def parse_args(argv: list[str], prog: str, options: tuple[str, ...]) -> tuple[str, dict[str, str]]:
    """``NAME [--opt VALUE ...]`` without argparse (it costs ~10 ms to import)."""
    usage = f"usage: {prog} CONNECTOR " + " ".join(f"[{o} VALUE]" for o in options)
    positional: list[str] = []
    values: dict[str, str] = {}
    items = iter(argv)
    for item in items:
        if item in ("-h", "--help"):
            sys.stdout.write(usage + "\n")
            sys.exit(0)
        if item.startswith("--"):
            name, eq, value = item.partition("=")
            if name not in options:
                fail(f"unknown option {name}\n{usage}", 2)
            if not eq:
                value = next(items, "")
                if not value:
                    fail(f"option {name} needs a value\n{usage}", 2)
            values[name[2:].replace("-", "_")] = value
        else:
            positional.append(item)
    if len(positional) != 1:
        fail(f"exactly one connector name is required\n{usage}", 2)
    return positional[0], values
