"""A stdlib HTTP/JSON client for the daemon's helper socket."""

from __future__ import annotations

import json
import os
import socket
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing and pathlib cost ~15 ms to import: helpers use plain str paths
    from typing import Any, NoReturn

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


def _request(path: str, method: str, route: str, payload: bytes | None) -> tuple[int, bytes]:
    """One HTTP/1.1 exchange over the Unix socket (http.client costs ~40 ms to import)."""
    head = [f"{method} {route} HTTP/1.1", "Host: localhost", "Connection: close"]
    if payload is not None:
        head += ["Content-Type: application/json", f"Content-Length: {len(payload)}"]
    data = ("\r\n".join(head) + "\r\n\r\n").encode() + (payload or b"")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(TIMEOUT_SECONDS)
        sock.connect(path)
        sock.sendall(data)
        chunks = []
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
    raw = b"".join(chunks)
    header, _, body = raw.partition(b"\r\n\r\n")
    lines = header.split(b"\r\n")
    parts = lines[0].split(b" ", 2) if lines else []
    if len(parts) < 2 or not parts[1].isdigit():
        raise ValueError("not an HTTP response")
    if any(
        line.lower().startswith(b"transfer-encoding:") and b"chunked" in line.lower()
        for line in lines[1:]
    ):
        body = _unchunk(body)
    return int(parts[1]), body


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


def call(path: str, method: str, route: str, body: dict[str, Any] | None = None) -> Any:
    """One request; raises HelperError with the daemon's message on any failure."""
    payload = json.dumps(body).encode() if body is not None else None
    try:
        status, raw = _request(path, method, route, payload)
    except (FileNotFoundError, ConnectionRefusedError):
        raise HelperError(
            f"credential-broker daemon not running at {path}", "unavailable"
        ) from None
    except OSError as exc:
        raise HelperError(
            f"cannot reach credential-broker at {path}: {exc}", "unavailable"
        ) from None
    except ValueError:
        raise HelperError(f"unexpected answer from {path}", "internal") from None
    try:
        data = json.loads(raw or b"null")
    except ValueError:
        raise HelperError(f"unexpected answer from {path}", "internal") from None
    if status != 200:
        message = data.get("error") if isinstance(data, dict) else None
        code = data.get("code") if isinstance(data, dict) else None
        raise HelperError(str(message or f"HTTP {status}"), str(code or "internal"))
    return data


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


def fail(message: str, code: int = 1) -> NoReturn:
    sys.stderr.write(f"error: {message}\n")
    sys.exit(code)
