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
    from collections.abc import Mapping
    from typing import NoReturn

#: Pointer files (written by `broker serve` / `broker login`, see broker/pointers.py):
#: one line naming a socket, in $XDG_RUNTIME_DIR/credential-broker/ or ~/.config/credential-broker/.
DIR_NAME = "credential-broker"
#: Pointer to the gRPC socket (read by the CLI).
GRPC_POINTER = "socket"
#: Pointer to the helper socket (read by docker / kubectl / aws helpers).
HELPER_POINTER = "helper-socket"
#: Where the systemd unit and the container image put the sockets; found without a pointer.
SYSTEM_GRPC_SOCKET = "/run/broker/broker.sock"
SYSTEM_HELPER_SOCKET = "/run/broker/helper.sock"


def pointer_dirs(env: Mapping[str, str] | None = None) -> list[str]:
    """Directories holding pointer files, in the order they are read."""
    env = os.environ if env is None else env
    dirs = []
    runtime = env.get("XDG_RUNTIME_DIR", "")
    if runtime and os.path.isabs(runtime) and os.path.isdir(runtime):
        dirs.append(os.path.join(runtime, DIR_NAME))
    home = env.get("HOME") or os.path.expanduser("~")
    dirs.append(os.path.join(home, ".config", DIR_NAME))
    return dirs


def read_pointer(name: str, env: Mapping[str, str] | None = None) -> tuple[str, str] | None:
    """``(socket path, pointer file)`` from the first pointer file naming one, else None."""
    for directory in pointer_dirs(env):
        path = os.path.join(directory, name)
        try:
            with open(path) as handle:
                recorded = handle.read(4096).strip()
        except (OSError, UnicodeDecodeError):
            continue
        if recorded:
            return recorded, path
    return None


SYSTEM_SOCKET = SYSTEM_HELPER_SOCKET
TIMEOUT_SECONDS = 30.0
#: Whose sockets to trust besides root and yourself; a user name or uid.
DAEMON_USER_ENV = "BROKER_DAEMON_USER"
#: The account of the systemd unit and of the container image.
DEFAULT_DAEMON_USER = "broker"


class HelperError(Exception):
    """A failure to report: ``code`` is the daemon's error code or ``unavailable``."""

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


def locate(explicit: str | None = None) -> tuple[str, str]:
    """``(socket, where it came from)``: --socket > BROKER_HELPER_SOCKET > pointer > system.

    Never the current directory: a socket planted there could collect requests.
    """
    if explicit:
        return explicit, "given with --socket"
    env = os.environ.get("BROKER_HELPER_SOCKET")
    if env:
        return env, "from BROKER_HELPER_SOCKET"
    found = read_pointer(HELPER_POINTER)
    if found:
        return found[0], f"from the pointer file {found[1]}"
    looked = " or ".join(os.path.join(d, HELPER_POINTER) for d in pointer_dirs())
    return SYSTEM_SOCKET, f"the system default; no --socket, BROKER_HELPER_SOCKET or {looked}"


def socket_path(explicit: str | None = None) -> str:
    return locate(explicit)[0]


def _user_name(uid: int) -> str:
    import pwd

    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def check_owner(path: str, source: str) -> None:
    """Refuse a socket that neither root, you, nor the daemon user (BROKER_DAEMON_USER) owns.

    Whoever owns the socket file bound it (only root can give it away), so a
    socket owned by anyone else may be an impostor collecting requests. One
    stat; ``pwd`` only when the owner is a stranger and the daemon user a name.
    """
    try:
        owner = os.stat(path).st_uid
    except FileNotFoundError:
        raise HelperError(
            f"credential-broker daemon not running at {path} ({source})", "unavailable"
        ) from None
    except OSError as exc:
        raise HelperError(
            f"cannot reach credential-broker at {path} ({source}): {exc.strerror}", "unavailable"
        ) from None
    me = os.geteuid()
    if owner in (0, me):
        return
    daemon_user = os.environ.get(DAEMON_USER_ENV) or DEFAULT_DAEMON_USER
    if daemon_user.isdigit():
        daemon_uid = int(daemon_user)
    else:
        import pwd

        try:
            daemon_uid = pwd.getpwnam(daemon_user).pw_uid
        except KeyError:
            daemon_uid = -1
    if owner == daemon_uid:
        return
    raise HelperError(
        f"refusing socket {path} ({source}): it is owned by {_user_name(owner)} (uid {owner}), "
        f"not by root, you ({_user_name(me)}) or the daemon user {daemon_user}; "
        f"if that is your daemon's account, set {DAEMON_USER_ENV}={_user_name(owner)}",
        "permission_denied",
    )


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


def call(path: str, source: str, method: str, route: str, body: bytes | None = None) -> bytes:
    """One HTTP/1.1 exchange; the response body, or HelperError with the daemon's message.

    ``path`` and ``source`` are what :func:`locate` found; the socket's owner
    is checked before anything is sent.
    """
    check_owner(path, source)
    head = [f"{method} {route} HTTP/1.1", "Host: localhost", "Connection: close"]
    if body is not None:
        head += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
    request = ("\r\n".join(head) + "\r\n\r\n").encode() + (body or b"")
    try:
        raw = _exchange(path, request)
    except (FileNotFoundError, ConnectionRefusedError):
        raise HelperError(
            f"credential-broker daemon not running at {path} ({source})", "unavailable"
        ) from None
    except OSError as exc:
        raise HelperError(
            f"cannot reach credential-broker at {path} ({source}): {exc}", "unavailable"
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
