"""A stdlib HTTP/JSON client for the daemon's helper socket."""

from __future__ import annotations

import http.client
import json
import os
import socket
import sys
from pathlib import Path
from typing import Any, NoReturn

#: Where `broker login` records the helper socket for helpers docker starts with no arguments.
POINTER_FILE = Path("~/.config/credential-broker/helper-socket")
SYSTEM_SOCKET = Path("/run/broker/helper.sock")
LOCAL_SOCKET = Path(".broker/helper.sock")
TIMEOUT_SECONDS = 30.0


class HelperError(Exception):
    """A failure to report: ``code`` is the daemon's error code or ``unavailable``."""

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


def socket_path(explicit: str | None = None) -> Path:
    """Explicit flag > BROKER_HELPER_SOCKET > the login pointer file > system > ./.broker."""
    if explicit:
        return Path(explicit)
    env = os.environ.get("BROKER_HELPER_SOCKET")
    if env:
        return Path(env)
    pointer = POINTER_FILE.expanduser()
    try:
        recorded = pointer.read_text().strip()
    except OSError:
        recorded = ""
    if recorded:
        return Path(recorded)
    if SYSTEM_SOCKET.exists():
        return SYSTEM_SOCKET
    return LOCAL_SOCKET


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: Path) -> None:
        super().__init__("localhost", timeout=TIMEOUT_SECONDS)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(TIMEOUT_SECONDS)
        sock.connect(str(self._path))
        self.sock = sock


def call(path: Path, method: str, route: str, body: dict[str, Any] | None = None) -> Any:
    """One request; raises HelperError with the daemon's message on any failure."""
    conn = _UnixConnection(path)
    try:
        payload = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json"} if payload is not None else {}
        conn.request(method, route, body=payload, headers=headers)
        response = conn.getresponse()
        raw = response.read()
    except (FileNotFoundError, ConnectionRefusedError):
        raise HelperError(
            f"credential-broker daemon not running at {path}", "unavailable"
        ) from None
    except OSError as exc:
        raise HelperError(
            f"cannot reach credential-broker at {path}: {exc}", "unavailable"
        ) from None
    finally:
        conn.close()
    try:
        data = json.loads(raw or b"null")
    except ValueError:
        raise HelperError(f"unexpected answer from {path}", "internal") from None
    if response.status != 200:
        message = data.get("error") if isinstance(data, dict) else None
        code = data.get("code") if isinstance(data, dict) else None
        raise HelperError(str(message or f"HTTP {response.status}"), str(code or "internal"))
    return data


def fail(message: str, code: int = 1) -> NoReturn:
    sys.stderr.write(f"error: {message}\n")
    sys.exit(code)
